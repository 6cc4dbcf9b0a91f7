"""Muon: momentum whose update is orthogonalised, for the hidden matrices; AdamW for the rest.

Keller Jordan, "Muon: An optimizer for hidden layers in neural networks" (2024),
https://kellerjordan.github.io/posts/muon/ , as modded-nanogpt and nanochat use it.

For a hidden weight matrix W (out x in) with gradient G, Muon keeps SGD's momentum and replaces
the update by the nearest (semi-)orthogonal matrix, so every direction of the update moves the
weights by about the same amount, however lopsided the gradient's spectrum is::

    B  <- beta * B + (1 - beta) * G          momentum (an EMA, as the reference writes it)
    U  <- (1 - beta) * G + beta * B          Nesterov: look one step ahead
    O  <- NewtonSchulz5(U)                   ~ U V^T of U's SVD, without an SVD
    W  <- W - lr * sqrt(max(1, out/in)) * O  the same RMS step for tall and wide matrices

The Newton-Schulz iteration (``newton_schulz``) scales U to spectral norm <= 1 and applies
X <- aX + (bA + cA^2)X with A = XX^T five times; its coefficients push every singular value
towards 1 fast (to about 0.7-1.2, which trains as well as exactly 1).

Muon is for 2-D matrices inside the network only. The token embedding (a lookup, not a linear
map), the output head, norms' scales and biases go to AdamW in the same optimizer object, so a
recipe steps, clips, schedules and checkpoints one optimizer. ``muon_param_groups`` sorts a
model's parameters that way.

Distributed: under DDP the gradients are already averaged, so every rank computes the same
update. Under FSDP2 a matrix's gradient is a row shard (a DTensor): the momentum stays sharded,
the update is gathered whole for the orthogonalisation and each rank keeps its rows.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from scratchlm.finetune.lora import LoRALinear
from scratchlm.training.config import MUON_LR

# The quintic's coefficients, chosen for the largest slope at zero (the reference's values).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5


def newton_schulz(g: torch.Tensor, steps: int = NS_STEPS, eps: float = 1e-7,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """(m, n) matrix -> the (m, n) matrix with the same singular vectors and singular values
    near 1. Runs in ``dtype`` (default: g's; the reference uses bfloat16 on GPUs) and returns
    that dtype."""
    if g.ndim != 2:
        raise ValueError(f"newton_schulz needs a matrix, got shape {tuple(g.shape)}")
    a, b, c = NS_COEFFICIENTS
    x = g.to(dtype or g.dtype)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T  # iterate on the wide side: X X^T is the smaller Gram matrix
    x = x / x.norm().clamp(min=eps)  # Frobenius norm >= spectral norm, so all sigma <= 1
    for _ in range(steps):
        gram = x @ x.T  # (m, m)
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b*A + c*A@A
        x = torch.addmm(x, poly, x, beta=a)  # a*X + (b*A + c*A^2) @ X
    return x.T if tall else x


def shape_scale(shape: torch.Size) -> float:
    """sqrt(max(1, out/in)): an orthogonal (out, in) update has RMS sqrt(1/in) when out <= in
    and sqrt(1/out) when taller; this evens the step across shapes (the reference's scale)."""
    return math.sqrt(max(1.0, shape[0] / shape[1]))


def _whole(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _like(update: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """The full ``update`` cut to ``param``'s shard when ``param`` is an FSDP2 DTensor."""
    if not hasattr(param, "device_mesh"):
        return update
    from torch.distributed.tensor import distribute_tensor

    # src_data_rank=None: every rank holds the whole update already, so each slices its part
    return distribute_tensor(update, param.device_mesh, param.placements, src_data_rank=None)


class Muon(torch.optim.Optimizer):
    """One optimizer for a whole model: groups with ``use_muon=True`` take the Muon update
    (``lr``, ``momentum``, ``weight_decay``), the others AdamW (``lr``, ``betas``, ``eps``,
    ``weight_decay``). Weight decay is decoupled (``W *= 1 - lr * wd``) in both.

    ``ns_dtype``: the orthogonalisation's precision (None: the gradient's, float32 on a CPU).
    """

    def __init__(self, param_groups: list[dict], ns_dtype: torch.dtype | None = None):
        for group in param_groups:
            if "use_muon" not in group:
                raise ValueError("each Muon parameter group says use_muon True or False")
            if group["use_muon"]:
                group.setdefault("lr", MUON_LR)
                group.setdefault("momentum", 0.95)
                bad = [tuple(p.shape) for p in group["params"] if p.ndim != 2]
                if bad:
                    raise ValueError(f"Muon updates 2-D matrices only, got shapes {bad}")
            else:
                group.setdefault("lr", 3e-4)
                group.setdefault("betas", (0.9, 0.95))
                group.setdefault("eps", 1e-8)
            group.setdefault("weight_decay", 0.0)
        super().__init__(param_groups, {})
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            (self._muon if group["use_muon"] else self._adamw)(group)
        return loss

    def _muon(self, group: dict) -> None:
        lr, beta, wd = group["lr"], group["momentum"], group["weight_decay"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - beta)
            update = p.grad.lerp(buf, beta)  # Nesterov; the gradient itself is left as it was
            ortho = newton_schulz(_whole(update), dtype=self.ns_dtype).to(p.dtype)
            if wd:
                p.mul_(1 - lr * wd)
            p.add_(_like(ortho, p), alpha=-lr * shape_scale(p.shape))

    def _adamw(self, group: dict) -> None:
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            t = state["step"].item()
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.lerp_(p.grad, 1 - beta1)
            v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denom = (v / (1 - beta2 ** t)).sqrt_().add_(eps)
            if wd:
                p.mul_(1 - lr * wd)
            p.addcdiv_(m, denom, value=-lr / (1 - beta1 ** t))


def muon_param_groups(model: nn.Module, lr: float, muon_lr: float, weight_decay: float,
                      momentum: float = 0.95, betas: tuple[float, float] = (0.9, 0.95)
                      ) -> list[dict]:
    """The model's trainable parameters for ``Muon``: the weights of the blocks' ``nn.Linear``
    layers in a Muon group (``muon_lr``, no weight decay, as the reference trains them); the
    output head in an AdamW group with ``weight_decay``; embeddings, norms, biases and other
    parameters (LoRA's low-rank A and B, a soft prompt) in an AdamW group without. A tied head is the embedding (AdamW, no decay). Each group's
    ``lr_ratio`` is its rate over ``lr``, so a schedule of ``lr`` moves all of them together
    (``optim.set_lr``)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = getattr(model, "out_head", None)
    heads = {id(w) for w in [getattr(head, "weight", None)] if w is not None} - embeddings
    linears = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    for m in model.modules():  # LoRA's factors are nn.Linear too, but low-rank: AdamW's
        if isinstance(m, LoRALinear):
            linears -= {id(p) for p in [*m.lora_A.parameters(), *m.lora_B.parameters()]}
    matrices, head_params, rest, seen = [], [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) in heads:
            head_params.append(p)
        elif id(p) in linears and id(p) not in embeddings:
            matrices.append(p)
        else:
            rest.append(p)
    groups = [
        {"params": matrices, "use_muon": True, "lr": muon_lr, "lr_ratio": muon_lr / lr,
         "momentum": momentum, "weight_decay": 0.0},
        {"params": head_params, "use_muon": False, "lr": lr, "lr_ratio": 1.0, "betas": betas,
         "weight_decay": weight_decay},
        {"params": rest, "use_muon": False, "lr": lr, "lr_ratio": 1.0, "betas": betas,
         "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]
