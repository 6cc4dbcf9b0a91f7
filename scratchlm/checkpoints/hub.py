"""Fetching a model from the Hugging Face hub (``$HF_ENDPOINT``, default
https://huggingface.co) through the project's downloader (cache, progress, resume, mirror):
its ``config.json``, tokenizer and sampling files when present, and its safetensors weights,
single or sharded. The repository name and the shard index come from outside and are checked
before they are used (``checkpoints/files.py``'s ``shard_names``)."""

from __future__ import annotations

import re
from pathlib import Path

from scratchlm.checkpoints.files import read_json, shard_names
from scratchlm.downloads.download import DownloadError, IntegrityError, download
from scratchlm.downloads.hf import hf_endpoint, hf_headers


_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


def fetch_hf_repo(repo: str, progress: bool = True) -> Path:
    """Download a repo's ``config.json`` and safetensors weights (single or sharded) into the
    cache; returns the local folder."""
    if not _REPO.fullmatch(repo) or ".." in repo:
        raise ValueError(f"{repo!r} is not a Hugging Face repository name (owner/name)")
    base = f"{hf_endpoint()}/{repo}/resolve/main"
    headers = hf_headers()

    def get(name: str) -> Path:
        return download(f"{base}/{name}", f"hf/{repo}/{name}", progress=progress, headers=headers)

    folder = get("config.json").parent
    for optional in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        try:
            get(optional)
        except DownloadError:
            pass  # GPT-2 repos use OpenAI's files (get_tokenizer("gpt2")) instead; sampling
            # settings are optional (checkpoints/generation_config.py)
    try:
        get("model.safetensors")
    except DownloadError as single_error:
        if isinstance(single_error, IntegrityError):
            raise
        try:
            path = get("model.safetensors.index.json")
        except DownloadError:
            raise single_error from None
        for shard in shard_names(read_json(path), str(path)):
            get(shard)
    return folder
