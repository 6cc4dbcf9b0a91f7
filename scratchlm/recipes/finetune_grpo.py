"""``scratchlm finetune grpo``: reinforcement learning with GRPO on verifiable rewards (or a
reward model: RLHF), on the shared training loop. See ``rl/grpo.py`` for the loss and
``rl/rollout.py`` for the rollouts.

    scratchlm finetune grpo --task arithmetic --lora.rank 16 --train.max_steps 20
    scratchlm finetune grpo --task gsm8k --grpo.rewards answer,format:0.2 --grpo.beta 0.04

Tasks: ``arithmetic`` (generated problems, answers checked exactly; ``--difficulty``),
``gsm8k`` (its train split to learn from, the test split held out), or ``preference``: RLHF,
the instructions of ``--data`` rewarded by a reward model (``--grpo.rewards reward_model
--grpo.reward_model RUN/final``), the held-out score its mean reward. Each prompt is the
question as a user turn of the model's chat template (the math tasks ask for the final answer
after ``####``); prompts that leave no room for ``--grpo.max_new_tokens`` in the context are
reported and skipped. Full finetuning (``--lora.rank 0``; the reference for ``--grpo.beta`` is then a
frozen copy), LoRA, or QLoRA (``--lora.quantize_base nf4``).

Outputs: metrics.csv / TensorBoard (reward, accuracy, KL, clip fraction, entropy, response
length, rollout time per step; held-out accuracy or reward per evaluation), loss.png,
reward.png, grpo.json (held-out accuracy or reward before and after, with the completions),
checkpoints, final/.
"""

from __future__ import annotations

import csv
import json
import time

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from scratchlm.config import to_dict
from scratchlm.evaluate.tasks import check_eval, evaluate_final
from scratchlm.rl.grpo import check_settings
from scratchlm.finetune.setup import apply_lora_config, save_final
from scratchlm.rl.rollout import GRPOLoss, Prompt, greedy_accuracy, greedy_reward
from scratchlm.models.accounting import count_parameters
from scratchlm.checkpoints.load import load_model_and_tokenizer
from scratchlm.recipes.configs import GRPOConfig  # noqa: F401 (its config)
from scratchlm.training.loop import fit
from scratchlm.training.optim import optimizer_for
from scratchlm.training.plots import plot_series
from scratchlm.training.prepare import prepare_training, training_session, whole_model

TASKS = ("arithmetic", "gsm8k", "preference")
CHECKED = ("arithmetic", "gsm8k")  # tasks with an answer to check (held out: accuracy)


class PromptIndices(Dataset):
    """Items are (index, index): ``fit`` batches indices, ``GRPOLoss`` looks the prompts up."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.tensor(i), torch.tensor(i)


def task_problems(cfg: GRPOConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, held-out) (question, reference answer) pairs of the task; ``preference``: the
    instructions of ``cfg.data`` (its 85% train split, and its 5% test split held out), with
    no reference (a reward model rates the answers)."""
    if cfg.task == "arithmetic":
        from scratchlm.data.arithmetic import split

        return split(cfg.train_size, cfg.test_size, cfg.difficulty, cfg.seed)
    if cfg.task == "preference":
        from scratchlm.data.instruction import split_examples
        from scratchlm.finetune.setup import load_examples

        train, _, test = split_examples(load_examples(cfg.data), seed=cfg.seed)
        return ([(e.instruction, "") for e in train[:cfg.train_size]],
                [(e.instruction, "") for e in test[:cfg.test_size]])
    from scratchlm.evaluate.gsm8k import load_gsm8k

    train = [(p.question, p.target) for p in load_gsm8k("train", cfg.train_size)]
    test = [(p.question, p.target) for p in load_gsm8k("test", cfg.test_size)]
    return train, test


