"""Cached evaluation rows (evaluate/cache.py) are reused only for the same model, settings and
task file contents; a row that cannot be this task's result is an error naming the file and
line, never counted; only a cut-off last line (the interruption) is dropped and redone."""

from __future__ import annotations

import json

import pytest
import torch

from scratchlm.evaluate.cache import CacheError, ResultCache, model_identity, score_pending


@pytest.fixture()
def setup(tmp_path, small_bpe):
    """Two different tiny models saved in a/ and b/, and a 6-example choice task file."""
    from scratchlm.checkpoints.ours import save_pretrained
    from scratchlm.models.registry import build_model, preset

    models = {}
    for seed, name in ((0, "a"), (1, "b")):
        torch.manual_seed(seed)
        models[name] = build_model(preset("llama-tiny")[1]).eval()
        save_pretrained(models[name], tmp_path / name)
    docs = [{"context": f"Question {i}: pick one.", "choices": ["yes", "no", "maybe"],
             "label": i % 3} for i in range(6)]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    return tmp_path, models, small_bpe


@pytest.fixture()
def scored(monkeypatch):
    """The number of (context, choice) pairs each ``loglikelihoods`` call scores."""
    import scratchlm.evaluate.choice as choice

    calls = []
    real = choice.loglikelihoods
    monkeypatch.setattr(choice, "loglikelihoods",
                        lambda m, pairs, **k: calls.append(len(pairs)) or real(m, pairs, **k))
    return calls


def _run(setup, name, tasks=None):
    from scratchlm.evaluate.tasks import run_tasks

    root, models, tok = setup
    tasks = tasks or [f"choice:{root / 'mc.jsonl'}"]
    return run_tasks(models[name], tok, tasks, root / "eval", str(root / name))


def _cache(root):
    return next((root / "eval" / "cache").glob("choice*.jsonl"))


def test_another_model_in_the_same_folder_is_scored_not_served_a_cache(setup, scored):
    root, models, tok = setup
    task = f"choice:{root / 'mc.jsonl'}"
    other = root / "other.jsonl"
    other.write_text((root / "mc.jsonl").read_text())
    a = _run(setup, "a", [task, f"choice:{other}"])
    scored.clear()
    b = _run(setup, "b")[task]
    assert sum(scored) == 18  # every example of b scored: none of a's rows reused
    assert b["rows"] != a[task]["rows"]
    card = json.loads((root / "eval" / "RESULTS.json").read_text())
    assert card["model"] == str(root / "b")
    assert list(card["tasks"]) == [task]  # a's other task is not shown under b's name
    scored.clear()
    _run(setup, "b")
    assert scored == []  # the same model again resumes from its own rows


def test_a_model_saved_again_at_the_same_path_is_another_model(setup):
    from scratchlm.checkpoints.ours import save_pretrained

    root, models, _ = setup
    before = model_identity(str(root / "a"))
    assert before == model_identity(str(root / "a"))
    save_pretrained(models["b"], root / "a")  # retrained into the same folder
    assert model_identity(str(root / "a"))["fingerprint"] != before["fingerprint"]
    assert model_identity("gpt2-124m")["model"] == "gpt2-124m"  # a preset: by its name
    assert model_identity(str(root / "a"), adapter=str(root / "b"))["adapter"] == str(root / "b")


