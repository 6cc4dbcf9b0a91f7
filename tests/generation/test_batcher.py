"""The server's batcher: a request that arrives while another decodes gets its first token
within a couple of decode steps (not after the other finishes); requests with different
sampling settings and seeds share steps and each gets what it would get alone."""

from __future__ import annotations

import threading

import pytest

import torch

from scratchlm.generation.batcher import Batcher
from scratchlm.generation.engine import Engine, SamplingParams
from scratchlm.models.llama import Llama, LlamaConfig


def engine():
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=97, context_length=256, n_embd=32, n_layer=2, n_head=4,
                              n_kv_head=2, intermediate_size=64, tie_embeddings=False)).eval()
    with torch.no_grad():  # logits of about unit scale: varied tokens, greedy and sampled
        model.out_head.weight.normal_(0.0, 0.2)
    return Engine(model)


class Collector:
    def __init__(self):
        self.tokens, self.reason, self.done = [], None, threading.Event()

    def __call__(self, tok, reason):
        if reason is None:
            self.tokens.append(tok)
        else:
            self.reason = reason
            self.done.set()


def test_a_request_arriving_mid_decode_starts_within_two_steps():
    eng = engine()
    batcher = Batcher(eng, max_batch=4)
    try:
        long = Collector()
        at_first_token = []
        gate = threading.Event()
        long_req = batcher.submit([1, 2, 3, 4, 5, 6, 7, 8], SamplingParams(max_new_tokens=200),
                                  lambda t, r: (long(t, r), gate.set() if len(long.tokens) == 20
                                                else None))
        assert gate.wait(30)
        short = Collector()
        batcher.submit([9, 10], SamplingParams(max_new_tokens=3),
                       lambda t, r: (at_first_token.append(long_req.generated)
                                     if r is None and not short.tokens else None, short(t, r)))
        submitted_at = long_req.generated
        assert short.done.wait(30) and long.done.wait(60)
        assert at_first_token[0] - submitted_at <= 2  # decode steps of the long one meanwhile
        assert len(long.tokens) == 200 and len(short.tokens) == 3
        assert short.tokens == eng.generate([[9, 10]], SamplingParams(max_new_tokens=3))[0]
    finally:
        batcher.close()


def test_mixed_sampling_settings_share_steps_and_equal_running_alone():
    eng = engine()
    settings = [SamplingParams(max_new_tokens=12),
                SamplingParams(max_new_tokens=12, temperature=1.0, seed=1),
                SamplingParams(max_new_tokens=12, temperature=0.7, top_k=10, seed=2),
                SamplingParams(max_new_tokens=12, temperature=1.2, top_p=0.8, seed=3)]
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]]
    alone = [eng.generate([p], s)[0] for p, s in zip(prompts, settings)]
    batcher = Batcher(eng, max_batch=4, window_s=0.2)
    try:
        got = [Collector() for _ in prompts]
        for p, s, c in zip(prompts, settings, got):
            batcher.submit(p, s, c)
        assert all(c.done.wait(30) for c in got)
        assert [c.tokens for c in got] == alone
        assert batcher.largest == 4 and batcher.steps <= 13  # one step served all four
    finally:
        batcher.close()


def test_prefix_caching_can_be_switched_off_and_changes_no_answer():
    head = list(range(10, 40))  # 30 shared leading tokens
    prompts = [head + [50, 51], head + [60], head + [70, 71, 72]]
    params = SamplingParams(max_new_tokens=6)
    results = {}
    for on in (True, False):
        eng = engine()
        batcher = Batcher(eng, max_batch=4, prefix_cache=on)
        try:
            outs = []
            for p in prompts:  # one after another: each later one finds the kept prefix
                c = Collector()
                batcher.submit(p, params, c)
                assert c.done.wait(60)
                outs.append(c.tokens)
            results[on] = (outs, batcher.batch.reused)
        finally:
            batcher.close()
    assert results[True][0] == results[False][0]
    assert results[True][1] == 2 * 30 and results[False][1] == 0


def test_a_long_prompt_is_prefilled_in_chunks_while_the_others_decode():
    """A prompt over the prefill budget joining a running batch: the running row keeps
    decoding, one step per chunk, while it is prefilled (its 70 tokens in budget-8 chunks take
    9 steps, where one forward would have stalled the row); both answers equal the requests
    run alone."""
    eng = engine()
    batcher = Batcher(eng, max_batch=4, prefill_budget=8)
    try:
        running = Collector()
        gate = threading.Event()
        run_req = batcher.submit([1, 2, 3], SamplingParams(max_new_tokens=60),
                                 lambda t, r: (running(t, r), gate.set() if len(running.tokens) == 5
                                               else None))
        assert gate.wait(30)
        prompt = [(7 * i) % 97 for i in range(70)]
        long = Collector()
        steps_at_first = []
        submitted_at = run_req.generated
        batcher.submit(prompt, SamplingParams(max_new_tokens=6),
                       lambda t, r: (steps_at_first.append(run_req.generated)
                                     if r is None and not long.tokens else None, long(t, r)))
        assert long.done.wait(60) and running.done.wait(60)
        assert steps_at_first[0] - submitted_at >= 70 // 8  # the row decoded during the chunks
        assert long.tokens == eng.generate([prompt], SamplingParams(max_new_tokens=6))[0]
        assert running.tokens == eng.generate([[1, 2, 3]], SamplingParams(max_new_tokens=60))[0]
        assert batcher.staging is None
    finally:
        batcher.close()


def hybrid_engine():
    from tests.generation.test_slots import qwen35

    return Engine(qwen35())


@pytest.mark.parametrize("make", [engine, hybrid_engine])
def test_staged_rows_equal_single_requests_on_the_slot_batch(make):
    """``stage``/``advance``/``join_staged`` directly: a staged prompt longer than L shifts the
    running row; an unfinished stage is refused. A hybrid model's staged prompt carries its
    linear layers' states into the row."""
    from scratchlm.generation.slots import SlotBatch

    eng = make()
    batch = SlotBatch(eng, slots=3)
    params = SamplingParams(max_new_tokens=8)
    batch.join([5, 6, 7], params, "short")
    prompt = list(range(10, 50))
    staged = batch.stage(prompt)
    with pytest.raises(ValueError, match="not finished"):
        batch.join_staged(staged, params, "long")
    out = {"short": [], "long": []}
    while not staged.finished:
        batch.advance(staged, 16)
        for row, tok in batch.sample():
            out[row.tag].append(tok)
        batch.forward()
    batch.join_staged(staged, params, "long")
    while batch.rows:
        for row, tok in batch.sample():
            out[row.tag].append(tok)
            if len(out[row.tag]) == 8:
                batch.leave(row)
        batch.forward()
    assert out["long"] == eng.generate([prompt], params)[0]
    assert out["short"] == eng.generate([[5, 6, 7]], params)[0]
