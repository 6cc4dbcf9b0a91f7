"""GRPO's loss on a fixed batch (fixed completions, rewards and log-probabilities) equals the
written-out formula of each variant and trl's ``GRPOTrainer`` loss for the settings both
support; advantages are group-relative; the settings refuse what they cannot do."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from scratchlm.finetune.config import GRPOSettings
from scratchlm.rl.grpo import check_settings, group_advantages, policy_loss


def _batch(seed=0, b=4, t=5):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(b, t, generator=g) * 3
    old = logp + 0.3 * torch.randn(b, t, generator=g)  # some ratios leave the clip range
    ref = logp + 0.2 * torch.randn(b, t, generator=g)
    mask = torch.ones(b, t)
    mask[0, 3:] = 0
    mask[2, 1:] = 0
    adv = torch.tensor([1.0, -0.5, 0.8, -1.2])
    return logp, old, ref, mask, adv


def _written_out(logp, old, ref, mask, adv, s: GRPOSettings, rows=None) -> float:
    """The module docstring's formula, one token at a time, in Python floats."""
    logp, old, ref, adv = logp.tolist(), old.tolist(), ref.tolist(), adv.tolist()
    per_seq, all_tokens, n_tokens = [], 0.0, 0
    for i in range(len(logp)):
        if rows is not None and not rows[i]:
            continue
        total, n = 0.0, 0
        for t in range(len(logp[i])):
            if not mask[i, t]:
                continue
            ratio = math.exp(logp[i][t] - old[i][t])
            clipped = min(max(ratio, 1 - s.eps_low), 1 + s.eps_high)
            term = -min(ratio * adv[i], clipped * adv[i])
            if s.beta:
                d = ref[i][t] - logp[i][t]
                term += s.beta * ratio * (math.exp(d) - d - 1)
            total, n = total + term, n + 1
        per_seq.append(total / max(n, 1))
        all_tokens, n_tokens = all_tokens + total, n_tokens + n
    if s.loss == "grpo":
        return sum(per_seq) / len(per_seq)
    return all_tokens / n_tokens


@pytest.mark.parametrize("loss", ["grpo", "dapo"])
@pytest.mark.parametrize("beta,eps_high", [(0.0, 0.2), (0.04, 0.28)])
def test_the_loss_is_the_written_out_formula(loss, beta, eps_high):
    logp, old, ref, mask, adv = _batch()
    s = GRPOSettings(loss=loss, beta=beta, eps_high=eps_high)
    got, stats = policy_loss(logp, old, adv, mask, s, ref)
    assert float(got) == pytest.approx(_written_out(logp, old, ref, mask, adv, s), abs=1e-6)
    assert 0 < stats["clip_frac"] < 1  # the batch exercises the clipping
    rows = torch.tensor([True, False, True, True])  # a left-out (zero-variance) completion
    got, _ = policy_loss(logp, old, adv, mask, s, ref, rows)
    assert float(got) == pytest.approx(_written_out(logp, old, ref, mask, adv, s, rows),
                                       abs=1e-6)


def test_advantages_are_relative_to_the_group():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(r, 4)
    first = r[:4]
    assert adv[:4].tolist() == pytest.approx(((first - first.mean()) / (first.std() + 1e-4))
                                             .tolist())
    assert adv[4:].tolist() == [0.0] * 4  # a tied group has nothing to learn from
    assert group_advantages(r, 4, "none")[:4].tolist() == pytest.approx([0.75, -0.25, -0.25,
                                                                         -0.25])


