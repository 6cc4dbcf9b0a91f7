"""Instruction finetuning with padding-free packed batches against the book's padded batches, in
one process run: tokens/s (goal >= 1.5x) at the same loss curve.

    python benchmarks/sft_packing.py [--steps 12] [--model smollm2-135m]

The book's instruction data (alpaca style, GPT-2 tokenizer), batches of 8 in one fixed shuffled
order, a model of the preset's shape from one random init (speed does not depend on the
weights). The two sides alternate, step by step, each on its own copy of the model and
optimizer; every step's loss is printed for both. Prints the ISA.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch


def examples(name: str, read_examples, fetch):
    if name != "gsm8k":
        return read_examples(fetch(name))
    import json
    import tempfile

    rows = [json.loads(line) for line in fetch("gsm8k-train").read_text().splitlines()[:2000]]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([{"instruction": r["question"], "input": "", "output": r["answer"]}
                   for r in rows], f)
    return read_examples(f.name)


def main():
    import machine

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--data", default="instruction-data",
                    help="instruction-data (the book's: lengths 57 tokens on average, 92 at "
                         "most, so padding wastes only 19%%) or gsm8k (question -> worked "
                         "answer, lengths vary more)")
    args = ap.parse_args()

    from scratchlm.data.instruction import (InstructionCollate, InstructionDataset,
                                            read_examples)
    from scratchlm.downloads.sources import fetch
    from scratchlm.models.registry import build_model, preset
    from scratchlm.tokenizers import get_tokenizer
    from scratchlm.training.losses import CausalLMLoss

    tok = get_tokenizer("gpt2")
    ds = InstructionDataset(examples(args.data, read_examples, fetch), tok, "alpaca")
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0)).tolist()
    _, cfg = preset(args.model, vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    base = build_model(cfg)
    sides = {}
    for name, packed in (("padded", False), ("packed", True)):
        model = copy.deepcopy(base)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        sides[name] = (CausalLMLoss(model), opt, InstructionCollate(tok.eos_id, 1024, packed))
    print(f"ISA: {machine.isa()}; {args.model} shape, random init; data {args.data}")
    seconds = {name: 0.0 for name in sides}
    tokens = 0
    for step in range(args.steps):
        idx = order[step * args.batch:(step + 1) * args.batch]
        batch = [ds[i] for i in idx]
        tokens += sum(len(ids) - 1 for ids, _ in batch)
        row = []
        for name in (("padded", "packed") if step % 2 else ("packed", "padded")):
            loss_module, opt, collate = sides[name]
            x, y = collate(batch)
            t0 = time.perf_counter()
            loss = loss_module(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            seconds[name] += time.perf_counter() - t0
            row.append((name, loss.item()))
        row.sort()
        print(f"step {step + 1:3d}: " + ", ".join(f"{n} loss {v:.5f}" for n, v in row))
    for name, s in seconds.items():
        print(f"{name}: {tokens / s:8.0f} real tokens/s")
    print(f"ratio packed / padded = {seconds['padded'] / seconds['packed']:.2f}x (goal >= 1.5)")


if __name__ == "__main__":
    main()
