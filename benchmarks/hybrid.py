"""Qwen3.5's hybrid stack: what a decode step costs as the context grows, and a training step
against transformers'.

    python benchmarks/hybrid.py [--contexts 256 1024 4096 8192] [--steps 8] [--rounds 3]

Decode: a Qwen3.5-0.8B-shaped model (random weights, fp32, batch 1) decodes ``--steps`` tokens
after a cache holding N tokens (random keys, values and states: a step's cost does not depend
on what they hold, and a real 8k-token prefill would take minutes here), the contexts taking
turns for ``--rounds`` rounds, each keeping its fastest. Forward hooks time
each block's mixer, so the table shows the Gated DeltaNet layers (18 of 24: a fixed cost per
token) apart from the full-attention layers (6: a cost that grows with N).

Training: a small Qwen3.5-shaped model (8 layers, 256 wide, 3 linear layers to 1 full,
context 512, batch 4) against transformers' Qwen3_5ForCausalLM of the same config and
weights: forward + cross-entropy + backward + AdamW, alternating, best of ``--rounds``; the
ratio (goal >= 1.0).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from machine import isa


def decode_by_context(contexts: list[int], steps: int, rounds: int) -> None:
    from scratchlm.generation.engine import Engine
    from scratchlm.models.registry import build_model, preset

    torch.manual_seed(0)
    cfg = preset("qwen3.5-0.8b", context_length=max(contexts) + rounds * (steps + 1) + 1)[1]
    model = build_model(cfg).eval()
    engine = Engine(model)
    spent = {"linear": 0.0, "attention": 0.0}

    def timer(kind):
        def pre(module, args):
            module._t0 = time.perf_counter()

        def post(module, args, out):
            spent[kind] += time.perf_counter() - module._t0
        return pre, post

    for block in model.trf_blocks:
        mixer, kind = (block.lin, "linear") if hasattr(block, "lin") else (block.att, "attention")
        pre, post = timer(kind)
        mixer.register_forward_pre_hook(pre)
        mixer.register_forward_hook(post)
    print(f"decode, {cfg.n_layer} layers ({sum(cfg.linear_layers)} Gated DeltaNet, "
          f"{cfg.n_layer - sum(cfg.linear_layers)} full attention), batch 1, fp32:")
    print(f"{'context':>8} {'tok/s':>7} {'ms/token':>9} {'linear layers':>14} "
          f"{'attention layers':>17} {'cache MiB':>10}")
    caches = {}
    with torch.inference_mode():
        for n in contexts:
            cache = caches[n] = engine.new_cache(1, n + rounds * (steps + 1) + 1,
                                                 capacity=n + rounds * (steps + 1) + 1)
            cache.k.normal_()
            cache.v.normal_()
            cache.state.normal_(0, 0.1)
            cache.length = n
        best = {}  # context -> (s/token, linear, attention): each context's fastest round
        idx = torch.tensor([[5]])
        for _ in range(rounds):  # the contexts alternate: this machine's speed drifts
            for n, cache in caches.items():
                engine._decode(idx, cache)  # warm
                for key in spent:
                    spent[key] = 0.0
                t0 = time.perf_counter()
                for _ in range(steps):
                    engine._decode(idx, cache)
                dt = (time.perf_counter() - t0) / steps
                if n not in best or dt < best[n][0]:
                    best[n] = (dt, spent["linear"] / steps, spent["attention"] / steps)
        for n, (dt, lin, att) in best.items():
            print(f"{n:>8} {1 / dt:>7.2f} {dt * 1e3:>9.1f} {lin * 1e3:>11.1f} ms"
                  f" {att * 1e3:>14.1f} ms {caches[n].nbytes() / 2**20:>10.1f}")


def training_step(rounds: int, steps: int) -> None:
    import transformers

    from scratchlm.checkpoints.hf import save_hf
    from scratchlm.models.qwen3_5 import Qwen35, Qwen35Config
    from scratchlm.training.losses import causal_lm_loss

    torch.manual_seed(0)
    cfg = Qwen35Config(vocab_size=8192, context_length=512, n_embd=256, n_layer=8, n_head=4,
                       n_kv_head=2, head_dim=64, intermediate_size=768, linear_key_heads=4,
                       linear_value_heads=8, linear_key_dim=32, linear_value_dim=32,
                       tie_embeddings=False)
    ours = Qwen35(cfg).train()
    with tempfile.TemporaryDirectory() as d:
        save_hf(ours, d)
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            d, attn_implementation="sdpa").train()
    x = torch.randint(0, cfg.vocab_size, (4, cfg.context_length))

    y = torch.cat([x[:, 1:], torch.full_like(x[:, :1], -100)], 1)  # HF's shift, ignored end

    def ours_step(model, opt):
        loss = causal_lm_loss(model, x, y)  # what pretrain and finetuning run
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    def hf_step(model, opt):
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    with torch.no_grad():
        same = (ours(x) - hf(x).logits).abs().max().item()
    sides = {"transformers": (hf, hf_step), "scratchlm": (ours, ours_step)}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, (m, _) in sides.items()}
    best = {k: float("inf") for k in sides}
    for _ in range(rounds):  # alternate the sides; each keeps its best
        for name, (model, step) in sides.items():
            step(model, opts[name])  # warm
            t0 = time.perf_counter()
            for _ in range(steps):
                step(model, opts[name])
            best[name] = min(best[name], (time.perf_counter() - t0) / steps)
    tokens = x.numel()
    print(f"training step, {cfg.n_layer} layers x {cfg.n_embd} wide, batch {x.shape[0]} x "
          f"{x.shape[1]} tokens, fp32 (logits agree to {same:.1e}):")
    for name, dt in best.items():
        print(f"  {name:<13} {dt * 1e3:7.0f} ms/step  {tokens / dt:8.0f} tokens/s")
    print(f"  ratio {best['transformers'] / best['scratchlm']:.2f} (goal >= 1.0)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", type=int, nargs="+", default=[256, 1024, 4096, 8192])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--skip-decode", action="store_true")
    args = ap.parse_args()
    print(f"ISA: {isa()}")
    if not args.skip_decode:
        decode_by_context(args.contexts, args.steps, args.rounds)
    if not args.skip_training:
        training_step(args.rounds, max(1, args.steps // 4))


if __name__ == "__main__":
    main()
