"""Plan a training run before starting it: parameters, memory by part, Chinchilla tokens,
FLOPs and time, and whether it fits a device.

The book's rule of thumb, "training needs about 4x the parameter memory", is weights +
gradients + AdamW's two moment estimates, one value per parameter each. Made precise for our
implementation:

    weights     = params * bytes(dtype)                 (QLoRA: adapted base weights in NF4,
                                                         4.5 bits, or 4.127 with double quant)
    gradients   = trainable * bytes(dtype)
    optimizer   = trainable * states * bytes            (adamw: 2 states in the parameter dtype,
                                                         adamw8bit: 2 bytes, sgd: 1 momentum)
    activations = n_layer * B * T * per_token_layer * bytes(activation dtype)
    loss        = the fused head+loss buffers: min(512, B*T) * V * 4 + B*T*C * bytes (a LoRA
                  head adds W + s*B@A and its gradient, 2 * V*C * bytes); a head that cannot
                  be fused (LoRA with dropout, a 4-bit base) costs 3 * B*T*V * 4: the logits,
                  the log-probabilities kept for backward, and their gradient

    peak = weights + optimizer + max(activations + loss, gradients)

``per_token_layer`` is what our blocks keep for backward, per token: GPT 17*C (norm inputs and
outputs, qkv, attention output and its copy, the 4C MLP hidden before and after GELU); Llama
8.5*C + 3.5*kv_dim + 4*I (SwiGLU keeps gate, up, SiLU and their product). Activations are
freed layer by layer as gradients appear, so the peak is the larger of the two ends of
backward, not their sum. The coefficients were counted with ``training/memory.MemoryTracker``
on CPU in fp32; bf16 halves the activation bytes (autocast keeps a few tensors in fp32, so
treat it as an estimate). Gradient checkpointing keeps one B*T*C input per block plus one
block's activations.

FLOPs: ``models/accounting.flops_per_token`` (6N + attention per token for full training; a
frozen base skips its weight gradients: about 4N). Time = FLOPs / (peak FLOP/s * MFU).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from scratchlm.finetune.lora import LoRALinear, apply_lora
from scratchlm.models.accounting import count_parameters, flops_per_token
from scratchlm.models.registry import build_model
from scratchlm.nn.loss import head_weight
from scratchlm.nn.meta import meta_device

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
NF4_BITS = {"nf4": 4.5, "nf4-dq": 4.127}
OPTIMIZER_STATE_BYTES = {"adamw": None, "adamw8bit": 2, "sgd": None}  # None: parameter dtype
OPTIMIZER_STATES = {"adamw": 2, "adamw8bit": 2, "sgd": 1}
LOSS_BLOCK = 512  # rows per block of the fused head+loss (nn/loss.py)


@dataclass
class Plan:
    params: int
    trainable: int
    weights: float  # bytes
    gradients: float
    optimizer: float
    activations: float
    loss: float
    peak: float
    chinchilla_tokens: int
    tokens: int
    flops: float
    hours: float | None
    fits: bool | None
    method: str = "full"  # what was planned: the advice leaves out what is already used
    dtype: str = "fp32"
    grad_checkpointing: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def build_on_meta(model_cfg) -> torch.nn.Module:
    """The model with no storage behind its weights: exact parameter counts for free."""
    with meta_device():
        return build_model(model_cfg)


def activation_values(model_cfg, batch: int, context: int, grad_checkpointing: bool) -> float:
    """Values kept for backward by all blocks (see the module docstring)."""
    c = model_cfg.n_embd
    if hasattr(model_cfg, "intermediate_size"):  # RoPE + gated-FFN families (Llama, Qwen3, Gemma)
        kv = model_cfg.n_kv_head * model_cfg.head_dim
        q = model_cfg.n_head * model_cfg.head_dim
        per = 6.5 * c + 2 * q + 3.5 * kv + 4 * model_cfg.intermediate_size
    else:
        per = 17 * c
    tokens = batch * context
    if grad_checkpointing:
        return model_cfg.n_layer * tokens * c + tokens * per
    return model_cfg.n_layer * tokens * per


def plan(model_cfg, method: str = "full", batch: int = 8,
         context: int | None = None, dtype: str = "fp32", optimizer: str = "adamw",
         lora_rank: int = 16, lora_targets: tuple[str, ...] = ("all",), tokens: int = 0,
         peak_tflops: float | None = None, mfu: float = 0.4,
         gpu_memory_gib: float | None = None, grad_checkpointing: bool = False) -> Plan:
    if method not in ("full", "lora", "qlora", "qlora-dq"):
        raise ValueError(f"method must be full, lora, qlora or qlora-dq, got {method!r}")
    if dtype not in BYTES or optimizer not in OPTIMIZER_STATES:
        raise ValueError(f"dtype must be one of {list(BYTES)}, optimizer one of "
                         f"{list(OPTIMIZER_STATES)}")
    context = context or model_cfg.context_length
    b = BYTES[dtype]
    model = build_on_meta(model_cfg)
    params = count_parameters(model)
    weights = float(params * b)
    if method == "full":
        trainable = params
    else:
        apply_lora(model, lora_rank, 2.0 * lora_rank, tuple(lora_targets))
        trainable = count_parameters(model, trainable_only=True)
        weights = float((params + trainable) * b)
        if method.startswith("qlora"):
            base = sum(m.weight.numel() for m in model.modules() if isinstance(m, LoRALinear))
            bits = NF4_BITS["nf4-dq" if method == "qlora-dq" else "nf4"]
            weights -= base * b - base * bits / 8
    gradients = float(trainable * b)
    state_bytes = OPTIMIZER_STATE_BYTES[optimizer] or b
    opt = float(trainable * OPTIMIZER_STATES[optimizer] * state_bytes)
    act_b = 4 if dtype == "fp32" else 2
    activations = activation_values(model_cfg, batch, context, grad_checkpointing) * act_b
    rows = batch * context
    lora_head = type(model.out_head) is not torch.nn.Linear
    # see training/losses.causal_lm_loss; a 4-bit base head cannot be fused
    fused = head_weight(model.out_head) is not None and not (lora_head and method != "lora")
    if fused:
        loss = float(min(LOSS_BLOCK, rows) * model_cfg.vocab_size * 4
                     + rows * model_cfg.n_embd * act_b)
        if lora_head:  # W + s*B@A and its gradient
            loss += 2.0 * model_cfg.vocab_size * model_cfg.n_embd * b
    else:
        loss = float(3 * rows * model_cfg.vocab_size * 4)
    peak = weights + opt + max(activations + loss, gradients)
    fwd, train = flops_per_token(model_cfg, context)
    per_token = train if method == "full" else 2 * fwd  # no weight gradients for a frozen base
    flops = per_token * tokens
    hours = flops / (peak_tflops * 1e12 * mfu) / 3600 if peak_tflops and tokens else None
    fits = peak <= gpu_memory_gib * 2**30 if gpu_memory_gib else None
    return Plan(params, trainable, weights, gradients, opt, activations, loss, peak,
                20 * params, tokens, flops, hours, fits, method, dtype, grad_checkpointing)


def duration(hours: float) -> str:
    """``42 s``, ``17 min``, ``3.2 hours``, ``12.5 days``: a time a person reads at a glance."""
    seconds = hours * 3600
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if hours < 1.5:
        return f"{seconds / 60:.0f} min"
    if hours < 48:
        return f"{hours:.1f} hours"
    return f"{hours / 24:,.1f} days"


def advice(p: Plan) -> str:
    """What would make the run fit, leaving out what the plan already uses."""
    options = ["lower the batch"]
    if not p.grad_checkpointing:
        options.append("grad checkpointing (--grad_checkpointing true)")
    if p.method == "full":
        options.append("LoRA/QLoRA (--method lora|qlora)")
    elif p.method == "lora":
        options.append("QLoRA (--method qlora)")
    if p.dtype == "fp32":
        options.append("bf16 (--dtype bf16)")
    return ", ".join(options[:-1]) + (" or " if len(options) > 1 else "") + options[-1]


def format_plan(p: Plan, name: str, method: str) -> str:
    gib = 2**30
    lines = [f"{name}, {method}: {p.params:,} parameters, {p.trainable:,} trainable "
             f"({p.trainable / p.params:.2%})"]
    for part in ("weights", "gradients", "optimizer", "activations", "loss"):
        lines.append(f"  {part:<12} {getattr(p, part) / gib:10.3f} GiB")
    lines.append(f"  {'peak':<12} {p.peak / gib:10.3f} GiB  (weights + optimizer + "
                 "max(activations + loss, gradients))")
    lines.append(f"Chinchilla-optimal data: {p.chinchilla_tokens:,} tokens (20 per parameter)")
    if p.tokens:
        lines.append(f"planned: {p.tokens:,} tokens ({p.tokens / p.chinchilla_tokens:.2f}x "
                     f"Chinchilla), {p.flops:.3e} FLOPs")
    if p.hours is not None:
        lines.append(f"time: {duration(p.hours)} at the given peak and MFU")
    if p.fits is not None:
        lines.append("fits the given GPU memory" if p.fits else
                     f"does NOT fit the given GPU memory: {advice(p)}")
    return "\n".join(lines)
