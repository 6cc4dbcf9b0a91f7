"""Rollouts: the engine's sampling log-probabilities equal the ones the trainer recomputes
(a mismatch would silently bias GRPO's ratio), G completions per prompt come back grouped,
and the loss module trains on them."""

from __future__ import annotations

import pytest
import torch

from scratchlm.finetune.config import GRPOSettings
from scratchlm.rl.grpo import token_logprobs
from scratchlm.generation.engine import Engine, SamplingParams
from scratchlm.rl.rollout import GRPOLoss, Prompt, sample_groups
from scratchlm.models.llama import Llama, LlamaConfig


def llama(lora: bool = False, noise: float = 0.1):
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=97, context_length=64, n_embd=32, n_layer=2, n_head=4,
                              n_kv_head=2, intermediate_size=64)).eval()
    if lora:
        from scratchlm.finetune.lora import apply_lora

        apply_lora(model, rank=4, alpha=8)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=noise)  # adapters that change the policy
    return model


@pytest.mark.parametrize("lora", [False, True], ids=["native-decode", "lora-pytorch"])
@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_sampling_logprobs_equal_the_recomputed_ones(lora, temperature):
    model = llama(lora)
    prompts = [[5, 6, 7, 8, 9], [3, 4], [20, 21, 22]]
    out = Engine(model).sample(prompts, SamplingParams(16, temperature, seed=3))
    for p, (ids, lps) in zip(prompts, out):
        assert len(ids) == len(lps) == 16
        with torch.no_grad():
            again, _ = token_logprobs(model, torch.tensor([p + ids]), len(p), temperature)
        assert torch.allclose(again[0], torch.tensor(lps), atol=1e-4)


class _Tok:
    """Ids as text, one character per id (a - z, then the rest): rewards can read them."""
    eos_id = 0

    def decode(self, ids):
        return "".join(chr(97 + i % 26) for i in ids)


def test_groups_and_a_training_step():
    model = llama(lora=True, noise=0.01)
    s = GRPOSettings(group_size=3, max_new_tokens=6, temperature=4.0)
    prompts = [Prompt("p0", [5, 6, 7], "x"), Prompt("p1", [8, 9], "y")]
    roll = sample_groups(Engine(model), _Tok(), prompts, s, seed=1)
    assert len(roll.completions) == 6 and all(len(c) <= 6 for c in roll.completions)
    # a reward with variance: how many "a"-"m" letters a completion has
    reward = lambda p, c, r: float(sum(ch < "n" for ch in c))  # noqa: E731
    loss_module = GRPOLoss(model, _Tok(), prompts, reward, s)
    torch.manual_seed(0)
    loss = loss_module(torch.tensor([0, 1]))
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora" in n]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    stats = loss_module.step_metrics()
    assert {"reward", "accuracy", "kl", "clip_frac", "entropy", "response_len",
            "rollout_s"} <= set(stats)
    assert stats["clip_frac"] == 0.0  # on-policy: every ratio is 1 up to rounding
    assert loss_module.step_metrics() == {}  # read once per step


def test_a_reward_that_fails_names_the_example():
    model = llama()
    s = GRPOSettings(group_size=2, max_new_tokens=3)
    prompts = [Prompt("what is 2+2?", [5, 6], "4")]
    for bad, message in [(lambda p, c, r: 1 / 0, "ZeroDivisionError"),
                         (lambda p, c, r: "yes", "returned 'yes', not a number"),
                         (lambda p, c, r: float("nan"), "not a finite number")]:
        with pytest.raises(ValueError, match=r"prompt 'what is 2\+2\?', completion 0.*" + message):
            GRPOLoss(model, _Tok(), prompts, bad, s)(torch.tensor([0]))


def test_lora_rollouts_sample_from_the_merged_copy_of_the_current_adapters():
    from scratchlm.rl.rollout import SamplingCopy

    model = llama(lora=True)
    sampler = SamplingCopy.create(model)
    assert sampler.copy.trf_blocks[0].att.q_proj.__class__ is torch.nn.Linear
    assert sampler.copy.tok_emb.weight is model.tok_emb.weight  # shared, not copied
    engine = Engine(sampler.copy)
    assert engine.native is not None  # the merged copy decodes natively
    prompts = [[5, 6, 7, 8, 9], [3, 4]]
    for _ in range(2):
        with torch.no_grad():  # the adapters change (an optimizer step), the copy follows
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.add_(0.05 * torch.randn_like(p))
        sampler.refresh()
        out = engine.sample(prompts, SamplingParams(12, 0.8, seed=2))
        for p, (ids, lps) in zip(prompts, out):
            with torch.no_grad():
                again, _ = token_logprobs(model, torch.tensor([p + ids]), len(p), 0.8)
            assert torch.allclose(again[0], torch.tensor(lps), atol=1e-4)


def test_grad_checkpointing_works_in_the_eval_mode_grpo_trains_in():
    """GRPO trains with dropout off (eval mode); block checkpointing must still apply there
    (it used to key on ``model.training``) and give the same gradients."""
    import torch.utils.checkpoint as ckpt

    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    grads = []
    for on in (False, True):
        model = llama(lora=True)
        model.cfg.grad_checkpointing = on
        calls = []
        real = ckpt.checkpoint
        import scratchlm.models.llama as llama_module

        llama_module.checkpoint = lambda *a, **k: calls.append(1) or real(*a, **k)
        try:
            logp, _ = token_logprobs(model, ids, 4, 1.0)
            logp.sum().backward()
        finally:
            llama_module.checkpoint = real
        assert bool(calls) == on
        grads.append([p.grad.clone() for n, p in model.named_parameters() if "lora" in n])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


