"""The Hugging Face Hub: its address (``$HF_ENDPOINT``), the token (``$HF_TOKEN``), and data
set repositories as corpora.

``fetch_dataset("hf://datasets/ORG/NAME[/SUBSET][@REV]")`` lists the repository's files under
SUBSET (a folder, e.g. ``sample/10BT`` of FineWeb-Edu) with the Hub's tree API, and fetches
each parquet, JSON Lines or text file through the project's downloader: cached, resumable, its
sha256 checked against the one the listing gives for LFS files. HF's own spelling
``hf://datasets/ORG/NAME@REV/SUBSET`` works too.

The listing comes from outside: its size is capped, every path must be a plain relative path
under SUBSET (``download.safe_path``), and pages are followed a bounded number of times.
Offline, files already in the cache or the mirror folder (under ``hf-datasets/ORG/NAME/REV/``)
are used.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from scratchlm.downloads.download import (DownloadError, cache_dir, default_mirror, download,
                                          safe_path)

MAX_LISTING_BYTES = 16 << 20  # one page of the tree listing
MAX_PAGES = 1000
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_SPEC = re.compile(rf"hf://datasets/(?P<repo>{_NAME}/{_NAME})(?:@(?P<rev1>[\w.-]+))?"
                   rf"(?P<sub>(?:/{_NAME})*)/?(?:@(?P<rev2>[\w.-]+))?")
_CORPUS = re.compile(r".*\.(parquet|jsonl|json|ndjson|txt)(\.gz|\.zst)?", re.I)


def hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hf_headers() -> dict[str, str] | None:
    token = os.environ.get("HF_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else None


def parse_spec(spec: str) -> tuple[str, str, str]:
    """(repo, subset folder, revision) of ``hf://datasets/ORG/NAME[/SUBSET][@REV]``."""
    m = _SPEC.fullmatch(spec)
    if not m or (m["rev1"] and m["rev2"]) or ".." in spec:
        raise ValueError(f"{spec!r} is not a Hub data set (hf://datasets/ORG/NAME[/SUBSET]"
                         "[@REV])")
    return m["repo"], m["sub"].strip("/"), m["rev1"] or m["rev2"] or "main"


def _get_json(url: str, timeout: float = 60.0):
    """(JSON body, next page URL or None) of a listing request, at most MAX_LISTING_BYTES."""
    req = urllib.request.Request(url, headers=hf_headers() or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read(MAX_LISTING_BYTES + 1)
            link = resp.headers.get("Link") or ""
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"{url}: {getattr(e, 'reason', e)}") from None
    if len(body) > MAX_LISTING_BYTES:
        raise DownloadError(f"{url}: the listing is larger than {MAX_LISTING_BYTES} bytes")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DownloadError(f"{url}: the listing is not JSON ({e})") from None
    nxt = re.search(r'<([^>]+)>;\s*rel="next"', link)
    return data, (urllib.parse.urljoin(url, nxt.group(1)) if nxt else None)


def list_files(repo: str, subset: str, rev: str) -> list[tuple[str, str | None]]:
    """[(path in the repo, sha256 or None)] of the corpus files under ``subset``, sorted."""
    quoted = urllib.parse.quote(rev, safe="")
    url = (f"{hf_endpoint()}/api/datasets/{repo}/tree/{quoted}/{subset}?recursive=true"
           .replace("//?", "/?"))
    found: dict[str, str | None] = {}
    for _ in range(MAX_PAGES):
        data, url = _get_json(url)
        if not isinstance(data, list):
            raise DownloadError(f"{repo}: the tree listing is not a list")
        for entry in data:
            if not isinstance(entry, dict) or entry.get("type") != "file":
                continue
            path = entry.get("path")
            safe_path(Path("/"), path, resolve=False)  # a plain relative path, or refused
            if subset and not path.startswith(subset + "/"):
                raise DownloadError(f"{repo}: the listing names {path!r}, outside {subset!r}")
            lfs = entry.get("lfs") if isinstance(entry.get("lfs"), dict) else {}
            sha = lfs.get("oid") if re.fullmatch(r"[0-9a-f]{64}", str(lfs.get("oid"))) else None
            if _CORPUS.fullmatch(path):
                found[path] = sha
        if url is None:
            return sorted(found.items())
    raise DownloadError(f"{repo}: the listing has more than {MAX_PAGES} pages")


def _offline_files(prefix: str) -> list[Path]:
    """Files already fetched under ``prefix`` in the mirror folder or the cache."""
    for root in (default_mirror(), str(cache_dir())):
        if root and not re.match(r"https?://", root):
            folder = safe_path(Path(root).expanduser(), prefix, resolve=False)
            files = sorted(p for p in folder.rglob("*") if p.is_file()
                           and _CORPUS.fullmatch(p.name)) if folder.is_dir() else []
            if files:
                return files
    return []


def fetch_dataset(spec: str, *, progress: bool = True) -> list[Path]:
    """The local paths of a Hub data set's corpus files (see the module doc)."""
    repo, subset, rev = parse_spec(spec)
    prefix = f"hf-datasets/{repo}/{rev}"
    try:
        files = list_files(repo, subset, rev)
    except DownloadError as e:
        offline = _offline_files(f"{prefix}/{subset}" if subset else prefix)
        if offline:
            return offline
        raise DownloadError(f"{spec}: cannot list the data set ({e}); offline, put its files "
                            f"under {prefix}/ in SCRATCHLM_MIRROR") from None
    if not files:
        raise DownloadError(f"{spec}: no parquet, JSON Lines or text files there")
    base = f"{hf_endpoint()}/datasets/{repo}/resolve/{urllib.parse.quote(rev, safe='')}"
    return [download(f"{base}/{urllib.parse.quote(path)}", f"{prefix}/{path}", sha256,
                     progress=progress, headers=hf_headers()) for path, sha256 in files]
