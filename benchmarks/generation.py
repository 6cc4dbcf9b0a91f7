"""Decoding speed: our KV-cache engine vs transformers' generate (with its KV cache), same
weights, same process, fp32 CPU.

    python benchmarks/generation.py [--new-tokens 64] [--families-only]

Models: gpt2-124m with random weights, and SmolLM2-135M-Instruct (real weights, from GGUF,
written to transformers' layout by ``save_hf`` and read back by it). Prints batch-1 greedy tokens/s and the ratio
(goal >= 1.5), time to first token for a 512-token prompt, and tokens/s at batch 8; then
SmolLM2 with int8 weights: its perplexity cost and its decode speed against transformers' fp32
(goal >= 3); then a Qwen3-0.6B-shaped and a Gemma-3-270M-shaped model (random weights),
fp32 (goal >= 1.3) and int8 (goal >= 3), and the KV-cache bytes of a 32k-token context with
Gemma 3's sliding-window layers against full attention; SmolLM2 at the GGUF file's own Q4_1
blocks against int8 and fp32 (``--gguf-only``: decode, prompt, memory, bytes per token and GB/s
against this CPU's streaming bandwidth; ``--vs-llamacpp`` adds llama.cpp on the same file,
when ``llama-cpp-python`` is installed) (``--long`` also decodes to 32k tokens
on a small Gemma-3-shaped model and reports the cache it held).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch


def hf_from(model):
    """transformers' model of the same family and weights, through our HF export."""
    import tempfile

    import transformers

    from scratchlm.checkpoints.hf import save_hf

    with tempfile.TemporaryDirectory() as d:
        save_hf(model, d)
        return transformers.AutoModelForCausalLM.from_pretrained(d).eval()


def time_hf(hf, prompt, new_tokens):
    attn = torch.ones_like(prompt)
    t0 = time.perf_counter()
    out = hf.generate(prompt, attention_mask=attn, max_new_tokens=new_tokens,
                      min_new_tokens=new_tokens, do_sample=False, use_cache=True,
                      pad_token_id=0)
    dt = time.perf_counter() - t0
    return out[:, prompt.shape[1]:], dt


def time_ours(engine, prompt, new_tokens):
    from scratchlm.generation.engine import SamplingParams

    t0 = time.perf_counter()
    out = engine.generate(prompt.tolist(), SamplingParams(max_new_tokens=new_tokens))
    return out, time.perf_counter() - t0


