"""LoRA: low-rank adapters (the book's appendix E, grown up).

A frozen weight W (out x in) gets a trainable low-rank update:

        x ──► W x ─────────────────────┐
        │                              (+) ──► y
        └──► A (in -> r) ──► B (r -> out) ── * scale

B starts at zero, so the adapted model starts equal to the base. ``scale`` is ``alpha`` as in
the book (``scaling="book"``) or ``alpha / rank`` as in PEFT (``scaling="peft"``).

Two forms:
- the book's ``LoRALayer``, ``LinearWithLoRA`` and ``replace_linear_with_lora``, as printed;
- ``LoRALinear`` + ``apply_lora(model, targets=...)`` for real use: the base keeps its parameter
  names (``...qkv.weight``), so a base checkpoint loads unchanged; adapters can be switched off
  (a DPO reference for free), merged into the weight and unmerged; a fused projection (GPT's
  ``qkv``) gets one adapter per part (``q``, ``k``, ``v``), as separate projections would.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.finetune.config import LoraConfig  # noqa: F401 (re-exported)
from scratchlm.nn.nf4 import NF4Linear


# ---------------------------------------------------------------------- the book's version
class LoRALayer(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, rank: int, alpha: float):
        super().__init__()
        self.A = nn.Parameter(torch.empty(in_dim, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self.B = nn.Parameter(torch.zeros(rank, out_dim))
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * (x @ self.A @ self.B)


class LinearWithLoRA(nn.Module):
    def __init__(self, linear: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.linear = linear
        self.lora = LoRALayer(linear.in_features, linear.out_features, rank, alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.lora(x)


class FusedQKVWithLoRA(nn.Module):
    """Our GPT's fused ``qkv`` projection (one Linear for [query | key | value]) with one
    ``LoRALayer`` per part, as the book's model (three Linears ``W_query``, ``W_key``,
    ``W_value``) gets from ``replace_linear_with_lora``. One adapter over the fused matrix
    would have rank r for all three together: 16 * (768 + 2304) parameters per layer instead of
    3 * 16 * (768 + 768), and the book's 2,666,528 trainable parameters would become
    2,371,616."""

    def __init__(self, linear: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.linear = linear
        part = linear.out_features // 3
        self.lora = nn.ModuleList(LoRALayer(linear.in_features, part, rank, alpha)
                                  for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + torch.cat([lora(x) for lora in self.lora], dim=-1)


def replace_linear_with_lora(model: nn.Module, rank: int, alpha: float) -> None:
    """Wrap every ``nn.Linear`` of ``model`` (recursively) in ``LinearWithLoRA``, in place;
    a fused ``qkv`` projection gets an adapter per part (``FusedQKVWithLoRA``). A soft-capped
    head (``nn/softcap.py``) is left alone: an update added after its cap would pass it."""
    for name, module in model.named_children():
        if getattr(module, "softcap", 0):
            continue
        if isinstance(module, nn.Linear):
            fused = name == "qkv" and module.out_features == 3 * module.in_features
            wrap = FusedQKVWithLoRA if fused else LinearWithLoRA
            setattr(model, name, wrap(module, rank, alpha))
        else:
            replace_linear_with_lora(module, rank, alpha)


# ---------------------------------------------------------------------- the production version
class _FrozenBaseWithLoRA(torch.autograd.Function):
    """``y = x @ W.T + a @ B.T + bias`` for a frozen W (a = scale * A x, the rank-r
    intermediate): the base matmul, then ``a @ B.T`` added into its output by one GEMM of inner
    size r (``addmm_``, which reads and writes y once, in cache-sized tiles), and no separate
    (N, out) update tensor or add. The backward gives W no gradient (it is frozen) and saves only
    ``a`` for B's gradient, not x.

    Appending B's r columns to W for one matmul over ``[x, a]`` was slower on a CPU: the
    concatenation copies W every forward and backward, and an inner size of 576 + 16 tiles worse
    than 576 (SmolLM2's 1536 x 576 gate, 508 rows: forward 4.9 vs 5.2 ms, backward 4.8 vs 5.1)."""

    @staticmethod
    def forward(ctx, x, a, weight, lora_b, bias):
        ctx.save_for_backward(a, weight, lora_b)
        y = F.linear(x, weight, bias)
        y.view(-1, y.shape[-1]).addmm_(a.reshape(-1, a.shape[-1]), lora_b.t())
        return y

    @staticmethod
    def backward(ctx, g):
        a, weight, lora_b = ctx.saved_tensors
        need_x, need_a, _, need_b, _ = ctx.needs_input_grad
        grad_x = g @ weight if need_x else None
        grad_a = g @ lora_b if need_a else None
        grad_b = None
        if need_b:
            grad_b = g.reshape(-1, g.shape[-1]).t() @ a.reshape(-1, a.shape[-1])
        return grad_x, grad_a, None, grad_b, None


class LoRALinear(nn.Module):
    """A Linear layer with LoRA adapters on parts of its output.

    ``parts`` maps a name to the slice of output features it adapts; a plain projection has one
    part covering everything. Parameters: ``weight``/``bias`` (the base, frozen) and, per part,
    ``lora_A.<part>.weight`` (r x in) and ``lora_B.<part>.weight`` (out_part x r), PEFT's shapes.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, parts: dict[str, slice] | None = None,
                 dropout: float = 0.0, scaling: str = "book"):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        if not math.isfinite(alpha):  # a NaN scale turns every adapted output into NaN
            raise ValueError(f"LoRA alpha must be a finite number, got {alpha}")
        if scaling not in ("book", "peft"):
            raise ValueError(f"scaling must be 'book' or 'peft', got {scaling!r}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.quantized = base if isinstance(base, NF4Linear) else None  # QLoRA: a 4-bit base
        if self.quantized is None:
            self.weight = base.weight  # the same Parameter: names and ties are kept
            self.bias = base.bias
        self.rank, self.alpha = rank, alpha
        self.scale = alpha if scaling == "book" else alpha / rank
        self.parts = parts or {"all": slice(0, base.out_features)}
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        device = next(base.buffers(), None).device if self.quantized is not None else base.weight.device
        for name, sl in self.parts.items():
            a = nn.Linear(self.in_features, rank, bias=False, device=device)
            nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
            b = nn.Linear(rank, sl.stop - sl.start, bias=False, device=device)
            nn.init.zeros_(b.weight)
            self.lora_A[name], self.lora_B[name] = a, b
        self.dropout = nn.Dropout(dropout)
        self.enabled = True
        self.merged = False

    def delta(self, name: str) -> torch.Tensor:
        """The part's weight update, scale * B @ A: (out_part, in)."""
        return self.scale * (self.lora_B[name].weight @ self.lora_A[name].weight)

    def has_effective_weight(self) -> bool:
        """Whether ``effective_weight`` equals ``forward``'s matrix: not with dropout, a 4-bit
        base or a bias."""
        return self.quantized is None and self.dropout.p == 0 and self.bias is None

    def effective_weight(self) -> torch.Tensor | None:
        """``W + scale * B @ A`` over all parts, differentiable in the adapters: what a fused
        head+loss (``nn/loss.py``) multiplies by, instead of materialising the logits. None
        when ``has_effective_weight()`` is false."""
        if not self.has_effective_weight():
            return None
        if not self.enabled or self.merged:
            return self.weight
        deltas = [self.delta(n).to(self.weight.dtype) for n in self.parts]
        if len(self.parts) == 1 and next(iter(self.parts.values())) == slice(0, self.out_features):
            return self.weight + deltas[0]
        full = torch.zeros_like(self.weight)
        for (name, sl), d in zip(self.parts.items(), deltas):
            full = full.index_add(0, torch.arange(sl.start, sl.stop, device=d.device), d)
        return self.weight + full

    def _fusable(self, x: torch.Tensor) -> bool:
        """The fused path (``_FrozenBaseWithLoRA``): a full-precision frozen base, one dtype,
        no autocast, and autograd on."""
        return (self.quantized is None and not self.weight.requires_grad
                and (self.bias is None or not self.bias.requires_grad)
                and x.dtype == self.weight.dtype == self.lora_B["all"].weight.dtype
                and torch.is_grad_enabled() and not torch.is_autocast_enabled(x.device.type))

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantized is not None:
            return self.quantized(x)
        return F.linear(x, self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self, "row_groups", None) is not None:  # finetune/adapter_bank.py
            return self._rows_forward(x)
        if not self.enabled or self.merged:
            return self._base(x)
        h = self.dropout(x)
        whole = (len(self.parts) == 1
                 and next(iter(self.parts.values())) == slice(0, self.out_features))
        if whole and self._fusable(x):
            a = self.lora_A["all"](h) * self.scale
            lora_b = self.lora_B["all"].weight
            return _FrozenBaseWithLoRA.apply(x, a, self.weight, lora_b, self.bias)
        y = self._base(x)
        # the scale multiplies the rank-r intermediate, not the (N, out) update: one pass over
        # a tensor out/r times smaller, forward and backward
        updates = [self.lora_B[n](self.lora_A[n](h) * self.scale) for n in self.parts]
        if whole:
            return y + updates[0]
        # parts are contiguous and in order: add them as one tensor over the full output
        pieces, pos = [], 0
        for (name, sl), u in zip(self.parts.items(), updates):
            if sl.start > pos:
                pieces.append(y.new_zeros(*y.shape[:-1], sl.start - pos))
            pieces.append(u)
            pos = sl.stop
        if pos < self.out_features:
            pieces.append(y.new_zeros(*y.shape[:-1], self.out_features - pos))
        return y + torch.cat(pieces, dim=-1)

    def _rows_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of one batch with different adapters (``adapter_bank.set_row_adapters``): the
        base matmul once for all rows, then each group's low-rank update on its rows."""
        y = self._base(x)  # (B, T, out)
        for rows, a, b, scale in self.row_groups:
            h = x.index_select(0, rows)  # (n, T, in)
            for part in a:
                sl = self.all_parts[part]
                u = b[part](a[part](h) * scale).to(y.dtype)  # (n, T, out_part)
                y[..., sl.start:sl.stop].index_add_(0, rows, u)
        return y

    @torch.no_grad()
    def _add_deltas(self, sign: float) -> None:
        if self.quantized is not None:
            raise ValueError("a 4-bit (QLoRA) base cannot absorb the adapters; dequantize first")
        # Out of place: a head tied to the embedding must not change the embedding too.
        w = self.weight.detach().clone()
        for name, sl in self.parts.items():
            w[sl] += sign * self.delta(name).to(w.dtype)
        self.weight = nn.Parameter(w, requires_grad=self.weight.requires_grad)

    def merge(self) -> None:
        """Fold the adapters into ``weight`` (W' = W + scale * B @ A); forward is unchanged."""
        if not self.merged:
            self._add_deltas(+1.0)
            self.merged = True

    def unmerge(self) -> None:
        if self.merged:
            self._add_deltas(-1.0)
            self.merged = False


def _targets_of(model: nn.Module) -> dict[str, tuple[str, dict[str, slice] | None]]:
    """Module path -> (target group, parts) for our GPT and Llama models.

    Groups: q, k, v, out (attention output), ff (feed-forward), head (output head), lin
    (the linear-attention layers' input projections: Qwen3.5's Gated DeltaNet ``qkv_proj``,
    ``z_proj``, ``a_proj``, ``b_proj``).
    """
    found: dict[str, tuple[str, dict[str, slice] | None]] = {}
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if not isinstance(module, nn.Linear):
            continue
        if leaf == "qkv":  # GPT's fused projection: [q | k | v]
            c = module.out_features // 3
            found[name] = ("qkv", {"q": slice(0, c), "k": slice(c, 2 * c), "v": slice(2 * c, 3 * c)})
        elif leaf in ("q_proj", "k_proj", "v_proj"):
            found[name] = (leaf[0], None)
        elif leaf == "out_proj":
            found[name] = ("out", None)
        elif name.rsplit(".", 2)[-2:-1] == ["lin"] and leaf in LINEAR_INPUTS:
            found[name] = ("lin", None)
        elif ".ff." in f".{name}." or leaf in ("fc1", "fc2", "fc3"):
            found[name] = ("ff", None)
        elif name == "out_head" or name.endswith(".out_head"):
            found[name] = ("head", None)
        else:
            found[name] = ("other", None)
    return found


ALL_TARGETS = ("q", "k", "v", "out", "ff", "head", "lin")
LINEAR_INPUTS = ("qkv_proj", "z_proj", "a_proj", "b_proj")  # a Gated DeltaNet's (nn/gated_deltanet)


def apply_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0,
               targets: tuple[str, ...] | list[str] = ("q", "v"), dropout: float = 0.0,
               scaling: str = "book", freeze_base: bool = True,
               quantize_base: str | None = None) -> nn.Module:
    """Wrap the Linear layers named by ``targets`` (q, k, v, out, ff, head, lin, or "all") in
    ``LoRALinear``, in place; with ``freeze_base`` everything else stops training.
    ``quantize_base="nf4"`` stores the wrapped base weights in 4-bit NF4 (QLoRA); ``"nf4-dq"``
    also quantizes their scales (double quantization). A soft-capped head (Gemma 4's,
    ``nn/softcap.py``) is no target: "all" leaves it out, and "head" is refused."""
    if quantize_base not in (None, "nf4", "nf4-dq"):
        raise ValueError(f"quantize_base must be None, 'nf4' or 'nf4-dq', got {quantize_base!r}")
    every = targets in ("all", ["all"], ("all",))
    targets = ALL_TARGETS if every else tuple(targets)
    unknown = set(targets) - set(ALL_TARGETS)
    if unknown:
        raise ValueError(f"unknown LoRA targets {sorted(unknown)}; choose from {ALL_TARGETS}")
    if freeze_base:
        for p in model.parameters():
            p.requires_grad_(False)
    wrapped = 0
    for name, (group, parts) in _targets_of(model).items():
        if group == "qkv":
            parts = {k: v for k, v in parts.items() if k in targets}
            if not parts:
                continue
        elif group not in targets:
            continue
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, leaf)
        if getattr(base, "softcap", 0):
            if every:
                continue
            raise ValueError(f"LoRA cannot target {name}: its logits are soft-capped "
                             "(nn/softcap.py), and a LoRA layer computes its output from the "
                             "weight alone, without the cap; leave 'head' out of the targets")
        if quantize_base in ("nf4", "nf4-dq"):
            base = NF4Linear(base, double_quant=quantize_base == "nf4-dq")
        setattr(parent, leaf, LoRALinear(base, rank, alpha, parts, dropout, scaling))
        wrapped += 1
    if wrapped == 0:
        raise ValueError(f"no Linear layer matched LoRA targets {targets}")
    return model


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def set_lora_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch every adapter off (the base model) or on."""
    for m in lora_modules(model).values():
        m.enabled = enabled


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight and put plain ``nn.Linear`` layers back: a model with
    the same outputs and no LoRA code."""
    for name, m in lora_modules(model).items():
        m.merge()
        plain = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None,
                          device=m.weight.device, dtype=m.weight.dtype)
        plain.weight = m.weight
        if m.bias is not None:
            plain.bias = m.bias
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, leaf, plain)
    cfg = getattr(model, "cfg", None)
    emb = getattr(getattr(model, "tok_emb", None), "weight", None)
    head = getattr(getattr(model, "out_head", None), "weight", None)
    if getattr(cfg, "tie_embeddings", False) and head is not None and head is not emb:
        # a merged head adapter unties the head from the embedding: say so, or a saved and
        # reloaded model would tie them again and lose the head's update
        cfg.tie_embeddings = False
    return model


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter weights (``...lora_A.<part>.weight``, ``...lora_B.<part>.weight``)."""
    return {k: v.detach() for k, v in model.state_dict().items() if ".lora_" in k}


# ------------------------------------------------------------------------- adapter folders
def save_adapter(model: nn.Module, folder, cfg: LoraConfig) -> None:
    """The adapters alone: ``adapter.safetensors`` + ``lora.json`` (the settings to rebuild
    them). A 4-bit base's quantized weights are not part of the adapter."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous().cpu() for k, v in adapter_state_dict(model).items()}
    save_file(state, folder / "adapter.safetensors", metadata={"format": "pt"})
    settings = {"rank": cfg.rank, "alpha": cfg.alpha, "targets": list(cfg.targets),
                "dropout": cfg.dropout, "scaling": cfg.scaling,
                # the output rows each part adapts, where it is not the whole weight (GPT's
                # fused qkv): what folding the adapter into a weight needs (checkpoints/delta.py)
                "parts": {name: {part: [sl.start, sl.stop] for part, sl in m.parts.items()}
                          for name, m in lora_modules(model).items()
                          if list(m.parts) != ["all"]}}
    (folder / "lora.json").write_text(json.dumps(settings, indent=2))


