"""Grammar-constrained decoding through llguidance: a JSON schema or a Lark grammar becomes, at
every step, the set of tokens a row may sample next, so what comes out always parses (and, for a
schema, validates), whatever the model's size.

    Grammar (compiled once per request, from text)  --matcher()-->  one state per row
    row state: allowed() -> (V,) bool mask    accept(token)    finished

Why llguidance (not xgrammar or outlines-core): a server compiles a new schema with every
request, and llguidance compiles lazily (about 1 ms for a nested schema on a 49 K vocabulary,
against xgrammar's 7 ms cold, which grows with the schema as it precomputes masks); its masks
cost tens of microseconds a token (xgrammar's a few), under 1% of a decode step either way; and
its parser runs under fuel limits (``LLParserLimits``) built for untrusted grammars, so a hostile
schema costs a bounded time per token rather than a stall. The numbers are in docs/serving.md.

A grammar is text from outside: it is compiled and validated here (``GrammarError`` says what is
wrong, e.g. a minimum above its maximum) before any row runs it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import torch

# JSON as models write it: ", " between items, ": " after keys, no free whitespace (a small
# model that may add spaces forever never ends its object)
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class GrammarError(ValueError):
    """A grammar or schema that cannot be compiled, or a row that left its grammar."""


def grammar_tokenizer(tokenizer, vocab_size: int, stop_ids: Sequence[int]):
    """llguidance's view of ``tokenizer`` (built once per tokenizer and vocabulary: about 0.2 s
    for 49 K tokens): a Hugging Face tokenizer from its tokenizer.json, a tiktoken one from its
    tokens' bytes. ``vocab_size`` is the model's (its logits' width)."""
    key = (vocab_size, tuple(stop_ids))
    cached = tokenizer.__dict__.setdefault("_grammar_tokenizers", {})
    if key in cached:
        return cached[key]
    import llguidance

    eos = list(stop_ids) or None
    inner = getattr(tokenizer, "tokenizer", None)
    if hasattr(inner, "to_str"):  # tokenizers.Tokenizer (HFTokenizer)
        lltok = llguidance.LLTokenizer(inner.to_str(), n_vocab=vocab_size, eos_token=eos)
    elif hasattr(getattr(tokenizer, "encoding", None), "decode_single_token_bytes"):
        lltok = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_TiktokenTokens(
            tokenizer, vocab_size, eos)), n_vocab=vocab_size)
    else:
        raise GrammarError(f"structured output needs a Hugging Face or tiktoken tokenizer; "
                           f"this model's is a {type(tokenizer).__name__}")
    cached[key] = lltok
    return lltok


class _TiktokenTokens:
    """What llguidance's ``TokenizerWrapper`` reads from a tiktoken encoding."""

    def __init__(self, tokenizer, vocab_size: int, eos):
        enc = tokenizer.encoding
        self._enc = enc
        n = min(enc.n_vocab, vocab_size)
        self.tokens = [self._bytes(i) for i in range(n)] + [b""] * (vocab_size - n)
        self.eos_token_id = (eos or [enc.eot_token])[0]
        self.bos_token_id = None
        self.special_token_ids = sorted(enc.encode_single_token(t)
                                        for t in enc.special_tokens_set)

    def _bytes(self, i: int) -> bytes:
        try:
            return self._enc.decode_single_token_bytes(i)
        except KeyError:
            return b""

    def __call__(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)


class Grammar:
    """A compiled grammar, shared by every row that runs it (``matcher`` gives each its own
    state)."""

    def __init__(self, tokenizer, vocab_size: int, stop_ids: Sequence[int], lark: str):
        import llguidance

        self.vocab_size = vocab_size
        self._tok = grammar_tokenizer(tokenizer, vocab_size, stop_ids)
        spec = llguidance.LLMatcher.grammar_from_lark(lark)
        self._start = llguidance.LLMatcher(self._tok, spec)
        if self._start.is_error():
            raise GrammarError(self._start.get_error())

    @classmethod
    def from_json_schema(cls, tokenizer, vocab_size: int, stop_ids: Sequence[int],
                         schema: dict, strict: bool = True) -> Grammar:
        """JSON that validates against ``schema``. ``strict``: a keyword the engine cannot
        enforce is an error; otherwise it is left unenforced (llguidance's ``lenient``)."""
        return cls(tokenizer, vocab_size, stop_ids, "start: " + json_rule(schema, strict))

    def matcher(self) -> Matcher:
        return Matcher(self._start.deep_copy(), self.vocab_size)


def json_rule(schema: dict, strict: bool = True) -> str:
    """A Lark item that matches JSON valid under ``schema`` (``%json {...}``)."""
    if not isinstance(schema, dict):
        raise GrammarError("a JSON schema must be an object")
    options = dict(JSON_OPTIONS, lenient=not strict)
    return "%json " + json.dumps({**schema, "x-guidance": options})


def lark_literal(text: str) -> str:
    """``text`` as a Lark string literal."""
    return json.dumps(text)


_POOL: list = []  # one worker thread, made on first use


def _pool():
    if not _POOL:
        from concurrent.futures import ThreadPoolExecutor

        _POOL.append(ThreadPoolExecutor(1, thread_name_prefix="scratchlm-grammar"))
    return _POOL[0]


class Matcher:
    """One row's place in a grammar. The next mask is computed in a worker thread as soon as a
    token is accepted, while the batch's forward runs (llguidance lets go of the GIL), so a
    step waits for it only when it took longer than the forward."""

    def __init__(self, matcher, vocab_size: int):
        self._m, self.vocab_size = matcher, vocab_size
        self._bits = torch.zeros((vocab_size + 31) // 32, dtype=torch.int32)
        self._next = None  # the mask being computed
        self._stopped = False

    def _compute(self) -> torch.Tensor | None:
        """The (V,) bool mask, or None when it allows no token (checked on the 32-bit words:
        a tensor-wide ``any`` costs ten times more)."""
        self._m.unsafe_compute_mask_ptr(self._bits.data_ptr(), self._bits.numel() * 4)
        words = self._bits.numpy()
        if not words.any():
            return None
        bits = np.unpackbits(words.view(np.uint8), bitorder="little")
        return torch.from_numpy(bits[:self.vocab_size].view(np.bool_))

    def allowed(self) -> torch.Tensor:
        """(V,) bool: the tokens that keep the output inside the grammar (the end-of-text
        token where the grammar may end)."""
        pending, self._next = self._next, None
        allowed = pending.result() if pending is not None else self._compute()
        if self._m.is_error():
            raise GrammarError(self._m.get_error())
        if allowed is None:
            raise GrammarError("the grammar allows no next token here (the schema cannot be "
                               "satisfied from this point)")
        return allowed

    def accept(self, token: int) -> None:
        if not self._m.consume_token(token):
            raise GrammarError(f"token {token} leaves the grammar: {self._m.get_error()}")
        self._stopped = self._m.is_stopped()  # read now: the worker holds the matcher next
        if not self._stopped:
            self._next = _pool().submit(self._compute)

    @property
    def finished(self) -> bool:
        return self._stopped