def ttft(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench(name, model, hf, vocab, new_tokens, rounds):
    from scratchlm.generation.engine import Engine, SamplingParams

    engine = Engine(model)
    torch.manual_seed(0)
    prompt = torch.randint(0, vocab, (1, 16))
    ours_tps = hf_tps = 0.0
    for _ in range(rounds):  # alternate; keep each side's best (this machine's speed drifts)
        out_hf, dt = time_hf(hf, prompt, new_tokens)
        hf_tps = max(hf_tps, new_tokens / dt)
        out, dt = time_ours(engine, prompt, new_tokens)
        ours_tps = max(ours_tps, new_tokens / dt)
    same = out[0] == out_hf[0].tolist()[:len(out[0])]
    long = torch.randint(0, vocab, (1, 512))
    t_hf = min(ttft(lambda: time_hf(hf, long, 1)) for _ in range(2))
    t_ours = min(ttft(lambda: engine.generate(long.tolist(), SamplingParams(max_new_tokens=1)))
                 for _ in range(2))
    batch = torch.randint(0, vocab, (8, 16))
    _, dt_hf = time_hf(hf, batch, new_tokens)
    _, dt = time_ours(engine, batch, new_tokens)
    print(f"{name}: batch-1 greedy  transformers {hf_tps:6.1f} tok/s  scratchlm {ours_tps:6.1f} "
          f"tok/s  ratio {ours_tps / hf_tps:.2f} (goal >= 1.5)  same tokens: {same}")
    print(f"{name}: first token after a 512-token prompt  transformers {t_hf * 1e3:6.0f} ms  "
          f"scratchlm {t_ours * 1e3:6.0f} ms")
    print(f"{name}: batch 8  transformers {8 * new_tokens / dt_hf:6.1f} tok/s  scratchlm "
          f"{8 * new_tokens / dt:6.1f} tok/s  ratio {dt_hf / dt:.2f}")


def perplexity(model, ids: torch.Tensor, window: int = 512) -> float:
    """Perplexity over consecutive windows of ``ids`` (1, N)."""
    from scratchlm.nn.loss import cross_entropy

    losses = []
    with torch.inference_mode():
        for s in range(0, ids.shape[1] - window, window):
            chunk = ids[:, s : s + window + 1]
            losses.append(cross_entropy(model(chunk[:, :-1]), chunk[:, 1:]).item())
    return float(torch.tensor(losses).mean().exp())


def int8_speed(name: str, fp32, int8, hf, vocab: int, new_tokens: int, rounds: int) -> None:
    """Batch-1 greedy decode: transformers fp32 vs our fp32 vs our int8 (the >= 3x goal), and
    batch 8 for int8."""
    from scratchlm.generation.engine import Engine

    torch.manual_seed(0)
    prompt = torch.randint(0, vocab, (1, 16))
    tps = {"hf": 0.0, "fp32": 0.0, "int8": 0.0}
    engines = {"fp32": Engine(fp32), "int8": Engine(int8)}
    for _ in range(rounds):  # alternate; keep each side's best
        _, dt = time_hf(hf, prompt, new_tokens)
        tps["hf"] = max(tps["hf"], new_tokens / dt)
        for key, engine in engines.items():
            _, dt = time_ours(engine, prompt, new_tokens)
            tps[key] = max(tps[key], new_tokens / dt)
    batch = torch.randint(0, vocab, (8, 16))
    _, dt_hf = time_hf(hf, batch, new_tokens)
    _, dt = time_ours(engines["int8"], batch, new_tokens)
    native = "native layer" if engines["int8"].native is not None else "PyTorch layers"
    print(f"{name} int8 ({native}): batch-1 greedy  transformers fp32 {tps['hf']:.1f} tok/s  "
          f"scratchlm fp32 {tps['fp32']:.1f}  scratchlm int8 {tps['int8']:.1f} tok/s  ratio "
          f"{tps['int8'] / tps['hf']:.2f} (goal >= 3);  batch 8: transformers fp32 "
          f"{8 * new_tokens / dt_hf:.1f}  int8 {8 * new_tokens / dt:.1f} tok/s")


def bench_int8(new_tokens: int, rounds: int) -> None:
    """SmolLM2 with weight-only int8: the perplexity cost on tinyshakespeare, and its speed."""
    from scratchlm.downloads.sources import fetch
    from scratchlm.checkpoints.load import load_model_and_tokenizer

    fp32, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    int8, _ = load_model_and_tokenizer("smollm2-135m-instruct", quantize="int8")
    text = fetch("tinyshakespeare").read_text()[:20000]
    ids = torch.tensor([tok.encode(text)[:4097]])
    ppl = {name: perplexity(m, ids) for name, m in (("fp32", fp32), ("int8", int8))}
    print(f"smollm2-135m int8 weights: perplexity on tinyshakespeare {ppl['fp32']:.2f} (fp32) -> "
          f"{ppl['int8']:.2f} (int8), delta {ppl['int8'] - ppl['fp32']:+.2f}")
    int8_speed("smollm2-135m", fp32, int8, hf_from(fp32), 49152, new_tokens, rounds)


def stream_gbps() -> float:
    """This CPU's streaming read bandwidth with PyTorch's threads: the best of a few sums over
    a 512 MB tensor (far larger than any cache), GB/s."""
    big = torch.ones(128 * 2**20)  # 512 MB of float32
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        big.sum()
        best = max(best, big.numel() * 4 / (time.perf_counter() - t0) / 1e9)
    return best


def weight_bytes(model) -> int:
    """Bytes a one-token step reads: every Linear-like layer's weights (fp32, int8 + scales or
    GGUF blocks), the head included; the embedding reads one row."""
    from scratchlm.nn.gguf_linear import GGUFLinear
    from scratchlm.nn.quant import Int8Linear

    total = 0
    for m in model.modules():
        if isinstance(m, (torch.nn.Linear, Int8Linear, GGUFLinear)):
            total += sum(t.numel() * t.element_size() for t in (*m.parameters(recurse=False),
                                                                 *m.buffers(recurse=False)))
    return total


def model_bytes(model) -> int:
    seen, total = set(), 0
    for t in (*model.parameters(), *model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


_QUIET = None


def llama_cpp_batch(path, prompts: list[list[int]], new_tokens: int, threads: int):
    """llama.cpp decoding ``len(prompts)`` sequences together through its C API (one
    ``llama_decode`` of all the prompts, then one of a token per sequence a step; greedy): a
    function giving tokens/s, and one that frees the context. ``Llama.generate`` decodes one
    sequence only."""
    import llama_cpp as L
    import numpy as np

    L.llama_backend_init()
    model = L.llama_model_load_from_file(str(path).encode(), L.llama_model_default_params())
    params = L.llama_context_default_params()
    b, p = len(prompts), len(prompts[0])
    params.n_ctx, params.n_seq_max = b * (p + new_tokens + 8), b
    params.n_batch = params.n_ubatch = 512
    params.n_threads = params.n_threads_batch = threads
    ctx = L.llama_init_from_model(model, params)
    n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    batch = L.llama_batch_init(b * p, 0, 1)

    def decode(entries) -> None:  # (token, position, sequence, wants logits)
        batch.n_tokens = len(entries)
        for i, (tok, pos, seq, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, logits
        if L.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    def run() -> float:
        L.llama_memory_clear(L.llama_get_memory(ctx), True)
        t0 = time.perf_counter()
        decode([(tok, pos, s, pos == p - 1) for s, pr in enumerate(prompts)
                for pos, tok in enumerate(pr)])
        rows = [s * p + p - 1 for s in range(b)]
        for step in range(new_tokens - 1):
            nxt = [int(np.argmax(np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, r),
                                                        shape=(n_vocab,)))) for r in rows]
            decode([(tok, p + step, s, True) for s, tok in enumerate(nxt)])
            rows = list(range(b))
        return b * new_tokens / (time.perf_counter() - t0)

    def close() -> None:
        L.llama_batch_free(batch)
        L.llama_free(ctx)
        L.llama_model_free(model)

    return run, close


def llama_cpp_speed(engines: dict, prompts: dict, long: torch.Tensor, new_tokens: int,
                    rounds: int, path=None) -> None:
    """llama.cpp (``llama-cpp-python``) on the same file (``path``, default the embedded
    SmolLM2) with the same threads against our engines: greedy decode of each batch of
    ``prompts`` (batch size -> (B, T) ids) and a ``long`` prompt's processing, the sides
    alternated in one process, each one's best."""
    import llama_cpp
    from llama_cpp import Llama

    from scratchlm.checkpoints.names import smollm2_gguf

    path = path or smollm2_gguf()
    threads = torch.get_num_threads()
    global _QUIET  # kept alive: llama.cpp calls it until the process ends
    _QUIET = llama_cpp.llama_log_callback(lambda level, text, data: None)
    llama_cpp.llama_log_set(_QUIET, None)  # the C API logs every context it makes
    llm = Llama(model_path=str(path), n_threads=threads, n_threads_batch=threads,
                n_ctx=1024, n_batch=512, verbose=False)
    ids, long_ids = prompts[1][0].tolist(), long[0].tolist()
    batched = {b: llama_cpp_batch(path, prompt.tolist(), new_tokens, threads)
               for b, prompt in prompts.items() if b > 1}

    def llama_decode() -> float:
        t0, n = time.perf_counter(), 0
        for _ in llm.generate(ids, temp=0.0, reset=True):  # greedy; EOS does not stop it
            n += 1
            if n == new_tokens:
                break
        return new_tokens / (time.perf_counter() - t0)

    def llama_prompt() -> float:
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(long_ids)
        return len(long_ids) / (time.perf_counter() - t0)

    sides = ["llama.cpp", *engines]
    decode = {(k, b): 0.0 for k in sides for b in prompts}
    pp = dict.fromkeys(sides, 0.0)
    for _ in range(rounds):
        decode["llama.cpp", 1] = max(decode["llama.cpp", 1], llama_decode())
        for b, (run, _) in batched.items():
            decode["llama.cpp", b] = max(decode["llama.cpp", b], run())
        pp["llama.cpp"] = max(pp["llama.cpp"], llama_prompt())
        for key, engine in engines.items():
            for b, prompt in prompts.items():
                decode[key, b] = max(decode[key, b], b * new_tokens / time_ours(
                    engine, prompt, new_tokens)[1])
            pp[key] = max(pp[key], long.shape[1] / ttft(lambda: time_ours(engine, long, 1)))
    llm.close()
    for _, close in batched.values():
        close()
    print(f"against llama.cpp on the same file, {threads} threads, {new_tokens} tokens, "
          f"greedy, tokens/s (x llama.cpp's):")
    for key in sides:
        cells = "".join(f"   batch {b} {decode[key, b]:>6.1f} "
                        f"({decode[key, b] / decode['llama.cpp', b]:.2f}x)" for b in prompts)
        print(f"{key:>10}{cells}   prompt {pp[key]:>6.0f} ({pp[key] / pp['llama.cpp']:.2f}x)")


def format_bandwidth(rounds: int) -> None:
    """Each weight format's batch-1 matvec on its own: a stack of 24 random 3072 x 1536 layers
    (about the size of a small model's weights, so they stream from memory, not cache), bytes
    read per call and GB/s, against fp32 and int8 on the same shapes."""
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    from scratchlm.export.quants import quantize as export_quantize
    from scratchlm.nn.gguf_linear import KEPT, GGUFLinear
    from scratchlm.nn.quant import Int8Linear

    n, k, count = 3072, 1536, 24
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n, k)).astype(np.float32)
    stacks = {"fp32": [torch.nn.Linear(k, n, bias=False) for _ in range(count)]}
    stacks["int8"] = [Int8Linear.from_linear(m) for m in stacks["fp32"]]
    for qtype in KEPT:
        if qtype.endswith("_K"):  # the gguf package cannot quantize K-quants: our exporter's
            raw = export_quantize(w, qtype)
        else:
            raw = quantize(w, getattr(GGMLQuantizationType, qtype))
        blocks = torch.from_numpy(np.ascontiguousarray(raw).view(np.uint8).reshape(n, -1))
        stacks[qtype] = [GGUFLinear(blocks.clone(), qtype, k) for _ in range(count)]
    x = torch.randn(1, k)
    best = dict.fromkeys(stacks, float("inf"))
    with torch.no_grad():
        for _ in range(rounds * 5):  # alternate the formats; keep each one's best
            for name, layers in stacks.items():
                t0 = time.perf_counter()
                for layer in layers:
                    layer(x)
                best[name] = min(best[name], (time.perf_counter() - t0) / count)
    print(f"batch-1 matvec, {n} x {k}, {count} layers streamed, {torch.get_num_threads()} threads:")
    for name, layers in stacks.items():
        read = sum(t.numel() * t.element_size() for t in layers[0].buffers()) or \
            layers[0].weight.numel() * 4
        print(f"{name:>6} {read / 1e6:>6.2f} MB {best[name] * 1e6:>7.1f} us "
              f"{read / best[name] / 1e9:>6.1f} GB/s  {n * k / best[name] / 1e9:>6.1f} G weights/s")
    build_variants(stacks, x, rounds)


