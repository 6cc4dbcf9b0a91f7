"""GRPO: group-relative policy optimisation (Shao et al. 2024), the loss once completions are
sampled and scored. Sampling (the engine) and rewards live above, in ``rl/rollout.py``
and ``rl/rewards.py``.

For each prompt, G completions o_1..o_G are sampled and rewarded r_1..r_G. A completion's
advantage is its reward against its own group's:

    A_i = (r_i - mean(r)) / (std(r) + 1e-4)       (``scale="group"``; ``"none"``: r_i - mean(r))

and every token t of o_i gets the clipped surrogate of PPO with the ratio to the policy that
sampled it (the "old" policy):

    ratio_t = exp(logp_t - old_logp_t)
    l_t     = -min(ratio_t * A_i, clip(ratio_t, 1 - eps_low, 1 + eps_high) * A_i)
              + beta * ratio_t * (exp(ref_t - logp_t) - (ref_t - logp_t) - 1)

The last term is the k3 estimate of the KL divergence to the reference, weighted by the ratio
so that it stays unbiased for tokens sampled by the old policy (trl's default,
``use_bias_correction_kl``).

``eps_high > eps_low`` is DAPO's "clip-higher". The loss averages ``l_t``:

    loss="grpo": over each completion's tokens, then over completions (sequence level)
    loss="dapo": over all completion tokens of the batch together (token level)

These are trl's ``GRPOTrainer`` formulas for its ``grpo`` and ``dapo`` loss types (tested
against it). Log-probabilities are of the tempered distribution, ``log_softmax(logits / T)``,
the one the completions were sampled from.
"""

from __future__ import annotations

import torch
from torch import nn

from scratchlm.finetune.config import GRPOSettings

LOSSES = ("grpo", "dapo")
SCALES = ("group", "none")


def check_settings(s: GRPOSettings) -> None:
    """The settings' names (loss, scale) here; their numeric ranges on the fields' types
    (``GRPOSettings``), which flags, files and settings built in Python all meet."""
    from scratchlm.config import check_bounds

    if s.loss not in LOSSES:
        raise ValueError(f"--grpo.loss must be one of {', '.join(LOSSES)}, got {s.loss!r}")
    if s.scale not in SCALES:
        raise ValueError(f"--grpo.scale must be one of {', '.join(SCALES)}, got {s.scale!r}")
    check_bounds(s, "grpo.")


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """(N * G,) rewards, G consecutive per prompt -> (N * G,) advantages (the module
    docstring). ``std`` is the unbiased one, as trl computes it."""
    groups = rewards.view(-1, group_size)
    centred = groups - groups.mean(1, keepdim=True)
    if scale == "group":
        centred = centred / (groups.std(1, keepdim=True) + 1e-4)
    return centred.reshape(-1)


