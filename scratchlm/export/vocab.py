"""Any of our byte-level BPE tokenizers as one plain description, the form both export formats
need: GGUF's ``tokenizer.ggml.*`` arrays and a Hugging Face ``tokenizer.json``.

    tiktoken GPT-2 | our BPETokenizer | an HF byte-level BPE  ->  ByteBPE(tokens, merges, ...)

Tokens are strings in GPT-2's byte-to-unicode alphabet (as in ``vocab.json``), merges
``"a b"`` in rank order, and ``pre`` names the pre-tokenizer as llama.cpp does (``gpt-2``,
``smollm`` = GPT-2's regex after splitting digits, ``llama-bpe``, ``qwen2``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from scratchlm.tokenizers import BPETokenizer, HFTokenizer, TiktokenTokenizer, gpt2_files
from scratchlm.tokenizers.backends import PRE_TOKENIZERS
from scratchlm.tokenizers.bpe import GPT2_PATTERN, bytes_to_unicode

class VocabError(ValueError):
    """A tokenizer the export formats cannot describe."""


@dataclass
class ByteBPE:
    tokens: list[str]  # id -> token string (GPT-2 byte alphabet; specials as written)
    merges: list[str]  # "a b", rank order
    special: list[int] = field(default_factory=list)  # ids of control tokens
    pre: str = "gpt-2"  # llama.cpp pre-tokenizer name (PRE_TOKENIZERS)
    bos_id: int | None = None
    eos_id: int | None = None
    chat_template: str | None = None

    def to_hf(self) -> HFTokenizer:
        """The same tokenizer as a Hugging Face ``tokenizers`` byte-level BPE."""
        pattern, digits = PRE_TOKENIZERS[self.pre]
        name = lambda i: self.tokens[i] if i is not None else None  # noqa: E731
        return HFTokenizer.from_vocab_merges(
            self.tokens, self.merges, special_tokens=[self.tokens[i] for i in self.special],
            eos_token=name(self.eos_id), bos_token=name(self.bos_id), pattern=pattern,
            split_digits=digits, chat_template=self.chat_template)


def gguf_vocab(tokenizer):
    """What a GGUF file holds of ``tokenizer``: a ``ByteBPE``, or for a SentencePiece-style
    tokenizer (Llama 2's, Gemma's) a ``tokenizers/spm_vocab.SentencePieceVocab``."""
    from scratchlm.tokenizers.spm_vocab import from_hf, is_sentencepiece

    if isinstance(tokenizer, HFTokenizer) and is_sentencepiece(tokenizer):
        return from_hf(tokenizer)
    return byte_bpe(tokenizer)


def byte_bpe(tokenizer) -> ByteBPE:
    """The ``ByteBPE`` of ``tokenizer``; ``VocabError`` for kinds neither format holds."""
    if isinstance(tokenizer, TiktokenTokenizer):
        return _gpt2()
    if isinstance(tokenizer, BPETokenizer):
        return _ours(tokenizer)
    if isinstance(tokenizer, HFTokenizer):
        return _hf(tokenizer)
    raise VocabError(f"a {type(tokenizer).__name__} cannot be exported (only byte-level BPE "
                     "tokenizers: GPT-2's, ours, or a Hugging Face byte-level BPE)")


def _gpt2() -> ByteBPE:
    encoder_json, vocab_bpe = gpt2_files()
    encoder = json.loads(encoder_json.read_text(encoding="utf-8"))
    tokens = [""] * len(encoder)
    for tok, i in encoder.items():
        tokens[i] = tok
    lines = vocab_bpe.read_text(encoding="utf-8").splitlines()
    merges = [ln for ln in lines[1:] if ln and not ln.startswith("#version")]
    eot = encoder["<|endoftext|>"]
    return ByteBPE(tokens, merges, special=[eot], pre="gpt-2", bos_id=eot, eos_id=eot)


def _ours(tok: BPETokenizer) -> ByteBPE:
    if tok.pattern != GPT2_PATTERN:
        raise VocabError("our BPE tokenizer with a custom split pattern has no llama.cpp "
                         "pre-tokenizer name; only GPT-2's pattern exports")
    alphabet = bytes_to_unicode()
    as_str = lambda b: "".join(alphabet[x] for x in b)  # noqa: E731
    special = {i: s for s, i in tok.special_tokens.items()}
    special_ids = set(special)
    tokens = []
    for i in range(tok.vocab_size):
        if i in special:
            tokens.append(special[i])
        elif i in tok.vocab:
            tokens.append(as_str(tok.vocab[i]))
        else:  # an id no merge produced: a placeholder that never matches text
            tokens.append(f"<|unused_{i}|>")
            special_ids.add(i)
    merges = [f"{as_str(tok.vocab[a])} {as_str(tok.vocab[b])}" for a, b, _ in tok.merges]
    eos = tok.eos_id
    return ByteBPE(tokens, merges, special=sorted(special_ids), pre="gpt-2", bos_id=eos,
                   eos_id=eos)


def _hf(tok: HFTokenizer) -> ByteBPE:
    spec = json.loads(tok.tokenizer.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise VocabError("only byte-level BPE tokenizers export (this one is a "
                         f"{model.get('type')!r} model); SentencePiece vocabularies do not")
    vocab = dict(model["vocab"])
    for added in spec.get("added_tokens", []):
        vocab.setdefault(added["content"], added["id"])
    tokens = [""] * (max(vocab.values()) + 1)
    for t, i in vocab.items():
        tokens[i] = t
    holes = [i for i, t in enumerate(tokens) if t == ""]
    for i in holes:
        tokens[i] = f"<|unused_{i}|>"
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    special = sorted({a["id"] for a in spec.get("added_tokens", []) if a.get("special")}
                     | set(holes))
    ids = {t: i for i, t in enumerate(tokens)}
    return ByteBPE(tokens, merges, special=special, pre=_pre_name(spec.get("pre_tokenizer")),
                   bos_id=ids.get(tok.bos_token) if tok.bos_token else None,
                   eos_id=ids.get(tok.eos_token) if tok.eos_token else None,
                   chat_template=tok.chat_template)


def _pre_name(pre: dict | None) -> str:
    """llama.cpp's name for an HF pre-tokenizer, recognised by structure."""
    steps = (pre or {}).get("pretokenizers") if (pre or {}).get("type") == "Sequence" else [pre]
    kinds = [(s or {}).get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    if kinds == ["Split", "ByteLevel"]:
        regex = (steps[0].get("pattern") or {}).get("Regex")
        for name, (pattern, digits) in PRE_TOKENIZERS.items():
            if pattern is not None and regex == pattern and not digits:
                return name
    raise VocabError(f"a pre-tokenizer {kinds} has no llama.cpp name we know "
                     f"({', '.join(PRE_TOKENIZERS)})")
