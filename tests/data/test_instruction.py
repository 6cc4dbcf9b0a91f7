"""Instruction and preference data: reading with clear errors, the book's prompt format and
collate function, chat-template rendering with assistant-only targets."""

from __future__ import annotations

import json

import pytest

from scratchlm.data.instruction import (
    Example,
    InstructionDataset,
    PreferenceCollate,
    PreferenceDataset,
    format_input,
    instruction_collate,
    read_examples,
    render,
    render_prompt,
    split_examples,
)
from scratchlm.downloads.sources import fetch


@pytest.fixture(scope="module")
def book_data():
    return read_examples(fetch("instruction-data"))


def test_book_split_sizes(book_data):
    train, val, test = split_examples(book_data)
    assert (len(book_data), len(train), len(val), len(test)) == (1100, 935, 55, 110)


def test_book_collate_example():
    """The book's custom_collate_fn on inputs [0..4], [5, 6], [7, 8, 9] (eos 50256 appended)."""
    eos = 50256
    batch = [(ids + [eos], [1] * (len(ids) + 1)) for ids in ([0, 1, 2, 3, 4], [5, 6], [7, 8, 9])]
    inputs, targets = instruction_collate(batch, pad_id=eos)
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [5, 6, eos, eos, eos], [7, 8, 9, eos, eos]]
    assert targets.tolist() == [[1, 2, 3, 4, eos], [6, eos, -100, -100, -100],
                                [8, 9, eos, -100, -100]]
    inputs, targets = instruction_collate(batch, pad_id=eos, allowed_max_length=2)
    assert inputs.shape == targets.shape == (3, 2)


def test_alpaca_render_matches_book_tokenization(book_data, gpt2_tok):
    """The book tokenizes format_input(entry) + response text in one go and appends 50256."""
    raw = json.loads(fetch("instruction-data").read_text())
    for entry, ex in zip(raw[:200], book_data[:200]):
        instruction_text = ("Below is an instruction that describes a task. Write a response "
                            "that appropriately completes the request."
                            f"\n\n### Instruction:\n{entry['instruction']}")
        input_text = f"\n\n### Input:\n{entry['input']}" if entry["input"] else ""
        full = instruction_text + input_text + f"\n\n### Response:\n{entry['output']}"
        ids, mask = render(ex, gpt2_tok, "alpaca")
        assert ids == gpt2_tok.encode(full) + [50256]
        assert all(mask)  # the chapter trains on the whole text
        ids_m, mask_m = render(ex, gpt2_tok, "alpaca", mask_prompt=True)
        prompt = render_prompt(ex, gpt2_tok, "alpaca")
        assert ids_m == ids and mask_m == [0] * len(prompt) + [1] * (len(ids) - len(prompt))


def test_phi3_format(book_data):
    ex = next(e for e in book_data if isinstance(e.messages[0]["content"], dict))
    content = ex.messages[0]["content"]
    assert format_input(content, "phi3") == f"<|user|>\n{content['instruction']}\n{content['input']}"


def test_masked_prompt_targets_only_response(book_data, gpt2_tok):
    ds = InstructionDataset(book_data[:4], gpt2_tok, "alpaca", mask_prompt=True)
    inputs, targets = instruction_collate([ds[i] for i in range(4)], 50256)
    for row in range(4):
        ids, mask = ds[row]
        learned = targets[row][targets[row] != -100].tolist()
        answer = gpt2_tok.encode(book_data[row].response) + [50256]
        assert learned == answer


def test_chat_template_targets_assistant_turns():
    from scratchlm.models.convert.gguf import read_gguf
    from scratchlm.checkpoints.gguf_tokenizer import gguf_tokenizer
    from scratchlm.checkpoints.names import smollm2_gguf
    from scratchlm.tokenizers.chat import encode_chat

    tok = gguf_tokenizer(read_gguf(smollm2_gguf())[0])
    msgs = [{"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another?"},
            {"role": "assistant", "content": "Green."}]
    ids, mask = render(Example(msgs), tok, "chat")
    assert ids == encode_chat(tok, msgs, add_generation_prompt=False)
    learned = tok.decode([t for t, m in zip(ids, mask) if m])
    assert learned == "Blue.<|im_end|>\nGreen.<|im_end|>\n"
    prompt = render_prompt(Example(msgs[:2]), tok, "chat")
    assert tok.decode(prompt).endswith("<|im_start|>assistant\n")


def test_preference_pairs_collate_chosen_then_rejected(gpt2_tok):
    data = read_examples(fetch("instruction-data-with-preference"))
    ds = PreferenceDataset(data[:3], gpt2_tok)
    inputs, targets = PreferenceCollate(50256)([ds[i] for i in range(3)])
    assert inputs.shape[0] == 6
    for row in range(3):
        got = targets[row][targets[row] != -100].tolist()
        assert got == gpt2_tok.encode(data[row].chosen) + [50256]
        got = targets[row + 3][targets[row + 3] != -100].tolist()
        assert got == gpt2_tok.encode(data[row].rejected) + [50256]


@pytest.mark.parametrize("content, message", [
    ('[{"instruction": "a"}]', "entry 0: needs 'output'"),
    ('[{"output": "a"}, 3]', "entry 0: needs 'instruction'"),
    ('[{"instruction": "a", "output": "b"}, {"instruction": 1, "output": "b"}]',
     "entry 1: 'instruction' must be a string"),
    ('[{"instruction": "a", "output": "b", "chosen": "c"}]', "come together"),
    ('[{"instruction": "a", "output": "b"}', "not valid JSON"),
])
def test_bad_entries_name_file_and_index(tmp_path, content, message):
    path = tmp_path / "data.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as e:
        read_examples(path)
    assert str(path) in str(e.value)


def test_chat_jsonl_and_bad_line(tmp_path):
    path = tmp_path / "chat.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({"messages": [{"role": "bot"}]}) + "\n")
    with pytest.raises(ValueError, match=rf"{path}:3: message 0 needs a role"):
        read_examples(path)
    path.write_text(json.dumps(good) + "\n")
    (ex,) = read_examples(path)
    assert ex.instruction == "hi" and ex.response == "yo"
