"""`prepare` on corpora as they are published (parquet, JSON Lines + zstd): throughput against
tiktoken single-process x cores (goal >= 0.8), and peak memory as the corpus grows (goal: flat).

    python benchmarks/corpora.py [--sizes 100,1000]

The corpus is tinyshakespeare's paragraphs, numbered and repeated to each size (MB of text), as
documents. Each prepare runs in its own process; its peak RSS is that of it and its workers together
(benchmarks/peak_rss.py). Prints the ISA with every number.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, sys, time
from scratchlm.data.shards import prepare
t0 = time.perf_counter()
meta = prepare([sys.argv[1]], sys.argv[2], tokenizer="gpt2", progress=False)
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "tokens": meta["num_tokens"], "docs": meta["num_documents"]}))
"""


def write_corpus(folder: Path, mb: int) -> tuple[Path, Path, float]:
    """(parquet, jsonl.zst, MB of text) of about ``mb`` MB of documents, written in streams."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    from scratchlm.downloads.sources import fetch

    paras = [p for p in fetch("tinyshakespeare").read_text(encoding="utf-8").split("\n\n") if p]
    parquet, zst = folder / f"c{mb}.parquet", folder / f"c{mb}.jsonl.zst"
    schema = pa.schema([("text", pa.string())])
    written, batch, n = 0, [], 0
    with pq.ParquetWriter(parquet, schema) as pw, open(zst, "wb") as raw, \
            zstandard.ZstdCompressor(level=3).stream_writer(raw) as zw:
        while written < mb * 1e6:
            doc = f"{n}. {paras[n % len(paras)]}"
            batch.append(doc)
            written += len(doc.encode())
            n += 1
            if len(batch) == 20000:
                pw.write_table(pa.table({"text": batch}, schema=schema))
                zw.write("".join(json.dumps({"text": d}) + "\n" for d in batch).encode())
                batch = []
        if batch:
            pw.write_table(pa.table({"text": batch}, schema=schema))
            zw.write("".join(json.dumps({"text": d}) + "\n" for d in batch).encode())
    return parquet, zst, written / 1e6


def tiktoken_single(sample: str) -> float:
    """MB/s of tiktoken's fastest single-process path on ``sample`` (best of 3)."""
    from scratchlm.tokenizers import get_tokenizer

    enc = get_tokenizer("gpt2").encoding
    mb, best = len(sample.encode()) / 1e6, 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        enc.encode_ordinary(sample)
        best = max(best, mb / (time.perf_counter() - t0))
    return best


def run_prepare(path: Path, out: Path) -> dict:
    from peak_rss import run_measured

    stdout, peak = run_measured([sys.executable, "-c", CHILD, str(path), str(out)])
    return {**json.loads(stdout.strip().splitlines()[-1]), "peak_mb": peak}


def main():
    import machine

    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100,1000", help="MB of text, comma-separated")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    print(f"ISA: {machine.isa()}; {cores} cores")
    from scratchlm.downloads.sources import fetch

    sample = fetch("tinyshakespeare").read_text(encoding="utf-8")
    for mb in [int(s) for s in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as d:
            parquet, zst, text_mb = write_corpus(Path(d), mb)
            for path in (parquet, zst):
                single = tiktoken_single(sample)  # alternate: reference right before each run
                res = run_prepare(path, Path(d) / "shards")
                rate = text_mb / res["seconds"]
                print(f"{path.suffix:8s} {text_mb:7.0f} MB text ({path.stat().st_size / 1e6:.0f} "
                      f"MB file), {res['docs']:,} docs, {res['tokens']:,} tokens: "
                      f"{rate:.2f} MB/s; tiktoken single {single:.2f} MB/s x {cores} cores -> "
                      f"ratio {rate / (single * cores):.3f} (goal >= 0.8); peak RSS "
                      f"{res['peak_mb']:.0f} MB (prepare and its workers together)")
                shutil.rmtree(Path(d) / "shards")


if __name__ == "__main__":
    main()
