"""A server under load: N concurrent streaming chat clients (1, 4, 16, 64) with mixed prompt and
output lengths, to 127.0.0.1 only, against `scratchlm serve` with SmolLM2-135M-Instruct (or any
OpenAI-compatible server given by --url, e.g. llama.cpp's). Prints, per client count, the
throughput (completion tokens/s over the wall time), p50/p99 time to first token and p50/p99
time between tokens.

    python benchmarks/serve_load.py [--clients 1 4 16 64] [--quantize int8] [--max-batch 16]
    python benchmarks/serve_load.py --url http://127.0.0.1:8001   # a server already running

The peer, by hand (llama.cpp's OpenAI-compatible server, same model file, same threads):

    pip install 'llama-cpp-python[server]'
    python -m llama_cpp.server --model $(python -c "from scratchlm.checkpoints.names import \\
        smollm2_gguf; print(smollm2_gguf())") --n_threads 2 --n_threads_batch 2 --port 8001
    python benchmarks/serve_load.py --url http://127.0.0.1:8001

What agents ask (``--agents``), both sides on one server in one run, alternated:

    python benchmarks/serve_load.py --agents   # JSON-schema-constrained vs free chat at 1 and
                                               # 16 clients; n=4 vs 4 requests
    python benchmarks/serve_load.py --adapters # 4 LoRA adapters x 4 clients: one server with
                                               # all four vs four single-adapter servers

Each client sends ``--requests`` requests one after another (greedy, ``max_tokens`` cycling
through 16, 32, 64, 128); a level stops early after ``--max-seconds``. Numbers on a shared CPU:
run one server at a time, and compare ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

QUESTIONS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain in a few sentences how a rainbow forms, and why it is curved.",
    "List three tips for learning a new language quickly, with one sentence of explanation "
    "for each, and say which of them matters most for an adult learner with a busy job.",
    "Summarise the plot of a story about a detective who solves a mystery in a small village "
    "where everyone seems to have a secret, the weather is always bad, and the only inn has "
    "been run by the same family for two hundred years.",
]
MAX_TOKENS = (16, 32, 64, 128)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ours(args, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "scratchlm", "serve", "--model", args.model, "--port", str(port),
           "--max-batch", str(args.max_batch), "--max-tokens-cap", "256", *extra]
    if args.quantize and not extra:
        cmd += ["--quantize", args.quantize]
    if args.no_prefix_cache:
        cmd += ["--prefix_cache", "false"]
    cmd += ["--prefill", args.prefill]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            env=os.environ.copy())
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(f"{base}/health", timeout=1)
            return proc, base
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None:
                raise RuntimeError("the server exited")
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not come up")


def model_name(base: str) -> str:
    data = json.loads(urllib.request.urlopen(f"{base}/v1/models", timeout=10).read())
    return data["data"][0]["id"]


def one_request(base: str, model: str, question: str, max_tokens: int) -> dict:
    """Stream one chat completion; the times of its token chunks."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": question}],
                       "max_tokens": max_tokens, "temperature": 0, "stream": True}).encode()
    req = urllib.request.Request(f"{base}/v1/chat/completions", body,
                                 {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    stamps = []
    with urllib.request.urlopen(req, timeout=600) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for ch in chunk.get("choices", []):
                if (ch.get("delta") or {}).get("content"):
                    stamps.append(time.perf_counter())
    return {"start": t0, "stamps": stamps}


def level(base: str, model: str, clients: int, requests: int, max_seconds: float) -> dict:
    results: list[dict] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + max_seconds

    def client(i: int):
        for j in range(requests):
            if time.perf_counter() > stop_at:
                return
            k = i * requests + j
            r = one_request(base, model, QUESTIONS[k % len(QUESTIONS)],
                            MAX_TOKENS[k % len(MAX_TOKENS)])
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttft = [r["stamps"][0] - r["start"] for r in results if r["stamps"]]
    gaps = [b - a for r in results for a, b in zip(r["stamps"], r["stamps"][1:])]
    chunks = sum(len(r["stamps"]) for r in results)
    return {"clients": clients, "requests": len(results), "tokens": chunks, "wall": wall,
            "tok_s": chunks / wall, "ttft": ttft, "gaps": gaps}


PEOPLE = {"type": "object", "properties": {"people": {"type": "array", "maxItems": 6, "items": {
    "type": "object", "properties": {"name": {"type": "string", "maxLength": 24},
                                     "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                     "city": {"type": "string", "maxLength": 24}},
    "required": ["name", "age", "city"], "additionalProperties": False}}},
    "required": ["people"], "additionalProperties": False}


def post(base: str, body: dict) -> dict:  # noqa: D103 (one chat completion, whole)
    req = urllib.request.Request(f"{base}/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.loads(resp.read())


def rate(base: str, bodies: list[dict], clients: int) -> float:
    """Completion tokens per second of ``bodies`` sent by ``clients`` concurrent clients (and
    their mean tokens per answer in ``LENGTHS``)."""
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(lambda b: post(base, b), bodies))
    tokens = [c["usage"]["completion_tokens"] for c in answers]
    LENGTHS.append(sum(tokens) / len(tokens))
    return sum(a["usage"]["completion_tokens"] for a in answers) / (time.perf_counter() - t0)


LENGTHS: list[float] = []


def agents(base: str, model: str, rounds: int) -> None:
    """Constrained decoding's cost, and n=4's gain, each side's best of ``rounds``."""
    ask = {"model": model, "max_tokens": 96, "temperature": 0,
           "messages": [{"role": "user", "content": "List a few people as JSON."}]}
    schema = {"type": "json_schema", "json_schema": {"name": "people", "schema": PEOPLE,
                                                     "strict": True}}
    print(f"{'clients':>7} {'free tok/s':>11} {'json tok/s':>11} {'json/free':>10}")
    for clients in (1, 16):
        best = {"free": 0.0, "json": 0.0}
        lengths = {"free": [], "json": []}
        for _ in range(rounds):  # alternate the sides
            for side, extra in (("free", {}), ("json", {"response_format": schema})):
                bodies = [dict(ask, **extra, seed=i, temperature=0.7 if clients > 1 else 0)
                          for i in range(2 * clients)]
                best[side] = max(best[side], rate(base, bodies, clients))
                lengths[side].append(LENGTHS[-1])
        print(f"{clients:>7} {best['free']:>11.1f} {best['json']:>11.1f} "
              f"{best['json'] / best['free']:>10.2f}   (tokens per answer: free "
              f"{statistics.fmean(lengths['free']):.0f}, json "
              f"{statistics.fmean(lengths['json']):.0f})", flush=True)
    sample = dict(ask, temperature=1.0, max_tokens=64, seed=1)
    best = {"n=4": 0.0, "4 after another": 0.0, "4 at once": 0.0}
    for _ in range(rounds):
        best["n=4"] = max(best["n=4"], rate(base, [dict(sample, n=4)], 1))
        best["4 after another"] = max(best["4 after another"], rate(
            base, [dict(sample, seed=i) for i in range(4)], 1))
        best["4 at once"] = max(best["4 at once"], rate(
            base, [dict(sample, seed=i) for i in range(4)], 4))
    print("  ".join(f"{k}: {v:.1f} tok/s" for k, v in best.items()))
    print(f"n=4 / 4 after another: {best['n=4'] / best['4 after another']:.2f}x   "
          f"n=4 / 4 at once: {best['n=4'] / best['4 at once']:.2f}x")


def make_adapters(model: str, folder: str, count: int = 4) -> list[str]:
    """``count`` LoRA adapters (rank 8 on q and v, PEFT's default targets) over ``model``,
    drawn at random as a trained adapter's size and cost, saved as finetuning saves them."""
    import torch

    from scratchlm import LLM
    from scratchlm.finetune.lora import LoraConfig, apply_lora, save_adapter

    dirs = []
    for i in range(count):
        m = LLM.load(model, quantize=None).model
        apply_lora(m, 8, 16.0, ("q", "v"))
        torch.manual_seed(i)
        for p in m.parameters():
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.02)
        dirs.append(os.path.join(folder, f"a{i}"))
        save_adapter(m, dirs[-1], LoraConfig(rank=8, alpha=16.0, targets=["q", "v"]))
    return dirs


def peak_rss_mb(proc: subprocess.Popen) -> float:
    with open(f"/proc/{proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def adapters(args) -> None:
    """4 adapters x 4 clients: one server holding all four, against four servers of one adapter
    each under the same load, alternated; throughput and the servers' peak memory."""
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    def load(targets: list[tuple[str, str | None]]) -> float:
        """4 clients per target (url, model), 2 requests each; completion tokens/s."""
        bodies = [(url, {"model": name, "max_tokens": MAX_TOKENS[(i + j) % 4], "temperature": 0,
                         "messages": [{"role": "user", "content": QUESTIONS[i % 5]}]})
                  for url, name in targets for i in range(4) for j in range(2)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(len(targets) * 4) as pool:
            answers = list(pool.map(lambda b: post(*b), bodies))
        return sum(a["usage"]["completion_tokens"] for a in answers) / (time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as tmp:
        dirs = make_adapters(args.model, tmp)
        best = {"one server": (0.0, 0.0), "four servers": (0.0, 0.0)}
        for _ in range(args.rounds):
            proc, url = start_ours(args, ("--adapter", *[f"a{i}={d}" for i, d in
                                                          enumerate(dirs)]))
            try:
                rate_ = load([(url, f"a{i}") for i in range(4)])
                best["one server"] = (max(best["one server"][0], rate_), peak_rss_mb(proc))
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            started = [start_ours(args, ("--adapter", d)) for d in dirs]
            try:
                rate_ = load([(url, model_name(url)) for _, url in started])
                best["four servers"] = (max(best["four servers"][0], rate_),
                                        sum(peak_rss_mb(p) for p, _ in started))
            finally:
                for p, _ in started:
                    p.terminate()
                    p.wait(timeout=30)
    for side, (tok_s, mb) in best.items():
        print(f"{side:>12}: {tok_s:7.1f} tok/s, peak memory {mb:7.0f} MB")
    one, four = best["one server"], best["four servers"]
    print(f"one / four: throughput {one[0] / four[0]:.2f}x, memory {one[1] / four[1]:.2f}x")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default=None, help="an OpenAI-compatible server already running")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--quantize", default="int8", help="our server's weights ('' for fp32)")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--no-prefix-cache", action="store_true",
                    help="our server without prefix caching (the comparison)")
    ap.add_argument("--prefill", default="auto", help="our server's prompt precision: "
                    "fp32 | bf16 | auto")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--requests", type=int, default=2, help="per client, one after another")
    ap.add_argument("--max-seconds", type=float, default=180.0, help="per level")
    ap.add_argument("--label", default=None)
    ap.add_argument("--agents", action="store_true",
                    help="constrained vs free decoding, and n=4 vs 4 requests, instead")
    ap.add_argument("--rounds", type=int, default=3, help="--agents, --adapters: rounds per side")
    ap.add_argument("--adapters", action="store_true",
                    help="4 adapters on one server vs 4 single-adapter servers, instead")
    args = ap.parse_args()
    if args.adapters:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from machine import isa

        print(f"ISA: {isa()}; 4 LoRA adapters (rank 8, q and v) x 4 clients, greedy, "
              f"max_tokens {'/'.join(map(str, MAX_TOKENS))}, fp32 weights (LoRA needs them)")
        adapters(args)
        return
    proc = None
    base = args.url
    if base is None:
        proc, base = start_ours(args)
    try:
        model = model_name(base)
        one_request(base, model, QUESTIONS[0], 8)  # warm up
        if args.agents:
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            from machine import isa

            print(f"ISA: {isa()}; server: {args.quantize or 'fp32'} weights, max batch "
                  f"{args.max_batch}")
            agents(base, model, args.rounds)
            return
        label = args.label or (base if args.url else
                               f"scratchlm ({args.quantize or 'fp32'}, prefill {args.prefill})")
        print(f"{label}: streaming chat, greedy, max_tokens {'/'.join(map(str, MAX_TOKENS))}")
        print(f"{'clients':>7} {'requests':>8} {'tokens':>7} {'tok/s':>8} {'ttft p50':>9} "
              f"{'ttft p99':>9} {'tpot p50':>9} {'tpot p99':>9}")
        for n in args.clients:
            r = level(base, model, n, args.requests, args.max_seconds)
            print(f"{n:>7} {r['requests']:>8} {r['tokens']:>7} {r['tok_s']:>8.1f} "
                  f"{pct(r['ttft'], .5):>8.2f}s {pct(r['ttft'], .99):>8.2f}s "
                  f"{pct(r['gaps'], .5) * 1e3:>7.0f}ms {pct(r['gaps'], .99) * 1e3:>7.0f}ms",
                  flush=True)
            if statistics.fmean(r["ttft"] or [0]) > 60:
                break  # the next level would take too long
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
