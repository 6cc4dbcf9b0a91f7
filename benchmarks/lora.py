"""One LoRA training step on SmolLM2-135M: ours vs transformers + peft, on the same weights.

    python benchmarks/lora.py [--steps 5] [--rounds 2] [--batch 8] [--seq 128] [--profile]

A step = forward + causal-LM loss + backward + AdamW on the adapters (r=16, alpha=32, PEFT
scaling), batch 8 x 128 tokens, fp32 CPU. Two target sets: q,v and every linear layer of the
blocks (q, k, v, o, gate, up, down). Each measurement runs in its own process (peak RSS is a
per-process number); rounds alternate peer and ours and keep each one's best, because this
machine's speed drifts between runs. Goals: step time ratio ours/peft <= 0.8, peak RSS ratio
<= 0.9.

The weights: a random SmolLM2-135M written once by transformers (safetensors), loaded by both.
``--profile`` also runs one more step of each side under torch.profiler and prints the share of
CPU time in matrix multiplies (work both sides must do: it bounds how far ahead we can get).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"qv": (["q_proj", "v_proj"], ["q", "v"]),
           "all": (["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                   ["q", "k", "v", "out", "ff"])}


def write_weights(folder: Path) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
        rope_theta=100000.0, tie_word_embeddings=True, rms_norm_eps=1e-5)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)


def matmul_share(step) -> tuple[float, float]:
    """(seconds in aten::mm/addmm/bmm, total profiled seconds) of one call of ``step``."""
    from torch.profiler import profile

    with profile() as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    matmuls = ("aten::mm", "aten::addmm", "aten::bmm")
    mm = sum(e.self_cpu_time_total for e in events if e.key in matmuls)
    return mm / 1e6, total / 1e6


def worker(which: str, targets: str, folder: str, steps: int, batch: int, seq: int,
           with_profile: bool = False) -> dict:
    import torch

    torch.manual_seed(0)
    x = torch.randint(0, 49152, (batch, seq))
    if which == "peft":
        import peft
        import transformers

        model = transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
        model = peft.get_peft_model(model, peft.LoraConfig(
            r=16, lora_alpha=32, target_modules=TARGETS[targets][0], lora_dropout=0.0))

        def loss_fn():
            return model(input_ids=x, labels=x).loss
    else:
        from scratchlm.finetune.lora import apply_lora
        from scratchlm.checkpoints.hf import load_hf_llama
        from scratchlm.training.losses import causal_lm_loss

        model = load_hf_llama(folder)
        apply_lora(model, rank=16, alpha=32, targets=TARGETS[targets][1], scaling="peft")
        y = torch.cat([x[:, 1:], torch.full((batch, 1), -100)], dim=1)  # what HF's labels mean

        def loss_fn():
            return causal_lm_loss(model, x, y)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    times, losses = [], []

    def step():
        loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for i in range(steps + 1):  # the first step warms up
        t0 = time.perf_counter()
        loss = step()
        if i:
            times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    out = {"step_s": min(times), "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "trainable": sum(p.numel() for p in params), "first_loss": losses[0]}
    if with_profile:
        out["mm_s"], out["profiled_s"] = matmul_share(step)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--profile", action="store_true", help="also print the matmul share")
    ap.add_argument("--worker", nargs=3, metavar=("WHICH", "TARGETS", "FOLDER"), default=None)
    args = ap.parse_args()
    if args.worker:
        which, targets, folder = args.worker
        print(json.dumps(worker(which, targets, folder, args.steps, args.batch, args.seq,
                                args.profile)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        write_weights(Path(tmp))
        print(f"SmolLM2-135M (random weights), batch {args.batch} x {args.seq}, fp32 CPU, "
              f"r=16 alpha=32, best of {args.rounds} rounds x {args.steps} steps")
        print(f"{'targets':>8} {'peft s/step':>12} {'ours s/step':>12} {'time ratio':>11} "
              f"{'peft RSS MB':>12} {'ours RSS MB':>12} {'RSS ratio':>10} {'trainable':>10}")
        for targets in TARGETS:
            best: dict[str, dict] = {}
            for _ in range(args.rounds):
                for which in ("peft", "ours"):
                    out = subprocess.run(
                        [sys.executable, __file__, "--steps", str(args.steps), "--batch",
                         str(args.batch), "--seq", str(args.seq), "--worker", which, targets, tmp]
                        + (["--profile"] if args.profile else []),
                        capture_output=True, text=True, check=True)
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    if which not in best or r["step_s"] < best[which]["step_s"]:
                        best[which] = {**r, "rss_mb": min(r["rss_mb"], best.get(which, r)["rss_mb"])}
            p, o = best["peft"], best["ours"]
            assert p["trainable"] == o["trainable"], (p["trainable"], o["trainable"])
            print(f"{targets:>8} {p['step_s']:>12.3f} {o['step_s']:>12.3f} "
                  f"{o['step_s'] / p['step_s']:>11.2f} {p['rss_mb']:>12.0f} {o['rss_mb']:>12.0f} "
                  f"{o['rss_mb'] / p['rss_mb']:>10.2f} {o['trainable']:>10,}")
            print(f"{'':>8} first-step loss: peft {p['first_loss']:.4f}, ours {o['first_loss']:.4f}")
            if args.profile:
                for label, r in (("peft", p), ("ours", o)):
                    print(f"{'':>8} {label}: matmuls {r['mm_s']:.2f} of {r['profiled_s']:.2f} s "
                          f"profiled ({r['mm_s'] / r['profiled_s']:.0%})")


if __name__ == "__main__":
    main()
