"""Gated DeltaNet (Yang, Kautz, Hatamizadeh 2024): linear attention whose state is a fast-weight
matrix updated by the delta rule with a decay gate, as Qwen3.5's linear-attention layers run it.

Each value head h keeps a state S (Dk, Dv). At every token, with q, k L2-normalised:

    S = exp(g) * S                       decay: g = -exp(A_log) * softplus(a + dt_bias) <= 0
    S = S + beta * k (v - S^T k)^T       delta rule: write only what S did not already predict
    o = S^T q / sqrt(Dk)                 read

so a token costs the same at any position (no keys to look back at): generation keeps one
(Dk, Dv) state per head and layer, not a growing KV cache. The layer around it:

    x (B, T, C) -> qkv = conv(in_proj_qkv(x))   short causal depthwise convolution (kernel 4),
                                                SiLU; split into q, k (Hk heads), v (Hv heads)
                -> z = in_proj_z(x), b, a       the output gate, beta = sigmoid(b), the decay
                -> o = delta rule (above)       Hv / Hk value heads share each q/k head
                -> out_proj(rmsnorm(o) * silu(z))

Two forms of the same recurrence (tested equal): ``recurrent_delta_rule`` runs token by token
(``step_delta_rule``: one generated token, updating the cached state in place);
``chunked_delta_rule`` runs chunks of 64 tokens in parallel
(training and prompts): inside a chunk the updates are folded into one lower-triangular solve
(the "UT transform"), and only the chunk boundaries are sequential. Both compute in fp32, as
the reference kernels do.

With a cache (``nn/hybrid_cache.py``) the layer continues the state and the convolution's last
inputs of each row; a row whose real tokens start in this forward starts from zeros, and its
padding positions (left padding) are zeroed inputs, which leave a zero state zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.nn.native import step_linear
from scratchlm.nn.norm import RMSNorm


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(sum x^2 + eps) over the last dimension (the reference's epsilon placement)."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def _prepare(q, k, v, g, beta):
    """(B, T, H, D) inputs -> fp32 (B, H, T, D) with q/k normalised, q scaled, and q/k heads
    repeated to the value heads; g, beta (B, T, Hv) -> (B, Hv, T)."""
    rep = v.shape[2] // k.shape[2]
    if rep > 1:
        q, k = q.repeat_interleave(rep, dim=2), k.repeat_interleave(rep, dim=2)
    q, k, v, g, beta = (x.transpose(1, 2).float().contiguous() for x in (q, k, v, g, beta))
    q, k = l2_normalize(q), l2_normalize(k)
    return q * q.shape[-1] ** -0.5, k, v, g, beta


def recurrent_delta_rule(q, k, v, g, beta, state: torch.Tensor | None = None):
    """Token by token. q, k (B, T, Hk, Dk); v (B, T, Hv, Dv); g, beta (B, T, Hv); state
    (B, Hv, Dk, Dv) or None (zeros). Returns (out (B, T, Hv, Dv) in v's dtype, final state
    fp32)."""
    dtype = v.dtype
    q, k, v, g, beta = _prepare(q, k, v, g, beta)
    b, h, t, dk = k.shape
    s = (torch.zeros(b, h, dk, v.shape[-1], device=v.device) if state is None
         else state.float())
    out = torch.empty_like(v)
    for i in range(t):
        s = s * g[:, :, i].exp()[..., None, None]
        predicted = torch.einsum("bhkv,bhk->bhv", s, k[:, :, i])
        delta = (v[:, :, i] - predicted) * beta[:, :, i, None]
        s = s + k[:, :, i, :, None] * delta[:, :, None, :]
        out[:, :, i] = torch.einsum("bhkv,bhk->bhv", s, q[:, :, i])
    return out.transpose(1, 2).to(dtype), s


def step_delta_rule(q, k, v, g, beta, state: torch.Tensor) -> torch.Tensor:
    """One token (T = 1) of ``recurrent_delta_rule``, updating ``state`` (B, Hv, Dk, Dv) fp32 in
    place (a decode step: no copy of the state); returns out (B, 1, Hv, Dv)."""
    dtype = v.dtype
    q, k, v, g, beta = _prepare(q, k, v, g, beta)  # (B, H, 1, D), g/beta (B, H, 1)
    state.mul_(g.exp()[..., None])
    delta = (v - k @ state) * beta[..., None]  # (B, H, 1, Dv)
    state.add_(k.transpose(-1, -2) * delta)  # the outer product k delta^T
    return (q @ state).transpose(1, 2).to(dtype)


def chunked_delta_rule(q, k, v, g, beta, state: torch.Tensor | None = None, chunk: int = 64):
    """The same recurrence in chunks of ``chunk`` tokens (see the module docstring); same
    arguments and results as ``recurrent_delta_rule``."""
    dtype = v.dtype
    q, k, v, g, beta = _prepare(q, k, v, g, beta)
    b, h, t, dk = k.shape
    dv = v.shape[-1]
    pad = (chunk - t % chunk) % chunk
    q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    g, beta = (F.pad(x, (0, pad)) for x in (g, beta))
    n = (t + pad) // chunk
    kb, vb = k * beta[..., None], v * beta[..., None]
    q, k, kb, vb = (x.reshape(b, h, n, chunk, x.shape[-1]) for x in (q, k, kb, vb))
    cum = g.reshape(b, h, n, chunk).cumsum(-1)  # log decay from the chunk's start
    upper = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).triu(1)
    decay = (cum[..., :, None] - cum[..., None, :]).masked_fill(upper, float("-inf")).exp()
    # the UT transform: (I + strictly-lower(kb k^T * decay)) solves the chunk's updates at once
    system = (kb @ k.transpose(-1, -2)) * decay
    grow = cum.exp()[..., None]  # (B, H, N, L, 1): the decay from the chunk's start
    values = torch.linalg.solve_triangular(system, vb, upper=False, unitriangular=True)
    keys_decayed = torch.linalg.solve_triangular(system, kb * grow, upper=False,
                                                 unitriangular=True)
    inner = (q @ k.transpose(-1, -2)) * decay  # within-chunk attention, causal by the decay
    q = q * grow
    k = k * (cum[..., -1:] - cum).exp()[..., None]
    chunk_decay = cum[..., -1].exp()[..., None, None]  # (B, H, N, 1, 1)
    s = torch.zeros(b, h, dk, dv, device=v.device) if state is None else state.float()
    out = torch.empty(b, h, n, chunk, dv, device=v.device)
    for i in range(n):
        new = values[:, :, i] - keys_decayed[:, :, i] @ s  # what the state did not predict
        out[:, :, i] = q[:, :, i] @ s + inner[:, :, i] @ new
        s = s * chunk_decay[:, :, i] + k[:, :, i].transpose(-1, -2) @ new
    out = out.reshape(b, h, n * chunk, dv)[:, :, :t]
    return out.transpose(1, 2).to(dtype), s


class GatedRMSNorm(RMSNorm):
    """RMSNorm over each head's output (plain weight, ones at init), then times silu(gate)."""

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return (super().forward(x).float() * F.silu(gate.float())).to(x.dtype)


