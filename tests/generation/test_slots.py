"""Continuous batching: requests that join and leave a running batch at different steps, with
different prompt lengths, sampling settings and seeds, get exactly the tokens each would get
decoded alone (greedy and seeded sampling), on the native C decoder and on PyTorch's path, with
a sliding-window cache too."""

from __future__ import annotations

import pytest
import torch

from scratchlm.generation.engine import Engine, SamplingParams
from scratchlm.generation.slots import SlotBatch
from scratchlm.models.gpt import GPT, GPTConfig
from scratchlm.models.llama import Llama, LlamaConfig


def varied(model):
    """Untied output weights of about unit-scale logits: varied tokens, greedy and sampled (a
    tiny random model with tied embeddings mostly repeats its last token)."""
    with torch.no_grad():
        model.out_head.weight = torch.nn.Parameter(torch.randn_like(model.out_head.weight) * 0.2)
    return model


def gpt():
    torch.manual_seed(0)
    return varied(GPT(GPTConfig(vocab_size=97, context_length=64, n_embd=32, n_layer=2,
                                n_head=4, init="torch")).eval())


def llama():
    torch.manual_seed(0)
    return varied(Llama(LlamaConfig(vocab_size=97, context_length=64, n_embd=32, n_layer=2,
                                    n_head=4, n_kv_head=2, intermediate_size=64)).eval())


def gemma():
    from scratchlm.models.gemma3 import Gemma3, Gemma3Config

    torch.manual_seed(0)
    return varied(Gemma3(Gemma3Config(vocab_size=97, context_length=64, n_embd=32, n_layer=2,
                                      n_head=4, n_kv_head=2, head_dim=8, intermediate_size=64,
                                      sliding_window=6, sliding_window_pattern=2,
                                      query_pre_attn_scalar=8, tie_embeddings=False)).eval())


def olmo3():
    from scratchlm.models.olmo3 import Olmo3, Olmo3Config

    torch.manual_seed(0)
    return varied(Olmo3(Olmo3Config(vocab_size=97, context_length=64, n_embd=32, n_layer=4,
                                    n_head=4, n_kv_head=2, intermediate_size=64,
                                    rope_base=10_000.0, sliding_window=6,
                                    sliding_window_pattern=2,
                                    rope_scaling={"type": "yarn", "factor": 4.0,
                                                  "original_context_length": 16})).eval())


def gpt_oss():
    from scratchlm.models.gpt_oss import GptOss, GptOssConfig

    torch.manual_seed(0)
    model = GptOss(GptOssConfig(vocab_size=97, context_length=64, n_embd=32, n_layer=2,
                                n_head=4, n_kv_head=2, head_dim=8, intermediate_size=32,
                                rope_base=10_000.0, sliding_window=6,
                                moe={"num_experts": 4, "top_k": 2, "router_bias": True}))
    with torch.no_grad():
        for block in model.trf_blocks:
            block.att.sinks.normal_(0.0, 1.0)  # sinks that take weight: a slot slip shows
    return varied(model.eval())


def qwen35():
    from scratchlm.models.qwen3_5 import Qwen35, Qwen35Config

    torch.manual_seed(0)
    return varied(Qwen35(Qwen35Config(vocab_size=97, context_length=64, n_embd=32, n_layer=4,
                                      n_head=4, n_kv_head=2, head_dim=16, intermediate_size=64,
                                      rope_base=10_000.0, linear_key_heads=2,
                                      linear_value_heads=4, linear_key_dim=8,
                                      linear_value_dim=8)).eval())


def gemma4():
    from scratchlm.models.gemma4 import Gemma4, Gemma4Config

    torch.manual_seed(0)  # per-layer embeddings, layers 3-4 read layers 1-2's keys
    return varied(Gemma4(Gemma4Config(vocab_size=97, context_length=64, n_embd=32, n_layer=5,
                                      n_head=4, n_kv_head=2, head_dim=8, global_head_dim=16,
                                      n_global_kv_head=1, intermediate_size=64,
                                      sliding_window=6, sliding_window_pattern=3, ple_dim=8,
                                      ple_vocab_size=97, kv_shared_layers=2,
                                      tie_embeddings=False)).eval())


# (arrival step, prompt, sampling): rows join while others decode, leave at their own ends
ARRIVALS = [
    (0, [5, 6, 7, 8, 9, 10, 11, 12, 13], SamplingParams(max_new_tokens=14)),
    (0, [3, 4], SamplingParams(max_new_tokens=5)),
    (2, [20, 21, 22], SamplingParams(max_new_tokens=9, temperature=1.0, top_k=20, seed=7)),
    (1, list(range(60, 75)), SamplingParams(max_new_tokens=6)),  # longer than L: shifts the
    # running rows (or, with ring buffers, waits)
    (3, [30] * 12, SamplingParams(max_new_tokens=6)),
    (6, [40, 41], SamplingParams(max_new_tokens=8, temperature=0.8, top_p=0.9, seed=3)),
    (7, [50, 51, 52, 53], SamplingParams(max_new_tokens=4)),
]


