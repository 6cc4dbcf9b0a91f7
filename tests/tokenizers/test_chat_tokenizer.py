"""``train-tokenizer --chat``: the BPE trained from scratch, as a Hugging Face tokenizer with
ChatML's control tokens and template, equals our BPE token for token and renders chats as
transformers does."""

from __future__ import annotations

from scratchlm.recipes.configs import TrainTokenizerConfig
from scratchlm.recipes.train_tokenizer import main


def test_chat_tokenizer_equals_ours_and_transformers(tmp_path):
    from transformers import PreTrainedTokenizerFast

    from scratchlm.data.instruction import Example, render
    from scratchlm.tokenizers import get_tokenizer

    main(TrainTokenizerConfig(data=["the-verdict"], vocab_size=400, out=str(tmp_path / "plain"),
                              workers=1))
    main(TrainTokenizerConfig(data=["the-verdict"], vocab_size=402, out=str(tmp_path / "chat"),
                              chat=True, workers=1))
    plain, chat = get_tokenizer(str(tmp_path / "plain")), get_tokenizer(str(tmp_path / "chat"))
    text = "I HAD always thought Jack Gisburn rather a cheap genius--though a good fellow 42."
    # the same merges; the two control tokens after the end-of-text
    assert chat.encode(text) == plain.encode(text)
    eot = plain.special_tokens["<|endoftext|>"]
    end = eot + 2
    assert chat.special_tokens == {"<|endoftext|>": eot, "<|im_start|>": eot + 1,
                                   "<|im_end|>": end}

    hf = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "chat" / "tokenizer.json"))
    messages = [{"role": "user", "content": "Who painted it? <|im_end|>"},
                {"role": "assistant", "content": "Jack Gisburn."}]
    ids, mask = render(Example(messages), chat, "chat", mask_prompt=True)
    theirs = hf.apply_chat_template(messages, chat_template=chat.chat_template, tokenize=True,
                                     return_dict=False)
    # transformers turns a "<|im_end|>" typed by the user into the control token; ours keeps
    # it as text (no user text becomes a control token), so compare the two without it
    clean = [{"role": m["role"], "content": m["content"].replace(" <|im_end|>", "")}
             for m in messages]
    ours_clean, _ = render(Example(clean), chat, "chat", mask_prompt=True)
    theirs_clean = hf.apply_chat_template(clean, chat_template=chat.chat_template, tokenize=True,
                                           return_dict=False)
    assert ours_clean == list(theirs_clean)
    assert ids.count(end) == 2 and list(theirs).count(end) == 3  # the typed one stays text
