"""K-quant export against llama.cpp's own quantizer (``pip install llama-cpp-python``).

    python benchmarks/kquant_export.py [--quant q4_k_m] [--rounds 2] [--threads 2]

SmolLM2-135M-Instruct is exported once to an F16 GGUF (by us); from that same file
1. ``scratchlm export --quant QUANT`` (a GGUF input: its tensors rewritten, no model built,
   ``export/requantize.py``) and llama.cpp's ``llama_model_quantize`` each write the QUANT
   file, each in its own process, rounds alternated: wall time and peak memory of the process
   (goal: time <= 1.5x llama.cpp's, memory < 2x the fp32 model); and, for reference, the
   model exporter on the same model (``--model smollm2-135m-instruct``: the Q4_1 file loaded
   into a PyTorch model, then written);
2. the two files are compared tensor by tensor (type and bytes);
3. llama.cpp's perplexity on 512 tokens of Tiny Shakespeare with each file;
4. greedy decode of our file, llama.cpp against our engine (``quantize="auto"``, or the
   ``--quantize`` modes given), batch 1 and 8, and a 512-token prompt.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from machine import isa  # noqa: E402
from peak_rss import run_measured  # noqa: E402

LLAMA_QUANTIZE = """
import ctypes, sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype, p.nthread = int(sys.argv[3]), int(sys.argv[4])
assert llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(),
                                      ctypes.byref(p)) == 0
"""


def tensors(path: Path) -> dict:
    import gguf

    return {t.name: (t.tensor_type.name, t.data.tobytes())
            for t in gguf.GGUFReader(str(path)).tensors}


def perplexity(path: Path, ids: list[int], threads: int) -> float:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=len(ids) + 8, n_threads=threads,
                n_threads_batch=threads, n_batch=512, verbose=False, logits_all=True)
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids) - 1], dtype=np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    llm.close()
    return float(np.exp(-logp[np.arange(len(ids) - 1), ids[1:]].mean()))


def main() -> None:
    from scratchlm.export.quant_mix import FILE_TYPES

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quant", default="q4_k_m", choices=list(FILE_TYPES))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--quantize", nargs="+", default=["auto"],
                    help="how our engine loads the file for the decode comparison: auto (the "
                         "default), gguf, gguf-a8, int8; several are timed side by side")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"ISA: {isa()}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        f16 = tmp / "smol-f16.gguf"
        py = sys.executable
        run_measured([py, "-m", "scratchlm", "export", "--model", "smollm2-135m-instruct",
                      "--dtype", "f16", "--out", str(f16)])
        ours, theirs = tmp / f"ours-{args.quant}.gguf", tmp / f"llama-{args.quant}.gguf"
        sides = {
            "llama.cpp": [py, "-c", LLAMA_QUANTIZE, str(f16), str(theirs),
                          str(FILE_TYPES[args.quant].code), str(args.threads)],
            "scratchlm": [py, "-m", "scratchlm", "export", "--model", str(f16), "--quant",
                          args.quant, "--dtype", "f16", "--out", str(ours), "--overwrite"],
            "scratchlm, from a model": [py, "-m", "scratchlm", "export", "--model",
                                        "smollm2-135m-instruct", "--quant", args.quant,
                                        "--out", str(tmp / "model.gguf"), "--overwrite"],
        }
        best = {k: (float("inf"), 0.0) for k in sides}
        for _ in range(args.rounds):
            for name, cmd in sides.items():
                t0 = time.perf_counter()
                _, peak = run_measured(cmd)
                dt = time.perf_counter() - t0
                best[name] = (min(best[name][0], dt), max(best[name][1], peak))
        from scratchlm.checkpoints.load import load_model_and_tokenizer

        fp32_mb = sum(p.numel() * 4 for p in
                      load_model_and_tokenizer("smollm2-135m-instruct")[0].parameters()) / 1e6
        print(f"{args.quant} export of SmolLM2-135M from the same F16 GGUF ({f16.stat().st_size / 1e6:.0f} MB), "
              f"{args.threads} threads, each command in its own process, best of {args.rounds}:")
        for name, (dt, peak) in best.items():
            print(f"  {name:>24}: {dt:6.2f} s, peak {peak:6.0f} MB ({peak / fp32_mb:.2f}x the "
                  f"fp32 model's {fp32_mb:.0f} MB)")
        print(f"  time scratchlm / llama.cpp = {best['scratchlm'][0] / best['llama.cpp'][0]:.2f}x "
              f"(goal <= 1.5x); from a model "
              f"{best['scratchlm, from a model'][0] / best['llama.cpp'][0]:.2f}x")

        a, b = tensors(ours), tensors(theirs)
        types = {}
        for _, (t, _) in b.items():
            types[t] = types.get(t, 0) + 1
        same_types = {k: v[0] for k, v in a.items()} == {k: v[0] for k, v in b.items()}
        same_bytes = same_types and all(a[k][1] == b[k][1] for k in a)
        print(f"  tensors: {len(a)} vs {len(b)}; types {'equal' if same_types else 'DIFFER'} "
              f"({', '.join(f'{k} {v}' for k, v in sorted(types.items()))}); bytes "
              f"{'equal' if same_bytes else 'DIFFER'}")

        from scratchlm.downloads.sources import fetch

        tok = load_model_and_tokenizer("smollm2-135m-instruct")[1]
        text = fetch("tinyshakespeare").read_text(encoding="utf-8")
        ids = tok.encode(text[200_000:205_000])[:512]
        print(f"  llama.cpp perplexity on 512 tokens of Tiny Shakespeare: our file "
              f"{perplexity(ours, ids, args.threads):.4f}, its own "
              f"{perplexity(theirs, ids, args.threads):.4f}, the F16 file "
              f"{perplexity(f16, ids, args.threads):.4f}")

        import generation
        from scratchlm.checkpoints.load import auto_quantize
        from scratchlm.generation.engine import Engine

        modes = [auto_quantize(str(ours)) if q == "auto" else q for q in args.quantize]
        engines = {f"ours {q}": Engine(load_model_and_tokenizer(str(ours), quantize=q)[0])
                   for q in modes}
        torch.manual_seed(0)
        prompts = {b: torch.randint(0, 49152, (b, 16)) for b in (1, 8)}
        long = torch.randint(0, 49152, (1, 512))
        print(f"decode of our {args.quant} file (quantize=auto loads it as "
              f"{auto_quantize(str(ours))!r}):")
        generation.llama_cpp_speed(engines, prompts, long, args.new_tokens, args.rounds,
                                   path=ours)


if __name__ == "__main__":
    main()
