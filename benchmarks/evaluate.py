"""Multiple-choice scoring speed: our lm_eval model class (the context's KV cache shared by
its choices) vs lm-evaluation-harness's own ``hf`` backend, SmolLM2-135M-Instruct on both
sides (our embedded GGUF, and the same weights exported to a transformers folder), the same
requests, one process, fp32 CPU.

    python benchmarks/evaluate.py [--items 500] [--hf-batch 8] [--chunk 100]

Items are synthetic 4-choice questions (a context of 30-60 words of The Verdict, choices of
2-8 words). The items are split into chunks and the two sides alternate chunk by chunk.
Prints examples/s for each side, the ratio (goal >= 2), and the largest difference between
the two sides' log-likelihoods.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

import torch


def items(n: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    from scratchlm.downloads.sources import fetch

    words = fetch("the-verdict").read_text(encoding="utf-8").split()
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        start = rng.randrange(len(words) - 80)
        ctx = " ".join(words[start:start + rng.randint(30, 60)])
        choices = []
        for _ in range(4):
            s = rng.randrange(len(words) - 10)
            choices.append(" " + " ".join(words[s:s + rng.randint(2, 8)]))
        out.append((ctx, choices))
    return out


def requests(chunk):
    from lm_eval.api.instance import Instance

    return [Instance(request_type="loglikelihood", doc={}, arguments=(ctx, c), idx=j)
            for ctx, choices in chunk for j, c in enumerate(choices)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--items", type=int, default=500)
    p.add_argument("--hf-batch", type=int, default=8)
    p.add_argument("--chunk", type=int, default=100)
    args = p.parse_args()
    torch.set_num_threads(2)

    from lm_eval.models.huggingface import HFLM

    from scratchlm.evaluate.harness import ScratchLM
    from scratchlm.export.hf import write_hf

    ours = ScratchLM("smollm2-135m-instruct")
    with tempfile.TemporaryDirectory() as d:
        write_hf(ours.model, ours.tokenizer, d)
        theirs = HFLM(pretrained=d, batch_size=args.hf_batch, device="cpu", dtype="float32")
        data = items(args.items)
        chunks = [data[i:i + args.chunk] for i in range(0, len(data), args.chunk)]
        t_ours = t_theirs = 0.0
        worst = 0.0
        for chunk in chunks:  # alternate the sides chunk by chunk
            reqs = requests(chunk)
            t0 = time.perf_counter()
            a = ours.loglikelihood(reqs)
            t_ours += time.perf_counter() - t0
            t0 = time.perf_counter()
            b = theirs.loglikelihood(reqs)
            t_theirs += time.perf_counter() - t0
            worst = max(worst, max(abs(x[0] - y[0]) for x, y in zip(a, b)))
    n = len(data)
    print(f"{n} 4-choice items: ours {n / t_ours:.2f} examples/s, lm-eval hf (batch "
          f"{args.hf_batch}) {n / t_theirs:.2f} examples/s -> {t_theirs / t_ours:.2f}x; "
          f"largest log-likelihood difference {worst:.2e}")


if __name__ == "__main__":
    main()
