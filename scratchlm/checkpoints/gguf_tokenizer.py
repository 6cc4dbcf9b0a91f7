"""The tokenizer a GGUF file describes: its byte-level BPE vocabulary and merges, special
tokens, BOS/EOS and chat template, each metadata field checked before it is used (a token id
inside the vocabulary, one type per token, merges as ``left right``), built as our
``HFTokenizer``. ``load_gguf`` (``checkpoints/gguf.py``) returns it with the model."""

from __future__ import annotations

from scratchlm.checkpoints.files import CheckpointError


def gguf_tokenizer(meta: dict, source: str = "GGUF"):
    """The byte-level BPE tokenizer, special tokens, BOS/EOS and chat template of a GGUF file."""
    from scratchlm.tokenizers.backends import PRE_TOKENIZERS, HFTokenizer

    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise CheckpointError(f"{source}: tokenizer model {meta.get('tokenizer.ggml.model')!r} "
                              "is not supported (only byte-level BPE, 'gpt2')")
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
