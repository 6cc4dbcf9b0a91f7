"""GGUF files we export, run by llama.cpp itself (``pip install llama-cpp-python``): does it
load them, does it agree with us, and how fast does each side decode the same file.

    python benchmarks/llama_cpp_export.py [--new-tokens 64] [--threads 2] [--rounds 3]

1. SmolLM2-135M-Instruct (from its embedded GGUF) exported to Q8_0 and Q4_0 by
   ``scratchlm export``; for each file, llama.cpp's last-position logits on a chat prompt
   against ours (max difference and argmax), its greedy reply, and decode tokens/s at batch 1:
   llama.cpp vs our engine (fp32 weights read from the file, and int8), same file, same
   threads, rounds alternated. Prints ours / llama.cpp.
2. A GPT pretrained here from scratch with our own BPE (a tiny one on The Verdict, 300
   steps), exported as llama.cpp's gpt2 architecture: the greedy continuation from both sides.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def export(model: str, out: Path, **kw) -> Path:
    from scratchlm.recipes.configs import ExportConfig
    from scratchlm.recipes.export import main

    main(ExportConfig(model=model, out=str(out), overwrite=True, **kw))
    return out


def llama(path: Path, threads: int, n_ctx: int = 1024, logits_all: bool = False):
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                 verbose=False, logits_all=logits_all)


def llama_decode(llm, ids: list[int], n: int) -> float:
    """tokens/s of n greedy decode steps after the prompt (the prefill's first token excluded)."""
    llm.reset()
    steps = llm.generate(ids, temp=0.0, reset=True)
    next(steps)  # prefill + first token
    t0 = time.perf_counter()
    for _, _tok in zip(range(n), steps):
        pass
    return n / (time.perf_counter() - t0)


def ours_decode(engine, ids: list[int], n: int) -> float:
    from scratchlm.generation.engine import SamplingParams

    engine.generate([ids], SamplingParams(max_new_tokens=1))  # prefill timing excluded below
    t0 = time.perf_counter()
    engine.generate([ids], SamplingParams(max_new_tokens=n + 1))
    full = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine.generate([ids], SamplingParams(max_new_tokens=1))
    prefill = time.perf_counter() - t0
    return n / max(full - prefill, 1e-9)


def smollm2(tmp: Path, args) -> None:
    from scratchlm.generation.engine import Engine
    from scratchlm.checkpoints.load import load_model_and_tokenizer
    from scratchlm.tokenizers.chat import encode_chat

    for quant in ("q8_0", "q4_0"):
        path = export("smollm2-135m-instruct", tmp / f"smol-{quant}.gguf", quant=quant)
        model, tok = load_model_and_tokenizer(str(path))
        ids = encode_chat(tok, QUESTION, add_generation_prompt=True)
        llm = llama(path, args.threads, logits_all=True)
        llm.eval(ids)
        theirs = np.array(llm.scores[len(ids) - 1])
        with torch.no_grad():
            mine = model(torch.tensor([ids]))[0, -1].numpy()
        reply = llm.create_completion(ids, max_tokens=24, temperature=0.0)["choices"][0]["text"]
        print(f"{quant}: llama.cpp loads it; last logits max |diff| "
              f"{np.abs(theirs - mine).max():.3f} (scale {np.abs(mine).max():.1f}), argmax "
              f"{theirs.argmax()} vs ours {mine.argmax()}; llama.cpp replies {reply!r}")
        fast = llama(path, args.threads)
        int8, _ = load_model_and_tokenizer(str(path), quantize="int8")
        engines = {"ours fp32": Engine(model), "ours int8": Engine(int8)}
        speeds: dict[str, list[float]] = {k: [] for k in ["llama.cpp", *engines]}
        for _ in range(args.rounds):  # alternate the sides within each round
            speeds["llama.cpp"].append(llama_decode(fast, ids, args.new_tokens))
            for name, engine in engines.items():
                speeds[name].append(ours_decode(engine, ids, args.new_tokens))
        best = {k: max(v) for k, v in speeds.items()}
        print(f"{quant} decode, batch 1, {args.threads} threads, {args.new_tokens} tokens "
              f"(best of {args.rounds}): " + ", ".join(f"{k} {v:.1f} tok/s"
                                                      for k, v in best.items()))
        for name in engines:
            print(f"  {name} / llama.cpp = {best[name] / best['llama.cpp']:.2f}x")


def from_scratch(tmp: Path, args) -> None:
    from scratchlm.downloads.sources import fetch
    from scratchlm.checkpoints.load import load_model_and_tokenizer
    from scratchlm.recipes.configs import PretrainConfig
    from scratchlm.recipes.pretrain import main as pretrain
    from scratchlm.tokenizers import BPETokenizer
    from scratchlm.training.config import TrainConfig

    text = fetch("the-verdict").read_text(encoding="utf-8")
    BPETokenizer.train(text, vocab_size=1024, progress=False).save(tmp / "tok.json")
    pretrain(PretrainConfig(model="gpt2-124m", n_layer=4, n_embd=128, n_head=4,
                            context_length=128, tokenizer=str(tmp / "tok.json"),
                            data=["the-verdict"], out=str(tmp / "run"), sample_tokens=0,
                            train=TrainConfig(max_steps=300, batch_size=8, lr=3e-3,
                                              eval_every=300, tensorboard=False)))
    path = export(str(tmp / "run" / "final"), tmp / "scratch.gguf", dtype="f32")
    model, tok = load_model_and_tokenizer(str(tmp / "run" / "final"))
    ids = tok.encode("I had always thought Jack Gisburn")
    x = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(20):
            x = torch.cat([x, model(x)[:, -1:].argmax(-1)], 1)
    llm = llama(path, args.threads, n_ctx=128)
    theirs = llm.create_completion(ids, max_tokens=20, temperature=0.0)["choices"][0]["text"]
    mine = tok.decode(x[0, len(ids):].tolist())
    print(f"from-scratch GPT (our BPE, gpt2 arch): ours {mine!r}\n"
          f"                                      llama.cpp {theirs!r} "
          f"({'same' if mine == theirs else 'DIFFERENT'})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as d:
        smollm2(Path(d), args)
        from_scratch(Path(d), args)


if __name__ == "__main__":
    main()