def test_an_edited_label_is_another_task(setup, scored):
    root, _, _ = setup
    task = f"choice:{root / 'mc.jsonl'}"
    first = _run(setup, "a")[task]
    docs = [json.loads(line) for line in (root / "mc.jsonl").read_text().splitlines()]
    docs[0]["label"] = (docs[0]["label"] + 1) % 3
    (root / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    scored.clear()
    again = _run(setup, "a")[task]
    assert sum(scored) == 18  # scored again, not the stale rows
    assert again["rows"][0]["label"] == docs[0]["label"] != first["rows"][0]["label"]


@pytest.mark.parametrize("line,message", [
    ('{"index": 99, "row": ROW}', r"example 99: past the task's 6 examples"),
    ('{"index": 1, "row": ROW}', r"example 1 again \(first on line 3\)"),
    ('{"index": 2, "row": {"acc": "yes"}}', r"example 2: fields \['acc'\]"),
    ('{"index": "2", "row": ROW}', r"not a cached row"),
    ('not json at all', r"not a JSON line"),
])
def test_a_stray_or_malformed_row_is_named_by_file_and_line(setup, line, message):
    root, _, _ = setup
    _run(setup, "a")
    cache = _cache(root)
    lines = cache.read_text().splitlines()
    row = json.loads(lines[1])["row"]  # example 0's row, well formed
    lines = lines[:3] + [line.replace("ROW", json.dumps(row))]  # rows 0, 1, then the bad one
    cache.write_text("\n".join(lines) + "\n")
    with pytest.raises(CacheError, match=rf"{cache.name}:4: {message}"):
        _run(setup, "a")


def test_a_row_that_does_not_fit_its_example_is_refused(setup):
    root, _, _ = setup
    _run(setup, "a")
    cache = _cache(root)
    lines = cache.read_text().splitlines()
    for n, change in ((2, {"loglikelihoods": [0.0, 1.0]}), (3, {"label": 2}),
                      (4, {"acc": 0.5})):
        item = json.loads(lines[n - 1])
        item["row"].update(change)
        bad = lines[:n - 1] + [json.dumps(item)] + lines[n:]
        cache.write_text("\n".join(bad) + "\n")
        with pytest.raises(CacheError, match=rf"{cache.name}:{n}: example {n - 2}: "):
            _run(setup, "a")


def test_a_cut_off_last_line_is_redone_and_the_file_stays_whole(setup, scored):
    root, _, _ = setup
    task = f"choice:{root / 'mc.jsonl'}"
    first = _run(setup, "a")[task]
    cache = _cache(root)
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])  # 2 rows, a cut third
    scored.clear()
    assert _run(setup, "a")[task]["rows"] == first["rows"]
    assert scored == [12]  # the 4 examples not cached
    assert [json.loads(x)["index"] for x in cache.read_text().splitlines()[1:]] == list(range(6))


def test_a_gsm8k_row_is_checked_against_its_problem(tiny_chat_model, tmp_path):
    from scratchlm.evaluate.gsm8k import Problem, row_problem
    from scratchlm.evaluate.settings import Gsm8kSettings
    from scratchlm.evaluate.tasks import run_task
    from scratchlm.checkpoints.load import load_model_and_tokenizer

    p = Problem("2+3?", "2+3=5\n#### 5")
    good = {"target": "5", "responses": ["#### 5"], "answers": ["5"], "correct": [True]}
    assert row_problem(good, p, 1) is None
    assert "'target'" in row_problem({**good, "target": "6"}, p, 1)
    assert "'correct'" in row_problem({**good, "correct": [False]}, p, 1)
    assert "'answers'" in row_problem({**good, "answers": [5]}, p, 1)
    assert "'responses'" in row_problem(good, p, 2)  # another number of samples

    model, tok = load_model_and_tokenizer(str(tiny_chat_model()))
    settings = Gsm8kSettings(max_new_tokens=2, batch_size=2)
    run_task("gsm8k", model, tok, tmp_path, limit=2, gsm8k=settings)
    cache = tmp_path / "cache" / "gsm8k.jsonl"
    lines = cache.read_text().splitlines()
    item = json.loads(lines[2])
    item["row"]["target"] = "-1"
    cache.write_text("\n".join(lines[:2] + [json.dumps(item)]) + "\n")
    with pytest.raises(CacheError, match=r"gsm8k.jsonl:3: example 1: 'target' is '-1'"):
        run_task("gsm8k", model, tok, tmp_path, limit=2, gsm8k=settings)


def test_an_older_layout_starts_over(tmp_path, capsys):
    path = tmp_path / "cache" / "t.jsonl"
    path.parent.mkdir()
    path.write_text('{"settings": {}}\n{"index": 0, "row": {}}\n')
    cache = ResultCache(tmp_path, "t", {"settings": {}, "model": None, "task": None},
                        lambda i, row: None)
    assert cache.done == {} and "older cache layout; starting over" in capsys.readouterr().out


def test_a_header_that_is_not_json_is_named_by_file_and_line(tmp_path):
    path = tmp_path / "cache" / "t.jsonl"
    path.parent.mkdir()
    path.write_text("not json\n")
    with pytest.raises(CacheError, match=r"t.jsonl:1: not a JSON header .*delete the file"):
        ResultCache(tmp_path, "t", {}, lambda i, row: None)


def test_score_pending_keeps_done_rows_and_scores_the_rest_in_batches():
    calls, recorded = [], []

    def score(chunk, start):
        calls.append((chunk, start))
        for i in chunk:
            yield {"i": i}

    done = {1: {"i": "cached"}, 4: {"i": "cached"}, 9: {"i": "past the examples"}}
    rows = score_pending(6, score, 2, done, lambda i, row: recorded.append(i), progress=False)
    assert rows == [{"i": 0}, {"i": "cached"}, {"i": 2}, {"i": 3}, {"i": "cached"}, {"i": 5}]
    assert calls == [([0, 2], 0), ([3, 5], 2)]  # start: the offset among the pending
    assert recorded == [0, 2, 3, 5]
