"""Multiple-choice benchmarks scored by log-likelihood, as lm-evaluation-harness scores them.

    examples = read_task("arc_easy_test.jsonl", layout="arc")
    result = evaluate_choices(model, tokenizer, examples, shots=5, shot_pool=train_examples)
    result["acc"], result["acc_norm"]

Each choice is a continuation of the example's context (after ``delimiter``, a space by
default); the model's score for it is the summed log-probability of its tokens. ``acc`` picks
the highest sum, ``acc_norm`` the highest sum divided by the choice's length in characters.
Both are lm-evaluation-harness's definitions, and so is the tokenization of a pair (trailing
spaces of the context move to the continuation; the continuation's tokens are those of
context + continuation after the context's own).

The choices of one example share its context: the context runs once into a KV cache, which
every choice then continues in one batch; several examples' contexts prefill together
(``loglikelihoods``).

Layouts: ``jsonl`` ({"context", "choices", "label"} per line), and the published layouts of
``hellaswag``, ``arc`` (ARC-Easy/Challenge), ``mmlu``, ``piqa`` and ``winogrande`` (their
Hugging Face JSONL exports), with lm-evaluation-harness's prompts.

Winogrande is scored *partially*, as lm-evaluation-harness scores it: its choices are
contexts (the sentence up to the blank, filled with each option) and the rest of the
sentence is one shared ``continuation``, whose log-likelihood after each context decides.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from scratchlm.data.text_file import DataFileError, read_text
from scratchlm.evaluate.cache import score_pending
from scratchlm.evaluate.lm import prefix_token


@dataclass
class Example:
    context: str
    choices: list[str]
    label: int
    description: str = ""  # text before the few-shot examples (MMLU's subject line)
    continuation: str | None = None  # partial scoring: the choices are contexts, this follows


class TaskError(ValueError):
    """A task file that cannot be read; the message names the file and line."""


# ---------------------------------------------------------------- reading the published layouts
def _hellaswag_text(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(doc: dict) -> Example:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize() if "ctx_a" in doc else doc["ctx"]
    return Example(_hellaswag_text(doc["activity_label"] + ": " + ctx),
                   [_hellaswag_text(e) for e in doc["endings"]], int(doc["label"]))


def _arc(doc: dict) -> Example:
    labels = list(doc["choices"]["label"])
    return Example(f"Question: {doc['question']}\nAnswer:", list(doc["choices"]["text"]),
                   labels.index(doc["answerKey"]))


def _mmlu(doc: dict) -> Example:
    letters = "ABCD"
    body = doc["question"].strip() + "\n" + "".join(
        f"{letters[i]}. {c}\n" for i, c in enumerate(doc["choices"]))
    subject = doc.get("subject", "").replace("_", " ")
    return Example(body + "Answer:", list(letters[: len(doc["choices"])]), int(doc["answer"]),
                   f"The following are multiple choice questions (with answers) about "
                   f"{subject}.\n\n" if subject else "")


def _piqa(doc: dict) -> Example:
    return Example(f"Question: {doc['goal']}\nAnswer:", [doc["sol1"], doc["sol2"]],
                   int(doc["label"]))


def _winogrande(doc: dict) -> Example:
    sentence = doc["sentence"]
    blank = sentence.index("_")
    if doc["answer"] not in ("1", "2"):
        raise ValueError(f"answer must be '1' or '2', got {doc['answer']!r} (the test split "
                         "has no answers; use the validation split)")
    return Example("", [sentence[:blank] + doc["option1"], sentence[:blank] + doc["option2"]],
                   int(doc["answer"]) - 1, continuation=sentence[blank + 1:].strip())


def _jsonl(doc: dict) -> Example:
    return Example(doc["context"], doc["choices"], doc["label"], doc.get("description", ""),
                   doc.get("continuation"))


LAYOUTS: dict[str, Callable[[dict], Example]] = {
    "jsonl": _jsonl, "hellaswag": _hellaswag, "arc": _arc, "mmlu": _mmlu, "piqa": _piqa,
    "winogrande": _winogrande,
}


def read_task(path: str | Path, layout: str = "jsonl") -> list[Example]:
    """The examples of a JSONL task file; ``TaskError`` naming the file and line for a bad
    line, a label outside its choices, or a file without examples."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    path = Path(path)
    out = []
    try:
        text = read_text(path)
    except DataFileError as e:
        raise TaskError(str(e)) from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            ex = LAYOUTS[layout](doc)
        except json.JSONDecodeError as e:
            raise TaskError(f"{path}:{n}: not JSON ({e.msg})") from None
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise TaskError(f"{path}:{n}: not a {layout} example ({type(e).__name__}: "
                            f"{e})") from None
        _check(ex, f"{path}:{n}")
        out.append(ex)
    if not out:
        raise TaskError(f"{path}: no examples")
    return out


