"""Instruction and preference data (the book's chapter 7): read Alpaca-style or chat-format
files, render an example in a prompt style, and batch it for training.

One function decides what the model learns from: ``render`` returns ``(ids, loss_mask)``, where
``loss_mask[i]`` says whether token ``i`` is a training target. The collate function only shifts
and pads. Prompt styles:

- ``alpaca``: the book's "Below is an instruction ... ### Instruction: ... ### Response:" text,
  then the response and the end-of-text token;
- ``phi3``: ``<|user|>\\n...\\n<|assistant|>:\\n`` then the response (the book's exercise 7.1);
- ``chat``: the model's own chat template (SmolLM2's ChatML); a conversation's assistant turns
  are the targets.

``mask_prompt`` (default: on for ``chat``, off for the book's styles as in the chapter) makes only
the response tokens targets.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from scratchlm.data.jsonl import json_lines
from scratchlm.data.text_file import read_text

STYLES = ("alpaca", "phi3", "chat")
# GSM8K (question/answer rows): the request after each question, as training and evaluation
# (evaluate/gsm8k.py) ask it, and the <<48/2=24>> calculator notes its solutions carry
GSM8K_PROMPT_SUFFIX = ("\n\nSolve it step by step, then give the final answer as a number on "
                       "the last line after '####'.")
CALCULATOR_NOTES = re.compile(r"<<[^>]*>>")
IGNORE_INDEX = -100


@dataclass
class Example:
    """One instruction example: a conversation whose assistant turns are the answers."""

    messages: list[dict]
    chosen: str | None = None  # preference data: the preferred and the dispreferred answer
    rejected: str | None = None

    @property
    def user_turn(self):
        """The content of the last user turn (a string, or Alpaca's instruction and input)."""
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")

    @property
    def instruction(self) -> str:
        """The last user turn as text (an Alpaca input follows its instruction)."""
        return _join(self.user_turn)

    @property
    def response(self) -> str:
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "assistant"), "")


# ------------------------------------------------------------------------------------ reading
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant"}


def _sharegpt(turns, where: str) -> list[dict]:
    """ShareGPT's ``conversations`` ([{"from": "human", "value": ...}, ...]) as messages."""
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{where}: 'conversations' must be a non-empty list")
    out = []
    for j, t in enumerate(turns):
        role = SHAREGPT_ROLES.get(t.get("from")) if isinstance(t, dict) else None
        if role is None or not isinstance(t.get("value"), str):
            raise ValueError(f"{where}: turn {j} needs a 'from' ({', '.join(SHAREGPT_ROLES)}) "
                             f"and a string 'value', got {t!r}")
        out.append({"role": role, "content": t["value"]})
    return out