def token_logprobs(model: nn.Module, ids: torch.Tensor, start: int, temperature: float,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probabilities, entropies), (B, T - start) each, of the tokens ``ids[:, start:]``
    given everything before them, under ``log_softmax(logits / temperature)``. Only the
    completion positions go through the output head."""
    hidden = model.hidden_states(ids[:, :-1])[:, start - 1:]
    return _head_logprobs(model, hidden, ids[:, start:], temperature)


def _head_logprobs(model: nn.Module, hidden: torch.Tensor, tokens: torch.Tensor,
                   temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, C) states -> the (B, T) log-probabilities of ``tokens``, and the entropies. A
    bias-free head goes through ``linear_token_logprobs`` (one pass per chunk of rows)."""
    from scratchlm.nn.loss import fusable_head, head_weight, linear_token_logprobs
    from scratchlm.nn.native import head_linear

    vocab = model.cfg.vocab_size
    if fusable_head(model.out_head):
        return linear_token_logprobs(hidden, head_weight(model.out_head)[:vocab], tokens,
                                     temperature)
    logits = head_linear(model.out_head, hidden)[..., :vocab].float()
    logp_all = torch.log_softmax(logits / temperature, -1)
    logp = logp_all.gather(-1, tokens[..., None]).squeeze(-1)
    with torch.no_grad():  # a statistic: no graph kept for it (each is (B, T, V) large)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def group_logprobs(model: nn.Module, prompt: torch.Tensor, rows: torch.Tensor,
                   temperature: float, lengths: list[int] | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``token_logprobs`` of the (G, T) completion ``rows`` (right-padded) of one (P,)
    ``prompt``, the prompt run once for the group (``nn/shared_prefix.py``) instead of once
    per row: a quarter less work for G = 4 rows of 64 prompt and 128 completion tokens. The
    same values (tested); with block checkpointing on, or linear-attention layers
    (``_keys_only``), the whole rows run as before.

    ``lengths`` (each row's real tokens): packed, the rows' tokens run side by side in one row
    after the prompt (or, where it is not shared, whole rows side by side with a document
    mask), without their padding, and only real tokens go through the head; the padding's
    log-probabilities and entropies are 0."""
    g, t = rows.shape
    if lengths is not None and (len(lengths) != g or any(not 0 <= n <= t for n in lengths)):
        raise ValueError(f"group_logprobs: lengths {lengths} for {g} rows of {t} tokens")
    if getattr(model.cfg, "grad_checkpointing", False) or not _keys_only(model):
        if lengths is not None:
            return _packed_rows_logprobs(model, prompt, rows, lengths, temperature)
        ids = torch.cat([prompt.expand(rows.shape[0], -1), rows], 1)
        return token_logprobs(model, ids, prompt.shape[0], temperature)
    from scratchlm.nn.shared_prefix import SharedPrefix

    prefix = SharedPrefix(prompt.device)
    last = model.hidden_states(prompt[None], prefix)[:, -1:]  # (1, 1, C): predicts token 0
    if lengths is not None:
        return _packed_logprobs(model, prefix, last, rows, lengths, temperature)
    prefix.share()
    hidden = last.expand(rows.shape[0], -1, -1)
    if rows.shape[1] > 1:
        hidden = torch.cat([hidden, model.hidden_states(rows[:, :-1], prefix)], 1)
    return _head_logprobs(model, hidden, rows, temperature)


def _keys_only(model: nn.Module) -> bool:
    """Whether every block attends over keys and values, which ``SharedPrefix`` holds; a
    linear-attention layer (Qwen3.5's) carries a state per row instead, so such a model runs
    its rows whole."""
    return all(not hasattr(b, "lin") for b in model.trf_blocks)


def _real_logprobs(model: nn.Module, states: list[torch.Tensor], rows: torch.Tensor,
                   lengths: list[int], temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The (G, T) log-probabilities and entropies of the rows' real tokens from their states
    (pieces of (n, C), in the tokens' order), 0 on the padding."""
    zeros = torch.zeros(rows.shape, device=rows.device)
    if not states:
        return zeros, zeros
    tokens = torch.cat([rows[i, :n] for i, n in enumerate(lengths)])
    logp, entropy = _head_logprobs(model, torch.cat(states)[None], tokens[None], temperature)
    real = torch.arange(rows.shape[1], device=rows.device)[None] < torch.tensor(
        lengths, device=rows.device)[:, None]
    return (zeros.to(logp.dtype).masked_scatter(real, logp[0]),
            zeros.to(entropy.dtype).masked_scatter(real, entropy[0]))


def _fitting(costs: list[int], limit: int) -> list[list[int]]:
    """Consecutive groups of indices whose costs (each <= limit) sum to at most ``limit``: the
    packed rows that fit the model's context."""
    groups, total = [[]], 0
    for i, c in enumerate(costs):
        if groups[-1] and total + c > limit:
            groups.append([])
            total = 0
        groups[-1].append(i)
        total += c
    return groups


def _packed_rows_logprobs(model: nn.Module, prompt: torch.Tensor, rows: torch.Tensor,
                          lengths: list[int], temperature: float,
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``group_logprobs`` packed where the prompt cannot be shared (block checkpointing,
    linear-attention layers): the whole rows, prompt + real tokens, side by side with a
    document mask (``nn/doc_mask.py``), in as many packed rows as the context needs."""
    from scratchlm.nn.doc_mask import DocumentMask

    p = prompt.shape[0]
    real = [i for i, n in enumerate(lengths) if n]
    states = []
    for group in _fitting([p + lengths[i] - 1 for i in real], model.cfg.context_length):
        inputs, segments, where, at = [], [], [], 0
        for i in (real[j] for j in group):  # the row's inputs: the prompt, its tokens but the last
            n = lengths[i]
            inputs += [prompt, rows[i, :n - 1]]
            segments.append(torch.full((p + n - 1,), i, device=rows.device))
            where.append(torch.arange(at + p - 1, at + p + n - 1, device=rows.device))
            at += p + n - 1
        hidden = model.hidden_states(torch.cat(inputs)[None],
                                     DocumentMask(torch.cat(segments)[None]))[0]
        states.append(hidden[torch.cat(where)])
    return _real_logprobs(model, states, rows, lengths, temperature)


def _packed_logprobs(model: nn.Module, prefix, last: torch.Tensor, rows: torch.Tensor,
                     lengths: list[int], temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``group_logprobs`` packed: row i's first ``lengths[i]`` tokens, each predicted from the
    prompt's last state (its first token) or from its own tokens before it; the rows' inputs
    side by side after the prompt, in as many packed rows as the context needs."""
    inputs = [max(n - 1, 0) for n in lengths]
    own = []  # each row's states after the first
    for group in _fitting(inputs, model.cfg.context_length - prefix.length):
        prefix.share([inputs[i] for i in group])
        ids = torch.cat([rows[i, :inputs[i]] for i in group])
        states = (model.hidden_states(ids[None], prefix)[0] if len(ids)
                  else last.new_zeros(0, last.shape[-1]))
        at = 0
        for i in group:
            own.append(states[at:at + inputs[i]])
            at += inputs[i]
    pieces = [x for n, o in zip(lengths, own) if n for x in (last[0], o)]
    return _real_logprobs(model, pieces, rows, lengths, temperature)


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, s: GRPOSettings, ref_logp: torch.Tensor | None = None,
                rows: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """The loss of the module docstring over (B, T) completion tokens (``mask``: 1 on real
    tokens) with (B,) ``advantages``; ``rows`` (B,) bool: completions that count (others,
    e.g. of zero-variance groups, are left out). Also the step's statistics."""
    mask = mask.float()
    if rows is not None:
        mask = mask * rows[:, None].float()
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    clipped = torch.clamp(ratio, 1 - s.eps_low, 1 + s.eps_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    kl = None
    if s.beta > 0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs the reference's log-probabilities")
        delta = ref_logp - logp
        kl = (torch.exp(delta) - delta - 1) * ratio
        per_token = per_token + s.beta * kl
    tokens = mask.sum()
    if s.loss == "grpo":
        per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        keep = rows if rows is not None else torch.ones_like(per_seq, dtype=torch.bool)
        loss = per_seq[keep].sum() / keep.sum().clamp(min=1)
    else:
        loss = (per_token * mask).sum() / tokens.clamp(min=1.0)
    with torch.no_grad():
        n = tokens.clamp(min=1.0)
        hit = ((ratio < 1 - s.eps_low) & (adv < 0)) | ((ratio > 1 + s.eps_high) & (adv > 0))
        stats = {"clip_frac": float((hit.float() * mask).sum() / n),
                 "kl": float((kl * mask).sum() / n) if kl is not None else 0.0}
    return loss, stats
