"""``scratchlm tune``: the space syntax, a real Optuna study over the pretraining recipe that
resumes from its SQLite file, and pruning through the training loop's evaluations."""

from __future__ import annotations

import csv
import json

import pytest

from scratchlm.config import build
from scratchlm.recipes.pretrain import PretrainConfig
from scratchlm.recipes.tune import parse_space, run_study

optuna = pytest.importorskip("optuna")

BASE = ["model=gpt-tiny", "data=the-verdict", "context_length=32", "sample_tokens=0",
        "train.max_steps=4", "train.eval_every=2", "train.batch_size=4", "train.save_every=4",
        "train.tensorboard=false", "train.eval_batches=1", "train.log_every=2",
        "train.warmup_steps=0"]


def test_parse_space():
    keys = {"train.lr", "train.batch_size", "train.schedule", "n_layer"}
    lr, bs, sched, layers = parse_space("lr=1e-5:1e-3:log, batch_size=4:16:int,"
                                        "schedule=cosine|constant,n_layer=1:4", keys)
    assert (lr.name, lr.kind, lr.log, lr.low, lr.high) == ("train.lr", "float", True, 1e-5, 1e-3)
    assert (bs.kind, bs.low, bs.high) == ("int", 4, 16)
    assert sched.choices == ("cosine", "constant") and layers.kind == "float"
    for bad, msg in [("lr=1e-3:1e-5", "below"), ("dropout=0:1", "unknown config key"),
                     ("lr=a:b", "numbers"), ("lr=1:2:cubic", "low:high:log"), ("", "empty")]:
        with pytest.raises(ValueError, match=msg):
            parse_space(bad, keys)


def test_study_runs_trials_as_run_folders_and_resumes(tmp_path, capsys):
    out = tmp_path / "tune"
    res = run_study("pretrain", 3, "lr=1e-4:1e-2:log,n_layer=1:2:int", out, overrides=BASE)
    assert res["trials"] == 3 and res["best"] is not None
    for n in range(3):
        assert (out / f"trial-{n:03d}" / "metrics.csv").is_file()
    rows = list(csv.DictReader(open(out / "trials.csv")))
    assert [r["trial"] for r in rows] == ["0", "1", "2"]
    assert "val loss" in capsys.readouterr().out  # the summary table
    best = build(PretrainConfig, {}, config_file=str(out / "best-config.json"))
    assert best.train.lr == pytest.approx(res["params"]["train.lr"])
    assert best.n_layer == res["params"]["n_layer"] and best.train.max_steps == 4
    # the best value is the best trial's last validation loss, as its metrics say
    metrics = list(csv.DictReader(open(out / f"trial-{res['best']:03d}" / "metrics.csv")))
    last_val = [float(r["val_loss"]) for r in metrics if r["val_loss"]][-1]
    assert res["value"] == pytest.approx(last_val)
    # running again continues the same study from study.db
    again = run_study("pretrain", 4, "lr=1e-4:1e-2:log,n_layer=1:2:int", out, overrides=BASE)
    assert again["trials"] == 4 and (out / "trial-003").is_dir()


def test_pruned_trials_stop_at_their_first_evaluation(tmp_path):
    out = tmp_path / "tune"
    res = run_study("pretrain", 2, "lr=1e-4:1e-2:log", out, overrides=BASE,
                    pruner=optuna.pruners.ThresholdPruner(upper=0.0))  # prunes every trial
    assert res["best"] is None
    rows = list(csv.DictReader(open(out / "trials.csv")))
    assert [r["state"] for r in rows] == ["PRUNED", "PRUNED"]
    assert all(r["last_step"] == "2" for r in rows)
    steps = [int(r["step"]) for r in csv.DictReader(open(out / "trial-000" / "metrics.csv"))]
    assert max(steps) == 2  # stopped at step 2 of 4
    assert not (out / "best-config.json").exists()
    json.dumps(res)
