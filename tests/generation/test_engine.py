"""The KV-cache engine matches the naive generate token for token."""

from __future__ import annotations

import pytest
import torch

from scratchlm.generation.engine import Engine, SamplingParams, stream_text
from scratchlm.generation.sampling import generate
from scratchlm.models.gpt import GPT, GPTConfig
from scratchlm.models.llama import Llama, LlamaConfig


def gpt():
    torch.manual_seed(0)  # PyTorch's default init gives sharp logits: no near-ties in argmax
    return GPT(GPTConfig(vocab_size=97, context_length=64, n_embd=32, n_layer=2, n_head=4,
                         init="torch")).eval()


def llama():
    torch.manual_seed(0)
    return Llama(LlamaConfig(vocab_size=97, context_length=64, n_embd=32, n_layer=2, n_head=4,
                             n_kv_head=2, intermediate_size=64)).eval()


PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3], [20, 21, 22, 23]]


@pytest.mark.parametrize("make", [gpt, llama])
def test_engine_equals_naive_greedy_unbatched_and_batched(make):
    model = make()
    want = [generate(model, torch.tensor([p]), 12)[0, len(p):].tolist() for p in PROMPTS]
    engine = Engine(model)
    for p, w in zip(PROMPTS, want):
        assert engine.generate([p], SamplingParams(max_new_tokens=12)) == [w]
    assert engine.generate(PROMPTS, SamplingParams(max_new_tokens=12)) == want


@pytest.mark.parametrize("make", [gpt, llama])
def test_cached_logits_equal_full_forward(make):
    model = make()
    x = torch.tensor([[1, 2, 3, 4, 5, 6]])
    engine = Engine(model)
    cache = engine.new_cache(1, 16)
    with torch.no_grad():
        a = model(x[:, :4], cache=cache)
        b = model(x[:, 4:], cache=cache)
        full = model(x)
    assert torch.allclose(torch.cat([a, b], 1), full, atol=1e-5)


def test_stop_ids_per_row_and_seeded_sampling():
    model = gpt()
    engine = Engine(model)
    free = engine.generate(PROMPTS, SamplingParams(max_new_tokens=8))
    stop = free[0][2]
    out = engine.generate(PROMPTS, SamplingParams(max_new_tokens=8, stop_ids=(stop,)))
    for o, f in zip(out, free):  # each row ends just before its first stop token
        assert o == (f[:f.index(stop)] if stop in f else f)
    p = SamplingParams(max_new_tokens=10, temperature=1.0, top_k=20, seed=7)
    assert engine.generate(PROMPTS, p) == engine.generate(PROMPTS, p)


@pytest.mark.parametrize("make", [gpt, llama])
@pytest.mark.parametrize("prompt_len", [50, 64, 80])
def test_past_the_context_the_book_keeps_the_last_window(make, prompt_len):
    """prompt + max_new_tokens > context_length (64): every token asked for comes, each seeing
    the last 64 tokens, as the book's generate does (a longer prompt cropped the same way)."""
    model = make()
    torch.manual_seed(1)
    prompt = torch.randint(0, 97, (1, prompt_len))
    want = generate(model, prompt, 30)[0, prompt_len:].tolist()
    got = Engine(model).generate([prompt[0].tolist()], SamplingParams(max_new_tokens=30))[0]
    assert len(got) == 30 and got == want


def test_past_the_context_rows_of_a_batch_slide_independently():
    model = gpt()
    engine = Engine(model)
    torch.manual_seed(2)
    prompts = [torch.randint(0, 97, (n,)).tolist() for n in (60, 20, 63)]
    batched = engine.generate(prompts, SamplingParams(max_new_tokens=12))
    assert batched == [engine.generate([p], SamplingParams(max_new_tokens=12))[0]
                       for p in prompts]
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        engine.generate([[1]], SamplingParams(max_new_tokens=0))


class CharTok:
    def decode(self, ids):
        return "".join(chr(97 + i % 26) for i in ids)


def test_stream_text_stops_at_a_stop_string():
    model = gpt()
    engine = Engine(model)
    ids = engine.generate([[1, 2]], SamplingParams(max_new_tokens=10))[0]
    full = CharTok().decode(ids)
    stop = full[4:6]
    got = "".join(stream_text(engine, CharTok(), [1, 2], SamplingParams(max_new_tokens=10), [stop]))
    assert got == full[:full.find(stop)]
    assert "".join(stream_text(engine, CharTok(), [1, 2], SamplingParams(max_new_tokens=10))) == full


@pytest.mark.parametrize("make", [gpt, llama])
def test_bf16_prefill_is_close_to_fp32_and_decodes_on(make):
    """``prefill="bf16"``: the prompt runs under bf16 autocast (its logits move by bf16's
    rounding, not more), one-token steps stay fp32, and batched rows equal single requests."""
    model = make()
    fp32, low = Engine(model), Engine(model, prefill="bf16")
    idx = torch.tensor([PROMPTS[0]])
    a = fp32._last_logits(idx, fp32.new_cache(1, 32))
    b = low._last_logits(idx, low.new_cache(1, 32))
    assert 0 < (a - b).abs().max() < 0.05 * a.abs().max()  # bf16 was used, and stayed close
    params = SamplingParams(max_new_tokens=12)
    together = low.generate(PROMPTS, params)
    assert together == [low.generate([p], params)[0] for p in PROMPTS]
    assert together == fp32.generate(PROMPTS, params)  # sharp logits: the same greedy tokens


def test_prefill_precision_is_checked_and_auto_follows_the_hardware():
    from scratchlm.recipes.configs import ServeConfig
    from scratchlm.training.runtime import bf16_native

    with pytest.raises(ValueError, match="prefill precision must be one of"):
        Engine(gpt(), prefill="fp16")
    with pytest.raises(ValueError, match="--prefill must be fp32, bf16 or auto"):
        ServeConfig(prefill="half")
    assert Engine(gpt(), prefill="auto").prefill == ("bf16" if bf16_native("cpu") else "fp32")


def _gemma():
    from scratchlm.models.gemma3 import Gemma3, Gemma3Config

    torch.manual_seed(0)
    return Gemma3(Gemma3Config(vocab_size=97, context_length=64, n_embd=32, n_layer=3,
                               n_head=4, n_kv_head=2, head_dim=8, intermediate_size=64,
                               query_pre_attn_scalar=8, sliding_window=4,
                               sliding_window_pattern=3)).eval()


@pytest.mark.parametrize("make", [gpt, llama, _gemma], ids=["gpt", "llama", "gemma3-sliding"])
def test_equal_prompts_are_prefilled_once_and_copied(make):
    """G samples of one prompt: the prompt's prefill runs on the distinct rows only, and every
    row decodes as if it had been prefilled alone."""
    model = make()
    engine = Engine(model)
    p, q = [5, 6, 7, 8, 9, 10], [3, 4]
    widths = []
    real = model.hidden_states
    model.hidden_states = lambda idx, *a, **k: widths.append(idx.shape) or real(idx, *a, **k)
    try:
        together = engine.generate([p, q, p, p], SamplingParams(12))
    finally:
        del model.hidden_states
    assert widths[0] == (2, 6)  # two distinct prompts prefilled, not four
    alone = [engine.generate([r], SamplingParams(12))[0] for r in (p, q)]
    assert together == [alone[0], alone[1], alone[0], alone[0]]
    # sampled rows of one prompt still differ (each row draws its own tokens)
    sampled = engine.sample([p] * 4, SamplingParams(8, 50.0, seed=0))  # (a peaked model)
    assert len({tuple(ids) for ids, _ in sampled}) > 1