def build_variants(stacks: dict, x: torch.Tensor, rounds: int) -> None:
    """The block formats' and int8's matvec in each build of csrc/decode.c (``nn/native.py``'s
    VARIANTS): this CPU's (AVX-512 here), the AVX2 build a CPU without AVX-512 gets, and plain
    C; G weights/s at 1 and 8 rows of x (a batch-1 and a batch-8 decode step), the builds
    alternated; and the ratio of the AVX2 build to this CPU's (goal >= 0.7). Each block format
    twice: multiplied in float32 (``gguf``) and with the activations rounded to 8 bits
    (``gguf-a8``, rows "Q4_0 a8": integer dot products, csrc/act8.h)."""
    from scratchlm.nn.gguf_linear import gguf_matmul
    from scratchlm.nn.native import decode_function, variants

    kernels = {v: decode_function("gguf_linear", v) for v in variants()}
    kernels = {v: f for v, f in kernels.items() if f is not None}
    int8 = {v: decode_function("int8_linear", v) for v in kernels}
    formats = [q for q in stacks if q not in ("fp32", "int8")]
    rows = [*formats, *(f"{q} a8" for q in formats), "int8"]
    xs = {1: x[:1], 8: torch.randn(8, x.shape[-1])}
    best = {(q, v, b): float("inf") for q in rows for v in kernels for b in xs}

    def run_int8(v, layer, xb):
        y = torch.empty(xb.shape[0], layer.out_features)
        int8[v](xb.data_ptr(), layer.weight_int8.data_ptr(), layer.scale.data_ptr(), None,
                y.data_ptr(), xb.shape[0], layer.out_features, xb.shape[1])

    with torch.no_grad():
        for _ in range(rounds * 3):
            for q in rows:
                fmt, a8 = q.split()[0], q.endswith(" a8")
                for b, xb in xs.items():
                    for v, kernel in kernels.items():
                        t0 = time.perf_counter()
                        for layer in stacks[fmt]:
                            if q == "int8":
                                run_int8(v, layer, xb)
                            else:
                                gguf_matmul(kernel, xb, layer.blocks, fmt, None,
                                            layer.out_features, a8)
                        best[q, v, b] = min(best[q, v, b],
                                            (time.perf_counter() - t0) / len(stacks[fmt]))
    n, k = stacks[formats[0]][0].out_features, x.shape[-1]
    both = {"avx2", "native"} <= set(kernels)
    for b in xs:
        ratio = "avx2 / native" if both else ""
        print(f"G weights/s per build, {b} row{'s' if b > 1 else ''} of x: "
              + "  ".join(f"{v:>9}" for v in kernels) + f"  {ratio}")
        for q in rows:
            tail = f"  {best[q, 'native', b] / best[q, 'avx2', b]:>13.2f}" if both else ""
            print(f"{q:>32} " + "  ".join(f"{b * n * k / best[q, v, b] / 1e9:>9.1f}"
                                          for v in kernels) + tail)


