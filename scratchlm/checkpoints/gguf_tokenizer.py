"""The tokenizer a GGUF file describes: its byte-level BPE vocabulary and merges, or its
SentencePiece vocabulary and scores (``tokenizers/spm_vocab.py``), special tokens, BOS/EOS and
chat template, each metadata field checked before it is used (a token id inside the
vocabulary, one type and one score per token, merges as ``left right``), built as our
``HFTokenizer``. ``load_gguf`` (``checkpoints/gguf.py``) returns it with the model."""

from __future__ import annotations

from scratchlm.checkpoints.files import CheckpointError


def gguf_tokenizer(meta: dict, source: str = "GGUF"):
    """The byte-level BPE tokenizer, special tokens, BOS/EOS and chat template of a GGUF file."""
    from scratchlm.tokenizers.backends import PRE_TOKENIZERS, HFTokenizer

    from scratchlm.tokenizers.spm_vocab import GGUF_MODEL

    model = meta.get("tokenizer.ggml.model")
    if model not in ("gpt2", GGUF_MODEL):
        raise CheckpointError(f"{source}: tokenizer model {model!r} is not supported (byte-level "
                              f"BPE, 'gpt2', and SentencePiece, {GGUF_MODEL!r})")
    if model == GGUF_MODEL:
        return _sentencepiece(meta, source)
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise CheckpointError(f"{source}: pre-tokenizer {pre!r} is not supported "
                              f"(supported: {', '.join(PRE_TOKENIZERS)})")
    pattern, split_digits = PRE_TOKENIZERS[pre]
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise CheckpointError(f"{source}: metadata field 'tokenizer.ggml.tokens' is not a "
                              "non-empty list of strings")
    types = meta.get("tokenizer.ggml.token_type", [1] * len(tokens))
    if not isinstance(types, list) or len(types) != len(tokens):
        raise CheckpointError(f"{source}: metadata field 'tokenizer.ggml.token_type' does not "
                              f"list one type for each of the {len(tokens)} tokens")
    merges = meta.get("tokenizer.ggml.merges") or []
    if not isinstance(merges, list) or not all(isinstance(m, str) and m.count(" ") == 1
                                               for m in merges):
        raise CheckpointError(f"{source}: metadata field 'tokenizer.ggml.merges' is not a list "
                              "of 'left right' strings")
    template = meta.get("tokenizer.chat_template")
    if template is not None and not isinstance(template, str):
        raise CheckpointError(f"{source}: metadata field 'tokenizer.chat_template' is not a "
                              "string")
    special = [t for t, kind in zip(tokens, types) if kind in (3, 4)]  # control, user-defined

    def token(key: str) -> str | None:
        value = meta.get(key)
        if value is None:
            return None
        if not isinstance(value, int) or not 0 <= value < len(tokens):
            raise CheckpointError(f"{source}: metadata field {key!r} = {value!r} is not a token "
                                  f"id below {len(tokens)}")
        return tokens[value]

    try:
        tok = HFTokenizer.from_vocab_merges(
            tokens, merges, special_tokens=special,
            eos_token=token("tokenizer.ggml.eos_token_id"),
            bos_token=token("tokenizer.ggml.bos_token_id"),
            pattern=pattern, split_digits=split_digits, chat_template=template)
    except Exception as e:  # noqa: BLE001 - the tokenizers library raises its own kinds
        raise CheckpointError(f"{source}: the vocabulary cannot be built ({e})") from None
    tok.template_source = f"{source}: metadata field 'tokenizer.chat_template'"
    return tok


def _sentencepiece(meta: dict, source: str):
    """A SentencePiece vocabulary ('llama'): tokens, scores and types, read as transformers reads
    them (Gemma's merges in the order of its pieces, the others by score)."""
    from scratchlm.tokenizers.spm_vocab import SentencePieceVocab

    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise CheckpointError(f"{source}: metadata field 'tokenizer.ggml.tokens' is not a "
                              "non-empty list of strings")
    n = len(tokens)
    scores = meta.get("tokenizer.ggml.scores", [0.0] * n)
    types = meta.get("tokenizer.ggml.token_type", [1] * n)
    for key, values, ok in (("scores", scores, lambda v: isinstance(v, (int, float))),
                            ("token_type", types, lambda v: isinstance(v, int) and 1 <= v <= 6)):
        if not isinstance(values, list) or len(values) != n or not all(map(ok, values)):
            raise CheckpointError(f"{source}: metadata field 'tokenizer.ggml.{key}' does not "
                                  f"give one valid value for each of the {n} tokens")
    template = meta.get("tokenizer.chat_template")
    if template is not None and not isinstance(template, str):
        raise CheckpointError(f"{source}: metadata field 'tokenizer.chat_template' is not a "
                              "string")

    def token_id(key: str) -> int | None:
        value = meta.get(key)
        if value is None:
            return None
        if not isinstance(value, int) or not 0 <= value < n:
            raise CheckpointError(f"{source}: metadata field {key!r} = {value!r} is not a token "
                                  f"id below {n}")
        return value

    arch = str(meta.get("general.architecture", ""))
    vocab = SentencePieceVocab(
        tokens, [float(v) for v in scores], list(types),
        add_space_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", True)),
        merge_order="positions" if arch.startswith("gemma") else "scores",
        bos_id=token_id("tokenizer.ggml.bos_token_id"),
        eos_id=token_id("tokenizer.ggml.eos_token_id"),
        unk_id=token_id("tokenizer.ggml.unknown_token_id"),
        pad_id=token_id("tokenizer.ggml.padding_token_id"), chat_template=template)
    try:
        tok = vocab.to_hf()
    except Exception as e:  # noqa: BLE001 - the tokenizers library raises its own kinds
        raise CheckpointError(f"{source}: the vocabulary cannot be built ({e})") from None
    tok.template_source = f"{source}: metadata field 'tokenizer.chat_template'"
    return tok
