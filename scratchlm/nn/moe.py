"""A mixture-of-experts feed-forward: N expert FFNs, a router picks k of them per token.

    for each token x (C,):
        p = softmax(router(x))                   (N,) probabilities over the experts
        e_1..e_k = the k most probable experts
        g_i = p[e_i] / sum_j p[e_j]              gates, renormalised as in Mixtral (or p[e_i]
                                                 with ``norm_topk_prob=False``)
        y = sum_i g_i * expert_{e_i}(x)          (C,)
          (+ sigmoid(w.x) * shared(x) with a shared expert: Qwen3.5-MoE)

Only k of the N experts run per token, so a layer holds N times the FFN parameters for about
k times the FFN compute. With ``capacity_factor > 0`` each expert takes at most
``ceil(capacity_factor * tokens * k / N)`` tokens per batch (Switch Transformer); the rest
overflow: that expert's contribution is dropped and the token goes on through the residual.
``capacity_factor = 0`` drops nothing (Mixtral).

Two auxiliary losses, added to the task loss by the training loss (``training/losses.py``):

- load balancing (Switch Transformer, eq. 4-6; the same formula as Hugging Face's Mixtral):
  ``N * sum_e f_e * P_e`` with ``f_e`` the share of token assignments routed to expert e and
  ``P_e`` the mean router probability of e; it is ``k`` when routing is uniform;
- router z-loss (ST-MoE): ``mean(logsumexp(logits)^2)``, which keeps the router logits small.

Each layer also counts assignments and overflow since the last ``moe_stats`` call, for the
expert-utilisation columns of the training log.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import nn


@dataclasses.dataclass
class MoEConfig:
    """The mixture-of-experts settings every model family shares (``cfg.moe``)."""

    num_experts: int = 0  # > 0: each block's FFN is a mixture of this many experts
    top_k: int = 2  # experts per token
    intermediate_size: int | None = None  # each expert's hidden width (None: the dense FFN's)
    norm_topk_prob: bool = True  # renormalise the k gates to sum to 1 (Mixtral, Qwen3-MoE)
    router_bias: bool = False  # a bias on the router's logits (gpt-oss)
    # > 0: a dense expert of this width beside the routed ones, on every token, its output
    # scaled by a learned sigmoid gate (Qwen3.5-MoE's shared expert)
    shared_expert_size: int = 0
    capacity_factor: float = 0.0  # > 0: cap tokens per expert (overflow is dropped)
    aux_loss_coef: float = 0.01  # Switch load-balancing loss weight
    z_loss_coef: float = 0.001  # router z-loss weight

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


LEGACY_KEYS = {f"moe_{name}": name for name in ("num_experts", "top_k", "capacity_factor",
                                                 "aux_loss_coef", "z_loss_coef")}


def moe_from(value, owner: str) -> MoEConfig:
    """A ``MoEConfig`` from a config field that may hold one, a dict (a saved config) or None,
    validated; errors name ``owner.moe.FIELD``."""
    if value is None:
        value = MoEConfig()
    elif isinstance(value, dict):
        unknown = set(value) - set(MoEConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{owner}.moe: unknown key {sorted(unknown)[0]!r}")
        value = MoEConfig(**value)
    elif isinstance(value, MoEConfig):
        value = dataclasses.replace(value)  # a copy: presets never share a mutable part
    else:
        raise ValueError(f"{owner}.moe must be a MoEConfig or a dict, got {value!r}")
    if not isinstance(value.num_experts, int) or value.num_experts < 0:
        raise ValueError(f"{owner}.moe.num_experts must be >= 0, got {value.num_experts!r}")
    if value.num_experts and not 1 <= value.top_k <= value.num_experts:
        raise ValueError(f"{owner}.moe.top_k must be in [1, moe.num_experts], got {value.top_k}")
    if value.intermediate_size is not None and value.intermediate_size < 1:
        raise ValueError(f"{owner}.moe.intermediate_size must be positive, "
                         f"got {value.intermediate_size}")
    if value.capacity_factor < 0:
        raise ValueError(f"{owner}.moe.capacity_factor must be >= 0, got {value.capacity_factor}")
    if not isinstance(value.shared_expert_size, int) or value.shared_expert_size < 0:
        raise ValueError(f"{owner}.moe.shared_expert_size must be an integer >= 0, "
                         f"got {value.shared_expert_size!r}")
    if value.shared_expert_size and not value.num_experts:
        raise ValueError(f"{owner}.moe.shared_expert_size needs moe.num_experts > 0")
    return value


def upgrade_legacy_moe(config: dict) -> dict:
    """A saved config dict with the old flat ``moe_num_experts``-style keys, nested as ``moe``."""
    flat = {LEGACY_KEYS[k]: config[k] for k in LEGACY_KEYS if k in config}
    if not flat:
        return config
    out = {k: v for k, v in config.items() if k not in LEGACY_KEYS}
    out["moe"] = {**flat, **(out.get("moe") or {})}
    return out


class MoEFeedForward(nn.Module):
    def __init__(self, emb_dim: int, num_experts: int, top_k: int,
                 make_expert: Callable[[], nn.Module], capacity_factor: float = 0.0,
                 aux_loss_coef: float = 0.01, z_loss_coef: float = 0.001,
                 norm_topk_prob: bool = True, router_bias: bool = False,
                 make_shared: Callable[[], nn.Module] | None = None):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"moe_top_k must be in [1, moe_num_experts={num_experts}], "
                             f"got {top_k}")
        if capacity_factor < 0:
            raise ValueError(f"moe_capacity_factor must be >= 0, got {capacity_factor}")
        self.num_experts, self.top_k = num_experts, top_k
        self.norm_topk_prob = norm_topk_prob
        self.capacity_factor = capacity_factor
        self.aux_loss_coef, self.z_loss_coef = aux_loss_coef, z_loss_coef
        self.router = nn.Linear(emb_dim, num_experts, bias=router_bias)
        self.experts = nn.ModuleList(make_expert() for _ in range(num_experts))
        if make_shared is not None:  # every token's, scaled by sigmoid(shared_expert_gate(x))
            self.shared_expert = make_shared()
            self.shared_expert_gate = nn.Linear(emb_dim, 1, bias=False)
        # The weighted auxiliary loss of the last forward: taken (and cleared) by moe_aux_loss,
        # so no autograd graph stays attached to the module; a detached copy for logging.
        self.aux_loss: torch.Tensor | None = None
        self.last_aux_loss: torch.Tensor | None = None
        self.register_buffer("assigned", torch.zeros(num_experts), persistent=False)
        self.register_buffer("dropped", torch.zeros(()), persistent=False)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(S, C) tokens -> router logits (S, N), gates (S, k), expert indices (S, k)."""
        logits = self.router(x)
        probs = torch.softmax(logits.float(), dim=-1)
        gates, idx = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            gates = gates / gates.sum(dim=-1, keepdim=True)
        return logits, gates, idx

    def capacity(self, num_tokens: int) -> int | None:
        if self.capacity_factor == 0:
            return None
        return math.ceil(self.capacity_factor * num_tokens * self.top_k / self.num_experts)

    def forward(self, x: torch.Tensor, route_x: torch.Tensor | None = None) -> torch.Tensor:
        """(..., C) -> (..., C). ``route_x``: what the router sees, when not ``x`` itself
        (Gemma 4 routes the un-normalised residual and feeds the experts its norm)."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (S, C)
        logits, gates, idx = self.route(x if route_x is None else route_x.reshape(x.shape))
        cap = self.capacity(x.shape[0])
        out = torch.zeros_like(x)
        # Slot-major order (every token's first choice before any second choice) decides who
        # keeps a place when an expert is over capacity, as in Switch/GShard.
        flat_idx = idx.t().reshape(-1)  # (k*S,)
        flat_tok = torch.arange(x.shape[0], device=x.device).repeat(self.top_k)
        flat_gate = gates.t().reshape(-1)
        order = torch.argsort(flat_idx, stable=True)
        counts = torch.bincount(flat_idx, minlength=self.num_experts)
        dropped = 0
        start = 0
        for e, n in enumerate(counts.tolist()):
            if n == 0:
                continue
            sel = order[start:start + n]
            start += n
            if cap is not None and n > cap:
                dropped += n - cap
                sel = sel[:cap]
            tok = flat_tok[sel]
            y = self.experts[e](x[tok]) * flat_gate[sel, None].to(x.dtype)
            out.index_add_(0, tok, y)
        if hasattr(self, "shared_expert"):
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        if self.training:
            self.assigned += counts.to(self.assigned.dtype)
            self.dropped += dropped
        self.aux_loss = self._aux_loss(logits, idx)
        self.last_aux_loss = self.aux_loss.detach()
        return out.reshape(shape)

    def _aux_loss(self, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float(), dim=-1)
        f = torch.zeros(self.num_experts, device=logits.device)
        f = f.scatter_add(0, idx.reshape(-1), torch.ones(idx.numel(), device=logits.device))
        f = f / logits.shape[0]  # (N,) assignments per token: sums to k
        balance = self.num_experts * torch.sum(f * probs.mean(dim=0))
        z = torch.logsumexp(logits.float(), dim=-1).pow(2).mean()
        return self.aux_loss_coef * balance + self.z_loss_coef * z


def moe_layers(model: nn.Module) -> list[MoEFeedForward]:
    return [m for m in model.modules() if isinstance(m, MoEFeedForward)]


def moe_aux_loss(model: nn.Module) -> torch.Tensor | None:
    """The auxiliary losses of the model's last forward, averaged over its MoE layers, and
    cleared from the layers (None for a dense model)."""
    losses = []
    for m in moe_layers(model):
        if m.aux_loss is not None:
            losses.append(m.aux_loss)
            m.aux_loss = None
    return torch.stack(losses).mean() if losses else None


def moe_stats(model: nn.Module, reset: bool = True) -> dict | None:
    """Expert utilisation since the last call, over all MoE layers: each expert's share of the
    assignments (1/N each when balanced) and the share of assignments dropped for capacity."""
    layers = moe_layers(model)
    if not layers:
        return None
    assigned = torch.stack([m.assigned for m in layers]).sum(0)
    dropped = sum(float(m.dropped) for m in layers)
    total = float(assigned.sum())
    if reset:
        for m in layers:
            m.assigned.zero_()
            m.dropped.zero_()
    share = (assigned / total).tolist() if total else [0.0] * len(assigned)
    last = [m.last_aux_loss for m in layers if m.last_aux_loss is not None]
    return {"expert_share": share, "dropped_frac": dropped / total if total else 0.0,
            "aux_loss": float(torch.stack(last).mean()) if last else None}


def freeze_for_moe_finetuning(model: nn.Module, experts: list[int] | None = None) -> nn.Module:
    """Train only the routers and, when given, the experts numbered ``experts`` in every MoE
    layer; everything else is frozen."""
    layers = moe_layers(model)
    if not layers:
        raise ValueError("the model has no mixture-of-experts layers (moe_num_experts = 0)")
    n = layers[0].num_experts
    bad = [e for e in experts or [] if not 0 <= e < n]
    if bad:
        raise ValueError(f"expert index {bad[0]} out of range: the model has {n} experts")
    for p in model.parameters():
        p.requires_grad_(False)
    for m in layers:
        m.router.requires_grad_(True)
        for e in experts or []:
            for p in m.experts[e].parameters():
                p.requires_grad_(True)
    return model


def expert_ffn(cfg, dense: Callable[[int], nn.Module]) -> nn.Module:
    """The feed-forward a block of ``cfg`` gets: ``dense(width)`` itself, or an MoE of such
    experts (of width ``cfg.moe.intermediate_size`` when set) when ``cfg.moe.num_experts`` > 0."""
    moe = cfg.moe
    if not moe.num_experts:
        return dense(None)
    shared = (lambda: dense(moe.shared_expert_size)) if moe.shared_expert_size else None
    return MoEFeedForward(cfg.n_embd, moe.num_experts, moe.top_k,
                          lambda: dense(moe.intermediate_size), moe.capacity_factor,
                          moe.aux_loss_coef, moe.z_loss_coef, moe.norm_topk_prob,
                          moe.router_bias, shared)