def load_adapter(model: nn.Module, folder) -> nn.Module:
    """Apply an adapter folder to a base model: ours (``lora.json``) or a PEFT LoRA folder
    (``adapter_config.json``, Llama models)."""
    from pathlib import Path

    from safetensors.torch import load_file

    from scratchlm.checkpoints.delta import read_lora_settings

    folder = Path(folder)
    if (folder / "adapter_config.json").is_file() and not (folder / "lora.json").is_file():
        from scratchlm.finetune.peft_format import load_peft_adapter

        return load_peft_adapter(model, folder)
    if not (folder / "lora.json").is_file():
        raise FileNotFoundError(f"{folder}: no lora.json or adapter_config.json (not an adapter)")
    s = read_lora_settings(folder / "lora.json")  # every field checked, the file named
    apply_lora(model, s["rank"], s["alpha"], tuple(s["targets"]), 0.0, s["scaling"])
    state = load_file(folder / "adapter.safetensors")
    mine = adapter_state_dict(model)
    if set(state) != set(mine):
        missing, extra = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
        raise ValueError(f"{folder}: adapter does not fit this model (missing {missing[:3]}, "
                         f"unexpected {extra[:3]})")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in mine.items()
             if state[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{folder}: adapter was trained for a different base model "
                         f"(shapes differ: {wrong[0]})")
    model.load_state_dict(state, strict=False)
    return model