def _entry_to_example(entry, where: str) -> Example:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object, got {type(entry).__name__}")
    if "conversations" in entry and "messages" not in entry:
        entry = {"messages": _sharegpt(entry["conversations"], where)}
    if "messages" in entry:
        msgs = entry["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise ValueError(f"{where}: 'messages' must be a non-empty list")
        for j, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                    or not isinstance(m.get("content"), str):
                raise ValueError(f"{where}: message {j} needs a role (system/user/assistant) "
                                 f"and a string content, got {m!r}")
        return Example([dict(role=m["role"], content=m["content"]) for m in msgs])
    if "instruction" in entry:
        for key in ("instruction", "input", "output", "chosen", "rejected"):
            if key in entry and not isinstance(entry[key], str):
                raise ValueError(f"{where}: '{key}' must be a string")
        if "output" not in entry and "chosen" not in entry:
            raise ValueError(f"{where}: needs 'output' (or 'chosen'/'rejected' pairs)")
        if ("chosen" in entry) != ("rejected" in entry):
            raise ValueError(f"{where}: 'chosen' and 'rejected' come together")
        user = entry["instruction"]
        if entry.get("input"):
            user = {"instruction": entry["instruction"], "input": entry["input"]}
        msgs = [{"role": "user", "content": user},
                {"role": "assistant", "content": entry.get("output", entry.get("chosen"))}]
        return Example(msgs, entry.get("chosen"), entry.get("rejected"))
    if "question" in entry and "answer" in entry:  # GSM8K: a worked solution ending "#### N"
        if not isinstance(entry["question"], str) or not isinstance(entry["answer"], str):
            raise ValueError(f"{where}: 'question' and 'answer' must be strings")
        if "####" not in entry["answer"]:
            raise ValueError(f"{where}: a question/answer row is read as GSM8K's, whose answer "
                             "ends in '#### N'; this one has no '####'")
        return Example([{"role": "user", "content": entry["question"] + GSM8K_PROMPT_SUFFIX},
                        {"role": "assistant",
                         "content": CALCULATOR_NOTES.sub("", entry["answer"])}])
    raise ValueError(f"{where}: needs 'instruction'/'output' (Alpaca), 'messages' (OpenAI chat), "
                     "'conversations' (ShareGPT) or 'question'/'answer' (GSM8K)")


def read_examples(path: str | Path) -> list[Example]:
    """Alpaca-style (``instruction``, ``input``, ``output``, optionally ``chosen``/``rejected``),
    OpenAI chat (``messages``), ShareGPT (``conversations``) or GSM8K (``question``, ``answer``:
    the question with GSM8K_PROMPT_SUFFIX, the solution without its calculator notes)
    entries, multi-turn, from a JSON
    list, JSON Lines (plain, .gz, .zst) or parquet. Errors name the file and the entry (index
    in a JSON list, line in JSONL, row in parquet)."""
    from scratchlm.data.documents import kind, records

    path = Path(path)
    name = path.name.lower()
    if kind(path) == "parquet" or name.endswith((".gz", ".zst")):
        out = [_entry_to_example(entry, where) for entry, where in records(path)]
        if not out:
            raise ValueError(f"{path}: no examples")
        return out
    text = read_text(path)
    if path.suffix == ".jsonl" or not text.lstrip().startswith("["):
        out = [_entry_to_example(entry, f"{path}:{lineno}")
               for lineno, entry in json_lines(path, text)]
    else:
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
        out = [_entry_to_example(e, f"{path}: entry {i}") for i, e in enumerate(entries)]
    if not out:
        raise ValueError(f"{path}: no examples")
    return out


def split_examples(examples: Sequence, train: float = 0.85, test: float = 0.10,
                   seed: int | None = None) -> tuple[list, list, list]:
    """The book's split: the first 85% train, the next 10% test, the rest validation (1,100 ->
    935/110/55). With a seed the order is shuffled first."""
    items = list(examples)
    if seed is not None:
        random.Random(seed).shuffle(items)
    n_train, n_test = int(len(items) * train), int(len(items) * test)
    return items[:n_train], items[n_train + n_test:], items[n_train:n_train + n_test]


def weighted(examples: Sequence, weight: float, seed: int = 0) -> list:
    """``examples`` counted ``weight`` times: whole copies for the integer part, then a seeded
    share for the rest (a set mixed at 2.5 appears twice and half again in each epoch)."""
    whole, part = int(weight), weight - int(weight)
    items = list(examples) * whole
    if part:
        rest = list(examples)
        random.Random(seed).shuffle(rest)
        items += rest[:round(len(rest) * part)]
    return items


# ---------------------------------------------------------------------------------- rendering
ALPACA_HEADER = ("Below is an instruction that describes a task. "
                 "Write a response that appropriately completes the request.")


def _user_fields(content) -> tuple[str, str]:
    if isinstance(content, dict):
        return content["instruction"], content.get("input", "")
    return content, ""


def format_input(content, style: str = "alpaca") -> str:
    """The prompt text of one user turn in the book's styles (``format_input`` in chapter 7),
    without the response header."""
    instruction, inp = _user_fields(content)
    if style == "alpaca":
        return (f"{ALPACA_HEADER}\n\n### Instruction:\n{instruction}"
                + (f"\n\n### Input:\n{inp}" if inp else ""))
    if style == "phi3":
        return f"<|user|>\n{instruction}" + (f"\n{inp}" if inp else "")
    raise ValueError(f"unknown prompt style {style!r}; choose from {STYLES}")


RESPONSE_HEADER = {"alpaca": "\n\n### Response:\n", "phi3": "\n<|assistant|>:\n"}


def _chat_messages(messages: list[dict]) -> list[dict]:
    return [dict(m, content=_join(m["content"])) for m in messages]


def _join(content) -> str:
    instruction, inp = _user_fields(content)
    return f"{instruction}\n\n{inp}" if inp else instruction


def _encode(tokenizer, text: str, spans=None, start: int = 0) -> list[int]:
    """Ids of ``text[start:]`` whose ``spans`` (of the whole text) are user content: special-
    token strings there are ordinary text, never control tokens (tokenizers/base.py)."""
    from scratchlm.tokenizers.base import encode_protected

    shifted = [(max(a - start, 0), b - start) for a, b in (spans or []) if b > start]
    return encode_protected(tokenizer, text[start:], shifted)


def render_prompt(example: Example | list[dict], tokenizer, style: str = "alpaca") -> list[int]:
    """Ids of the prompt that asks for the example's (last) answer: what generation starts
    from."""
    messages = example.messages if isinstance(example, Example) else example
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if style == "chat":
        from scratchlm.tokenizers.chat import encode_chat

        return encode_chat(tokenizer, _chat_messages(messages), add_generation_prompt=True)
    user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    from scratchlm.tokenizers.chat import spans_of

    text = format_input(user, style) + RESPONSE_HEADER[style]
    return _encode(tokenizer, text, spans_of(text, _user_fields(user)))


def render(example: Example, tokenizer, style: str = "alpaca", mask_prompt: bool | None = None,
           response: str | None = None) -> tuple[list[int], list[int]]:
    """``(ids, loss_mask)`` of a whole example; ``loss_mask[i] = 1`` where token ``i`` is a
    training target. ``response`` replaces the last answer (preference pairs)."""
    if mask_prompt is None:
        mask_prompt = style == "chat"
    messages = list(example.messages)
    if response is not None:
        messages = messages[:-1] + [{"role": "assistant", "content": response}]
    if style == "chat":
        from scratchlm.tokenizers.chat import render_chat_spans, template_tokens

        template = getattr(tokenizer, "chat_template", None)
        if not template:
            raise ValueError("prompt style 'chat' needs a tokenizer with a chat template")
        special = template_tokens(tokenizer)
        msgs = _chat_messages(messages)
        ids: list[int] = []
        mask: list[int] = []
        done = ""
        # Each assistant turn: the text up to its generation prompt, then the turn itself.
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            prompt, prompt_spans = render_chat_spans(template, msgs[:i], True, **special)
            full, full_spans = render_chat_spans(template, msgs[:i + 1], False, **special)
            if not prompt.startswith(done) or not full.startswith(prompt):
                raise ValueError("the chat template does not render conversations as prefixes "
                                 "of each other; use --data.style alpaca")
            seg = _encode(tokenizer, prompt, prompt_spans, len(done))
            ids += seg
            mask += [0 if mask_prompt else 1] * len(seg)
            seg = _encode(tokenizer, full, full_spans, len(prompt))
            ids += seg
            mask += [1] * len(seg)
            done = full
        whole, whole_spans = render_chat_spans(template, msgs, False, **special)
        rest = whole[len(done):]
        if rest:
            seg = _encode(tokenizer, whole, whole_spans, len(done))
            ids += seg
            mask += [0 if mask_prompt else 1] * len(seg)
        return ids, mask
    prompt = render_prompt(messages, tokenizer, style)
    content = messages[-1]["content"]
    answer = _encode(tokenizer, content, [(0, len(content))])
    eos = tokenizer.eos_id
    if eos is None:
        raise ValueError("the tokenizer has no end-of-text token to end responses with")
    ids = prompt + answer + [eos]
    mask = [0 if mask_prompt else 1] * len(prompt) + [1] * (len(answer) + 1)
    return ids, mask


# ----------------------------------------------------------------------------------- datasets
class InstructionDataset(Dataset):
    """Examples pre-tokenized once: item ``i`` is ``(ids, loss_mask)``."""

    def __init__(self, examples: Sequence[Example], tokenizer, style: str = "alpaca",
                 mask_prompt: bool | None = None):
        if style not in STYLES:
            raise ValueError(f"unknown prompt style {style!r}; choose from {STYLES}")
        self.examples = list(examples)
        self.items = [render(e, tokenizer, style, mask_prompt) for e in self.examples]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[list[int], list[int]]:
        return self.items[i]


def instruction_collate(batch: Sequence[tuple[list[int], list[int]]], pad_id: int,
                        ignore_index: int = IGNORE_INDEX, allowed_max_length: int | None = None,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a batch to its longest example and shift by one: ``inputs = ids[:-1]``, ``targets =
    ids[1:]`` with ``ignore_index`` wherever the target token is not a training target (padding,
    masked prompts). Rendered examples end with end-of-text, so this equals the book's
    ``custom_collate_fn`` (padding targets -100 except the first end-of-text)."""
    width = max(len(ids) for ids, _ in batch)
    inputs = torch.full((len(batch), width - 1), pad_id, dtype=torch.long)
    targets = torch.full((len(batch), width - 1), ignore_index, dtype=torch.long)
    for row, (ids, mask) in enumerate(batch):
        ids_t = torch.tensor(ids, dtype=torch.long)
        mask_t = torch.tensor(mask, dtype=torch.bool)
        n = len(ids) - 1
        inputs[row, :n] = ids_t[:-1]
        targets[row, :n] = torch.where(mask_t[1:], ids_t[1:], ignore_index)
    if allowed_max_length is not None:
        inputs, targets = inputs[:, :allowed_max_length], targets[:, :allowed_max_length]
    return inputs, targets


PACK_WIDTH = 512  # wider rows cost more in attention (quadratic) than the padding they save


def pack(sequences: Sequence[Sequence[torch.Tensor]], capacity: int, fill: Sequence[int]):
    """Sequences (each one or more aligned 1-D tensors: ids, targets, ...) placed side by side
    in rows of ``capacity`` positions (or the longest sequence's), first-fit, longest first, in their given order inside a
    row. -> (one (rows, width) tensor per part, filled with ``fill`` where no sequence is;
    segments (rows, width): sequence i's positions hold i, padding -1; the (row, column) of
    each sequence's last position). Only the fullest row is as wide as the batch."""
    lengths = [len(seq[0]) for seq in sequences]
    capacity = max(capacity, max(lengths))  # the longest sequence fits in a row
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(sequences)), key=lambda i: -lengths[i]):
        r = next((r for r, left in enumerate(room) if left >= lengths[i]), None)
        if r is None:
            rows.append([])
            room.append(capacity)
            r = len(rows) - 1
        rows[r].append(i)
        room[r] -= lengths[i]
    width = max(sum(lengths[i] for i in members) for members in rows)
    parts = [torch.full((len(rows), width), f, dtype=torch.long) for f in fill]
    segments = torch.full((len(rows), width), -1, dtype=torch.long)
    last = torch.zeros(len(sequences), 2, dtype=torch.long)
    for r, members in enumerate(rows):
        at = 0
        for i in sorted(members):
            n = lengths[i]
            for part, t in zip(parts, sequences[i]):
                part[r, at:at + n] = t
            segments[r, at:at + n] = i
            last[i] = torch.tensor([r, at + n - 1])
            at += n
    return parts, segments, last


def packed_instruction_collate(batch: Sequence[tuple[list[int], list[int]]], pad_id: int,
                               ignore_index: int = IGNORE_INDEX,
                               allowed_max_length: int | None = None,
                               width: int = PACK_WIDTH):
    """The batch of ``instruction_collate`` without its padding: the examples are placed
    side by side in rows of up to ``width`` positions (at most ``allowed_max_length``, at least
    the longest example) by ``pack``, each row's ``segments`` telling them apart, so with a
    document mask (``nn/doc_mask.py``) each sees only itself, from position 0. Same targets,
    so the same loss and gradients as the padded batch; almost no padding is computed.
    -> ((inputs, segments), targets)."""
    examples = []
    for ids, mask in batch:
        ids_t = torch.tensor(ids, dtype=torch.long)
        mask_t = torch.tensor(mask, dtype=torch.bool)
        x, y = ids_t[:-1], torch.where(mask_t[1:], ids_t[1:], ignore_index)
        if allowed_max_length is not None:
            x, y = x[:allowed_max_length], y[:allowed_max_length]
        examples.append((x, y))
    capacity = min(width, allowed_max_length or width)
    (inputs, targets), segments, _ = pack(examples, capacity, (pad_id, ignore_index))
    return (inputs, segments), targets


class InstructionCollate:
    """``instruction_collate`` (or, with ``packed``, ``packed_instruction_collate``) with its
    settings bound (picklable for DataLoader workers)."""

    def __init__(self, pad_id: int, allowed_max_length: int | None = None, packed: bool = False):
        self.pad_id, self.allowed_max_length, self.packed = pad_id, allowed_max_length, packed

    def __call__(self, batch):
        collate = packed_instruction_collate if self.packed else instruction_collate
        return collate(batch, self.pad_id, allowed_max_length=self.allowed_max_length)


class PreferenceDataset(Dataset):
    """Preference pairs: item ``i`` is ``(chosen (ids, mask), rejected (ids, mask))`` with only
    the response tokens as targets (DPO scores responses, not prompts)."""

    def __init__(self, examples: Sequence[Example], tokenizer, style: str = "alpaca"):
        self.examples = [e for e in examples if e.chosen is not None]
        if not self.examples:
            raise ValueError("no preference pairs ('chosen'/'rejected') in the data")
        self.items = [(render(e, tokenizer, style, True, e.chosen),
                       render(e, tokenizer, style, True, e.rejected)) for e in self.examples]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


class PreferenceCollate:
    """A batch of B pairs -> one (2B, T) batch: chosen rows first, then rejected rows; with
    ``packed``, the 2B answers packed as ``packed_instruction_collate`` packs (segment i is
    sequence i of that order)."""

    def __init__(self, pad_id: int, allowed_max_length: int | None = None, packed: bool = False):
        self.pad_id, self.allowed_max_length, self.packed = pad_id, allowed_max_length, packed

    def __call__(self, batch):
        flat = [c for c, _ in batch] + [r for _, r in batch]
        collate = packed_instruction_collate if self.packed else instruction_collate
        return collate(flat, self.pad_id, allowed_max_length=self.allowed_max_length)


class RewardCollate:
    """A batch of B preference pairs -> ``((ids (2B, T), lengths (2B,)), zeros (B,))`` for a
    reward model: whole rendered sequences, chosen rows first, right-padded. Sequences longer
    than ``allowed_max_length`` keep their last tokens (the answer being scored). The (B,)
    zeros only count the pairs for the training loop's loss weighting. With ``packed``, the
    sequences are packed (``pack``) and the inputs are (ids, segments, last positions)."""

    def __init__(self, pad_id: int, allowed_max_length: int | None = None, packed: bool = False):
        self.pad_id, self.allowed_max_length, self.packed = pad_id, allowed_max_length, packed

    def __call__(self, batch):
        rows = [ids for (ids, _), _ in batch] + [ids for _, (ids, _) in batch]
        if self.allowed_max_length is not None:
            rows = [r[-self.allowed_max_length:] for r in rows]
        if self.packed:  # ((ids, segments, last (row, column) of each sequence), zeros)
            capacity = min(PACK_WIDTH, self.allowed_max_length or PACK_WIDTH)
            (ids,), segments, last = pack([(torch.tensor(r, dtype=torch.long),) for r in rows],
                                          capacity, (self.pad_id,))
            return (ids, segments, last), torch.zeros(len(batch), dtype=torch.long)
        ids = torch.full((len(rows), max(map(len, rows))), self.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        return (ids, lengths), torch.zeros(len(batch), dtype=torch.long)