def run_continuous(engine, slots=4, together=False, capacity=256, arrivals=ARRIVALS):
    """Run ``arrivals`` through one batch: (outputs, per-step logits, rows that joined a running
    batch, the batch)."""
    batch = SlotBatch(engine, slots, capacity=capacity)
    waiting, outs, seen, step = [], {}, {}, 0
    pending = list(enumerate(arrivals))
    joined_late = set()
    while pending or waiting or batch.rows:
        waiting += [(i, a) for i, a in pending if a[0] == step]
        pending = [(i, a) for i, a in pending if a[0] != step]
        group = []  # together: the waiting that fit, prefilled in one forward
        for i, (_, prompt, params) in list(waiting):
            sizes = [(len(p), s.max_new_tokens) for p, s, _ in group]
            if batch.fits_all(sizes + [(len(prompt), params.max_new_tokens)]):
                group.append((prompt, params, i))
                waiting.remove((i, (_, prompt, params)))
                outs[i], seen[i] = [], []
                if batch.rows:
                    joined_late.add(i)
                if not together:
                    batch.join_all(group)
                    group = []
        if group:
            batch.join_all(group)
        for row in batch.rows:
            seen[row.tag].append(row.logits.clone())
        for row, tok in batch.sample():
            outs[row.tag].append(tok)
            if row.generated == row.params.max_new_tokens:
                batch.leave(row)
        batch.forward()
        step += 1
    n = len(arrivals)
    return [outs[i] for i in range(n)], [seen[i] for i in range(n)], joined_late, batch


@pytest.mark.parametrize("make,native,together,capacity", [
    (gpt, True, False, 256), (llama, True, False, 256), (llama, False, False, 256),
    (gemma, False, False, 256), (llama, True, True, 256), (gpt, False, True, 256),
    (gemma, False, True, 256), (olmo3, False, False, 256), (olmo3, False, True, 3),
    (gpt_oss, False, False, 256), (gpt_oss, False, True, 3),
    # a hybrid cache: linear layers' states join, leave, shift and grow with the rows
    (qwen35, False, False, 256), (qwen35, False, True, 3),
    # rings and a global layer of other shapes; KV-shared layers keep no cache
    (gemma4, False, False, 256), (gemma4, False, True, 3),
    # a cache that starts with 3 slots and grows as rows join, shift and decode
    (llama, True, False, 3), (gpt, False, True, 3), (gemma, False, False, 3)])
def test_joining_and_leaving_rows_equal_single_requests(make, native, together, capacity):
    model = make()
    engine = Engine(model)
    if native:
        assert engine.native is not None
    else:
        engine.native = None
    alone = [engine.generate([p], params)[0] for _, p, params in ARRIVALS]
    got, logits, late, _ = run_continuous(engine, together=together, capacity=capacity)
    assert got == alone
    assert len({t for out in got for t in out}) > 10  # the model does not just repeat itself
    assert len(late) >= 3  # most rows joined a batch that was already decoding
    for (_, prompt, _), toks, lgs in zip(ARRIVALS, got, logits):  # every step's logits equal
        with torch.no_grad():  # the full forward's at that position
            full = model(torch.tensor([prompt + toks]))[0, len(prompt) - 1:-1]
        assert torch.allclose(torch.stack(lgs), full[:, :97], atol=1e-4)


def test_a_prompt_longer_than_the_current_slot_shifts_the_batch_or_waits():
    engine = Engine(llama())
    batch = SlotBatch(engine, 2, max_len=32)
    batch.join([1, 2, 3], SamplingParams(max_new_tokens=10))
    assert batch.fits(5, 4)  # the running row shifts 2 slots later
    assert not batch.fits(25, 4)  # then the running row's 10 tokens would not fit
    assert batch.fits(3, 4) and not batch.fits(3, 30)  # 3 + 30 > 32
    sliding = SlotBatch(Engine(gemma()), 2, max_len=32)
    sliding.join([1, 2, 3], SamplingParams(max_new_tokens=10))
    assert not sliding.fits(5, 4)  # ring buffers do not shift: it waits until L >= 5
    batch.join([4, 5], SamplingParams(max_new_tokens=4))
    assert not batch.fits(1, 1)  # both slots taken
    with pytest.raises(ValueError, match="do not fit"):
        batch.join([1], SamplingParams(max_new_tokens=1))


