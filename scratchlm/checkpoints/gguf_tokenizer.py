"""The tokenizer a GGUF file describes: its byte-level BPE vocabulary and merges, or its
SentencePiece vocabulary and scores (``tokenizers/spm_vocab.py``), special tokens, BOS/EOS and
chat template, each metadata field checked before it is used (a token id inside the
vocabulary, one type and one score per token, merges as ``left right``), built as our
``HFTokenizer``. ``load_gguf`` (``checkpoints/gguf.py``) returns it with the model."""

from __future__ import annotations

from scratchlm.checkpoints.files import CheckpointError


def gguf_tokenizer(meta: dict, source: str = "GGUF"):
    """The tokenizer of a GGUF file: byte-level BPE ('gpt2') or SentencePiece ('llama'), with its
    special tokens, BOS/EOS and chat template."""
    from scratchlm.tokenizers.spm_vocab import GGUF_MODEL

    model = meta.get("tokenizer.ggml.model")
    if model not in ("gpt2", GGUF_MODEL):
        raise CheckpointError(f"{source}: tokenizer model {model!r} is not supported (byte-level "
                              f"BPE, 'gpt2', and SentencePiece, {GGUF_MODEL!r})")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise CheckpointError(f"{source}: metadata field 'tokenizer.ggml.tokens' is not a "
                              "non-empty list of strings")
    template = meta.get("tokenizer.chat_template")
    if template is not None and not isinstance(template, str):
        raise CheckpointError(f"{source}: metadata field 'tokenizer.chat_template' is not a "
                              "string")

    def token_id(key: str) -> int | None:
        value = meta.get(key)
        if value is None:
            return None
        if not isinstance(value, int) or not 0 <= value < len(tokens):
            raise CheckpointError(f"{source}: metadata field {key!r} = {value!r} is not a token "
                                  f"id below {len(tokens)}")
        return value

    build = _sentencepiece if model == GGUF_MODEL else _byte_level
    try:
        tok = build(meta, tokens, template, token_id, source)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - the tokenizers library raises its own kinds
        raise CheckpointError(f"{source}: the vocabulary cannot be built ({e})") from None
    tok.template_source = f"{source}: metadata field 'tokenizer.chat_template'"
    return tok


def _byte_level(meta: dict, tokens: list[str], template, token_id, source: str):
    """Byte-level BPE ('gpt2'): tokens, merges and the pre-tokenizer's name."""
    from scratchlm.tokenizers.backends import PRE_TOKENIZERS, HFTokenizer

    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise CheckpointError(f"{source}: pre-tokenizer {pre!r} is not supported "
                              f"(supported: {', '.join(PRE_TOKENIZERS)})")
    pattern, split_digits = PRE_TOKENIZERS[pre]
    types = meta.get("tokenizer.ggml.token_type", [1] * len(tokens))
    if not isinstance(types, list) or len(types) != len(tokens):
        raise CheckpointError(f"{source}: metadata field 'tokenizer.ggml.token_type' does not "
                              f"list one type for each of the {len(tokens)} tokens")
    merges = meta.get("tokenizer.ggml.merges") or []
    if not isinstance(merges, list) or not all(isinstance(m, str) and m.count(" ") == 1
                                               for m in merges):
        raise CheckpointError(f"{source}: metadata field 'tokenizer.ggml.merges' is not a list "
                              "of 'left right' strings")
    special = [t for t, kind in zip(tokens, types) if kind in (3, 4)]  # control, user-defined
    name = lambda key: None if (i := token_id(key)) is None else tokens[i]  # noqa: E731
    return HFTokenizer.from_vocab_merges(
        tokens, merges, special_tokens=special, eos_token=name("tokenizer.ggml.eos_token_id"),
        bos_token=name("tokenizer.ggml.bos_token_id"), pattern=pattern,
        split_digits=split_digits, chat_template=template)


def _sentencepiece(meta: dict, tokens: list[str], template, token_id, source: str):
    """A SentencePiece vocabulary ('llama'): tokens, scores and types, read as transformers reads
    them (the merge order is the family's, ``Family.gguf_spm_merge_order``)."""
    from scratchlm.models.registry import family_for_gguf
    from scratchlm.tokenizers.spm_vocab import SentencePieceVocab

    n = len(tokens)
    scores = meta.get("tokenizer.ggml.scores", [0.0] * n)
    types = meta.get("tokenizer.ggml.token_type", [1] * n)
    for key, values, ok in (("scores", scores, lambda v: isinstance(v, (int, float))),
                            ("token_type", types, lambda v: isinstance(v, int) and 1 <= v <= 6)):
        if not isinstance(values, list) or len(values) != n or not all(map(ok, values)):
            raise CheckpointError(f"{source}: metadata field 'tokenizer.ggml.{key}' does not "
                                  f"give one valid value for each of the {n} tokens")
    try:
        order = family_for_gguf(meta.get("general.architecture")).gguf_spm_merge_order
    except ValueError:  # a vocabulary read on its own: by score, llama.cpp's rule
        order = "scores"
    return SentencePieceVocab(
        tokens, [float(v) for v in scores], list(types),
        add_space_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", True)),
        merge_order=order,
        bos_id=token_id("tokenizer.ggml.bos_token_id"),
        eos_id=token_id("tokenizer.ggml.eos_token_id"),
        unk_id=token_id("tokenizer.ggml.unknown_token_id"),
        pad_id=token_id("tokenizer.ggml.padding_token_id"), chat_template=template).to_hf()
