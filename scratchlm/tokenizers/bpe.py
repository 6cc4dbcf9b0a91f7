"""Byte-level byte-pair encoding, written from scratch (the book's chapter 2 bonus, grown up).

Text is split into chunks by the GPT-2 pre-tokenization regex, each chunk is turned into its
UTF-8 bytes, and learned merges join adjacent tokens, lowest rank first, until none applies.
Because it works on bytes, every string round-trips: ``decode(encode(s)) == s``.

Training counts adjacent pairs once and then updates the counts incrementally: a merge only
touches the words that contain the merged pair (an inverted index finds them), and a heap with
lazy deletion finds the most frequent pair. That makes thousands of merges take seconds in pure
Python, where recounting every pair after each merge would take hours.

The same class loads OpenAI's GPT-2 ``encoder.json`` + ``vocab.bpe`` and then encodes exactly like
tiktoken's "gpt2" encoding (tested token for token). For speed use the tiktoken backend in
``backends.py``; this file is for reading and for training your own vocabularies.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

import regex
from tqdm.auto import tqdm

from scratchlm.tokenizers.base import AllowedSpecial, split_special

# GPT-2's pre-tokenizer: contractions, letters, numbers, other symbols, each with an optional
# leading space, and runs of whitespace (a trailing space is kept for the next word).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"

Pair = tuple[int, int]


def merge_pair(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of ``pair`` in ``ids`` (left to right)."""
    out, i, n = [], 0, len(ids)
    a, b = pair
    while i < n:
        if i < n - 1 and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class BPETokenizer:
    """Byte-level BPE.

    Args:
        byte_ids: the id of each of the 256 single-byte tokens (``list(range(256))`` when trained
            here; GPT-2 numbers them differently).
        merges: ``[(a, b, new_id), ...]`` in rank order (rank 0 is merged first).
        special_tokens: name -> id, e.g. ``{"<|endoftext|>": 50256}``.
    """

    def __init__(
        self,
        byte_ids: list[int],
        merges: list[tuple[int, int, int]],
        special_tokens: dict[str, int] | None = None,
        pattern: str = GPT2_PATTERN,
    ):
        if len(byte_ids) != 256:
            raise ValueError(f"byte_ids must have 256 entries, got {len(byte_ids)}")
        self.byte_ids = list(byte_ids)
        self.merges = [tuple(m) for m in merges]
        self.special_tokens = dict(special_tokens or {})
        self.pattern = pattern
        self._regex = regex.compile(pattern)
        self.ranks: dict[Pair, tuple[int, int]] = {
            (a, b): (rank, new) for rank, (a, b, new) in enumerate(self.merges)
        }
        self.vocab: dict[int, bytes] = {i: bytes([b]) for b, i in enumerate(self.byte_ids)}
        for a, b, new in self.merges:
            self.vocab[new] = self.vocab[a] + self.vocab[b]
        for tok, i in self.special_tokens.items():
            self.vocab[i] = tok.encode("utf-8")
        self.vocab_size = max(self.vocab) + 1
        self._cache: dict[str, list[int]] = {}

    @property
    def eos_id(self) -> int | None:
        return self.special_tokens.get(EOT)

    # ------------------------------------------------------------------ training
    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        special_tokens: Iterable[str] = (EOT,),
        pattern: str = GPT2_PATTERN,
        progress: bool = True,
    ) -> "BPETokenizer":
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``text``. (For
        hundreds of megabytes, ``tokenizers/bpe_train.py`` gives the same merges.)"""
        special_tokens = list(special_tokens)
        # Special-token strings in the training text are document separators, not words.
        pieces = regex.split("|".join(regex.escape(t) for t in special_tokens), text) \
            if special_tokens else [text]
        counts: Counter[str] = Counter()
        for piece in pieces:
            counts.update(regex.findall(pattern, piece))
        return cls.train_counts(counts, vocab_size, special_tokens, pattern, progress)

    @classmethod
    def train_counts(cls, counts: Counter, vocab_size: int,
                     special_tokens: Iterable[str] = (EOT,), pattern: str = GPT2_PATTERN,
                     progress: bool = True) -> "BPETokenizer":
        """The merges of words counted already (``counts``: word -> occurrences)."""
        special_tokens = list(special_tokens)
        n_merges = vocab_size - 256 - len(special_tokens)
        if n_merges < 0:
            raise ValueError(f"vocab_size must be at least {256 + len(special_tokens)}")
        words = [list(w.encode("utf-8", "surrogatepass")) for w in counts]
        freqs = list(counts.values())

        pair_counts: dict[Pair, int] = defaultdict(int)
        where: dict[Pair, set[int]] = defaultdict(set)  # pair -> indices of words holding it
        for wi, w in enumerate(words):
            for p in zip(w, w[1:]):
                pair_counts[p] += freqs[wi]
                where[p].add(wi)
        heap = [(-c, p) for p, c in pair_counts.items()]
        heapq.heapify(heap)

        merges: list[tuple[int, int, int]] = []
        for new_id in tqdm(range(256, 256 + n_merges), desc="BPE merges", disable=not progress):
            while heap:  # pop until an entry agrees with the current count (lazy deletion)
                neg, pair = heapq.heappop(heap)
                if pair_counts.get(pair, 0) == -neg:
                    break
            else:
                break  # every word is a single token: nothing left to merge
            merges.append((pair[0], pair[1], new_id))
            changed: set[Pair] = set()
            for wi in where.pop(pair):
                w, f = words[wi], freqs[wi]
                for p in zip(w, w[1:]):
                    pair_counts[p] -= f
                    changed.add(p)
                w = words[wi] = merge_pair(w, pair, new_id)
                for p in zip(w, w[1:]):
                    pair_counts[p] += f
                    where[p].add(wi)
                    changed.add(p)
            for p in changed:
                c = pair_counts[p]
                if c > 0:
                    heapq.heappush(heap, (-c, p))
                else:
                    del pair_counts[p]
                    where.pop(p, None)
        next_id = 256 + len(merges)
        specials = {tok: next_id + i for i, tok in enumerate(special_tokens)}
        return cls(list(range(256)), merges, specials, pattern)

    # ------------------------------------------------------------------ encoding
    def _encode_chunk(self, chunk: str) -> list[int]:
        cached = self._cache.get(chunk)
        if cached is not None:
            return cached
        ids = [self.byte_ids[b] for b in chunk.encode("utf-8")]
        ranks = self.ranks
        while len(ids) >= 2:
            best = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, (1 << 62,))[0])
            if best not in ranks:
                break
            ids = merge_pair(ids, best, ranks[best][1])
        if len(self._cache) > 200_000:
            self._cache.clear()
        self._cache[chunk] = ids
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ``text`` treating special-token strings as plain text."""
        text = replace_surrogates(text)
        out: list[int] = []
        for chunk in self._regex.findall(text):
            out.extend(self._encode_chunk(chunk))
        return out

    def encode(self, text: str, allowed_special: AllowedSpecial = ()) -> list[int]:
        out: list[int] = []
        for piece, special_id in split_special(text, self.special_tokens, allowed_special):
            if special_id is None:
                out.extend(self.encode_ordinary(piece))
            else:
                out.append(special_id)
        return out

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return b"".join(self.vocab[i] for i in ids)

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> None:
        data = {
            "type": "bpe",
            "pattern": self.pattern,
            "byte_ids": self.byte_ids,
            "merges": [list(m) for m in self.merges],
            "special_tokens": self.special_tokens,
        }
        Path(path).write_text(json.dumps(data))

    @classmethod
    def load(cls, path: str | Path) -> "BPETokenizer":
        data = json.loads(Path(path).read_text())
        if data.get("type") != "bpe":
            raise ValueError(f"{path} is not a scratchlm BPE tokenizer file")
        return cls(data["byte_ids"], data["merges"], data["special_tokens"], data["pattern"])

    @classmethod
    def from_gpt2_files(cls, encoder_json: str | Path, vocab_bpe: str | Path) -> "BPETokenizer":
        """Load OpenAI's GPT-2 vocabulary (token strings in the byte-to-unicode alphabet)."""
        byte_to_char = bytes_to_unicode()
        encoder: dict[str, int] = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
        byte_ids = [encoder[byte_to_char[b]] for b in range(256)]
        merges = []
        lines = Path(vocab_bpe).read_text(encoding="utf-8").split("\n")
        for lineno, line in enumerate(lines[1:], start=2):  # line 1 is "#version: 0.2"
            if not line.strip():
                continue
            try:
                a, b = line.split(" ")
                merges.append((encoder[a], encoder[b], encoder[a + b]))
            except (ValueError, KeyError):
                raise ValueError(f"{vocab_bpe}:{lineno}: malformed merge {line!r}") from None
        specials = {t: i for t, i in encoder.items() if t == EOT}
        return cls(byte_ids, merges, specials, GPT2_PATTERN)


def replace_surrogates(text: str) -> str:
    """Lone surrogates cannot be UTF-8 encoded; like tiktoken, encode them as U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters.

    Printable Latin-1 bytes map to themselves; the rest (control characters, space, ...) are
    shifted to code points from 256 up, so "Ġ" (U+0120) stands for a space.
    """
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))