def test_the_cache_grows_as_written_and_views_do_not():
    from scratchlm.nn.kv_cache import KVCache

    cache = KVCache(2, 2, 1, 100, 4, capacity=3)
    assert cache.capacity == 3
    k = torch.randn(2, 1, 5, 4)
    cache.update(0, k, k)
    cache.advance(5)
    assert cache.capacity == 6 and torch.equal(cache.k[0, :, :, :5], k)  # doubled, kept
    view = cache.view(0, 1)
    with pytest.raises(RuntimeError, match="reserve on its owner"):
        view.update(0, torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4))
    cache.reserve(100)
    assert cache.capacity == 100 and torch.equal(cache.k[0, :, :, :5], k)
    with pytest.raises(ValueError, match="KV cache full"):
        cache.reserve(101)
    big = SlotBatch(Engine(llama()), 16)  # 16 rows of a 64-slot context, but nothing written
    assert big.cache.capacity == 64
    small = SlotBatch(Engine(llama()), 16, capacity=8)
    assert small.cache.nbytes() == big.cache.nbytes() // 8


HEAD = list(range(10, 30))  # a shared 20-token start (a chat template's system prompt)
SHARED = [  # (arrival step, prompt, sampling)
    (0, HEAD + [40, 41, 42], SamplingParams(max_new_tokens=8)),
    (0, HEAD + [50], SamplingParams(max_new_tokens=6)),
    (2, HEAD + [60, 61, 62, 63, 64], SamplingParams(max_new_tokens=7, temperature=1.0, seed=5)),
    (3, HEAD[:18] + [70, 71], SamplingParams(max_new_tokens=5)),  # shares 18 of them
    (4, [1, 2, 3], SamplingParams(max_new_tokens=4)),  # shares nothing
]


@pytest.mark.parametrize("make,native", [(gpt, True), (llama, True), (llama, False),
                                         (gemma, False)])
def test_a_shared_prompt_start_is_copied_not_recomputed(make, native):
    engine = Engine(make())
    if not native:
        engine.native = None
    alone = [engine.generate([p], params)[0] for _, p, params in SHARED]
    got, _, _, batch = run_continuous(engine, arrivals=SHARED)
    assert got == alone
    if make is gemma:  # ring buffers: no prefix cache, the same answers
        assert batch.reused == 0
    else:  # the second, third and fourth prompts copied 20, 20 and 18 tokens
        assert batch.reused == 20 + 20 + 18


TURN = list(range(10, 40))  # a conversation's first turn (30 tokens)
TURNS = [  # (arrival step, prompt, sampling)
    (0, TURN, SamplingParams(max_new_tokens=5)),
    (1, TURN + [41, 42, 43], SamplingParams(max_new_tokens=6)),  # the next turn: all of it
    (2, TURN[:25] + [50, 51], SamplingParams(max_new_tokens=4)),  # diverges inside it
    (3, TURN + [41, 42, 43, 44, 45, 46], SamplingParams(max_new_tokens=5, temperature=1.0,
                                                       seed=2)),
    (4, TURN[:25] + [60, 61, 62], SamplingParams(max_new_tokens=4)),  # after the split point
]


def test_a_hybrid_cache_reuses_whole_prompts_and_splits_at_a_divergence():
    """The linear layers' states hold a prompt at its end: the next turn of a conversation
    (which begins with all of a kept prompt) copies it; a prompt that leaves a kept one part
    way computes everything, in two parts, and keeps the part they share for the next prompt
    that begins with it. Every answer equals the request run alone."""
    engine = Engine(qwen35())
    alone = [engine.generate([p], params)[0] for _, p, params in TURNS]
    got, _, _, batch = run_continuous(engine, arrivals=TURNS)
    assert got == alone
    # the second turn copies the first's 30 tokens; the third shares 25 with them: nothing
    # copied, its first 25 kept; the fourth begins with all 33 of the second; the fifth with
    # the 25 the third split off
    assert batch.reused == 30 + 33 + 25
    # four entries, least recently used first: the first and third prompts went
    assert [len(e.ids) for e in batch.prefixes.entries] == [33, 36, 25, 28]


def test_two_system_prompts_are_both_kept():
    """Requests after two different system prompts, alternating: each reuses its own."""
    first, second = list(range(10, 30)), list(range(60, 80))
    arrivals = [(0, first + [1, 2], SamplingParams(max_new_tokens=4)),
                (1, second + [3], SamplingParams(max_new_tokens=4)),
                (2, first + [4, 5, 6], SamplingParams(max_new_tokens=4)),
                (3, second + [7, 8], SamplingParams(max_new_tokens=4))]
    engine = Engine(llama())
    alone = [engine.generate([p], params)[0] for _, p, params in arrivals]
    got, _, _, batch = run_continuous(engine, arrivals=arrivals)
    assert got == alone
    assert batch.reused == 20 + 20