_DECODE_TIMING = """
import sys, torch
sys.path.insert(0, {bench!r})
import scratchlm.nn.native as native
from generation import time_ours
from scratchlm.checkpoints.load import load_model_and_tokenizer
from scratchlm.generation.engine import Engine
if {threads} is not None:
    native.thread_count = lambda: {threads}
engine = Engine(load_model_and_tokenizer("smollm2-135m-instruct", quantize="gguf")[0])
torch.manual_seed(0)
for b in (1, 8):
    prompt = torch.randint(0, 49152, (b, 16))
    time_ours(engine, prompt, 4)
    print(b * {n} / time_ours(engine, prompt, {n})[1])
"""


def openmp_vs_pool(new_tokens: int, rounds: int) -> None:
    """The kernels built with OpenMP (gcc here) against the same kernels built without it, on
    csrc/parallel.h's pthread pool (what Apple's clang gets), and on one thread (what such a
    compiler got before the pool): SmolLM2's Q4_1 file decoded at batch 1 and 8, each build in
    its own process (two thread runtimes in one process would fight over the cores), the
    builds alternated every round; the pool also with torch's OpenMP threads told to sleep
    between its ops (``OMP_WAIT_POLICY=passive``) instead of spinning on the cores it needs."""
    import os
    import subprocess
    import sys

    bench = str(Path(__file__).parent)
    builds = {"OpenMP": ({"SCRATCHLM_NATIVE_OPENMP": "1"}, None),
              "pool": ({"SCRATCHLM_NATIVE_OPENMP": "0"}, None),
              "pool, torch passive": ({"SCRATCHLM_NATIVE_OPENMP": "0",
                                       "OMP_WAIT_POLICY": "passive"}, None),
              "one thread": ({"SCRATCHLM_NATIVE_OPENMP": "0"}, 1)}
    best = {(k, b): 0.0 for k in builds for b in (1, 8)}
    for _ in range(rounds):
        for name, (env, threads) in builds.items():
            code = _DECODE_TIMING.format(bench=bench, threads=threads, n=new_tokens)
            out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                                 capture_output=True, text=True, check=True).stdout.split()
            for b, tps in zip((1, 8), map(float, out[-2:])):
                best[name, b] = max(best[name, b], tps)
    print(f"smollm2-135m Q4_1 blocks, {torch.get_num_threads()} threads, {new_tokens} tokens, "
          f"best of {rounds}, builds alternated, each in its own process (tokens/s):")
    for name in builds:
        print(f"{name:>20}" + "".join(f"   batch {b} {best[name, b]:>6.1f} "
                                      f"({best[name, b] / best['OpenMP', b]:.2f}x)"
                                      for b in (1, 8)))


