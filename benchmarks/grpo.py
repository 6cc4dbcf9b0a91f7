"""One GRPO step, ours vs trl's ``GRPOTrainer``: 8 prompts x 4 completions x 128 tokens, LoRA
r=16 (alpha 32, every linear layer but the head: peft's "all-linear") on SmolLM2-135M-Instruct,
CPU fp32, the same weights (our embedded GGUF, exported to a transformers folder for trl), the
same prompts and reward.

    python benchmarks/grpo.py [--steps 3] [--tokens 128] [--rss] [--micro 1]

Each side takes ``--steps`` optimizer steps after one warm-up step, alternating step by step
in one process: ours through ``train_step`` on ``GRPOLoss``, trl through ``trainer.train()``
one step at a time (timed from its step-begin to its step-end callback, so its per-call setup
is not counted). Completions are forced to the full length on both sides (no end-of-text
stop; trl: ``min_new_tokens``), so both decode the same number of tokens, and every group
goes through the update on both sides (ours skips tied groups by default). Rollout time is
ours from the loss module's statistics and trl's from its ``_generate_and_score_completions``.
``--micro P``: our update in micro-batches of P prompts (one rollout for the step, a forward and
backward per micro-batch, the same gradient), without block checkpointing, since only one
micro-batch's activations are alive at a time; the default (0) is one batch of all prompts,
checkpointed as trl is. ``--rss`` also runs each side alone in a child process and reports
the peak resident memory of each (one process's peak cannot be split between two sides).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import torch

PROMPTS, GROUP, RANK = 8, 4, 16


def prompts(tok_hf) -> list[tuple[str, list[int], str]]:
    from scratchlm.data.arithmetic import arithmetic_problems
    from scratchlm.evaluate.gsm8k import PROMPT_SUFFIX

    out = []
    for q, a in arithmetic_problems(PROMPTS, 1, seed=0):
        text = tok_hf.apply_chat_template([{"role": "user", "content": q + PROMPT_SUFFIX}],
                                          tokenize=False, add_generation_prompt=True)
        out.append((text, tok_hf(text, add_special_tokens=False).input_ids, a))
    return out


class _NoStop:
    """Our tokenizer without an end-of-text id: completions run to max_new_tokens."""

    def __init__(self, tok):
        self.tok, self.eos_id = tok, None

    def decode(self, ids):
        return self.tok.decode(ids)


def build_ours(folder, items, tokens, checkpointing=True):
    from scratchlm.rl.rewards import build_reward
    from scratchlm.finetune.config import GRPOSettings
    from scratchlm.finetune.lora import apply_lora
    from scratchlm.rl.rollout import GRPOLoss, Prompt
    from scratchlm.checkpoints.load import load_model_and_tokenizer
    from scratchlm.training.optim import build_optimizer

    model, tok = load_model_and_tokenizer(str(folder))
    # the modules of peft's "all-linear": every linear layer but the output head
    apply_lora(model, RANK, 32.0, ("q", "k", "v", "out", "ff"), scaling="peft")
    model.cfg.grad_checkpointing = checkpointing  # trl's default, and our recipe's
    # every group through the update, as trl does (ours skips tied groups by default)
    s = GRPOSettings(group_size=GROUP, max_new_tokens=tokens, temperature=1.0,
                     skip_zero_variance=False)
    loss = GRPOLoss(model, _NoStop(tok), [Prompt(q, ids, a) for q, ids, a in items],
                    build_reward("answer"), s)
    opt = build_optimizer(model, "adamw", 1e-5, 0.0, (0.9, 0.999), "cpu")
    return model, loss, opt


def step_ours(state, rt, micro: int = 0) -> tuple[float, float]:
    from scratchlm.training.step import train_step

    model, loss, opt = state
    idx = torch.arange(PROMPTS)
    parts = idx.split(micro) if micro else [idx]
    t0 = time.perf_counter()
    train_step(loss, opt, [(p, p) for p in parts], rt, 1.0)
    total = time.perf_counter() - t0
    return total, loss.step_metrics()["rollout_s"]


def build_trl(folder, items, tokens):
    import transformers
    import trl
    from datasets import Dataset
    from peft import LoraConfig

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    answers = {q: a for q, _, a in items}

    def reward(prompts, completions, **kw):
        from scratchlm.rl.rewards import answer_reward

        return [answer_reward(p, c, answers[p]) for p, c in zip(prompts, completions)]

    args = trl.GRPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=PROMPTS
                          * GROUP, num_generations=GROUP, max_completion_length=tokens,
                          generation_kwargs={"min_new_tokens": tokens}, temperature=1.0,
                          learning_rate=1e-5, beta=0.0, max_steps=1, report_to=[],
                          use_cpu=True, logging_steps=1, save_strategy="no",
                          disable_tqdm=True, dataloader_num_workers=0)
    data = Dataset.from_list([{"prompt": q} for q, _, _ in items])
    trainer = trl.GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data,
                              processing_class=tok,
                              peft_config=LoraConfig(r=RANK, lora_alpha=32,
                                                     target_modules="all-linear"))
    times = {"rollout": 0.0, "step": 0.0, "t0": 0.0}
    generate = trainer._generate_and_score_completions

    def timed_generate(*a, **k):
        t0 = time.perf_counter()
        out = generate(*a, **k)
        times["rollout"] += time.perf_counter() - t0
        return out
    trainer._generate_and_score_completions = timed_generate

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, *a, **k):
            times["t0"] = time.perf_counter()

        def on_step_end(self, *a, **k):
            times["step"] += time.perf_counter() - times["t0"]
    trainer.add_callback(Timer())
    return trainer, times


def step_trl(state) -> tuple[float, float]:
    trainer, times = state
    times["rollout"] = times["step"] = 0.0
    trainer.train()
    return times["step"], times["rollout"]


def export(folder) -> None:
    from scratchlm.export.hf import write_hf
    from scratchlm.checkpoints.load import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    write_hf(model, tok, folder)


def alone(side: str, folder: str, tokens: int, micro: int) -> None:
    """One side, one warm-up and one timed step: prints its peak RSS in MiB."""
    import transformers

    from scratchlm.training.runtime import setup_runtime

    tok_hf = transformers.AutoTokenizer.from_pretrained(folder)
    items = prompts(tok_hf)
    if side == "ours":
        state = build_ours(folder, items, tokens, checkpointing=not micro)
        rt = setup_runtime(device="cpu")
        for _ in range(2):
            step_ours(state, rt, micro)
    else:
        state = build_trl(folder, items, tokens)
        for _ in range(2):
            step_trl(state)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the parent (which holds
    # both sides), while VmHWM belongs to this process's own memory map
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"side": side, "peak_rss_mb": int(hwm.split()[1]) / 1024}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--rss", action="store_true")
    p.add_argument("--micro", type=int, default=0, help="prompts per micro-batch (0: all)")
    p.add_argument("--alone", choices=["ours", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(2)
    if args.alone:
        return alone(args.alone, args.folder, args.tokens, args.micro)

    import transformers

    from scratchlm.training.runtime import setup_runtime

    with tempfile.TemporaryDirectory() as folder:
        export(folder)
        tok_hf = transformers.AutoTokenizer.from_pretrained(folder)
        items = prompts(tok_hf)
        rt = setup_runtime(device="cpu")
        ours = build_ours(folder, items, args.tokens, checkpointing=not args.micro)
        theirs = build_trl(folder, items, args.tokens)
        trainable = [sum(p.numel() for p in m.parameters() if p.requires_grad)
                     for m in (ours[0], theirs[0].model)]
        print(f"trainable parameters: ours {trainable[0]:,}, trl {trainable[1]:,}")
        step_ours(ours, rt, args.micro)  # warm-up: kernels built, caches allocated
        step_trl(theirs)
        sums = {"ours": [0.0, 0.0], "trl": [0.0, 0.0]}
        for _ in range(args.steps):  # alternate the sides step by step
            for side, total_roll in (("ours", step_ours(ours, rt, args.micro)),
                                     ("trl", step_trl(theirs))):
                sums[side][0] += total_roll[0]
                sums[side][1] += total_roll[1]
        n = args.steps
        for side, (total, roll) in sums.items():
            print(f"{side:>4}: step {total / n:6.2f}s = rollout {roll / n:6.2f}s + update "
                  f"{(total - roll) / n:6.2f}s")
        o, t = sums["ours"], sums["trl"]
        print(f"ours / trl: step {o[0] / t[0]:.2f}x, rollout {o[1] / t[1]:.2f}x, update "
              f"{(o[0] - o[1]) / (t[0] - t[1]):.2f}x  ({PROMPTS} prompts x {GROUP} x "
              f"{args.tokens} tokens, LoRA r={RANK}, {n} steps each; ours in "
              f"{'micro-batches of ' + str(args.micro) if args.micro else 'one batch'})")
        if args.rss:
            rss = {}
            for side in ("ours", "trl"):
                out = subprocess.run([sys.executable, __file__, "--alone", side, "--folder",
                                      folder, "--tokens", str(args.tokens), "--micro",
                                      str(args.micro)],
                                     capture_output=True, text=True, check=True)
                rss[side] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]
            print(f"peak RSS: ours {rss['ours']:.0f} MiB, trl {rss['trl']:.0f} MiB -> "
                  f"{rss['ours'] / rss['trl']:.2f}x")


if __name__ == "__main__":
    main()
