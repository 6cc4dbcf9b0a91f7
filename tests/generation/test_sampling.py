from __future__ import annotations

import torch

from scratchlm.generation.sampling import (
    apply_top_k,
    apply_top_p,
    draw,
    generate,
    sample_next,
    text_to_token_ids,
    token_ids_to_text,
)
from scratchlm.models.gpt import GPT, GPTConfig


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79]])
    out = apply_top_k(logits, 3)
    assert torch.isfinite(out).sum() == 3
    assert set(torch.nonzero(torch.isfinite(out))[:, 1].tolist()) == {0, 3, 7}


def test_top_p_hand_computed():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    keep = torch.isfinite(apply_top_p(logits, 0.75))[0].tolist()
    assert keep == [True, True, False, False]  # 0.5 < 0.75, 0.5 + 0.3 >= 0.75
    keep = torch.isfinite(apply_top_p(logits, 0.8))[0].tolist()
    assert keep == [True, True, False, False]
    keep = torch.isfinite(apply_top_p(logits, 0.81))[0].tolist()
    assert keep == [True, True, True, False]
    # order does not matter
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.equal(torch.isfinite(apply_top_p(logits[:, perm], 0.75)),
                       torch.isfinite(apply_top_p(logits, 0.75))[:, perm])


def test_sampling_is_reproducible_with_a_generator():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    logits[torch.arange(4), logits.argmax(-1)] += 1.0  # a clear winner per row
    a = sample_next(logits, 1.0, top_k=10, generator=torch.Generator().manual_seed(123))
    b = sample_next(logits, 1.0, top_k=10, generator=torch.Generator().manual_seed(123))
    assert torch.equal(a, b)
    assert torch.equal(sample_next(logits), logits.argmax(-1, keepdim=True))
    # a low temperature concentrates on the argmax
    draws = torch.cat([sample_next(logits, 0.01, generator=torch.Generator().manual_seed(i))
                       for i in range(5)], dim=1)
    assert (draws == logits.argmax(-1, keepdim=True)).all()


def test_draw_follows_the_probabilities_and_skips_zeros():
    probs = torch.tensor([0.1, 0.0, 0.2, 0.3, 0.0, 0.4]).repeat(100_000, 1)
    got = draw(probs, torch.Generator().manual_seed(0)).view(-1)
    freq = torch.bincount(got, minlength=6).double() / len(got)
    assert freq[1] == 0 and freq[4] == 0  # zero probability: never drawn
    assert torch.allclose(freq, probs[0].double(), atol=0.005)
    # unnormalised rows (a masked softmax) and a last token of probability 0: u stays below
    # the total, so the draw never runs past the last token that can be drawn
    edge = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
    for seed in range(200):
        assert draw(edge, torch.Generator().manual_seed(seed)).view(-1).tolist() == [1, 0]


def _tiny(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=64, context_length=8, n_embd=32, n_layer=2, n_head=2)).eval()


def test_generate_greedy_and_context_crop():
    model = _tiny()
    idx = torch.tensor([[1, 2, 3]])
    out = generate(model, idx, max_new_tokens=12, context_size=8)
    assert out.shape == (1, 15) and torch.equal(out[:, :3], idx)
    # each greedy step equals argmax of the model on the cropped context
    for t in range(3, 15):
        ctx = out[:, max(0, t - 8):t]
        assert model(ctx)[0, -1].argmax().item() == out[0, t].item()


def test_generate_stops_at_eos():
    model = _tiny()
    first = generate(model, torch.tensor([[5]]), max_new_tokens=1)[0, -1].item()
    out = generate(model, torch.tensor([[5]]), max_new_tokens=10, eos_id=first)
    assert out.tolist() == [[5]]
    batch = generate(model, torch.tensor([[5], [6]]), max_new_tokens=10, eos_id=first)
    row0 = batch[0, 1:].tolist()
    assert all(t == first for t in row0)


def test_text_helpers(gpt2_tok):
    ids = text_to_token_ids("Every effort moves you", gpt2_tok)
    assert ids.tolist() == [[6109, 3626, 6100, 345]]
    assert token_ids_to_text(ids, gpt2_tok) == "Every effort moves you"