def encode_prompts(problems, tok, room: int, what: str, suffix: str = "") -> list[Prompt]:
    """Chat-template prompts (the question, then ``suffix``); those longer than ``room``
    tokens are reported and skipped."""
    from scratchlm.tokenizers.chat import encode_chat

    out, skipped = [], []
    for n, (question, answer) in enumerate(problems):
        ids = encode_chat(tok, [{"role": "user", "content": question + suffix}],
                          add_generation_prompt=True)
        if len(ids) > room:
            skipped.append(n)
            continue
        out.append(Prompt(question, ids, answer))
    if skipped:
        tqdm.write(f"{what}: skipped {len(skipped)} prompt(s) longer than the {room} tokens "
                   f"the context leaves beside the completion (problems {skipped[:10]}"
                   f"{' ...' if len(skipped) > 10 else ''})")
    if not out:
        raise ValueError(f"{what}: no prompt fits the context")
    return out


def check_config(cfg: GRPOConfig) -> bool:
    """Refuse what cannot run, before any folder or model: whether the task's answers are
    checked (math) or scored by a reward model."""
    check_eval(cfg.eval)
    check_settings(cfg.grpo)
    if cfg.task not in TASKS:
        raise ValueError(f"--task must be one of {', '.join(TASKS)}, got {cfg.task!r}")
    from scratchlm.rl.rewards import parse_spec

    specs = dict(parse_spec(cfg.grpo.rewards))  # a bad name or weight fails before any folder
    if cfg.grpo.reward_model and "reward_model" not in specs:
        raise ValueError("--grpo.reward_model is given but --grpo.rewards has no reward_model "
                         "term (e.g. --grpo.rewards reward_model or answer,reward_model:0.5)")
    checked = cfg.task in CHECKED
    if not checked and set(specs) & {"answer", "format"}:
        raise ValueError(f"--task {cfg.task} has no answers to check: --grpo.rewards takes "
                         "reward_model (and length), e.g. --grpo.rewards reward_model "
                         "--grpo.reward_model runs/reward/final")
    if checked and cfg.data != GRPOConfig.data:
        raise ValueError(f"--data is read by --task preference only, not {cfg.task}")
    return checked


class HeldOut:
    """The held-out evaluation: greedy accuracy on checked answers, or the mean reward."""

    def __init__(self, loss_module, tok, prompts, cfg: GRPOConfig, reward, checked: bool):
        self.loss_module, self.tok, self.prompts, self.reward = loss_module, tok, prompts, reward
        self.max_new_tokens, self.checked = cfg.grpo.max_new_tokens, checked
        self.what = "accuracy" if checked else "reward"

    def __call__(self) -> tuple[float, list[str]]:
        engine = self.loss_module.engine()
        if self.checked:
            return greedy_accuracy(engine, self.tok, self.prompts, self.max_new_tokens)
        return greedy_reward(engine, self.tok, self.prompts, self.max_new_tokens, self.reward)

    def shown(self, v: float) -> str:
        return f"{v:.2%}" if self.checked else f"{v:+.3f}"


