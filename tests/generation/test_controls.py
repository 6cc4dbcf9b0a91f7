"""Per-row logit controls in the continuous batch: log-probabilities equal the model's
log-softmax at the chosen tokens, logit_bias and penalties change what is sampled as OpenAI
defines them, equal prompts are prefilled once, and a grammar's rows always give JSON that
validates (with a random model, greedy and sampled, next to unconstrained rows)."""

from __future__ import annotations

import json

import pytest
import torch

from scratchlm.generation.controls import penalize, token_logprob
from scratchlm.generation.engine import Engine, SamplingParams
from scratchlm.generation.slots import SlotBatch
from tests.generation.test_slots import gpt, llama


def run(engine, requests, slots=8):
    """Requests (prompt, params) joined together and decoded to their ends: (tokens, rows)."""
    batch = SlotBatch(engine, slots)
    rows = batch.join_all([(p, s, i) for i, (p, s) in enumerate(requests)])
    outs = {i: [] for i in range(len(requests))}
    lps = {i: [] for i in range(len(requests))}
    while batch.rows:
        for row, tok in batch.sample():
            if isinstance(tok, Exception):
                raise tok
            outs[row.tag].append(tok)
            lps[row.tag].append(row.logprob)
            if row.generated == row.params.max_new_tokens or tok in row.params.stop_ids \
                    or row.finished:
                batch.leave(row)
        batch.forward()
    return [outs[i] for i in range(len(requests))], [lps[i] for i in range(len(requests))], rows


def test_logprobs_equal_the_models_log_softmax():
    model = llama()
    engine = Engine(model)
    prompt = [5, 6, 7, 8]
    params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=3, logprobs=3)
    (toks,), (lps,), _ = run(engine, [(prompt, params)])
    with torch.no_grad():
        full = model(torch.tensor([prompt + toks]))[0].float()  # (T, V)
    ref = torch.log_softmax(full, -1)
    for i, (tok, lp) in enumerate(zip(toks, lps)):
        at = len(prompt) - 1 + i
        assert lp.token == tok
        assert abs(lp.logprob - float(ref[at, tok])) < 1e-4
        best = torch.topk(ref[at], 3)
        assert [t for t, _ in lp.top] == best.indices.tolist()
        assert torch.allclose(torch.tensor([v for _, v in lp.top]), best.values, atol=1e-4)


def test_token_logprob_by_hand():
    lp = token_logprob(torch.tensor([0.0, 1.0, 2.0]), 1, k=2)
    z = torch.logsumexp(torch.tensor([0.0, 1.0, 2.0]), 0)
    assert abs(lp.logprob - (1.0 - float(z))) < 1e-6
    assert [t for t, _ in lp.top] == [2, 1]


def test_penalties_by_hand():
    logits = torch.tensor([1.0, 1.0, 1.0, 1.0])
    counts = torch.tensor([0.0, 1.0, 3.0, 0.0])
    out = penalize(logits, counts, presence=0.5, frequency=0.25)
    assert out.tolist() == [1.0, 1.0 - 0.25 - 0.5, 1.0 - 0.75 - 0.5, 1.0]


def test_logit_bias_forces_and_bans():
    engine = Engine(gpt())
    prompt = [3, 4, 5]
    (plain,), _, _ = run(engine, [(prompt, SamplingParams(max_new_tokens=5))])
    (forced,), _, _ = run(engine, [(prompt, SamplingParams(max_new_tokens=5,
                                                          logit_bias={42: 100.0}))])
    assert forced == [42] * 5
    banned = {t: -100.0 for t in set(plain)}
    (other,), _, _ = run(engine, [(prompt, SamplingParams(max_new_tokens=5,
                                                         logit_bias=banned))])
    assert not set(other) & set(plain)


def test_presence_penalty_stops_repeats_and_leaves_other_rows_alone():
    engine = Engine(gpt())
    prompt = [3, 4, 5]
    (alone,), _, _ = run(engine, [(prompt, SamplingParams(max_new_tokens=20))])
    assert len(set(alone)) < 20  # greedy repeats itself
    outs, _, _ = run(engine, [(prompt, SamplingParams(max_new_tokens=20, presence_penalty=50.0)),
                              (prompt, SamplingParams(max_new_tokens=20))])
    assert len(set(outs[0])) == 20
    assert outs[1] == alone


def test_equal_prompts_are_prefilled_once(monkeypatch):
    engine = Engine(llama())
    computed = []
    real = engine._last_logits
    monkeypatch.setattr(engine, "_last_logits",
                        lambda idx, cache: computed.append(tuple(idx.shape)) or real(idx, cache))
    a, b = [5, 6, 7, 8, 9], [10, 11]
    reqs = [(a, SamplingParams(max_new_tokens=6, temperature=1.0, seed=s)) for s in (1, 2, 3)]
    reqs.insert(1, (b, SamplingParams(max_new_tokens=6)))
    outs, _, rows = run(engine, reqs)
    assert computed[0] == (2, 5)  # two distinct prompts in the prefill, not four
    assert [r.tag for r in rows] == [0, 1, 2, 3]  # rows come back in the requests' order
    for (p, s), out in zip(reqs, outs):
        alone, _, _ = run(Engine(engine.model), [(p, s)])
        assert out == alone[0]
    assert len({tuple(o) for o in outs}) == 4  # three seeds, three samples


def test_engine_generate_refuses_what_it_does_not_apply():
    engine = Engine(gpt())
    with pytest.raises(ValueError, match="logit_bias.*continuous batcher"):
        engine.generate([[1, 2]], SamplingParams(max_new_tokens=2, logit_bias={1: 5.0}))


SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                      "age": {"type": "integer", "minimum": 0, "maximum": 120}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "minItems": 1,
     "maxItems": 4},
    {"anyOf": [{"type": "number", "minimum": -5, "maximum": 5}, {"type": "boolean"}]},
]


@pytest.fixture(scope="module")
def gpt2_model():
    """A tiny random model over GPT-2's real vocabulary (tiktoken)."""
    from scratchlm.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50257, context_length=128, n_embd=16, n_layer=1,
                         n_head=2, init="torch")).eval()


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_grammar_rows_give_valid_json_beside_free_rows(gpt2_model, gpt2_tok, temperature):
    import jsonschema

    from scratchlm.generation.grammar import Grammar

    eos = (gpt2_tok.eos_id,)
    engine = Engine(gpt2_model)
    reqs = []
    for i, schema in enumerate(SCHEMAS):
        grammar = Grammar.from_json_schema(gpt2_tok, 50257, eos, schema)
        reqs.append(([1, 2, 3 + i], SamplingParams(max_new_tokens=100, temperature=temperature,
                                                   seed=i, stop_ids=eos, grammar=grammar)))
    reqs.append(([1, 2, 3], SamplingParams(max_new_tokens=10, stop_ids=eos)))
    outs, _, _ = run(engine, reqs)
    for schema, out in zip(SCHEMAS, outs):
        text = gpt2_tok.decode([t for t in out if t not in eos])
        jsonschema.validate(json.loads(text), schema)
    free, _, _ = run(engine, [reqs[-1]])
    assert outs[-1] == free[0]  # the free row is untouched by its neighbours' grammars


def test_a_grammar_that_cannot_be_satisfied_is_refused(gpt2_tok):
    from scratchlm.generation.grammar import Grammar, GrammarError

    with pytest.raises(GrammarError, match="minimum"):
        Grammar.from_json_schema(gpt2_tok, 50257, (50256,), {"type": "integer", "minimum": 5,
                                                             "maximum": 3})