def bench_gguf(new_tokens: int, rounds: int, vs_llamacpp: bool = False,
               path: str | None = None) -> None:
    """SmolLM2-135M from its Q4_1 GGUF file at four precisions: fp32 (dequantized), int8
    (quantized again from the dequantized weights) and the file's own blocks (``--quantize
    gguf``; ``gguf-a8``: with a decode step's activations rounded to 8 bits): batch-1 and
    batch-8 greedy decode, a 512-token prompt, the loaded model's memory against the file, and
    the bytes a decode step reads against this CPU's bandwidth."""
    from scratchlm.generation.engine import Engine
    from scratchlm.checkpoints.load import load_model_and_tokenizer
    from scratchlm.checkpoints.names import smollm2_gguf

    name = path or "smollm2-135m-instruct"  # --gguf-file: another GGUF file (an export)
    models = {q or "fp32": load_model_and_tokenizer(name, quantize=q)[0]
              for q in (None, "int8", "gguf", "gguf-a8")}
    engines = {k: Engine(m) for k, m in models.items()}
    torch.manual_seed(0)
    prompts = {b: torch.randint(0, 49152, (b, 16)) for b in (1, 8)}
    long = torch.randint(0, 49152, (1, 512))
    tps = {(k, b): 0.0 for k in engines for b in (1, 8)}
    pp = dict.fromkeys(engines, 0.0)
    for _ in range(rounds):  # alternate the sides; keep each one's best
        for key, engine in engines.items():
            for b, prompt in prompts.items():
                _, dt = time_ours(engine, prompt, new_tokens)
                tps[key, b] = max(tps[key, b], b * new_tokens / dt)
            pp[key] = max(pp[key], 512 / ttft(lambda: time_ours(engine, long, 1)))
    if vs_llamacpp:
        llama_cpp_speed(engines, prompts, long, new_tokens, rounds, path=path)
    bandwidth = stream_gbps()
    file = Path(path) if path else smollm2_gguf()
    size = file.stat().st_size
    print(f"smollm2-135m from {file.name} ({size / 1e6:.0f} MB), "
          f"{torch.get_num_threads()} threads, streaming read {bandwidth:.1f} GB/s")
    print(f"{'weights':>8} {'batch 1':>10} {'batch 8':>10} {'prompt 512':>11} {'memory':>14} "
          f"{'MB/token':>9} {'GB/s':>6}")
    for key, model in models.items():
        read = weight_bytes(model)
        print(f"{key:>8} {tps[key, 1]:>8.1f}/s {tps[key, 8]:>8.1f}/s {pp[key]:>9.0f}/s "
              f"{model_bytes(model) / 1e6:>6.0f} MB {model_bytes(model) / size:>4.2f}x "
              f"{read / 1e6:>9.1f} {read * tps[key, 1] / 1e9:>6.1f}")