def _check(ex: Example, where: str) -> None:
    if not isinstance(ex.context, str):
        raise TaskError(f"{where}: context must be a string")
    if ex.continuation is not None and not isinstance(ex.continuation, str):
        raise TaskError(f"{where}: continuation must be a string")
    if (not isinstance(ex.choices, list) or len(ex.choices) < 2
            or not all(isinstance(c, str) for c in ex.choices)):
        raise TaskError(f"{where}: choices must be a list of at least two strings")
    if isinstance(ex.label, bool) or not isinstance(ex.label, int) or not (
            0 <= ex.label < len(ex.choices)):
        raise TaskError(f"{where}: label {ex.label!r} is not the index of one of its "
                        f"{len(ex.choices)} choices")


# ------------------------------------------------------------------------------ prompts
def _solved(shot: Example, delimiter: str) -> str:
    if shot.continuation is not None:  # partial scoring: the right context, then the rest
        return shot.context + shot.choices[shot.label] + delimiter + shot.continuation
    return shot.context + delimiter + shot.choices[shot.label]


def fewshot_context(ex: Example, shots: Sequence[Example], delimiter: str = " ") -> str:
    """lm-evaluation-harness's few-shot prompt: the description, each shot's context, its
    answer and a blank line, then the example's context."""
    demo = "".join(_solved(s, delimiter) + "\n\n" for s in shots)
    return ex.description + demo + ex.context


def choice_pairs(tokenizer, ex: Example, context: str,
                 delimiter: str = " ") -> list[tuple[list[int], list[int]]]:
    """The (context ids, continuation ids) request of each choice: the choice continues the
    context, or under partial scoring ends it and the shared continuation follows."""
    if ex.continuation is not None:
        return [encode_pair(tokenizer, context + c, delimiter + ex.continuation)
                for c in ex.choices]
    return [encode_pair(tokenizer, context, delimiter + c) for c in ex.choices]


def pick_shots(pool: Sequence[Example], k: int, seed: int, exclude: Example | None = None):
    """``k`` examples drawn from ``pool`` with ``seed`` (never ``exclude`` itself)."""
    if k == 0:
        return []
    candidates = [e for e in pool if e is not exclude]
    if len(candidates) < k:
        raise ValueError(f"{k} shots asked, the pool holds {len(candidates)}")
    return random.Random(seed).sample(candidates, k)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-evaluation-harness splits them."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if not context:
        first = prefix_token(tokenizer)
        return ([first] if first is not None else []), tokenizer.encode(continuation)
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx):]


# ------------------------------------------------------------------------------ scoring
def _kv_cache(model: nn.Module, batch: int, length: int, pad: torch.Tensor | None = None):
    from scratchlm.nn.kv_cache import KVCache

    cfg = model.cfg
    p = next(model.parameters())
    return KVCache(cfg.n_layer, batch, getattr(cfg, "n_kv_head", cfg.n_head), length,
                   cfg.head_dim, p.dtype, p.device, pad)