class GatedDeltaNet(nn.Module):
    """Qwen3.5's linear-attention layer (see the module docstring). ``forward(x, cache,
    layer)``: x (B, T, C) -> (B, T, C)."""

    def __init__(self, d_in: int, n_key_heads: int, n_value_heads: int, key_dim: int,
                 value_dim: int, conv_kernel: int = 4, eps: float = 1e-6):
        super().__init__()
        if n_value_heads % n_key_heads:
            raise ValueError(f"linear attention: value heads ({n_value_heads}) must be a "
                             f"multiple of key heads ({n_key_heads})")
        self.n_key_heads, self.n_value_heads = n_key_heads, n_value_heads
        self.key_dim, self.value_dim = key_dim, value_dim
        self.conv_dim = 2 * n_key_heads * key_dim + n_value_heads * value_dim
        self.qkv_proj = nn.Linear(d_in, self.conv_dim, bias=False)
        self.z_proj = nn.Linear(d_in, n_value_heads * value_dim, bias=False)
        self.b_proj = nn.Linear(d_in, n_value_heads, bias=False)
        self.a_proj = nn.Linear(d_in, n_value_heads, bias=False)
        self.conv = nn.Conv1d(self.conv_dim, self.conv_dim, conv_kernel, groups=self.conv_dim,
                              bias=False)
        self.dt_bias = nn.Parameter(torch.ones(n_value_heads))
        self.A_log = nn.Parameter(torch.empty(n_value_heads).uniform_(0.01, 16).log())
        self.norm = GatedRMSNorm(value_dim, eps)
        self.out_proj = nn.Linear(n_value_heads * value_dim, d_in, bias=False)

    def _conv(self, x: torch.Tensor, conv_state: torch.Tensor | None) -> torch.Tensor:
        """Causal depthwise convolution of x (B, C, T) after the cached last inputs (B, C,
        K - 1) (zeros without a cache), then SiLU; updates the cached inputs in place."""
        k = self.conv.kernel_size[0]
        before = (conv_state.to(x.dtype) if conv_state is not None
                  else x.new_zeros(x.shape[0], x.shape[1], k - 1))
        full = torch.cat([before, x], dim=-1)  # (B, C, K - 1 + T)
        if conv_state is not None:
            conv_state.copy_(full[:, :, -(k - 1):])
        if x.shape[-1] == 1:  # a decode step: one dot product per channel
            return F.silu((full * self.conv.weight[:, 0]).sum(-1, keepdim=True))
        return F.silu(F.conv1d(full, self.conv.weight, groups=self.conv_dim))

    def forward(self, x: torch.Tensor, cache=None, layer: int = 0) -> torch.Tensor:
        segments = getattr(cache, "segments", None)
        if segments is not None:  # packed documents (nn/doc_mask.py): each a sequence alone
            return self._per_document(x, segments)
        conv_state = state = None
        if cache is not None:
            x = x * cache.real_positions(x.shape[1])[:, :, None].to(x.dtype)  # padding: zeros
            conv_state, state = cache.linear_state(layer)  # rows starting now: zeros
        return self._mix(x, conv_state, state)

    def _per_document(self, x: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        """Each run of equal ``segments`` (B, T) values from a zero state: no state or
        convolution input crosses from one packed document into the next."""
        rows = []
        for b in range(x.shape[0]):
            seg = segments[b]
            cuts = (torch.nonzero(seg[1:] != seg[:-1]).flatten() + 1).tolist()
            bounds = [0, *cuts, seg.shape[0]]
            rows.append(torch.cat([self._mix(x[b:b + 1, lo:hi])
                                   for lo, hi in zip(bounds, bounds[1:])], dim=1))
        return torch.cat(rows)

    def _mix(self, x: torch.Tensor, conv_state: torch.Tensor | None = None,
             state: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C), continuing (and updating in place) the given convolution
        inputs and state, or from zeros."""
        b, t, _ = x.shape
        qkv = step_linear(self.qkv_proj, x)  # (B, T, conv_dim)
        qkv = self._conv(qkv.transpose(1, 2), conv_state).transpose(1, 2)
        kd, hk, hv = self.key_dim, self.n_key_heads, self.n_value_heads
        q, k, v = qkv.split([hk * kd, hk * kd, hv * self.value_dim], dim=-1)
        q, k = q.reshape(b, t, hk, kd), k.reshape(b, t, hk, kd)
        v = v.reshape(b, t, hv, self.value_dim)
        beta = torch.sigmoid(step_linear(self.b_proj, x))  # (B, T, Hv)
        a = step_linear(self.a_proj, x).float()
        g = -self.A_log.float().exp() * F.softplus(a + self.dt_bias)  # (B, T, Hv) log decay
        if t == 1 and state is not None:  # a decode step, in place
            out = step_delta_rule(q, k, v, g, beta, state)
        else:
            rule = recurrent_delta_rule if t == 1 else chunked_delta_rule
            out, final = rule(q, k, v, g, beta, state)
            if state is not None:
                state.copy_(final)
        z = step_linear(self.z_proj, x).reshape(b, t, hv, self.value_dim)
        out = self.norm(out, z).reshape(b, t, hv * self.value_dim)
        return step_linear(self.out_proj, out)