# Each family at a published shape. The 7B+ families keep their published layer shape and
# vocabulary but fewer layers (both sides in fp32 must fit this machine's memory together):
# OLMo 3 7B with 2 of its 32 layers (one local, one global would need 4: the first two are
# local), gpt-oss-20b with 1 of its 24 (a local layer; the prompt and output stay inside its
# 128-token window, so a global layer would compute the same). int8 only for the small ones.
FAMILY_SHAPES = {"qwen3-0.6b": {}, "gemma3-270m": {}, "olmo3-7b": {"n_layer": 2},
                 "gpt-oss-20b": {"n_layer": 1}, "qwen3.5-0.8b": {},
                 # 10 of 35 layers, the last 4 reading earlier layers' keys: 6 GB a side
                 "gemma4-e2b": {"n_layer": 10, "kv_shared_layers": 4}}
INT8_FAMILIES = ("qwen3-0.6b", "gemma3-270m")


def bench_families(new_tokens: int, rounds: int, names=None) -> None:
    import gc

    from scratchlm.models.registry import build_model, preset
    from scratchlm.nn.fuse import fuse_projections
    from scratchlm.nn.quant import quantize_int8

    for name in names or FAMILY_SHAPES:
        torch.manual_seed(0)
        overrides = FAMILY_SHAPES[name]
        cfg = preset(name, context_length=2048, **overrides)[1]
        model = build_model(cfg).eval()
        with torch.no_grad():  # random weights at a trained model's scale: stable activations
            for n, p in model.named_parameters():
                if p.dim() == 2:
                    p.normal_(0, 0.02)
        hf = hf_from(model)
        label = name + "".join(f" ({v} {k})" for k, v in overrides.items())
        bench(label, model, hf, cfg.vocab_size, new_tokens, rounds)
        if name in INT8_FAMILIES:
            int8 = fuse_projections(quantize_int8(copy.deepcopy(model)))
            int8_speed(name, model, int8, hf, cfg.vocab_size, new_tokens, rounds)
            del int8
        del hf, model
        gc.collect()


