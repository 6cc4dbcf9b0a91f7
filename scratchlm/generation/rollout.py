"""On-policy rollouts for GRPO, and the loss module that trains on them in the shared loop.

Each call of ``GRPOLoss`` on a batch of prompt indices (one optimizer step's micro-batch):

1. rollout: G completions per prompt through the batched KV-cache engine (sampled at the
   settings' temperature / top-p, ending at end-of-text or ``max_new_tokens``), with the
   log-probability of every sampled token under the policy that sampled it;
2. rewards of each completion (``evaluate/rewards.py``) and group-relative advantages;
3. the policy's log-probabilities of the same tokens, recomputed with gradients, and the
   clipped, optionally KL-penalised loss of ``finetune/grpo.py``.

The engine's log-probabilities are the "old" policy's: the loss's ratio starts at 1 (up to
float rounding; tested within 1e-4), so one update per rollout is on-policy. Dropout stays
off in both passes, as in trl, or the two would not be the same policy. The rollout's seed is
drawn from torch's RNG, which checkpoints save, so a resumed run samples what a straight run
would have.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from scratchlm.finetune.grpo import GRPOSettings, group_advantages, policy_loss, token_logprobs
from scratchlm.generation.engine import Engine, SamplingParams


@dataclass
class Prompt:
    text: str  # the question, as the reward functions see it
    ids: list[int]  # the prompt as the model sees it (chat template applied)
    reference: str  # what the reward checks against (the final number)


@dataclass
class Rollout:
    completions: list[list[int]]  # G rows per prompt, consecutive; the stop token included
    logprobs: list[list[float]]  # the sampling policy's, per completion token
    texts: list[str]  # decoded, the stop token left out
    truncated: list[bool]  # ended at max_new_tokens rather than end-of-text


def sample_groups(engine: Engine, tokenizer, prompts: Sequence[Prompt], s: GRPOSettings,
                  seed: int | None) -> Rollout:
    """``s.group_size`` completions of every prompt, in one engine batch."""
    eos = tokenizer.eos_id
    params = SamplingParams(s.max_new_tokens, s.temperature, top_p=s.top_p,
                            stop_ids=(eos,) if eos is not None else (), seed=seed)
    rows = [p.ids for p in prompts for _ in range(s.group_size)]
    out = engine.sample(rows, params)
    ids = [t for t, _ in out]
    texts = [tokenizer.decode(t[:-1] if t and t[-1] == eos else t) for t in ids]
    truncated = [not (t and t[-1] == eos) for t in ids]
    return Rollout(ids, [lp for _, lp in out], texts, truncated)


class SamplingCopy:
    """What LoRA rollouts sample from: a copy of the model whose adapted layers are plain
    ``nn.Linear`` with the adapters merged (W + scale * B @ A), so that the engine's native
    decoder runs them; every other tensor (embeddings, norms) is shared, not copied.
    ``refresh()`` re-merges the current adapters into the copy's weights, in place, before
    each rollout. A 4-bit (QLoRA) base has no float weight to merge into: ``create`` gives
    None and rollouts run on the LoRA model itself (the PyTorch path)."""

    def __init__(self, model: nn.Module, copy: nn.Module, names: list[str]):
        self.model, self.copy, self.names = model, copy, names

    @classmethod
    def create(cls, model: nn.Module) -> "SamplingCopy | None":
        import copy as copying

        from scratchlm.finetune.lora import lora_modules

        loras = lora_modules(model)
        if not loras or any(m.quantized is not None for m in loras.values()):
            return None
        adapters = {id(t) for m in loras.values() for t in (*m.lora_A.parameters(),
                                                             *m.lora_B.parameters())}
        shared = {id(t): t for t in (*model.parameters(), *model.buffers())
                  if id(t) not in adapters}
        clone = copying.deepcopy(model, memo=dict(shared))
        for name, m in loras.items():
            # skip_init: no random initialisation, so creating the copy draws nothing from
            # torch's RNG (a resumed run creates it at another step than a straight one)
            linear = nn.utils.skip_init(nn.Linear, m.in_features, m.out_features,
                                        bias=m.bias is not None, device=m.weight.device,
                                        dtype=m.weight.dtype)
            if m.bias is not None:
                linear.bias = m.bias  # frozen, shared
            clone.set_submodule(name, linear.requires_grad_(False))
        clone.eval()
        out = cls(model, clone, list(loras))
        out.refresh()
        return out

    @torch.no_grad()
    def refresh(self) -> None:
        modules = dict(self.model.named_modules())
        for name in self.names:
            m, target = modules[name], self.copy.get_submodule(name).weight
            target.copy_(m.weight)
            if m.enabled:
                for part, sl in m.parts.items():
                    target[sl] += m.delta(part).to(target.dtype)


def _pad(rows: Sequence[Sequence[float]], width: int, dtype=torch.float32) -> torch.Tensor:
    out = torch.zeros(len(rows), width, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=dtype)
    return out


class GRPOLoss(nn.Module):
    """The loss module of ``fit`` for GRPO: its inputs are (B,) indices into ``prompts``.
    ``reference``: None (LoRA: the model with adapters off) or a frozen model, used when
    ``settings.beta`` > 0. ``step_metrics()`` returns the step's statistics and resets them."""

    unit = "prompts"  # what batch_weight counts (the loss plot's top axis)

    has_eval_loss = False  # fit: no loss on held-out batches (the recipe measures accuracy)

    def __init__(self, model: nn.Module, tokenizer, prompts: Sequence[Prompt], reward,
                 settings: GRPOSettings, reference: nn.Module | None = None):
        super().__init__()
        self.model, self.tokenizer, self.prompts = model, tokenizer, list(prompts)
        self.reward, self.s = reward, settings
        self._reference = [reference]  # not a submodule: never trained nor saved
        self._engine: Engine | None = None
        self._copy: SamplingCopy | None = None
        self._stats: list[dict] = []

    def batch_weight(self, idx, _targets=None) -> torch.Tensor:
        return torch.tensor(len(idx))  # prompts (each a group of completions)

    def engine(self) -> Engine:
        """The engine of the rollouts: on the merged ``SamplingCopy`` for LoRA (refreshed
        with the adapters as they are now), else on the model itself."""
        if self._engine is None:
            self._copy = SamplingCopy.create(self.model)
            self._engine = Engine(self._copy.copy if self._copy is not None else self.model)
        elif self._copy is not None:
            self._copy.refresh()
        return self._engine

    def _logprobs(self, model: nn.Module, prompt: Prompt, rows: list[list[int]],
                  width: int) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(model.parameters()).device
        longest = max(len(r) for r in rows)
        ids = torch.tensor([prompt.ids + r + [0] * (longest - len(r)) for r in rows],
                           device=device)
        logp, ent = token_logprobs(model, ids, len(prompt.ids), self.s.temperature)
        pad = width - longest
        return (nn.functional.pad(logp, (0, pad)), nn.functional.pad(ent, (0, pad)))

    def _reference_logprobs(self, prompts, rollout, width) -> torch.Tensor:
        from scratchlm.finetune.dpo import adapters_off

        ref, g = self._reference[0], self.s.group_size
        out = []
        with torch.no_grad():
            for k, p in enumerate(prompts):
                rows = rollout.completions[k * g:(k + 1) * g]
                if ref is not None:
                    out.append(self._logprobs(ref, p, rows, width)[0])
                else:
                    with adapters_off(self.model):
                        out.append(self._logprobs(self.model, p, rows, width)[0])
        return torch.cat(out)

    def forward(self, idx: torch.Tensor, _targets=None) -> torch.Tensor:
        s, g = self.s, self.s.group_size
        prompts = [self.prompts[i] for i in idx.tolist()]
        self.model.eval()  # no dropout: the sampling and the trained policy are one
        t0 = time.perf_counter()
        seed = int(torch.randint(0, 2**62, ()))
        rollout = sample_groups(self.engine(), self.tokenizer, prompts, s, seed)
        t1 = time.perf_counter()
        rewards = torch.tensor(self.reward_rows(prompts, rollout))
        adv = group_advantages(rewards, g, s.scale)
        varied = rewards.view(-1, g).std(1) > 0
        keep = varied.repeat_interleave(g) if s.skip_zero_variance else None
        width = max(len(c) for c in rollout.completions)
        device = next(self.model.parameters()).device
        logps, ents = [], []
        for k, p in enumerate(prompts):
            if keep is not None and not varied[k]:  # no gradient to compute: zeros suffice
                logps.append(torch.zeros(g, width, device=device))
                ents.append(torch.zeros(g, width, device=device))
                continue
            lp, en = self._logprobs(self.model, p, rollout.completions[k * g:(k + 1) * g], width)
            logps.append(lp)
            ents.append(en)
        logp, ent = torch.cat(logps), torch.cat(ents)
        old = _pad(rollout.logprobs, width).to(device)
        mask = _pad([[1.0] * len(c) for c in rollout.completions], width).to(device)
        ref = self._reference_logprobs(prompts, rollout, width).to(device) if s.beta > 0 \
            else None
        loss, stats = policy_loss(logp, old, adv.to(device), mask, s, ref,
                                  keep.to(device) if keep is not None else None)
        if keep is not None and not bool(keep.any()):  # every group tied: a zero step, with
            # a graph through the trained parameters so that backward (and DDP) still run
            loss = sum(q.view(-1)[0] for q in self.model.parameters() if q.requires_grad) * 0.0
        counted = mask if keep is None else mask * keep[:, None].to(device)
        with torch.no_grad():
            answers = [float(r) for r in self._answers(prompts, rollout)]
            self._stats.append({
                "reward": float(rewards.mean()), "reward_std": float(rewards.std()),
                "accuracy": sum(answers) / len(answers),
                "response_len": float(mask.sum(1).mean()),
                "truncated_frac": sum(rollout.truncated) / len(rollout.truncated),
                "entropy": float((ent * counted).sum() / counted.sum().clamp(min=1)),
                "zero_variance_frac": float((~varied).float().mean()),
                "rollout_s": t1 - t0, "score_s": time.perf_counter() - t1, **stats})
        return loss

    def reward_rows(self, prompts: Sequence[Prompt], rollout: Rollout) -> list[float]:
        from scratchlm.evaluate.rewards import score_all

        g = self.s.group_size
        rows = [p for p in prompts for _ in range(g)]
        names = [f"prompt {p.text[:40]!r}, completion {i % g}" for i, p in enumerate(rows)]
        return score_all(self.reward, [p.text for p in rows], rollout.texts,
                         [p.reference for p in rows], names)

    def _answers(self, prompts: Sequence[Prompt], rollout: Rollout) -> list[bool]:
        from scratchlm.evaluate.rewards import answer_reward

        rows = [p for p in prompts for _ in range(self.s.group_size)]
        return [answer_reward(p.text, t, p.reference) == 1.0 for p, t in zip(rows, rollout.texts)]

    def step_metrics(self) -> dict:
        """The mean of each statistic over the micro-batches since the last call."""
        if not self._stats:
            return {}
        keys = self._stats[0].keys()
        out = {k: sum(d[k] for d in self._stats) / len(self._stats) for k in keys}
        out["rollout_s"] = sum(d["rollout_s"] for d in self._stats)  # times add up
        out["score_s"] = sum(d["score_s"] for d in self._stats)
        self._stats = []
        return out


@torch.no_grad()
def greedy_accuracy(engine: Engine, tokenizer, prompts: Sequence[Prompt],
                    max_new_tokens: int, batch_size: int = 16) -> tuple[float, list[str]]:
    """Exact-answer accuracy of greedy completions (held-out evaluation), and the texts;
    ``engine``: e.g. ``GRPOLoss.engine()``, the rollouts' (merged, for LoRA)."""
    from scratchlm.evaluate.rewards import answer_reward

    eos = tokenizer.eos_id
    params = SamplingParams(max_new_tokens, 0.0, stop_ids=(eos,) if eos is not None else ())
    texts = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        for ids in engine.generate([p.ids for p in chunk], params):
            texts.append(tokenizer.decode(ids))
    right = [answer_reward(p.text, t, p.reference) for p, t in zip(prompts, texts)]
    return sum(right) / max(len(right), 1), texts
