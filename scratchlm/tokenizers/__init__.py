"""Tokenizers: the book's simple and BPE tokenizers, and fast backends, behind one protocol."""

from __future__ import annotations

from pathlib import Path

from scratchlm.tokenizers.backends import HFTokenizer, TiktokenTokenizer
from scratchlm.tokenizers.base import Tokenizer
from scratchlm.tokenizers.bpe import BPETokenizer
from scratchlm.tokenizers.char import CharTokenizer
from scratchlm.tokenizers.simple import SimpleTokenizerV1, SimpleTokenizerV2

__all__ = [
    "BPETokenizer", "CharTokenizer", "HFTokenizer", "SimpleTokenizerV1", "SimpleTokenizerV2",
    "TiktokenTokenizer", "Tokenizer", "get_tokenizer", "load_tokenizer",
]


def gpt2_files() -> tuple[Path, Path]:
    """Local paths of GPT-2's encoder.json and vocab.bpe (cache, mirror or download)."""
    from scratchlm.downloads.sources import fetch

    return fetch("gpt2-encoder", progress=False), fetch("gpt2-vocab", progress=False)


def get_tokenizer(name: str) -> Tokenizer:
    """A tokenizer by name or path.

    - ``"gpt2"``: the fast GPT-2 tokenizer (tiktoken built from OpenAI's files);
    - ``"gpt2-scratch"``: the same vocabulary in the from-scratch ``BPETokenizer``;
    - a path to a file saved by ``BPETokenizer``/``CharTokenizer`` or an HF ``tokenizer.json``.
    """
    if name == "gpt2":
        return TiktokenTokenizer.from_gpt2_files(*gpt2_files())
    if name == "gpt2-scratch":
        return BPETokenizer.from_gpt2_files(*gpt2_files())
    path = Path(name)
    if path.is_dir():
        path = path / "tokenizer.json"
    if path.is_file():
        return load_tokenizer(path)
    raise ValueError(f"unknown tokenizer {name!r}: not 'gpt2', 'gpt2-scratch' or an existing file")


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer file saved by scratchlm, or an HF ``tokenizer.json`` (with the special
    tokens and chat template of a ``tokenizer_config.json`` beside it, when there is one)."""
    import json

    path = Path(path)
    kind = json.loads(path.read_text()).get("type")
    if kind == "bpe":
        return BPETokenizer.load(path)
    if kind == "char":
        return CharTokenizer.load(path)
    extra = {}
    config = path.with_name("tokenizer_config.json")
    if config.is_file():
        cfg = json.loads(config.read_text())

        def content(tok):  # "<|x|>" or {"content": "<|x|>", ...}
            return tok.get("content") if isinstance(tok, dict) else tok

        extra = {"eos_token": content(cfg.get("eos_token")),
                 "bos_token": content(cfg.get("bos_token")),
                 "chat_template": cfg.get("chat_template")}
    tok = HFTokenizer.from_file(path, **extra)
    tok.template_source = str(config)
    return tok


def save_tokenizer(tokenizer: Tokenizer, folder: str | Path) -> None:
    """Write a model folder's tokenizer so ``get_tokenizer(folder)`` gives it back: an HF
    ``tokenizer.json`` + ``tokenizer_config.json`` (special tokens, chat template), our own
    BPE/char files as ``tokenizer.json``, GPT-2's tiktoken tokenizer as OpenAI's
    ``encoder.json`` + ``vocab.bpe``, so the folder works without fetching them again."""
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(tokenizer, HFTokenizer):
        tokenizer.tokenizer.save(str(folder / "tokenizer.json"))
        cfg = {"eos_token": tokenizer.eos_token, "bos_token": tokenizer.bos_token,
               "chat_template": tokenizer.chat_template}
        (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    elif isinstance(tokenizer, (BPETokenizer, CharTokenizer)):
        tokenizer.save(folder / "tokenizer.json")
    elif isinstance(tokenizer, TiktokenTokenizer):
        import shutil

        for src in gpt2_files():
            shutil.copyfile(src, folder / src.name)
    else:
        raise TypeError(f"cannot save a {type(tokenizer).__name__}")


def folder_tokenizer(folder: str | Path) -> Tokenizer:
    """The tokenizer ``save_tokenizer`` wrote into a model folder; GPT-2's for a folder
    without one (what a GPT-2 model folder of the Hugging Face layout means)."""
    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        return load_tokenizer(folder / "tokenizer.json")
    if (folder / "encoder.json").is_file():
        vocab = folder / "vocab.bpe"
        return TiktokenTokenizer.from_gpt2_files(folder / "encoder.json",
                                                 vocab if vocab.is_file() else None)
    return get_tokenizer("gpt2")
