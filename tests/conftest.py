"""Test setup: downloads never leave the machine.

The cache is a fresh temporary folder, and the mirror is ``../shared/data`` beside the checkout
when it exists (the public data sets, pre-fetched), unless SCRATCHLM_MIRROR is already set.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def random_blocks(qtype: str, rows: int, cols: int, seed: int = 0):
    """Random K-quant bytes with finite fp16 super-scales: a uint8 array (rows, cols / 256 *
    block bytes), for the K-quants the gguf package cannot quantize."""
    import numpy as np

    block, scale_offsets = {"Q2_K": (84, [80, 82]), "Q3_K": (110, [108]),
                            "Q4_K": (144, [0, 2]), "Q5_K": (176, [0, 2]),
                            "Q6_K": (210, [208])}[qtype]
    rng = np.random.default_rng(seed)
    n = rows * cols // 256
    raw = rng.integers(0, 256, (n, block), dtype=np.uint8)
    for off in scale_offsets:
        raw[:, off:off + 2] = (rng.standard_normal(n) * 0.05).astype(np.float16).view(
            np.uint8).reshape(n, 2)
    return raw.reshape(rows, -1)


# the GGUF block formats the native kernels multiply (nn/gguf_linear.KEPT)
QTYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")


def blocks_of(w, qtype: str):
    """(uint8 blocks (rows, row bytes), the gguf package's dequantized float32 weight) for a
    weight of ``w``'s shape: ``w`` quantized by the gguf package, or, for the K-quants (which
    it cannot quantize), random blocks with finite scales."""
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    kind = getattr(GGMLQuantizationType, qtype)
    if qtype.endswith("_K"):
        raw = random_blocks(qtype, *w.shape, seed=int(abs(w).sum() * 1000) % 2**32)
    else:
        raw = quantize(w, kind)
    ref = torch.from_numpy(np.array(dequantize(raw, kind), dtype=np.float32))
    return torch.from_numpy(np.ascontiguousarray(raw).view(np.uint8).reshape(w.shape[0], -1)), ref


# the bytes of a block that hold its quantized values (Q6_K: none, see rounded_reference)
QUANT_BYTES = {"Q8_0": (2, 34), "Q4_0": (2, 18), "Q4_1": (4, 20), "Q5_0": (2, 22),
               "Q5_1": (4, 24), "Q4_K": (16, 144), "Q5_K": (16, 176), "Q6_K": (0, 0)}


def rounded_reference(x, blocks, qtype: str, n: int):
    """What csrc/act8.h computes, written out: x rounded per run of 32 to int8 (scale
    max|x| / 127, ties to even, in float32), times the weights' scaled part, plus the blocks'
    constant part (offset or minimum: the weight with every q zeroed) times x unrounded. Q8_0
    and Q6_K (signed values, |w| . sign(x, w)) have no constant part."""
    import torch

    from scratchlm.nn.gguf_blocks import BLOCKS
    from scratchlm.nn.gguf_linear import dequantize_blocks

    k = x.shape[1]
    ref = dequantize_blocks(blocks, qtype, (n, k)).double()
    const = torch.zeros_like(ref)
    if qtype not in ("Q8_0", "Q6_K"):
        lo, hi = QUANT_BYTES[qtype]
        size = BLOCKS[qtype][0]
        zeroed = blocks.clone().view(n, -1, size)
        zeroed[:, :, lo:hi] = 0
        const = dequantize_blocks(zeroed.view(n, -1), qtype, (n, k)).double()
    runs = x.reshape(x.shape[0], -1, 32)
    amax = runs.abs().amax(-1, keepdim=True)
    d = amax / 127  # float32 division, as in C
    inv = torch.where(amax > 0, torch.tensor(127, dtype=torch.float32) / amax,
                      torch.zeros_like(amax))
    xr = (torch.round(runs * inv) * d).reshape(x.shape).double()  # torch.round: ties to even
    return xr @ (ref - const).T + x.double() @ const.T


@contextlib.contextmanager
def static_server(folder: Path):
    """Serve ``folder`` over HTTP on 127.0.0.1 (a stand-in hub: ``OWNER/NAME/resolve/main/...``
    paths); yields the base URL."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextlib.contextmanager
