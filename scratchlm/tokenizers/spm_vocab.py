"""SentencePiece vocabularies (Llama 2's, Gemma's) in the form GGUF holds them, and run by Hugging
Face ``tokenizers`` as transformers runs them.

    tokens   the pieces, "▁" for a space, "<0x0A>" for a byte the pieces do not cover
    scores   one per piece: a merge that makes a higher-scoring piece is applied first
    types    llama.cpp's: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte

``to_hf`` rebuilds the merges from the vocabulary as transformers does when it reads a GGUF file
(every split of a piece into two pieces, best first: by score, or for Gemma by the pieces'
order in the file, which is its merge order) and sets up the rest as transformers'
``LlamaTokenizer`` (a "▁" prefix on the text) or ``GemmaTokenizer`` (none). ``from_hf`` reads
such a tokenizer (a BPE with byte fallback over "▁" pieces, as transformers builds from a
``tokenizer.model``) back into this form: a piece's score is minus the rank of the merge that
first makes it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
GGUF_MODEL = "llama"  # llama.cpp's tokenizer.ggml.model for a SentencePiece vocabulary
SPACE = "\u2581"
_BYTE = re.compile(r"^<0x[0-9A-F]{2}>$")


@dataclass
class SentencePieceVocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]
    add_space_prefix: bool = True  # Llama 2: "hi" is "▁hi"; Gemma: it stays "hi"
    merge_order: str = "scores"  # or "positions" (Gemma: the file's order is the merge order)
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    chat_template: str | None = None

    def to_hf(self):
        """This vocabulary as our ``HFTokenizer``."""
        from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

        from scratchlm.tokenizers.backends import HFTokenizer

        vocab = {t: i for i, t in enumerate(self.tokens)}
        ranks = ({t: -i for i, t in enumerate(self.tokens)} if self.merge_order == "positions"
                 else dict(zip(self.tokens, self.scores)))
        unk = self.tokens[self.unk_id] if self.unk_id is not None else None
        tok = Tokenizer(models.BPE(vocab, merges_from_vocab(vocab, ranks), unk_token=unk,
                                   fuse_unk=True, byte_fallback=True))
        steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
        if self.add_space_prefix:  # transformers' LlamaTokenizer
            tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE,
                                                         prepend_scheme="first", split=False)
            steps.append(decoders.Strip(content=" ", left=1))
        else:  # transformers' GemmaTokenizer
            tok.normalizer = normalizers.Replace(" ", SPACE)
            tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
        tok.decoder = decoders.Sequence(steps)
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, kind in zip(self.tokens, self.types) if kind == CONTROL])
        tok.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, kind in zip(self.tokens, self.types) if kind == USER_DEFINED])
        name = lambda i: self.tokens[i] if i is not None else None  # noqa: E731
        return HFTokenizer(tok, eos_token=name(self.eos_id), bos_token=name(self.bos_id),
                           chat_template=self.chat_template)


def merges_from_vocab(vocab: dict[str, int], ranks: dict[str, float]) -> list[tuple[str, str]]:
    """Every split of a piece into two pieces of the vocabulary, best piece first (highest
    rank; ties: the shorter left part), as transformers' ``generate_merges``."""
    merges = []
    for piece, rank in ranks.items():
        local = [(piece[:i], piece[i:], rank) for i in range(1, len(piece))
                 if piece[:i] in vocab and piece[i:] in vocab]
        merges += sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]]))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in merges]


def is_sentencepiece(tok) -> bool:
    """Whether an ``HFTokenizer`` is a SentencePiece-style BPE (byte fallback over "▁"
    pieces) rather than a byte-level BPE."""
    spec = json.loads(tok.tokenizer.to_str())
    model = spec.get("model") or {}
    return model.get("type") == "BPE" and bool(model.get("byte_fallback"))


def from_hf(tok) -> SentencePieceVocab:
    """The vocabulary of an ``HFTokenizer`` that ``is_sentencepiece``."""
    spec = json.loads(tok.tokenizer.to_str())
    model = spec["model"]
    vocab = dict(model["vocab"])
    added = {a["content"]: a for a in spec.get("added_tokens", [])}
    for content, a in added.items():
        vocab.setdefault(content, a["id"])
    tokens = [""] * (max(vocab.values()) + 1)
    for t, i in vocab.items():
        tokens[i] = t
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    first = {}
    for rank, (a, b) in enumerate(merges):
        first.setdefault(a + b, rank)
    unk = model.get("unk_token")
    scores, types = [], []
    for i, t in enumerate(tokens):
        if t == "":
            tokens[i], kind = f"<unused{i}>", UNUSED
        elif t == unk:
            kind = UNKNOWN
        elif t in added:
            kind = CONTROL if added[t].get("special") else USER_DEFINED
        elif _BYTE.match(t):
            kind = BYTE
        else:
            kind = NORMAL
        types.append(kind)
        # a merged piece scores minus its merge's rank; the others below every merged piece
        scores.append(float(-first[t]) if t in first and kind == NORMAL
                      else float(-len(merges) - i))
    pre = spec.get("pre_tokenizer") or {}
    norm = spec.get("normalizer") or {}
    prefix = (pre.get("type") == "Metaspace" and pre.get("prepend_scheme", "always") != "never"
              or norm.get("type") == "Prepend"
              or any(n.get("type") == "Prepend" for n in norm.get("normalizers", [])))
    ids = {t: i for i, t in enumerate(tokens)}
    return SentencePieceVocab(
        tokens, scores, types, add_space_prefix=prefix,
        merge_order="scores", bos_id=ids.get(tok.bos_token) if tok.bos_token else None,
        eos_id=ids.get(tok.eos_token) if tok.eos_token else None,
        unk_id=ids.get(unk) if unk else None, chat_template=tok.chat_template)