def test_bad_settings_are_refused():
    for change, message in [({"group_size": 1}, "group_size must be >= 2"),
                            ({"loss": "ppo"}, "loss must be one of"),
                            ({"temperature": 0.0}, "temperature must be > 0"),
                            ({"scale": "batch"}, "scale must be one of"),
                            ({"beta": -1.0}, "beta must be >= 0")]:
        with pytest.raises(ValueError, match=message):
            check_settings(dataclasses.replace(GRPOSettings(), **change))


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["grpo", "dapo"])
def test_the_loss_equals_trl_grpo_trainer(loss, tmp_path, small_bpe):
    """trl's own ``_compute_loss`` on the same model (exported to transformers), the same
    completions, advantages, old and reference log-probabilities."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scratchlm.export.hf import write_hf
    from scratchlm.rl.grpo import token_logprobs
    from scratchlm.models.registry import build_model, preset

    torch.manual_seed(0)
    ours = build_model(preset("llama-tiny")[1]).eval()
    write_hf(ours, small_bpe, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    s = GRPOSettings(loss=loss, beta=0.04, eps_low=0.2, eps_high=0.28, temperature=0.7)
    args = trl.GRPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4,
                          num_generations=4, max_completion_length=6, beta=s.beta,
                          epsilon=s.eps_low, epsilon_high=s.eps_high, loss_type=loss,
                          temperature=s.temperature, report_to=[], use_cpu=True)
    trainer = trl.GRPOTrainer(model=hf, reward_funcs=lambda completions, **k: [0.0] * len(
        completions), args=args, train_dataset=Dataset.from_list([{"prompt": "a b"}] * 4),
        processing_class=hf_tok)
    trainer.model.eval()

    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 256, (1, 7), generator=g).repeat(4, 1)
    completion = torch.randint(0, 256, (4, 6), generator=g)
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[1, 4:] = 0
    mask[3, 2:] = 0
    with torch.no_grad():
        logp, _ = token_logprobs(ours, torch.cat([prompt, completion], 1), 7, s.temperature)
    old = logp + 0.3 * torch.randn(logp.shape, generator=g)
    ref = logp + 0.2 * torch.randn(logp.shape, generator=g)
    adv = torch.tensor([1.0, -0.4, 0.7, -1.3])
    inputs = {"prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt),
              "completion_ids": completion, "completion_mask": mask, "advantages": adv,
              "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": mask.sum()}
    ids = torch.cat([prompt, completion], 1)
    with torch.no_grad():  # the policy's log-probabilities, from transformers' own logits
        hf_logp = torch.log_softmax(hf(ids).logits[:, 6:-1] / s.temperature, -1).gather(
            -1, completion[..., None]).squeeze(-1)
    assert torch.allclose(hf_logp, logp, atol=1e-4)
    # trl's loss given those log-probabilities (its fused-head forward is its own business)
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (hf_logp, torch.zeros_like(
        hf_logp), None)
    theirs = trainer._compute_loss(trainer.model, inputs)
    got, _ = policy_loss(hf_logp, old, adv, mask, s, ref)
    assert float(got) == pytest.approx(float(theirs), rel=1e-6, abs=1e-7)



FAMILIES = [
    ("gpt-tiny", {"vocab_size": 97}),
    ("llama-tiny", {"vocab_size": 97}),
    ("qwen3-tiny", {"vocab_size": 97}),
    # windows of 8 and 12 tokens: the completion rows' keys reach back into the shared prompt
    ("gemma3-tiny", {"vocab_size": 97, "sliding_window": 8}),
    ("gemma3-tiny", {"vocab_size": 97, "sliding_window": 12}),
    ("qwen3-tiny", {"vocab_size": 97, "moe": {"num_experts": 4, "top_k": 2,
                                             "intermediate_size": 32}}),
    # per-layer embeddings and KV-shared layers reading the prompt's keys
    ("gemma4-tiny", {"vocab_size": 97}),
    # linear-attention layers: a state per row, no shared prompt; the rows run whole
    ("qwen3.5-tiny", {"vocab_size": 97})]
FAMILY_IDS = ["gpt", "llama", "qwen3", "gemma3-w8", "gemma3-w12", "qwen3-moe", "gemma4",
              "qwen3.5"]


@pytest.mark.parametrize("name,changes", FAMILIES, ids=FAMILY_IDS)
def test_the_prompt_run_once_for_a_group_gives_the_whole_rows_values(name, changes):
    """group_logprobs (the prompt once, its keys shared by the G rows) equals token_logprobs
    on G whole rows of prompt + completion: log-probabilities, entropies and gradients."""
    from scratchlm.rl.grpo import group_logprobs, token_logprobs
    from scratchlm.models.registry import build_model, preset

    torch.manual_seed(0)
    model = build_model(dataclasses.replace(preset(name)[1], **changes)).eval()
    prompt = torch.randint(0, 97, (11,))
    rows = torch.randint(0, 97, (3, 9))
    rows[2, 5:] = 0  # a shorter completion, right-padded
    out = []
    for shared in (False, True):
        model.zero_grad()
        if shared:
            logp, ent = group_logprobs(model, prompt, rows, 0.7)
        else:
            ids = torch.cat([prompt.expand(3, -1), rows], 1)
            logp, ent = token_logprobs(model, ids, 11, 0.7)
        (logp * torch.linspace(-1, 1, logp.numel()).view_as(logp)).sum().backward()
        out.append((logp.detach(), ent, [p.grad.clone() for p in model.parameters()
                                         if p.grad is not None]))
    (a, ea, ga), (b, eb, gb) = out
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(eb, ea, rtol=1e-5, atol=1e-5)
    assert len(ga) == len(gb) > 0
    for x, y in zip(ga, gb):
        # sums in another order: an error relative to the gradient's size (Gemma 4's reach
        # 100, its attention unscaled behind normed queries and keys; a wrong gradient is off
        # by its own size)
        assert (y - x).norm() <= 1e-4 * x.norm() + 1e-6


@pytest.mark.parametrize("context", [None, 20], ids=["one-row", "context-20"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["shared", "whole-rows"])
@pytest.mark.parametrize("name,changes", FAMILIES, ids=FAMILY_IDS)
def test_packed_completions_give_the_padded_rows_values(name, changes, checkpointing, context):
    """group_logprobs with ``lengths`` (the G completions side by side in one row after the
    shared prompt; with block checkpointing, and for linear-attention layers, whole rows side
    by side with a document mask; no padding either way) equals the padded rows on every real
    token: log-probabilities, entropies and gradients; padding reads 0. Lengths 9, 5, 1 and 0
    (a completion of one token has no inputs of its own; one of none has nothing at all).
    ``context`` 20: the packed rows would not fit a context of 20 tokens (11 + 18 inputs, or
    the whole rows' 47), so they split into several, each within it."""
    from scratchlm.models.registry import build_model, preset
    from scratchlm.rl.grpo import group_logprobs

    torch.manual_seed(0)
    cfg = dataclasses.replace(preset(name)[1], **changes, grad_checkpointing=checkpointing)
    if context:
        cfg = dataclasses.replace(cfg, context_length=context)
    model = build_model(cfg).eval()
    prompt = torch.randint(0, 97, (11,))
    lengths = [9, 5, 1, 0, 7]
    rows = torch.randint(0, 97, (len(lengths), 9))
    real = torch.arange(9)[None] < torch.tensor(lengths)[:, None]
    rows[~real] = 0
    weights = torch.linspace(-1, 1, rows.numel()).view_as(rows.float()) * real
    out = []
    for packed in (False, True):
        model.zero_grad()
        logp, ent = group_logprobs(model, prompt, rows, 0.7, lengths if packed else None)
        (logp * weights).sum().backward()
        out.append((logp.detach(), ent, [p.grad.clone() for p in model.parameters()
                                         if p.grad is not None]))
    (a, ea, ga), (b, eb, gb) = out
    torch.testing.assert_close(b[real], a[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(eb[real], ea[real], rtol=1e-5, atol=1e-5)
    assert (b[~real] == 0).all() and (eb[~real] == 0).all()
    assert len(ga) == len(gb) > 0
    for x, y in zip(ga, gb):
        assert (y - x).norm() <= 1e-4 * x.norm() + 1e-6
    # lengths that do not fit the rows are refused
    with pytest.raises(ValueError, match="lengths"):
        group_logprobs(model, prompt, rows, 0.7, [10, 5, 1, 0, 7])