def serve_subprocess(*args: str):
    """``scratchlm serve ARGS`` on a free port of 127.0.0.1, as a user runs it; yields the base
    URL once ``/health`` answers."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "scratchlm", "serve", *args, "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=os.environ.copy())
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=1)
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None:
                    raise RuntimeError(proc.stdout.read())
                time.sleep(0.1)
        else:
            raise RuntimeError("the server did not come up")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def pytest_configure(config):
    if not os.environ.get("SCRATCHLM_MIRROR") and SHARED_DATA.is_dir():
        os.environ["SCRATCHLM_MIRROR"] = str(SHARED_DATA)


def run_slow() -> bool:
    """The slow tests (torchrun pairs, whole recipes, long servers) run in CI (``CI`` set, as
    CI services do) or with ``SCRATCHLM_SLOW=1``; a plain ``pytest`` leaves them out, so the
    everyday run stays within minutes."""
    return bool(os.environ.get("CI") or os.environ.get("SCRATCHLM_SLOW"))


def pytest_collection_modifyitems(config, items):
    if run_slow() or config.getoption("-m"):  # an explicit -m chooses for itself
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


def pytest_report_header(config):
    return ("slow tests: run (CI or SCRATCHLM_SLOW set)" if run_slow() else
            "slow tests: left out (set SCRATCHLM_SLOW=1 to run them; CI runs them)")


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    os.environ["SCRATCHLM_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def gpt2_tok():
    from scratchlm.tokenizers import get_tokenizer

    return get_tokenizer("gpt2")


@pytest.fixture(scope="session")
def gpt2_scratch():
    from scratchlm.tokenizers import get_tokenizer

    return get_tokenizer("gpt2-scratch")


@pytest.fixture(scope="session")
def verdict_text():
    from scratchlm.downloads.sources import fetch

    return fetch("the-verdict").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory):
    """A factory of model folders: a tiny random Llama with SmolLM2's real tokenizer and chat
    template (read from the embedded GGUF), saved as a run's ``final/`` is."""

    def make(context_length: int = 256, tie_embeddings: bool = False) -> Path:
        import torch

        from scratchlm.models.convert.gguf import read_gguf
        from scratchlm.models.llama import Llama, LlamaConfig
        from scratchlm.checkpoints.gguf_tokenizer import gguf_tokenizer
        from scratchlm.checkpoints.names import smollm2_gguf
        from scratchlm.checkpoints.ours import save_pretrained
        from scratchlm.tokenizers import save_tokenizer

        tok = gguf_tokenizer(read_gguf(smollm2_gguf())[0])
        torch.manual_seed(0)
        model = Llama(LlamaConfig(vocab_size=49152, context_length=context_length, n_embd=32,
                                  n_layer=2, n_head=4, n_kv_head=2, intermediate_size=64,
                                  tie_embeddings=tie_embeddings))
        # PyTorch's default init, not HF's normal(0, 0.02) the model starts from: a random
        # model whose greedy choices are decisive (0.02 gives near-ties that the order of a
        # batched sum can flip, and a model that barely moves in a few finetuning steps)
        for m in model.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)):
                m.reset_parameters()
        folder = tmp_path_factory.mktemp("tiny-chat")
        save_pretrained(model, folder)
        save_tokenizer(tok, folder)
        return folder

    return make


@pytest.fixture(scope="session")
def small_bpe(verdict_text):
    """Our own BPE with 512 tokens (the tiny presets' vocabulary), trained on The Verdict."""
    from scratchlm.tokenizers import BPETokenizer

    return BPETokenizer.train(verdict_text, vocab_size=512, progress=False)


@pytest.fixture(scope="module")
def classify_csv(tmp_path_factory):
    """A 60-row two-label CSV (``label``, ``text``) a tiny classifier learns in a few steps."""
    import csv

    path = tmp_path_factory.mktemp("cls") / "d.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "text"])
        for i in range(60):
            w.writerow(["pos", f"great lovely good {i}"] if i % 2 else ["neg", f"awful bad {i}"])
    return path
