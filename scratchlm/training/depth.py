"""One dial for a model trained from scratch: its depth (nanochat's ``--depth``).

From the number of layers everything else follows, so one number moves a run along the
compute-optimal line:

    n_layer  = depth
    n_embd   = 64 * depth                  (the aspect ratio nanochat keeps)
    n_head   = n_embd / 128                heads of 128 (no grouping: n_kv_head = n_head); an odd
                                           depth's width is no multiple of 128: heads of 64
    FFN      = 4 * n_embd (GPT), or 8/3 * n_embd rounded up to 64 for a gated (SwiGLU) FFN,
               the same parameters as 4x in two matrices
    horizon  = tokens_per_param * parameters tokens (Chinchilla: 20), as optimizer steps of
               the run's batch
    lr       = --train.lr * sqrt(768 / n_embd) for the AdamW-trained embeddings, head, norms
               (the rate is given at GPT-2 small's width, as nanochat scales its embedding and
               head rates); Muon's matrix rate needs no scaling (its update's size is set by
               its shape)

The batch is the one thing the dial leaves to the user: it is what the device holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ASPECT = 64  # n_embd per layer
HEAD_DIM = 128
BASE_WIDTH = 768  # the width --train.lr is given for
CHINCHILLA = 20.0  # tokens per parameter
PLANNED_MFU = 0.4  # the share of a device's peak a run's predicted time assumes


def shape_of(depth: int, config_fields) -> dict:
    """The config fields ``depth`` sets, for a family whose config has ``config_fields``
    (a gated FFN has ``intermediate_size``; grouped attention ``n_kv_head`` and ``head_dim``)."""
    if depth < 1:
        raise ValueError(f"--depth must be at least 1, got {depth}")
    n_embd = ASPECT * depth
    head_dim = HEAD_DIM if n_embd % HEAD_DIM == 0 else ASPECT
    n_head = n_embd // head_dim
    shape = {"n_layer": depth, "n_embd": n_embd, "n_head": n_head}
    if "n_kv_head" in config_fields:
        shape["n_kv_head"] = n_head
    if "head_dim" in config_fields:
        shape["head_dim"] = head_dim
    if "intermediate_size" in config_fields:
        shape["intermediate_size"] = 64 * math.ceil(8 * n_embd / 3 / 64)
    return shape


def lr_scale(n_embd: int) -> float:
    return math.sqrt(BASE_WIDTH / n_embd)


@dataclass
class Horizon:
    params: int
    tokens_per_step: int
    tokens_per_param: float
    steps: int

    @property
    def tokens(self) -> int:
        return self.steps * self.tokens_per_step


def horizon(params: int, tokens_per_step: int, tokens_per_param: float) -> Horizon:
    """The optimizer steps that show the model ``tokens_per_param`` tokens per parameter."""
    steps = max(1, math.ceil(tokens_per_param * params / tokens_per_step))
    return Horizon(params, tokens_per_step, tokens_per_param, steps)


def tokens_ratio(depth: int | None, tokens_per_param: float | None) -> float | None:
    """The tokens per parameter a run's horizon is set from: the given ratio (0: none, the
    run's max_steps stand), else Chinchilla's with the depth dial, else none."""
    if tokens_per_param is None:
        return CHINCHILLA if depth is not None else None
    return tokens_per_param or None