@torch.no_grad()
def _shared_contexts(model: nn.Module,
                     groups: list[tuple[list[int], list[list[int]]]]) -> list[list[tuple]]:
    """(log-likelihood, greedy) of every continuation of every (context, continuations)
    group. The contexts run once, left-padded into one batch whose KV cache each group's
    continuations then continue as right-padded rows; only the last context position goes
    through the output head. ``greedy``: every token of the continuation is the argmax."""
    from scratchlm.nn.native import head_linear

    device = next(model.parameters()).device
    vocab = model.cfg.vocab_size
    width = max(len(c) for c, _ in groups)
    longest = max(len(t) for _, conts in groups for t in conts)
    pad = torch.tensor([width - len(c) for c, _ in groups], device=device)
    ids = torch.tensor([[0] * (width - len(c)) + c for c, _ in groups], device=device)
    cache = _kv_cache(model, len(groups), width + longest, pad)
    hidden = model.hidden_states(ids, cache)[:, -1]  # (G, C)
    last = torch.log_softmax(head_linear(model.out_head, hidden)[:, :vocab].float(), -1)
    owner = [g for g, (_, conts) in enumerate(groups) for _ in conts]
    conts = [t for _, cs in groups for t in cs]
    top = last.argmax(-1).tolist()
    scores = [[float(last[g, t[0]]), t[0] == top[g]] for g, t in zip(owner, conts)]
    if longest > 1:
        rows = torch.tensor(owner, device=device)
        batch = _kv_cache(model, len(conts), width + longest, pad[rows])
        batch.k[:, :, :, :width] = cache.k[:, rows, :, :width]
        batch.v[:, :, :, :width] = cache.v[:, rows, :, :width]
        batch.length = width
        x = torch.tensor([t[:-1] + [0] * (longest - len(t)) for t in conts], device=device)
        logp = torch.log_softmax(model(x, batch)[..., :vocab].float(), -1)  # (R, L - 1, V)
        for i, t in enumerate(conts):
            if len(t) > 1:
                lp = logp[i, : len(t) - 1]
                tgt = torch.tensor(t[1:], device=device)
                scores[i][0] += float(lp.gather(1, tgt[:, None]).sum())
                scores[i][1] = scores[i][1] and bool((lp.argmax(-1) == tgt).all())
    out, k = [], 0
    for _, cs in groups:
        out.append([tuple(x) for x in scores[k:k + len(cs)]])
        k += len(cs)
    return out


@torch.no_grad()
def _one_forward(model: nn.Module, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    """(log-likelihood, greedy) of ``cont`` after ``ctx`` in one forward: the plain path,
    and the reference the shared one is tested against."""
    device = next(model.parameters()).device
    ids = torch.tensor([ctx + cont[:-1]], device=device)
    logp = torch.log_softmax(model(ids)[0, len(ctx) - 1:].float(), -1)
    tgt = torch.tensor(cont, device=device)
    return float(logp.gather(1, tgt[:, None]).sum()), bool((logp.argmax(-1) == tgt).all())


def loglikelihoods(model: nn.Module, requests: Sequence[tuple[list[int], list[int]]],
                   shared: bool = True, progress: bool = False, greedy: bool = False,
                   batch_size: int = 8) -> list[float] | list[tuple[float, bool]]:
    """Summed log-probability of each (context ids, continuation ids) request. Requests with
    the same context share one prefill, and ``batch_size`` contexts prefill together
    (``shared``; models with sliding-window or linear-attention layers, or a cache of their
    own, take the plain path, one forward each). Inputs longer than the model's context lose
    tokens from the left of the context, as lm-evaluation-harness truncates.
    ``greedy``: (log-likelihood, whether the continuation is the greedy one) pairs."""
    limit = model.cfg.context_length
    # a KV cache of keys and values alone: no ring buffers, no linear layers' states, and
    # every layer's keys of one shape (a model that builds its own cache has more)
    plain = hasattr(model, "new_cache") or any(
        not hasattr(b, "att") or getattr(b.att, "window", 0) for b in model.trf_blocks)
    was_training = model.training
    model.eval()
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, cont) in enumerate(requests):
        if not cont:
            raise ValueError(f"request {i}: an empty continuation")
        if not ctx:
            raise ValueError(f"request {i}: an empty context (give it a prefix token)")
        groups.setdefault(tuple(ctx), []).append(i)
    out: list = [(0.0, False)] * len(requests)
    prepared = []
    for ctx, members in groups.items():
        conts = [requests[i][1] for i in members]
        keep = limit - max(len(c) for c in conts) + 1  # context tokens that still fit
        if keep < 1:
            raise ValueError(f"a continuation of {max(len(c) for c in conts)} tokens does not "
                             f"fit the model's context of {limit}")
        prepared.append((list(ctx[-keep:]), conts, members))
    prepared.sort(key=lambda g: len(g[0]))  # similar lengths batch with little padding
    bar = tqdm(total=len(requests), desc="scoring", unit="request", disable=not progress)
    batched = shared and not plain
    step = batch_size if batched else 1
    for start in range(0, len(prepared), step):
        chunk = prepared[start:start + step]
        if batched:
            results = _shared_contexts(model, [(c, conts) for c, conts, _ in chunk])
        else:
            results = [[_one_forward(model, c, t) for t in conts] for c, conts, _ in chunk]
        for (_, _, members), scores in zip(chunk, results):
            for i, sc in zip(members, scores):
                out[i] = sc
            bar.update(len(members))
    bar.close()
    model.train(was_training)
    return out if greedy else [ll for ll, _ in out]


