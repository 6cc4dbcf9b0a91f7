"""Our scores equal lm-evaluation-harness's own: the same tiny model, once as a scratchlm
folder through our registered ``scratchlm`` model class and once exported to a Hugging Face
folder through the harness's ``hf`` backend, on local tasks (multiple choice and rolling
log-likelihood) defined in YAML over local JSONL, offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval")

DOCS = [
    {"context": "The capital of France is", "choices": ["Paris", "Rome", "a small dog"],
     "label": 0},
    {"context": "Two plus two equals", "choices": ["four", "five"], "label": 0},
    {"context": "I had always thought Jack Gisburn rather a cheap genius--though a good "
                "fellow enough--so it was no", "choices": ["great surprise", "cat", "idea"],
     "label": 0},
    {"context": "Water boils at", "choices": ["100 degrees", "the moon", "zero"], "label": 0},
]
WINO = [  # the published Winogrande layout: the blank "_" is filled by either option
    {"sentence": "The trophy would not fit in the suitcase because the _ was too big.",
     "option1": "trophy", "option2": "suitcase", "answer": "1"},
    {"sentence": "Sarah lent Maria money because _ was short of cash that week.",
     "option1": "Sarah", "option2": "Maria", "answer": "2"},
    {"sentence": "The painting hung over the bed, so the _ was above it all night.",
     "option1": "painting", "option2": "bed", "answer": "1"},
]
YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: {kind}
{extra}
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory, small_bpe):
    import torch

    from scratchlm.export.hf import write_hf
    from scratchlm.checkpoints.ours import save_pretrained
    from scratchlm.models.registry import build_model, preset
    from scratchlm.tokenizers import save_tokenizer

    root = tmp_path_factory.mktemp("harness")
    torch.manual_seed(0)
    model = build_model(preset("llama-tiny")[1]).eval()
    save_pretrained(model, root / "ours")
    save_tokenizer(small_bpe, root / "ours")
    write_hf(model, small_bpe, root / "hf")
    data = root / "tasks"
    data.mkdir()
    (data / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (data / "tiny_mc.yaml").write_text(YAML.format(
        name="tiny_mc", data=data / "mc.jsonl", kind="multiple_choice",
        extra='doc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\n'
              'doc_to_target: "{{label}}"\n'
              "metric_list:\n  - metric: acc\n  - metric: acc_norm"))
    (data / "tiny_roll.yaml").write_text(YAML.format(
        name="tiny_roll", data=data / "mc.jsonl", kind="loglikelihood_rolling",
        extra='doc_to_text: ""\ndoc_to_target: "{{context}}"\n'
              'metric_list:\n  - metric: word_perplexity\n'
              "  - metric: bits_per_byte"))
    (data / "wino.jsonl").write_text("".join(json.dumps(d) + "\n" for d in WINO))
    harness_tasks = Path(lm_eval.__file__).parent / "tasks" / "winogrande"
    shutil.copy(harness_tasks / "preprocess_winogrande.py", data / "preprocess_winogrande.py")
    (data / "tiny_wino.yaml").write_text(YAML.format(  # the harness's winogrande.yaml, local
        name="tiny_wino", data=data / "wino.jsonl", kind="multiple_choice",
        extra="doc_to_text: !function preprocess_winogrande.doc_to_text\n"
              "doc_to_target: !function preprocess_winogrande.doc_to_target\n"
              "doc_to_choice: !function preprocess_winogrande.doc_to_choice\n"
              "metric_list:\n  - metric: acc"))
    return root


def _run(model, args, tasks_dir, monkeypatch):
    from lm_eval.tasks import TaskManager

    import scratchlm.evaluate.harness  # noqa: F401 (registers "scratchlm")

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return lm_eval.simple_evaluate(model=model, model_args=args, tasks=["tiny_mc", "tiny_roll", "tiny_wino"],
                                   task_manager=TaskManager(include_path=str(tasks_dir)),
                                   log_samples=True, batch_size=1)


@pytest.mark.slow
def test_scores_equal_the_harness_hf_backend(models, monkeypatch):
    ours = _run("scratchlm", f"pretrained={models / 'ours'}", models / "tasks", monkeypatch)
    theirs = _run("hf", f"pretrained={models / 'hf'},dtype=float32,device=cpu",
                  models / "tasks", monkeypatch)
    for task, docs in (("tiny_mc", DOCS), ("tiny_roll", DOCS), ("tiny_wino", WINO)):
        a = sorted(ours["samples"][task], key=lambda s: s["doc_id"])
        b = sorted(theirs["samples"][task], key=lambda s: s["doc_id"])
        assert len(a) == len(b) == len(docs)
        for sa, sb in zip(a, b):
            la = [r[0][0] if isinstance(r[0], (list, tuple)) else r[0] for r in sa["resps"]]
            lb = [r[0][0] if isinstance(r[0], (list, tuple)) else r[0] for r in sb["resps"]]
            assert la == pytest.approx(lb, rel=1e-6, abs=1e-4), task
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"]["tiny_mc"][metric] == theirs["results"]["tiny_mc"][metric]
    assert ours["results"]["tiny_wino"]["acc,none"] == theirs["results"]["tiny_wino"]["acc,none"]
    assert ours["results"]["tiny_roll"]["bits_per_byte,none"] == pytest.approx(
        theirs["results"]["tiny_roll"]["bits_per_byte,none"], rel=1e-5)


@pytest.mark.slow
def test_our_own_multiple_choice_scores_match_the_harness(models, monkeypatch, small_bpe):
    from scratchlm.evaluate.choice import evaluate_choices, read_task
    from scratchlm.checkpoints.load import load_pretrained

    ours = _run("scratchlm", f"pretrained={models / 'ours'}", models / "tasks", monkeypatch)
    got = evaluate_choices(load_pretrained(str(models / "ours")), small_bpe,
                           read_task(models / "tasks" / "mc.jsonl"), progress=False)
    samples = sorted(ours["samples"]["tiny_mc"], key=lambda s: s["doc_id"])
    for row, s in zip(got["rows"], samples):
        assert row["loglikelihoods"] == pytest.approx([r[0][0] for r in s["resps"]], rel=1e-6,
                                                      abs=1e-5)
    assert got["acc"] == ours["results"]["tiny_mc"]["acc,none"]
    wino = evaluate_choices(load_pretrained(str(models / "ours")), small_bpe,
                            read_task(models / "tasks" / "wino.jsonl", "winogrande"),
                            progress=False)
    samples = sorted(ours["samples"]["tiny_wino"], key=lambda s: s["doc_id"])
    for row, s in zip(wino["rows"], samples):  # partial scoring: one continuation, 2 contexts
        assert row["loglikelihoods"] == pytest.approx([r[0][0] for r in s["resps"]], rel=1e-6,
                                                      abs=1e-5)
    assert wino["acc"] == ours["results"]["tiny_wino"]["acc,none"]


def test_generate_until_stops_at_the_first_stop_string(models):
    from lm_eval.api.instance import Instance

    from scratchlm.evaluate.harness import ScratchLM

    lm = ScratchLM(str(models / "ours"))
    req = lambda until: Instance("generate_until", {}, ("The capital of France is",  # noqa: E731
                                                        {"until": until, "max_gen_toks": 12}), 0)
    (full,) = lm.generate_until([req([])])
    assert full and len(lm.tokenizer.encode(full)) <= 12
    stop = full[len(full) // 2:][:2]
    (cut,) = lm.generate_until([req([stop])])
    assert stop not in cut and full.startswith(cut) and cut == full[:full.find(stop)]
