"""On-policy rollouts for GRPO, and the loss module that trains on them in the shared loop.

Each call of ``GRPOLoss`` on a batch of prompt indices (one optimizer step's micro-batch):

1. rollout: G completions per prompt through the batched KV-cache engine (sampled at the
   settings' temperature / top-p, ending at end-of-text or ``max_new_tokens``), with the
   log-probability of every sampled token under the policy that sampled it;
2. rewards of each completion (``rl/rewards.py``) and group-relative advantages;
3. the policy's log-probabilities of the same tokens, recomputed with gradients, and the
   clipped, optionally KL-penalised loss of ``rl/grpo.py``.

Steps 1-2 run once per optimizer step for all its micro-batches (``begin_step``), step 3 per
micro-batch; with ``iterations`` > 1, steps 1-2 run every ``iterations`` steps and step 3 on
every one, over the same rollout (kept in the checkpoints in between).

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

from scratchlm.rl.grpo import GRPOSettings, group_advantages, group_logprobs, policy_loss
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


@dataclass
class StepRollout:
    """One step's rollout, trained on for ``settings.iterations`` steps (passes)."""
    indices: list[list[int]]  # prompt indices of each micro-batch
    rollout: Rollout  # G rows per prompt, micro-batches in order
    rewards: list[float]
    passes: int = 0  # passes begun over it

    def to_json(self) -> dict:
        r = self.rollout
        return {"indices": self.indices, "completions": r.completions, "logprobs": r.logprobs,
                "texts": r.texts, "truncated": r.truncated, "rewards": self.rewards,
                "passes": self.passes}

    @classmethod
    def from_json(cls, d: dict, n_prompts: int, group_size: int,
                  vocab_size: int) -> "StepRollout":
        """Read back from a checkpoint, every field checked before it is trusted."""
        def ints(x, hi: int) -> bool:
            return isinstance(x, list) and all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < hi for i in x)

        idx = d["indices"]
        if not (isinstance(idx, list) and all(ints(m, n_prompts) for m in idx)):
            raise ValueError("prompt indices out of range")
        rows = group_size * sum(len(m) for m in idx)
        r = Rollout(d["completions"], d["logprobs"], d["texts"], d["truncated"])
        if any(not isinstance(x, list) or len(x) != rows for x in (
                r.completions, r.logprobs, r.texts, r.truncated, d["rewards"])):
            raise ValueError(f"expected {rows} completions, log-probabilities, texts and rewards")
        if not all(ints(c, vocab_size) and isinstance(lp, list) and len(lp) == len(c)
                   for c, lp in zip(r.completions, r.logprobs)):
            raise ValueError("a completion with token ids out of the vocabulary, or without a "
                             "log-probability per token")
        logprobs = [[float(x) for x in lp] for lp in r.logprobs]
        r = Rollout(r.completions, logprobs, [str(t) for t in r.texts],
                    [bool(t) for t in r.truncated])
        passes = d["passes"]
        if not isinstance(passes, int) or passes < 1:
            raise ValueError(f"passes must be a positive count, got {passes!r}")
        return cls(idx, r, [float(x) for x in d["rewards"]], passes)


@dataclass
class _Micro:
    """What a micro-batch trains on, worked out once per step (``begin_step``)."""
    indices: list[int]  # its prompts
    rows: slice  # its completions in the step's rollout
    advantages: torch.Tensor  # (rows,)
    keep: torch.Tensor  # (rows,) bool: completions that count
    mask: torch.Tensor  # (rows, width): 1 on real completion tokens
    units: torch.Tensor  # what its loss averages over: kept completions (grpo) or tokens


