"""Every CUDA path and the GPU speed goals in one command, one table (goal: under 8 minutes).

    python benchmarks/gpu.py [--out docs/gpu-results.md]    # on a CUDA machine
    python benchmarks/gpu.py --dry-run                      # on a CPU: tiny sizes, same code

Run it where the project is installed by the README's setup (transformers, peft and
bitsandbytes are test dependencies; a missing one makes its rows say so, not fail). Sections,
each timed, each one failing on its own without stopping the others:

1. ``pytest -m gpu tests/gpu``: bf16 autocast, fp16 with the grad scaler, fused AdamW, 8-bit
   AdamW, torch.compile, flash SDPA, QLoRA through bitsandbytes vs our NF4, the engine and
   continuous batching on CUDA against the CPU's greedy tokens, the server on the GPU;
2. train step, gpt2-124m at context 1024, bf16 autocast + torch.compile, ours vs transformers'
   GPT2LMHeadModel (same settings, both compiled): tokens/s and MFU against the GPU's bf16
   peak (goals: MFU >= 50%, >= 1.25x transformers);
3. LoRA step (r=16, every linear layer of the blocks) on a SmolLM2-135M-shaped model, batch
   8 x 512, bf16, ours vs transformers + peft: step time (goal <= 0.8x) and peak memory
   (goal <= 0.9x);
4. greedy decode of 128 tokens on the same model in bf16 at batch 1 and 32, ours vs
   ``transformers.generate`` (goal >= 1.5x at batch 1);
5. ``torchrun`` with 2 processes sharing the one GPU (NCCL), DDP and FSDP2, a few pretraining
   steps each: runs or not, and the error when NCCL refuses. One process trains unsharded by
   design (FSDP2 over one rank would shard nothing), so world size 1 is the plain step above;
6. a few minutes of the ``speedrun`` preset ``gpu-24gb``: its tokenizer, then 300 steps of its
   pretraining (depth 12, Muon, WSD, bf16, compiled): tokens/s, MFU, held-out bits per byte.

``--dry-run`` runs all of it on the CPU at tiny sizes (the gpu tests with
``SCRATCHLM_GPU_DRY_RUN=1``, gloo for torchrun), so everything but the CUDA calls is checked
before a GPU's time is spent. Its numbers mean nothing; its table says which rows ran.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other benchmarks' helpers

ROWS: list[tuple[str, str, str, str, str, str]] = []  # what, ours, peer, ratio, goal, verdict


def row(what, ours="", peer="", ratio="", goal="", verdict=""):
    ROWS.append((what, ours, peer, ratio, goal, verdict))
    print(f"  {what}: ours {ours} | peer {peer} | ratio {ratio} | goal {goal} | {verdict}",
          flush=True)


def meets(value: float, goal: float, higher: bool = True) -> str:
    return "met" if (value >= goal if higher else value <= goal) else "NOT met"


class Bench:
    def __init__(self, dry: bool):
        self.dry = dry
        self.device = "cpu" if dry else "cuda"
        self.cuda = not dry
        self.work = Path(tempfile.mkdtemp(prefix="scratchlm-gpu-"))

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def autocast(self):
        return torch.autocast(self.device, dtype=torch.bfloat16) if self.cuda else nullcontext()

    def timed(self, fn, steps: int, warmup: int) -> float:
        """Seconds per call of ``fn``, after ``warmup`` calls."""
        for _ in range(warmup):
            fn()
        self.sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        self.sync()
        return (time.perf_counter() - t0) / steps

    def peak_mb(self, fn) -> float | None:
        if not self.cuda:
            return None
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        fn()
        return torch.cuda.max_memory_allocated() / 2**20

    # ------------------------------------------------------------------ 1. the gpu tests
    def tests(self):
        env = {**os.environ, **({"SCRATCHLM_GPU_DRY_RUN": "1"} if self.dry else {})}
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/gpu",
                            "-p", "no:cacheprovider", "-rfs"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
        lines = r.stdout.strip().splitlines()
        summary = lines[-1] if lines else r.stderr.strip()[-200:]
        for line in lines:
            if line.startswith("FAILED"):
                print("   ", line)
        row("pytest -m gpu", summary.strip("= "), goal="all pass",
            verdict="met" if r.returncode == 0 else "NOT met")

    # ------------------------------------------------------------------ 2. train step
    def train_step(self):
        from train_step import hf_step, make_hf, make_ours, ours_step

        from scratchlm.models.accounting import flops_per_token
        from scratchlm.training.runtime import setup_runtime

        if self.cuda:
            kw, batch, steps = dict(vocab_size=50257, context_length=1024, n_embd=768,
                                    n_layer=12, n_head=12), 8, 10
        else:
            kw, batch, steps = dict(vocab_size=512, context_length=64, n_embd=64, n_layer=2,
                                    n_head=4), 2, 2
        torch.manual_seed(0)
        x = torch.randint(0, kw["vocab_size"], (batch, kw["context_length"]), device=self.device)
        y = torch.roll(x, -1, dims=1)
        rt = setup_runtime("bf16" if self.cuda else "fp32", self.device)  # TF32 on, as training
        results = {}
        for name in ("transformers", "scratchlm"):
            if name == "transformers":
                model = make_hf(kw, self.device)
                opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=self.cuda)
                model = torch.compile(model)
                step = hf_step
            else:
                model, cfg = make_ours(kw, self.device)
                opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
                model.hidden_states = torch.compile(model.hidden_states)  # head+loss fused, eager
                step = ours_step
            results[name] = x.numel() / self.timed(
                lambda m=model, o=opt: step(m, o, x, y, self.autocast), steps, warmup=3)
            del model, opt
        peak = rt.peak_flops()
        per_token = flops_per_token(cfg, kw["context_length"])[1]
        mfu = {k: v * per_token / peak for k, v in results.items()} if peak else {}
        ours, hf = results["scratchlm"], results["transformers"]
        what = "gpt2-124m ctx 1024" if self.cuda else "tiny gpt"
        row(f"train step {what}, tokens/s", f"{ours:,.0f}", f"{hf:,.0f}", f"{ours / hf:.2f}x",
            ">= 1.25x", meets(ours / hf, 1.25))
        if mfu:
            row(f"train step {what}, MFU (peak {peak / 1e12:.3g} TFLOP/s)",
                f"{mfu['scratchlm']:.1%}", f"{mfu['transformers']:.1%}", "", ">= 50%",
                meets(mfu["scratchlm"], 0.5))

    # ------------------------------------------------------------------ 3. LoRA step
    def smollm2_folder(self) -> Path:
        """SmolLM2-135M's shape with random weights, written by transformers (a tiny Llama in
        a dry run), read by both sides."""
        folder = self.work / "smollm2"
        if not folder.is_dir():
            import transformers

            torch.manual_seed(0)
            size = (dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3)
                    if self.cuda else dict(hidden_size=64, intermediate_size=128,
                                           num_hidden_layers=2, num_attention_heads=4,
                                           num_key_value_heads=2))
            cfg = transformers.LlamaConfig(vocab_size=49152, max_position_embeddings=8192,
                                           rope_theta=100000.0, tie_word_embeddings=True,
                                           rms_norm_eps=1e-5, **size)
            transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
        return folder

    def lora_step(self):
        import peft
        import transformers

        from scratchlm.finetune.lora import apply_lora
        from scratchlm.checkpoints.hf import load_hf_llama
        from scratchlm.training.losses import causal_lm_loss

        folder = self.smollm2_folder()
        batch, seq, steps = (8, 512, 5) if self.cuda else (2, 32, 1)
        torch.manual_seed(0)
        x = torch.randint(0, 49152, (batch, seq), device=self.device)
        y = torch.cat([x[:, 1:], torch.full((batch, 1), -100, device=self.device)], dim=1)
        names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        out = {}
        for side in ("peft", "scratchlm"):
            if side == "peft":
                model = transformers.LlamaForCausalLM.from_pretrained(folder).to(self.device)
                model = peft.get_peft_model(model, peft.LoraConfig(
                    r=16, lora_alpha=32, target_modules=names, lora_dropout=0.0))

                def loss_fn(model=model):
                    return model(input_ids=x, labels=x).loss
            else:
                model = load_hf_llama(folder, device=self.device)
                apply_lora(model, rank=16, alpha=32, targets=("q", "k", "v", "out", "ff"),
                           scaling="peft")

                def loss_fn(model=model):
                    return causal_lm_loss(model, x, y)
            model.train()
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                    lr=1e-4, fused=True)

            def step(loss_fn=loss_fn, opt=opt):
                with self.autocast():
                    loss = loss_fn()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            seconds = self.timed(step, steps, warmup=2)
            out[side] = seconds, self.peak_mb(step)
            del model, opt
        (ours, our_mb), (peer, peer_mb) = out["scratchlm"], out["peft"]
        what = "SmolLM2-135M 8x512 bf16" if self.cuda else "tiny llama"
        row(f"LoRA step {what}, s", f"{ours:.3f}", f"{peer:.3f}", f"{ours / peer:.2f}x",
            "<= 0.8x", meets(ours / peer, 0.8, higher=False))
        if our_mb is not None:
            row("LoRA step peak memory, MiB", f"{our_mb:,.0f}", f"{peer_mb:,.0f}",
                f"{our_mb / peer_mb:.2f}x", "<= 0.9x", meets(our_mb / peer_mb, 0.9, higher=False))

    # ------------------------------------------------------------------ 4. decode
    def decode(self):
        import transformers
        from generation import time_hf, time_ours

        from scratchlm.generation.engine import Engine
        from scratchlm.checkpoints.hf import load_hf_llama

        folder = self.smollm2_folder()
        dtype = torch.bfloat16 if self.cuda else torch.float32
        new = 128 if self.cuda else 8
        hf = transformers.LlamaForCausalLM.from_pretrained(folder, dtype=dtype).to(
            self.device).eval()
        engine = Engine(load_hf_llama(folder, dtype, self.device).eval())
        for batch in (1, 32):
            prompt = torch.randint(0, 49152, (batch, 16), generator=torch.Generator().manual_seed(
                batch)).to(self.device)
            time_hf(hf, prompt, 4), time_ours(engine, prompt, 4)  # warm up both
            best = {"hf": float("inf"), "ours": float("inf")}
            for _ in range(2):  # alternate the sides, keep each one's best
                self.sync()
                best["hf"] = min(best["hf"], time_hf(hf, prompt, new)[1])
                self.sync()
                best["ours"] = min(best["ours"], time_ours(engine, prompt, new)[1])
            ours, peer = batch * new / best["ours"], batch * new / best["hf"]
            goal = ">= 1.5x" if batch == 1 else ""
            row(f"decode batch {batch}, {'bf16' if self.cuda else 'fp32'}, tokens/s",
                f"{ours:,.0f}", f"{peer:,.0f}", f"{ours / peer:.2f}x", goal,
                meets(ours / peer, 1.5) if goal else "")

    # ------------------------------------------------------------------ 5. torchrun
    def distributed(self):
        text = self.work / "corpus.txt"
        text.write_text(" ".join(f"step {i} of the run reads line {i % 7} again." for i in
                                 range(3000)))
        tok = self.work / "tok.json"
        subprocess.run([sys.executable, "-m", "scratchlm", "train-tokenizer", "--data",
                        str(text), "--vocab-size", "320", "--out", str(tok)], check=True,
                       capture_output=True, text=True, timeout=120)
        device = "cuda:0" if self.cuda else "cpu"
        for strategy in ("ddp", "fsdp"):
            out = self.work / f"run-{strategy}"
            r = subprocess.run(
                [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                 "--master_port", str(29500 + os.getpid() % 1000), "-m", "scratchlm",
                 "pretrain", "--model", "llama-tiny", "--tokenizer", str(tok), "--data",
                 str(text), "--out", str(out), "--train.device", device, "--train.strategy",
                 strategy, "--train.max_steps", "6", "--train.batch_size", "2",
                 "--train.eval_every", "3", "--train.log_every", "1", "--train.tensorboard",
                 "false", "--train.warmup_steps", "0"],
                cwd=ROOT, capture_output=True, text=True, timeout=300,
                env={**os.environ, "OMP_NUM_THREADS": "1"})
            if r.returncode == 0:
                row(f"torchrun 2 processes on one {'GPU' if self.cuda else 'CPU'}, {strategy}",
                    "ran 6 steps", verdict="ran")
            else:
                errors = [ln for ln in r.stderr.splitlines() if "Error" in ln or "error" in ln]
                row(f"torchrun 2 processes on one {'GPU' if self.cuda else 'CPU'}, {strategy}",
                    "failed", verdict=(errors[-1] if errors else r.stderr[-200:]).strip()[:160])

    # ------------------------------------------------------------------ 6. speedrun
    def speedrun(self):
        """A few minutes of the gpu-24gb preset's pretraining (its tokenizer, model, Muon and
        WSD settings, capped at a number of steps): tokens/s, MFU, held-out bits per byte."""
        import csv
        import math

        from scratchlm.config import from_dict
        from scratchlm.recipes.configs import PretrainConfig
        from scratchlm.recipes.pretrain import main as pretrain
        from scratchlm.recipes.speedrun_config import SpeedrunConfig
        from scratchlm.speedrun.run import Speedrun

        out = self.work / "speedrun"
        run = Speedrun(SpeedrunConfig(preset="gpu-24gb", out=str(out), fast=self.dry,
                                      stages=["tokenizer"]))
        run.run()
        steps = 300 if self.cuda else 6
        settings = run.settings("pretrain")
        cfg = from_dict(PretrainConfig, {
            **settings, "tokens_per_param": 0, "out": str(out / "base"),
            "data": [str(out / "data" / "train.jsonl")],
            "val_data": [str(out / "data" / "heldout.txt")], "tokenizer": str(out / "tokenizer"),
            "train": {**settings["train"], "max_steps": steps, "eval_every": steps,
                      "device": self.device, **({} if self.cuda else {"precision": "fp32",
                                                                      "compile": False})}})
        pretrain(cfg)
        with open(out / "base" / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        tps = sorted(float(r["tokens_per_s"]) for r in rows if r.get("tokens_per_s"))
        mfu = sorted(float(r["mfu"]) for r in rows if r.get("mfu"))
        val = [float(r["val_loss"]) for r in rows if r.get("val_loss")]
        per_token = run.state()["stages"]["tokenizer"]["result"]["bytes_per_token"]
        what = f"speedrun gpu-24gb pretraining, depth {settings['depth']}, {steps} steps"
        row(f"{what}, tokens/s", f"{tps[len(tps) // 2]:,.0f}")
        if mfu:
            row(f"{what}, MFU", f"{mfu[len(mfu) // 2]:.1%}", goal="(the preset plans 40%)")
        if val:
            row(f"{what}, held-out bits per byte", f"{val[-1] / math.log(2) / per_token:.3f}")


SECTIONS = ("tests", "train_step", "lora_step", "decode", "distributed", "speedrun")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="on the CPU at tiny sizes")
    ap.add_argument("--only", default=",".join(SECTIONS), help="sections, comma-separated")
    ap.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = ap.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device here: run on a GPU machine, or --dry-run to check on the CPU")
        return 2
    only = args.only.split(",")
    unknown = set(only) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    bench = Bench(args.dry_run)
    where = "CPU (dry run)" if args.dry_run else torch.cuda.get_device_name()
    print(f"scratchlm GPU check on {where}, torch {torch.__version__}", flush=True)
    start, failures = time.perf_counter(), 0
    for name in SECTIONS:
        if name not in only:
            continue
        t0 = time.perf_counter()
        print(f"[{name}]", flush=True)
        try:
            getattr(bench, name)()
        except ImportError as e:
            row(name, verdict=f"skipped: {e.name or e} is not installed")
        except Exception as e:  # one section's failure is a row, not the end of the check
            failures += 1
            row(name, "failed", verdict=f"{type(e).__name__}: {str(e).splitlines()[0][:150]}"
                if str(e) else type(e).__name__)
        print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    header = ("| what | ours | peer | ratio | goal | verdict |", "|---|---|---|---|---|---|")
    table = "\n".join([*header, *("| " + " | ".join(r) + " |" for r in ROWS)])
    total = time.perf_counter() - start
    print(f"\n{where}, {time.strftime('%Y-%m-%d')}, {total:.0f} s in all\n\n{table}")
    if args.out:
        Path(args.out).write_text(f"{where}, torch {torch.__version__}, "
                                  f"{time.strftime('%Y-%m-%d')}, {total:.0f} s\n\n{table}\n")
    return 1 if failures or any(r[-1].startswith("NOT") and r[0] == "pytest -m gpu"
                                for r in ROWS) else 0


if __name__ == "__main__":
    sys.exit(main())