def kv_memory(long: bool) -> None:
    """KV-cache bytes for a 32k-token context, sliding-window layers vs full attention."""
    from scratchlm.generation.engine import Engine, SamplingParams
    from scratchlm.models.registry import build_model, preset
    from scratchlm.nn.kv_cache import KVCache, SlidingKVCache

    n = 32768
    with torch.device("meta"):
        gemma = build_model(preset("gemma3-270m")[1])
    cfg = gemma.cfg
    windows = [b.att.window for b in gemma.trf_blocks]
    sliding = SlidingKVCache(windows, 1, cfg.n_kv_head, n, cfg.head_dim)
    full = KVCache(cfg.n_layer, 1, cfg.n_kv_head, n, cfg.head_dim)
    print(f"gemma3-270m KV cache for {n} tokens: sliding-window {sliding.nbytes() / 2**20:.0f} "
          f"MiB vs full attention {full.nbytes() / 2**20:.0f} MiB "
          f"({full.nbytes() / sliding.nbytes():.1f}x less)")
    if not long:
        return
    torch.manual_seed(0)
    small = build_model(preset("gemma3-tiny", context_length=n + 16, n_layer=6,
                               sliding_window=512, sliding_window_pattern=6)[1]).eval()
    engine = Engine(small)
    t0 = time.perf_counter()
    out = engine.generate([[1, 2, 3, 4]], SamplingParams(max_new_tokens=n))
    dt = time.perf_counter() - t0
    cache = engine.new_cache(1, n + 4)
    print(f"decoded {len(out[0])} tokens in {dt:.0f} s on a 6-layer Gemma-3-shaped model; its "
          f"cache held {cache.nbytes() / 2**20:.1f} MiB (local layers: "
          f"{[r.shape[2] for r in cache.ring_k]} slots each; full attention would hold "
          f"{KVCache(6, 1, 2, n + 4, 32).nbytes() / 2**20:.1f} MiB)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--int8-only", action="store_true", help="only the int8 comparison")
    ap.add_argument("--families-only", action="store_true",
                    help="only the families' shapes (FAMILY_SHAPES) and the sliding-window KV "
                         "memory")
    ap.add_argument("--families", nargs="+", choices=list(FAMILY_SHAPES),
                    help="with --families-only: only these shapes")
    ap.add_argument("--long", action="store_true", help="also decode 32k tokens (minutes)")
    ap.add_argument("--gguf-only", action="store_true",
                    help="only SmolLM2 at fp32, int8 and its GGUF file's own Q4_1 blocks "
                         "(gguf, gguf-a8)")
    ap.add_argument("--threads-only", action="store_true",
                    help="only the kernels with OpenMP against the pthread pool")
    ap.add_argument("--gguf-file", help="with --gguf-only: this GGUF file (e.g. a "
                    "`scratchlm export --quant q4_0` of SmolLM2) instead of the embedded one")
    ap.add_argument("--vs-llamacpp", action="store_true",
                    help="with --gguf-only: also llama.cpp on the same file (llama-cpp-python)")
    args = ap.parse_args()
    from machine import isa

    print(f"ISA: {isa()}")
    if (args.vs_llamacpp or args.gguf_file) and not args.gguf_only:
        ap.error("--vs-llamacpp and --gguf-file go with --gguf-only")
    if args.threads_only:
        openmp_vs_pool(args.new_tokens, args.rounds)
        return
    if args.gguf_only:
        bench_gguf(args.new_tokens, args.rounds, args.vs_llamacpp, args.gguf_file)
        if not args.gguf_file:  # the formats' matvecs do not depend on the file
            format_bandwidth(args.rounds)
        return
    if args.int8_only:
        bench_int8(args.new_tokens, args.rounds)
        return
    if args.families_only:
        if not args.families:
            kv_memory(args.long)
        bench_families(args.new_tokens, args.rounds, args.families)
        return
    from scratchlm.models.gpt import GPT, GPTConfig
    from scratchlm.checkpoints.load import load_model_and_tokenizer
    from scratchlm.nn.quant import quantize_int8

    torch.manual_seed(0)
    gpt = GPT(GPTConfig.from_name("gpt2-124m")).eval()
    hf_gpt = hf_from(gpt)
    bench("gpt2-124m", gpt, hf_gpt, 50257, args.new_tokens, args.rounds)
    int8_gpt = quantize_int8(copy.deepcopy(gpt))
    int8_speed("gpt2-124m", gpt, int8_gpt, hf_gpt, 50257, args.new_tokens, args.rounds)
    smol, _ = load_model_and_tokenizer("smollm2-135m-instruct")
    bench("smollm2-135m", smol, hf_from(smol), 49152, args.new_tokens, args.rounds)
    bench_int8(args.new_tokens, args.rounds)
    bench_gguf(args.new_tokens, args.rounds)
    kv_memory(args.long)
    bench_families(args.new_tokens, args.rounds)


if __name__ == "__main__":
    main()