class GRPOLoss(nn.Module):
    """The loss module of ``fit`` for GRPO: its inputs are (B,) indices into ``prompts``.
    ``reference``: None (LoRA: the model with adapters off) or a frozen model, used when
    ``settings.beta`` > 0. ``step_metrics()`` returns the step's statistics and resets them.

    ``begin_step`` (called by ``train_step`` with the step's micro-batches) samples the
    completions of all of them in one engine batch and scores them; each micro-batch's
    forward then trains on its own prompts' groups, and ``batch_weight`` counts its units
    (completions that count for ``loss="grpo"``, their tokens for ``"dapo"``), so k
    micro-batches give exactly the loss of one batch while holding the activations of one.
    With ``settings.iterations`` = k the loop hands the same micro-batches to k steps
    (``batch_repeats``): k optimizer steps over one rollout, the ratio to the sampling policy
    moving away from 1 and clipped. A forward called without ``begin_step`` is a whole step."""

    unit = "prompts"  # the loss plot's top axis

    has_eval_loss = False  # fit: no loss on held-out batches (the recipe measures accuracy)

    def __init__(self, model: nn.Module, tokenizer, prompts: Sequence[Prompt], reward,
                 settings: GRPOSettings, reference: nn.Module | None = None):
        super().__init__()
        self.model, self.tokenizer, self.prompts = model, tokenizer, list(prompts)
        self.reward, self.s = reward, settings
        self._reference = [reference]  # not a submodule: never trained nor saved
        self._engine: Engine | None = None
        self._copy: SamplingCopy | None = None
        self._step: StepRollout | None = None
        self._summary: dict | None = None  # the rollout's statistics, for every pass
        self._ref_logps: dict[int, torch.Tensor] = {}  # per micro-batch, for all passes
        self._micros: list[_Micro] = []
        self._weights: list[int] = []  # batch_weight's cursor over the micro-batches
        self._forwards: list[int] = []  # forward's
        self._stats: dict = {}
        self._sums = {"entropy": 0.0, "clip_frac": 0.0, "kl": 0.0, "tokens": 0.0}

    @property
    def batch_repeats(self) -> int:
        return self.s.iterations

    def engine(self) -> Engine:
        """The engine of the rollouts: on the merged ``SamplingCopy`` for LoRA (refreshed
        with the adapters as they are now), else on the model itself."""
        if self._engine is None:
            self._copy = SamplingCopy.create(self.model)
            self._engine = Engine(self._copy.copy if self._copy is not None else self.model)
        elif self._copy is not None:
            self._copy.refresh()
        return self._engine

    # ---- the step: one rollout for all micro-batches, or the next pass over the last one
    def begin_step(self, micro_batches) -> None:
        indices = [torch.as_tensor(x).view(-1).tolist() for x, _ in micro_batches]
        step = self._step
        if step is not None and step.passes < self.s.iterations:
            if indices != step.indices:
                raise ValueError(f"GRPO trains {self.s.iterations} steps on one rollout; "
                                 "this step's prompts differ from the rollout's")
            self._stats = {"rollout_s": 0.0, "score_s": 0.0}
        else:
            self._step = step = self._roll(indices)
            self._summary, self._ref_logps = None, {}
        step.passes += 1
        if self._summary is None:  # a new rollout, or one read from a checkpoint
            self._summary, self._micros = self._rollout_stats(), self._plan(step)
        self._stats.update(self._summary)
        self._weights, self._forwards = list(range(len(indices))), list(range(len(indices)))

    def _roll(self, indices: list[list[int]]) -> StepRollout:
        prompts = [self.prompts[i] for m in indices for i in m]
        self.model.eval()  # no dropout: the sampling and the trained policy are one
        t0 = time.perf_counter()
        seed = int(torch.randint(0, 2**62, ()))
        rollout = sample_groups(self.engine(), self.tokenizer, prompts, self.s, seed)
        t1 = time.perf_counter()
        step = StepRollout(indices, rollout, self.reward_rows(prompts, rollout))
        self._stats = {"rollout_s": t1 - t0, "score_s": time.perf_counter() - t1}
        return step

    def _rollout_stats(self) -> dict:
        step, g = self._step, self.s.group_size
        prompts = [self.prompts[i] for m in step.indices for i in m]
        r = torch.tensor(step.rewards)
        lengths = [float(len(c)) for c in step.rollout.completions]
        out = {"reward": float(r.mean()), "reward_std": float(r.std()),
               "response_len": sum(lengths) / len(lengths),
               "truncated_frac": sum(step.rollout.truncated) / len(lengths),
               "zero_variance_frac": float((r.view(-1, g).std(1) == 0).float().mean())}
        if any(p.reference for p in prompts):  # answers to check (not a reward model's task)
            answers = [float(a) for a in self._answers(prompts, step.rollout)]
            out["accuracy"] = sum(answers) / len(answers)
        return out

    def _plan(self, step: StepRollout) -> list[_Micro]:
        """Each micro-batch's rows, advantages, counted rows, mask and units."""
        g, s, out, first = self.s.group_size, self.s, [], 0
        for m in step.indices:
            rows = slice(first, first + g * len(m))
            first = rows.stop
            rewards = torch.tensor(step.rewards[rows])
            keep = (rewards.view(-1, g).std(1) > 0).repeat_interleave(g) \
                if s.skip_zero_variance else torch.ones(len(rewards), dtype=torch.bool)
            comps = step.rollout.completions[rows]
            mask = _pad([[1.0] * len(c) for c in comps], max(len(c) for c in comps))
            units = keep.sum() if s.loss == "grpo" else (mask * keep[:, None]).sum().long()
            out.append(_Micro(m, rows, group_advantages(rewards, g, s.scale), keep, mask,
                              units))
        return out

    def _micro(self, cursor: list[int], idx) -> int:
        """The position of the step's next micro-batch (checked against ``idx``)."""
        if not cursor:
            raise RuntimeError("GRPOLoss: more micro-batches than begin_step was given")
        k = cursor.pop(0)
        if torch.as_tensor(idx).view(-1).tolist() != self._micros[k].indices:
            raise ValueError("GRPOLoss: micro-batches out of the order begin_step saw")
        return k

    def batch_weight(self, idx, _targets=None) -> torch.Tensor:
        """The micro-batch's units: completions that count (``grpo``) or their tokens
        (``dapo``), what its loss averages over."""
        if self._step is None or not self._weights:
            self.begin_step([(idx, idx)])
        return self._micros[self._micro(self._weights, idx)].units

    def _logprobs(self, model: nn.Module, prompt: Prompt, rows: list[list[int]],
                  width: int) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(model.parameters()).device
        longest = max(len(r) for r in rows)
        comps = torch.tensor([r + [0] * (longest - len(r)) for r in rows], device=device)
        logp, ent = group_logprobs(model, torch.tensor(prompt.ids, device=device), comps,
                                   self.s.temperature,
                                   [len(r) for r in rows] if self.s.packing else None)
        pad = width - longest
        return (nn.functional.pad(logp, (0, pad)), nn.functional.pad(ent, (0, pad)))

    def _reference_logprobs(self, prompts, comps, width) -> torch.Tensor:
        from scratchlm.finetune.dpo import adapters_off

        ref, g = self._reference[0], self.s.group_size
        out = []
        with torch.no_grad():
            for k, p in enumerate(prompts):
                rows = comps[k * g:(k + 1) * g]
                if ref is not None:
                    out.append(self._logprobs(ref, p, rows, width)[0])
                else:
                    with adapters_off(self.model):
                        out.append(self._logprobs(self.model, p, rows, width)[0])
        return torch.cat(out)

    def forward(self, idx: torch.Tensor, _targets=None) -> torch.Tensor:
        s, g = self.s, self.s.group_size
        if self._step is None or not self._forwards:
            self.begin_step([(idx, idx)])
        k = self._micro(self._forwards, idx)
        micro = self._micros[k]
        prompts = [self.prompts[i] for i in micro.indices]
        comps = self._step.rollout.completions[micro.rows]
        adv, keep, mask = micro.advantages, micro.keep, micro.mask
        width = mask.shape[1]
        self.model.eval()  # no dropout: the sampling and the trained policy are one
        device = next(self.model.parameters()).device
        logps, ents = [], []
        for j, p in enumerate(prompts):
            if not keep[j * g]:  # a left-out group: no gradient to compute, zeros suffice
                logps.append(torch.zeros(g, width, device=device))
                ents.append(torch.zeros(g, width, device=device))
                continue
            lp, en = self._logprobs(self.model, p, comps[j * g:(j + 1) * g], width)
            logps.append(lp)
            ents.append(en)
        logp, ent = torch.cat(logps), torch.cat(ents)
        old = _pad(self._step.rollout.logprobs[micro.rows], width).to(device)
        mask, keep = mask.to(device), keep.to(device)
        ref = None
        if s.beta > 0:  # the reference does not change between passes: computed once
            if k not in self._ref_logps:
                self._ref_logps[k] = self._reference_logprobs(prompts, comps, width)
            ref = self._ref_logps[k].to(device)
        loss, stats = policy_loss(logp, old, adv.to(device), mask, s, ref, keep)
        if not bool(keep.any()):  # every group tied: a zero loss, with a graph through the
            # trained parameters so that backward (and DDP) still run
            loss = sum(q.view(-1)[0] for q in self.model.parameters() if q.requires_grad) * 0.0
        with torch.no_grad():
            counted = float((mask * keep[:, None]).sum())
            self._sums["tokens"] += counted
            self._sums["entropy"] += float((ent * mask * keep[:, None]).sum())
            self._sums["clip_frac"] += stats["clip_frac"] * counted
            self._sums["kl"] += stats["kl"] * counted
        return loss

    def reward_rows(self, prompts: Sequence[Prompt], rollout: Rollout) -> list[float]:
        from scratchlm.rl.rewards import score_all

        g = self.s.group_size
        rows = [p for p in prompts for _ in range(g)]
        names = [f"prompt {p.text[:40]!r}, completion {i % g}" for i, p in enumerate(rows)]
        return score_all(self.reward, [p.text for p in rows], rollout.texts,
                         [p.reference for p in rows], names)

    def _answers(self, prompts: Sequence[Prompt], rollout: Rollout) -> list[bool]:
        from scratchlm.rl.rewards import answer_reward

        rows = [p for p in prompts for _ in range(self.s.group_size)]
        return [answer_reward(p.text, t, p.reference) == 1.0 for p, t in zip(rows, rollout.texts)]

    def step_metrics(self) -> dict:
        """The statistics of the step just taken: the rollout's (rewards, lengths; times are
        0 on a later pass over it) and, over the tokens that counted, entropy, clip fraction
        and KL."""
        if not self._stats:
            return {}
        n = max(self._sums["tokens"], 1.0)
        out = {**self._stats, **{k: self._sums[k] / n for k in ("entropy", "clip_frac", "kl")}}
        if self.s.iterations > 1:
            out["rollout_pass"] = float(self._step.passes)
        self._stats = {}
        self._sums = dict.fromkeys(self._sums, 0.0)
        return out

    # ---- between passes, the rollout is part of the checkpoint (training/loop.py)
    def checkpoint_state(self) -> dict | None:
        step = self._step
        if step is None or step.passes >= self.s.iterations:
            return None  # the next step samples anew
        return step.to_json()

    def load_checkpoint_state(self, value) -> None:
        if value is None:
            self._step = None
            return
        if not isinstance(value, dict):
            raise ValueError("expected a JSON object")
        self._step = StepRollout.from_json(value, len(self.prompts), self.s.group_size,
                                           self.model.cfg.vocab_size)
        self._summary, self._ref_logps = None, {}


