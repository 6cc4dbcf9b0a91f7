"""Every CUDA path once: a few steps of each, the loss falls, and each fast kernel agrees with
the plain one (``pytest -m gpu``; ``benchmarks/gpu.py`` runs them and prints the table).

Without a GPU these tests are skipped, unless ``SCRATCHLM_GPU_DRY_RUN=1``: then they run on the
CPU, so everything but the CUDA-only calls (fp16 loss scaling, 8-bit AdamW, TF32) is checked
before a GPU's time is spent. The models are tiny and random: these check that each path runs
and computes what the plain path computes, not speed (that is the benchmark's).
"""

from __future__ import annotations

import os

import pytest
import torch

from conftest import serve_subprocess

pytestmark = pytest.mark.gpu

VOCAB = 320


@pytest.fixture
def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("SCRATCHLM_GPU_DRY_RUN"):
        return torch.device("cpu")
    pytest.skip("needs a CUDA device (SCRATCHLM_GPU_DRY_RUN=1 runs the CPU side)")


def cuda_only(device: torch.device, what: str) -> None:
    if device.type != "cuda":
        pytest.skip(f"{what} runs on CUDA only (dry run)")


@pytest.fixture(autouse=True)
def _exact_matmuls():
    """TF32 off (the runtime turns it on for training; equality tests want fp32 matmuls)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def gpt(device, context_length=64):
    from scratchlm.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)  # PyTorch's default init: sharp logits, no near-ties in argmax
    return GPT(GPTConfig(vocab_size=VOCAB, context_length=context_length, n_embd=64, n_layer=2,
                         n_head=4, drop_rate=0.0, init="torch")).to(device)


def llama(device, context_length=64):
    from scratchlm.models.llama import Llama, LlamaConfig

    torch.manual_seed(0)
    return Llama(LlamaConfig(vocab_size=VOCAB, context_length=context_length, n_embd=64,
                             n_layer=2, n_head=4, n_kv_head=2, intermediate_size=128)).to(device)


def batch(device, b=4, t=32):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, VOCAB, (b, t + 1), generator=g)
    return x[:, :-1].to(device), x[:, 1:].to(device)


def train(model, precision: str, device, steps: int = 12, optimizer: str = "adamw",
          lr: float = 3e-3, loss_module=None) -> list[float]:
    """``steps`` steps of the shared training step on one fixed batch; the losses."""
    from scratchlm.training.losses import CausalLMLoss
    from scratchlm.training.optim import build_optimizer
    from scratchlm.training.runtime import setup_runtime
    from scratchlm.training.step import train_step

    rt = setup_runtime(precision, str(device), seed=0)
    loss_module = loss_module or CausalLMLoss(model)
    opt = build_optimizer(model, optimizer, lr=lr, weight_decay=0.0, device_type=device.type)
    scaler = rt.grad_scaler()
    x, y = batch(device)
    model.train()
    out = []
    for _ in range(steps):
        r = train_step(loss_module, opt, [(x, y)], rt, grad_clip=1.0, scaler=scaler)
        out.append(r.loss)
    return out


def assert_learns(losses: list[float]) -> None:
    assert all(map(lambda v: v == v, losses)), losses  # no NaN
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("make", [gpt, llama])
def test_bf16_autocast_steps_lower_the_loss(device, make):
    assert_learns(train(make(device), "bf16", device))


def test_fp16_with_the_grad_scaler_lowers_the_loss(device):
    cuda_only(device, "fp16 autocast with loss scaling")
    from scratchlm.training.runtime import setup_runtime

    assert setup_runtime("fp16", str(device)).grad_scaler() is not None
    assert_learns(train(llama(device), "fp16", device))


def test_fused_adamw_on_the_device(device):
    from scratchlm.training.optim import build_optimizer

    model = gpt(device)
    opt = build_optimizer(model, "adamw", device_type=device.type)
    assert all(g["fused"] for g in opt.param_groups)
    assert_learns(train(model, "fp32", device))


def test_adamw8bit_lowers_the_loss(device):
    cuda_only(device, "bitsandbytes' 8-bit AdamW")
    pytest.importorskip("bitsandbytes")
    assert_learns(train(llama(device), "bf16", device, optimizer="adamw8bit"))


def test_compiled_blocks_equal_eager_and_train(device):
    from scratchlm.training.config import TrainConfig
    from scratchlm.training.losses import CausalLMLoss
    from scratchlm.training.prepare import prepare_training
    from scratchlm.training.runtime import setup_runtime

    model = llama(device).eval()
    x, _ = batch(device)
    with torch.no_grad():
        eager = model(x)
    rt = setup_runtime("fp32", str(device))
    loss_module = prepare_training(CausalLMLoss(model), model, rt, TrainConfig(compile=True))
    with torch.no_grad():
        compiled = model(x)
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)
    assert_learns(train(model, "bf16", device, loss_module=loss_module))


def test_bf16_logits_match_fp32(device):
    """bf16 autocast (8 mantissa bits) against fp32 on the same weights: the stated tolerance
    is a mean absolute difference under 2% of the logits' mean magnitude, and the same argmax
    at 95% of positions or more."""
    model = llama(device).eval()
    x, _ = batch(device)
    with torch.no_grad():
        ref = model(x).float()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            low = model(x).float()
    assert (low - ref).abs().mean() < 0.02 * ref.abs().mean()
    assert (low.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.95


def test_flash_sdpa_runs_our_attention(device):
    """Forward and backward with the flash kernel alone allowed: it raises if our attention
    passed something flash cannot take (an explicit mask, fp32 on CUDA), and its output equals
    the math kernel's."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = gpt(device).train()
    x, y = batch(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            flash = model(x)
            flash.float().logsumexp(-1).mean().backward()
        with sdpa_kernel([SDPBackend.MATH]), torch.no_grad():
            math = model(x)
    tol = 3e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(flash.float(), math.float(), atol=tol, rtol=tol)
    grads = [p.grad for p in model.trf_blocks.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_qlora_bitsandbytes_equals_our_nf4(device):
    """``NF4Linear`` hands the matmul to bitsandbytes' 4-bit kernel when it is installed; it
    equals our plain dequantize-then-matmul (the same bytes), and QLoRA on it learns."""
    pytest.importorskip("bitsandbytes")
    from scratchlm.finetune.lora import apply_lora
    from scratchlm.nn.nf4 import NF4Linear, bitsandbytes

    assert bitsandbytes() is not None
    torch.manual_seed(0)
    layer = NF4Linear(torch.nn.Linear(128, 192)).to(device)
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
        x = torch.randn(5, 128, device=device, dtype=dtype)
        torch.testing.assert_close(layer(x).float(), layer.forward_torch(x).float(), atol=tol,
                                   rtol=tol)
    model = llama(device)
    apply_lora(model, rank=8, alpha=16, targets="all", quantize_base="nf4")
    model.to(device)
    assert_learns(train(model, "bf16", device, lr=1e-2, steps=15))


def test_engine_on_the_device_gives_the_cpu_greedy_tokens(device):
    from scratchlm.generation.engine import Engine, SamplingParams

    prompts = [[5, 6, 7, 8, 9, 10, 11], [3], [20, 21, 22, 23]]
    params = SamplingParams(max_new_tokens=16)
    for make in (gpt, llama):
        want = Engine(make("cpu").eval()).generate(prompts, params)  # the CPU's (native) path
        model = make(device).eval()
        assert Engine(model).generate(prompts, params) == want
        for p, w in zip(prompts, want):  # one row at a time
            assert Engine(model).generate([p], params) == [w]
        low = Engine(model.to(torch.bfloat16)).generate(prompts, params)  # bf16 weights run
        assert [len(r) for r in low] == [16, 16, 16]


def test_continuous_batching_on_the_device(device):
    """Rows that join while others decode give their single-request greedy tokens."""
    import threading

    from scratchlm.generation.batcher import Batcher
    from scratchlm.generation.engine import Engine, SamplingParams

    engine = Engine(llama(device).eval())
    prompts = [[5, 6, 7, 8], [9] * 12, [3, 4], list(range(30, 50))]
    params = SamplingParams(max_new_tokens=12)
    want = [engine.generate([p], params)[0] for p in prompts]
    batcher = Batcher(engine, max_batch=4)
    got = {i: [] for i in range(len(prompts))}
    finished = threading.Semaphore(0)

    def callback_for(i):
        def callback(token, reason):  # tokens, then (None, reason) once
            if token is not None:
                got[i].append(token)
            if reason is not None:
                finished.release()
        return callback

    try:
        for i, p in enumerate(prompts):
            batcher.submit(p, params, callback_for(i))
            batcher_steps = batcher.steps
            while batcher.steps < batcher_steps + 2 and i < len(prompts) - 1:  # join mid-decode
                threading.Event().wait(0.01)
        for _ in prompts:
            assert finished.acquire(timeout=120)
    finally:
        batcher.close()
    assert [got[i] for i in range(len(prompts))] == want


def test_server_on_the_device(device, tmp_path):
    """``scratchlm serve --device cuda`` answers an OpenAI-shaped completion request."""
    import json
    import urllib.request

    from scratchlm.checkpoints.ours import save_pretrained
    from scratchlm.tokenizers import BPETokenizer, save_tokenizer

    text = " ".join(f"the model {i} runs on the device and answers" for i in range(200))
    save_tokenizer(BPETokenizer.train(text, vocab_size=VOCAB, progress=False), tmp_path)
    save_pretrained(llama("cpu", context_length=128), tmp_path)
    dtype = "bf16" if device.type == "cuda" else "fp32"
    with serve_subprocess("--model", str(tmp_path), "--device", str(device), "--dtype",
                          dtype) as base:
        body = json.dumps({"prompt": "the model", "max_tokens": 8}).encode()
        req = urllib.request.Request(f"{base}/v1/completions", body,
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.loads(r.read())
    assert answer["usage"]["completion_tokens"] >= 1
    assert isinstance(answer["choices"][0]["text"], str)