def evaluate_choices(model: nn.Module, tokenizer, examples: Sequence[Example], shots: int = 0,
                     shot_pool: Sequence[Example] | None = None, seed: int = 1234,
                     delimiter: str = " ", progress: bool = True, batch_size: int = 8,
                     done: dict[int, dict] | None = None,
                     on_result: Callable[[int, dict], None] | None = None) -> dict:
    """``acc`` and ``acc_norm`` over ``examples`` (``shots`` few-shot examples each, drawn
    from ``shot_pool`` with ``seed``). ``done``: per-example results already computed (by
    index; resuming), skipped; ``on_result(index, row)`` is called for each new one."""
    pool = shot_pool if shot_pool is not None else examples

    def score(chunk: list[int], start: int):  # the examples' choices scored together
        pairs, owners = [], []
        for i in chunk:
            ex = examples[i]
            context = fewshot_context(ex, pick_shots(pool, shots, seed + i, exclude=ex),
                                      delimiter)
            pairs += choice_pairs(tokenizer, ex, context, delimiter)
            owners += [i] * len(ex.choices)
        scores = loglikelihoods(model, pairs, batch_size=batch_size)
        for i in chunk:
            ex = examples[i]
            lls = [s for s, o in zip(scores, owners) if o == i]
            norm = [ll / max(len(c), 1) for ll, c in zip(lls, ex.choices)]
            yield {"loglikelihoods": lls, "label": ex.label,
                   "acc": float(max(range(len(lls)), key=lls.__getitem__) == ex.label),
                   "acc_norm": float(max(range(len(norm)), key=norm.__getitem__) == ex.label)}

    n = len(examples)
    mine = score_pending(n, score, batch_size, done, on_result, desc="multiple choice",
                         unit="example", progress=progress)
    return {"examples": n, "shots": shots,
            "acc": sum(r["acc"] for r in mine) / n,
            "acc_norm": sum(r["acc_norm"] for r in mine) / n,
            "rows": mine}


def row_problem(row: dict, example: Example) -> str | None:
    """Why a cached row (``evaluate_choices``'s) cannot be the result for ``example``; None
    when it can. A row from an edited task file, or a damaged one, is never counted."""
    if set(row) != {"loglikelihoods", "label", "acc", "acc_norm"}:
        return f"fields {sorted(row)}, not loglikelihoods, label, acc, acc_norm"
    lls = row["loglikelihoods"]
    if not isinstance(lls, list) or len(lls) != len(example.choices) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and x == x for x in lls):
        return f"'loglikelihoods' must be {len(example.choices)} numbers, one per choice"
    if isinstance(row["label"], bool) or row["label"] != example.label:
        return f"'label' is {row['label']!r}, the task file says {example.label}"
    for key in ("acc", "acc_norm"):
        if isinstance(row[key], bool) or row[key] not in (0, 1):
            return f"{key!r} must be 0.0 or 1.0, got {row[key]!r}"
    return None