def _lora_grads(model) -> list[torch.Tensor]:
    return [p.grad.clone() for n, p in model.named_parameters() if "lora" in n]


@pytest.mark.parametrize("loss,skip", [("grpo", True), ("grpo", False), ("dapo", True),
                                       ("dapo", False)])
def test_micro_batches_give_the_gradient_of_one_batch(loss, skip):
    """One rollout for the whole step (begin_step), then a forward per micro-batch weighted by
    its counted completions (grpo) or tokens (dapo): two micro-batches of one prompt train
    exactly as one batch of two."""
    from scratchlm.training.runtime import setup_runtime
    from scratchlm.training.step import train_step

    rt = setup_runtime(device="cpu")
    s = GRPOSettings(group_size=3, max_new_tokens=6, temperature=4.0, loss=loss,
                     skip_zero_variance=skip)
    prompts = [Prompt("p0", [5, 6, 7], "x"), Prompt("p1", [8, 9], "y"),
               Prompt("p2", [10, 11, 12, 13], "z")]
    reward = lambda p, c, r: float(sum(ch < "n" for ch in c))  # noqa: E731
    grads = []
    for split in ([[0, 1, 2]], [[0], [1, 2]], [[0], [1], [2]]):
        model = llama(lora=True, noise=0.01)
        loss_module = GRPOLoss(model, _Tok(), prompts, reward, s)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
        torch.manual_seed(3)  # the rollout's seed: the same completions for every split
        micro = [(torch.tensor(m), torch.tensor(m)) for m in split]
        model.zero_grad()
        grads_now = []
        real_step = opt.step

        def keep_grads():
            grads_now.extend(_lora_grads(model))
            real_step()
        opt.step = keep_grads
        train_step(loss_module, opt, micro, rt, grad_clip=None)
        grads.append(grads_now)
    for other in grads[1:]:  # (the loss itself is ~0 at ratio 1: advantages sum to 0)
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in grads[0])


def test_iterations_train_several_steps_on_one_rollout():
    """iterations = 2: the second step reuses the rollout (no sampling), starts from the moved
    policy (the ratio leaves 1, clipped), and other prompts mid-cycle are an error."""
    from scratchlm.training.runtime import setup_runtime
    from scratchlm.training.step import train_step

    rt = setup_runtime(device="cpu")
    s = GRPOSettings(group_size=4, max_new_tokens=8, temperature=4.0, iterations=2,
                     eps_low=0.01, eps_high=0.01)
    prompts = [Prompt("p0", [5, 6, 7], "x"), Prompt("p1", [8, 9], "y")]
    reward = lambda p, c, r: float(sum(ch < "n" for ch in c))  # noqa: E731
    model = llama(lora=True, noise=0.01)
    loss_module = GRPOLoss(model, _Tok(), prompts, reward, s)
    assert loss_module.batch_repeats == 2
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    micro = [(torch.tensor([0, 1]), torch.tensor([0, 1]))]
    torch.manual_seed(0)
    train_step(loss_module, opt, micro, rt, grad_clip=None)
    first = loss_module.step_metrics()
    held = loss_module.checkpoint_state()
    assert held is not None and held["passes"] == 1  # a pass to go: kept with checkpoints
    train_step(loss_module, opt, micro, rt, grad_clip=None)
    second = loss_module.step_metrics()
    assert first["rollout_s"] > 0 and second["rollout_s"] == 0.0
    assert second["reward"] == first["reward"] and second["rollout_pass"] == 2.0
    assert first["clip_frac"] == 0.0 and second["clip_frac"] > 0  # the policy moved
    assert loss_module.checkpoint_state() is None  # done with it: the next step samples
    # a checkpointed rollout is taken back, checked, and trained on again
    again = GRPOLoss(model, _Tok(), prompts, reward, s)
    again.load_checkpoint_state(held)
    with pytest.raises(ValueError, match="differ from the rollout"):
        again.begin_step([(torch.tensor([1, 0]), None)])
    for bad in ({**held, "indices": [[0, 7]]}, {**held, "logprobs": held["logprobs"][:1]},
                {**held, "completions": [[10**6] + c[1:] for c in held["completions"]]}):
        with pytest.raises(ValueError):
            GRPOLoss(model, _Tok(), prompts, reward, s).load_checkpoint_state(bad)


@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_packed_update_pass_trains_as_the_padded_one(beta):
    """--grpo.packing: the same rollout (completions of different lengths), the loss and the
    adapters' gradients of the padded update pass, the reference's log-probabilities (beta)
    packed too."""
    s0 = dict(group_size=3, max_new_tokens=6, temperature=4.0, beta=beta)
    prompts = [Prompt("p0", [5, 6, 7], "x"), Prompt("p1", [8, 9], "y")]
    reward = lambda p, c, r: float(sum(ch < "n" for ch in c))  # noqa: E731
    out = []
    for packing in (False, True):
        model = llama(lora=True, noise=0.01)
        loss_module = GRPOLoss(model, _Tok(), prompts, reward,
                               GRPOSettings(**s0, packing=packing))
        torch.manual_seed(16)  # the rollout's seed: completions of 6, 1 and 6 tokens, ...
        loss = loss_module(torch.tensor([0, 1]))
        loss.backward()
        out.append((loss.detach(), _lora_grads(model), loss_module.step_metrics()))
    (la, ga, ma), (lb, gb, mb) = out
    assert len({len(c) for c in loss_module._step.rollout.completions}) > 1  # padding to pack
    torch.testing.assert_close(lb, la, rtol=1e-5, atol=1e-6)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in ga)
    assert mb["entropy"] == pytest.approx(ma["entropy"], rel=1e-5)
