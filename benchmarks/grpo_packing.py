"""GRPO's update pass with the group's completions packed (``--grpo.packing``) against the
padded rows, in one process run: the seconds of a forward + backward over one group, and the
ratio.

    python benchmarks/grpo_packing.py [--steps 6] [--group 8] [--model smollm2-135m]

One prompt of 64 tokens and G completions whose lengths spread as sampled answers do (a
fixed draw, 24 to 256 tokens), a model of the preset's shape from one random init (speed does
not depend on the weights), full finetuning. Both paths, each with the prompt shared (the
default) and with block checkpointing (whole rows: padded, or packed behind a document mask),
alternate step by step; the log-probabilities of the two agree (printed). Prints the ISA.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch


def main() -> None:
    import machine

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()

    from scratchlm.models.registry import build_model, preset
    from scratchlm.rl.grpo import group_logprobs

    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(24, 257, (args.group,), generator=gen).tolist()
    width = max(lengths)
    prompt = torch.randint(0, 49152, (64,), generator=gen)
    rows = torch.randint(0, 49152, (args.group, width), generator=gen)
    real = torch.arange(width)[None] < torch.tensor(lengths)[:, None]
    rows[~real] = 0
    weights = torch.randn(rows.shape, generator=gen) * real
    torch.manual_seed(0)
    _, cfg = preset(args.model)
    models = {ck: build_model(dataclasses.replace(cfg, grad_checkpointing=ck)).train()
              for ck in (False, True)}
    models[True].load_state_dict(models[False].state_dict())
    print(f"ISA: {machine.isa()}; {args.model} shape, random init; one prompt of 64 tokens, "
          f"{args.group} completions of {min(lengths)}-{width} tokens ({sum(lengths)} real, "
          f"{args.group * width} padded)")
    sides = [(ck, packed) for ck in (False, True) for packed in (False, True)]
    seconds = {side: [] for side in sides}
    logps = {}
    for step in range(args.steps + 1):  # the first is a warm-up
        for side in (sides if step % 2 else sides[::-1]):
            ck, packed = side
            model = models[ck]
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            logp, _ = group_logprobs(model, prompt, rows, 1.0, lengths if packed else None)
            (logp * weights).sum().backward()
            if step:
                seconds[side].append(time.perf_counter() - t0)
            logps[side] = logp.detach()
    for ck in (False, True):
        name = "block checkpointing, whole rows" if ck else "prompt shared"
        pad, pack = (min(seconds[ck, p]) for p in (False, True))
        diff = float((logps[ck, True] - logps[ck, False])[real].abs().max())
        print(f"{name:>32}: padded {pad:6.2f} s, packed {pack:6.2f} s per group: "
              f"{pad / pack:.2f}x (log-probabilities agree within {diff:.1e})")


if __name__ == "__main__":
    main()