@torch.no_grad()
def greedy_completions(engine: Engine, tokenizer, prompts: Sequence[Prompt],
                       max_new_tokens: int, batch_size: int = 16) -> list[str]:
    """Greedy completions of the prompts (held-out evaluation); ``engine``: e.g.
    ``GRPOLoss.engine()``, the rollouts' (merged, for LoRA)."""
    eos = tokenizer.eos_id
    params = SamplingParams(max_new_tokens, 0.0, stop_ids=(eos,) if eos is not None else ())
    texts = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        for ids in engine.generate([p.ids for p in chunk], params):
            texts.append(tokenizer.decode(ids))
    return texts


def greedy_accuracy(engine: Engine, tokenizer, prompts: Sequence[Prompt],
                    max_new_tokens: int, batch_size: int = 16) -> tuple[float, list[str]]:
    """Exact-answer accuracy of greedy completions, and the texts."""
    from scratchlm.rl.rewards import answer_reward

    texts = greedy_completions(engine, tokenizer, prompts, max_new_tokens, batch_size)
    right = [answer_reward(p.text, t, p.reference) for p, t in zip(prompts, texts)]
    return sum(right) / max(len(right), 1), texts


def greedy_reward(engine: Engine, tokenizer, prompts: Sequence[Prompt], max_new_tokens: int,
                  reward, batch_size: int = 16) -> tuple[float, list[str]]:
    """The mean reward of greedy completions (tasks with nothing to check exactly: a reward
    model's score), and the texts."""
    from scratchlm.rl.rewards import score_all

    texts = greedy_completions(engine, tokenizer, prompts, max_new_tokens, batch_size)
    scores = score_all(reward, [p.text for p in prompts], texts, [p.reference for p in prompts],
                       [f"held-out prompt {i}" for i in range(len(prompts))])
    return sum(scores) / max(len(scores), 1), texts