def main(cfg: GRPOConfig) -> dict:
    checked = check_config(cfg)
    from scratchlm.rl.rewards import build_reward

    with training_session(cfg.train, cfg.out, resume=cfg.resume,
                          overwrite=cfg.overwrite) as (rt, out):
        if rt.distributed and cfg.train.strategy == "fsdp":
            raise ValueError("--train.strategy fsdp is not supported by GRPO yet (rollouts "
                             "need the whole model); use ddp")
        model, tok = load_model_and_tokenizer(cfg.model, device=rt.device)
        if not getattr(tok, "chat_template", None):
            raise ValueError(f"{cfg.model}: GRPO prompts use the chat template, and this "
                             "tokenizer has none")
        reward = build_reward(cfg.grpo.rewards, tok, cfg.grpo.length_penalty,
                              cfg.grpo.reward_model, rt.device)
        train_prompts, test_prompts = _prompts(cfg, tok, model, checked)
        reference = None
        if cfg.lora.rank > 0:
            apply_lora_config(model, cfg.lora)
        elif cfg.grpo.beta > 0:
            import copy

            reference = copy.deepcopy(model).eval().requires_grad_(False)
        trainable = count_parameters(model, trainable_only=True)
        tqdm.write(f"{len(train_prompts)} {cfg.task} prompts x {cfg.grpo.group_size} "
                   f"completions, {len(test_prompts)} held out; rewards {cfg.grpo.rewards}; "
                   f"{trainable:,} trainable parameters")
        loss_module = GRPOLoss(model, tok, train_prompts, reward, cfg.grpo, reference)
        held_out = HeldOut(loss_module, tok, test_prompts, cfg, reward, checked)
        what = held_out.what
        t0 = time.perf_counter()
        before, texts_before = held_out()
        tqdm.write(f"held-out {what} before: {held_out.shown(before)} "
                   f"({time.perf_counter() - t0:.0f}s)")
        trainer = prepare_training(loss_module, model, rt, cfg.train)
        optimizer = optimizer_for(model, cfg.train, rt.device)
        last: dict = {}  # the latest held-out evaluation: the final one is not run twice

        def on_eval(step: int) -> dict:
            acc, texts = held_out()
            last.update(step=step, acc=acc, texts=texts)
            tqdm.write(f"step {step}: held-out {what} {held_out.shown(acc)}")
            _plot_rewards(rt, out, cfg.task, what)
            return {f"heldout_{what}": acc}

        t1 = time.perf_counter()
        # Ctrl-C: fit saves a checkpoint and raises, so no held-out pass or final/ follows
        done = fit(model, trainer, optimizer, PromptIndices(len(train_prompts)), None,
                   cfg.train, rt, out, to_dict(cfg), on_eval=on_eval,
                   resume=cfg.resume or None).step
        train_s = time.perf_counter() - t1
        if last.get("step") == done:
            after, texts_after = last["acc"], last["texts"]
        else:  # resumed at or past the end: no evaluation ran in this process
            after, texts_after = held_out()
        # the steps the model has taken (a resumed run's include the earlier process's)
        tqdm.write(f"held-out {what} {held_out.shown(before)} -> {held_out.shown(after)} after "
                   f"{done} steps ({train_s / 60:.1f} min of training in this process)")
        result = {"task": cfg.task, "trainable": trainable, f"{what}_before": before,
                  f"{what}_after": after, "train_minutes": train_s / 60,
                  "heldout": len(test_prompts)}
        model = whole_model(model, rt)
        if not rt.is_main:
            return result
        _plot_rewards(rt, out, cfg.task, what)  # with the last held-out evaluation
        result["samples"] = [{"question": p.text, "reference": p.reference, "before": b,
                              "after": a}
                             for p, b, a in zip(test_prompts, texts_before, texts_after)]
        (out / "grpo.json").write_text(json.dumps(result, indent=2))
        save_final(model, tok, out / "final", cfg.lora, cfg.model)
        evaluate_final(cfg.eval, model, tok, out, str(out / "final"))
        return result


def _prompts(cfg: GRPOConfig, tok, model, checked: bool):
    """(train, held-out) prompts of the task, each leaving room for the completion."""
    from scratchlm.data.instruction import GSM8K_PROMPT_SUFFIX

    train_pb, test_pb = task_problems(cfg)
    room = model.cfg.context_length - cfg.grpo.max_new_tokens
    suffix = GSM8K_PROMPT_SUFFIX if checked else ""  # math: the answer after ####
    return (encode_prompts(train_pb, tok, room, f"{cfg.task} train", suffix),
            encode_prompts(test_pb, tok, room, f"{cfg.task} held-out", suffix))


def _plot_rewards(rt, out, task: str, what: str) -> None:
    """reward.png, as loss.png: updated while the run runs."""
    if rt.is_main:
        with open(out / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        plot_series(rows, ["reward", "accuracy", f"heldout_{what}"], out / "reward.png",
                    f"GRPO on {task}", "reward / accuracy")
