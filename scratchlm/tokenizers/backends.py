"""Fast tokenizers behind the same protocol: tiktoken for GPT-2, HF ``tokenizers`` for the
vocab+merges tokenizers of Llama-family models.

Both are built from local files (GPT-2's ``encoder.json``/``vocab.bpe``, or tokens + merges), so
nothing is fetched from a hub at run time.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from scratchlm.tokenizers.base import AllowedSpecial, check_special, resolve_allowed
from scratchlm.tokenizers.bpe import EOT, GPT2_PATTERN, bytes_to_unicode


class TiktokenTokenizer:
    """A tiktoken ``Encoding`` wrapped in the project protocol."""

    def __init__(self, encoding):
        self.encoding = encoding
        self.special_tokens: dict[str, int] = {
            t: encoding.encode_single_token(t) for t in encoding.special_tokens_set
        }
        self.vocab_size = encoding.n_vocab

    @classmethod
    def from_gpt2_files(cls, encoder_json: str | Path, vocab_bpe: str | Path | None = None):
        """Build the "gpt2" encoding from OpenAI's files. GPT-2's token ids are its merge ranks,
        so ``encoder.json`` alone defines tiktoken's ``mergeable_ranks``; ``vocab.bpe`` is only
        checked to agree when given."""
        import tiktoken

        byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
        encoder = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
        ranks = {bytes(byte_decoder[c] for c in tok): i for tok, i in encoder.items() if tok != EOT}
        if vocab_bpe is not None:
            n_merges = sum(1 for line in Path(vocab_bpe).read_text(encoding="utf-8").split("\n")[1:]
                           if line.strip())
            if n_merges != len(ranks) - 256:
                raise ValueError(f"{vocab_bpe} has {n_merges} merges, {encoder_json} implies "
                                 f"{len(ranks) - 256}")
        enc = tiktoken.Encoding(
            name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
            special_tokens={EOT: encoder[EOT]},
        )
        return cls(enc)

    @property
    def eos_id(self) -> int | None:
        return self.special_tokens.get(EOT)

    def _special_args(self, text: str, allowed_special: AllowedSpecial) -> dict:
        allowed = resolve_allowed(allowed_special, self.special_tokens)
        if not any(t in text for t in self.special_tokens):
            # Plain text: tiktoken's special-token scan (slow, and serial) is not needed.
            return {"allowed_special": set(), "disallowed_special": ()}
        return {"allowed_special": allowed}

    def encode(self, text: str, allowed_special: AllowedSpecial = ()) -> list[int]:
        return self.encoding.encode(text, **self._special_args(text, allowed_special))

    def encode_to_numpy(self, text: str, allowed_special: AllowedSpecial = ()) -> np.ndarray:
        """Like ``encode`` but a uint32 array, without building a Python list."""
        return self.encoding.encode_to_numpy(text, **self._special_args(text, allowed_special))

    def encode_ordinary(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def decode(self, ids: Iterable[int]) -> str:
        if isinstance(ids, np.ndarray):
            ids = ids.tolist()
        return self.encoding.decode(list(ids))


# Byte-level BPE pre-tokenizers by their llama.cpp names (GGUF ``tokenizer.ggml.pre``):
# name -> (split regex, or None for GPT-2's; digits split one by one first).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")  # Qwen2/3: single digits
PRE_TOKENIZERS = {
    "gpt-2": (None, False), "gpt2": (None, False), "default": (None, False), "smollm": (None, True),
    "starcoder": (None, True), "llama-bpe": (LLAMA3_PATTERN, False),
    "qwen2": (QWEN2_PATTERN, False),
}


def _ids(tokenizer, text: str) -> list[int]:
    """``tokenizer.encode(text).ids``. A long text goes through ``encode_batch``, which lets go
    of the GIL while it works (``encode`` holds it: 2.4 s for a 3.9 MB prompt, in which a
    server's event loop answered nothing); a short one through ``encode``, which costs less."""
    if len(text) < 16384:
        return tokenizer.encode(text, add_special_tokens=False).ids
    return tokenizer.encode_batch([text], add_special_tokens=False)[0].ids


class HFTokenizer:
    """A Hugging Face ``tokenizers.Tokenizer`` wrapped in the project protocol."""

    def __init__(self, tokenizer, eos_token: str | None = None, bos_token: str | None = None,
                 chat_template: str | None = None):
        self.tokenizer = tokenizer
        self.chat_template = chat_template  # Jinja template (see tokenizers/chat.py)
        self.template_source: str | None = None  # where the template came from, for errors
        self.special_tokens: dict[str, int] = {
            tok.content: i for i, tok in tokenizer.get_added_tokens_decoder().items()
            if tok.special
        }
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.eos_token, self.bos_token = eos_token, bos_token

    @classmethod
    def from_file(cls, path: str | Path, **kw) -> "HFTokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)), **kw)

    @classmethod
    def from_vocab_merges(
        cls,
        tokens: Sequence[str],
        merges: Sequence[str | tuple[str, str]],
        special_tokens: Iterable[str] = (),
        eos_token: str | None = None,
        bos_token: str | None = None,
        pattern: str | None = None,
        split_digits: bool = False,
        chat_template: str | None = None,
    ) -> "HFTokenizer":
        """Byte-level BPE from token strings (GPT-2 byte alphabet) and merges ("a b").

        The text is first split by ``pattern`` (default: GPT-2's regex); ``split_digits``
        isolates every digit before that (SmolLM2 / StarCoder vocabularies)."""
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

        vocab = {t: i for i, t in enumerate(tokens)}
        pairs = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]
        tok = Tokenizer(models.BPE(vocab, pairs, fuse_unk=False, byte_fallback=False))
        steps = []
        if split_digits:
            steps.append(pre_tokenizers.Digits(individual_digits=True))
        if pattern is None:
            steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
        else:
            steps += [pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        tok.pre_tokenizer = steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t in special_tokens])
        return cls(tok, eos_token=eos_token, bos_token=bos_token, chat_template=chat_template)

    @property
    def eos_id(self) -> int | None:
        return self.special_tokens.get(self.eos_token) if self.eos_token else None

    @property
    def bos_id(self) -> int | None:
        return self.special_tokens.get(self.bos_token) if self.bos_token else None

    def encode(self, text: str, allowed_special: AllowedSpecial = ()) -> list[int]:
        check_special(text, self.special_tokens, allowed_special)
        return _ids(self.tokenizer, text)

    def encode_ordinary(self, text: str) -> list[int]:
        """Special-token strings encoded as ordinary text (a copy of the tokenizer set to
        ``encode_special_tokens``, so the shared one never changes under other threads)."""
        plain = self.__dict__.get("_plain")
        if plain is None:
            from tokenizers import Tokenizer

            plain = Tokenizer.from_str(self.tokenizer.to_str())
            plain.encode_special_tokens = True
            self._plain = plain
        return _ids(plain, text)

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


def token_bytes(tokenizer, token: int) -> bytes:
    """The bytes one token stands for (a piece of a UTF-8 character for some): what OpenAI's
    ``logprobs`` report as ``bytes``. Byte-level BPE tokens map back through GPT-2's byte
    alphabet; special tokens and other vocabularies give their text's UTF-8."""
    encoding = getattr(tokenizer, "encoding", None)
    if encoding is not None and hasattr(encoding, "decode_single_token_bytes"):
        try:
            return encoding.decode_single_token_bytes(token)
        except KeyError:
            return b""
    inner = getattr(tokenizer, "tokenizer", None)
    if inner is not None and hasattr(inner, "id_to_token"):
        piece = inner.id_to_token(token)
        if piece is None:
            return b""
        decoder = _byte_decoder()
        if all(c in decoder for c in piece) and piece not in getattr(tokenizer, "special_tokens",
                                                                    {}):
            return bytes(decoder[c] for c in piece)
    return tokenizer.decode([token]).encode("utf-8", "surrogatepass")


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}
