"""Pretraining on a corpus as it is published: parquet documents, best-fit packing, exact
resume, two ranks equal one with twice the batch, and `scratchlm prepare` on JSON Lines."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from conftest import ROOT
from scratchlm.downloads.sources import fetch
from scratchlm.recipes.pretrain import PretrainConfig, main
from scratchlm.training.checkpoint import list_checkpoints
from scratchlm.training.loop import TrainConfig


def paragraphs() -> list[str]:
    text = fetch("the-verdict", progress=False).read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n\n") if p.strip()]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "verdict.parquet"
    pq.write_table(pa.table({"text": paragraphs()}), path, row_group_size=20)
    return path


def cfg(out, data, **train):
    kw = dict(max_steps=8, batch_size=4, eval_every=4, save_every=2, keep_last=10,
              keep_checkpoints=True, log_every=1, warmup_steps=2, eval_batches=2,
              tensorboard=False)
    kw.update(train)
    return PretrainConfig(out=str(out), model="gpt-tiny", data=[str(data)], context_length=32,
                          drop_rate=0.0, sample_tokens=0, packing="bestfit",
                          train=TrainConfig(**kw))


def losses(run):
    import csv

    with open(run / "metrics.csv", newline="") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f) if r["loss"]]


def test_bestfit_on_parquet_resumes_exactly(tmp_path, corpus):
    straight = tmp_path / "straight"
    main(cfg(straight, corpus))
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    for ckpt in list_checkpoints(resumed):  # as if the run had died after step 4
        if ckpt.name > "step-000004":
            shutil.rmtree(ckpt)
    shutil.rmtree(resumed / "final")
    again = cfg(resumed, corpus)
    again.resume = "latest"
    main(again)
    assert losses(resumed) == losses(straight) and len(losses(straight)) == 8


def test_a_bad_packing_is_refused(tmp_path, corpus):
    bad = cfg(tmp_path / "r", corpus)
    bad.packing = "pad"
    with pytest.raises(ValueError, match="--packing must be one of concat, bestfit"):
        main(bad)


def test_prepare_jsonl_zst_then_pretrain_on_its_shards(tmp_path):
    lines = "".join(json.dumps({"content": p}) + "\n" for p in paragraphs())
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    r = subprocess.run([sys.executable, "-m", "scratchlm", "prepare", "--data",
                        str(tmp_path / "c.jsonl.zst"), "--out", str(tmp_path / "shards"),
                        "--text-field", "content", "--shard-tokens", "2000"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"of {len(paragraphs())} documents" in r.stdout
    res = main(cfg(tmp_path / "run", tmp_path / "shards", max_steps=4, save_every=4))
    assert res.step == 4


@pytest.mark.slow
def test_bestfit_two_ranks_equal_one_with_twice_the_batch(tmp_path, corpus):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(29600 + os.getpid() % 1000), "-m", "scratchlm", "pretrain",
           "--model", "gpt-tiny", "--data", str(corpus), "--packing", "bestfit",
           "--context-length", "32", "--sample-tokens", "0", "--drop-rate", "0",
           "--out", str(tmp_path / "ddp"), "--train.max_steps", "4", "--train.batch_size", "2",
           "--train.eval_every", "2", "--train.save_every", "2", "--train.log_every", "1",
           "--train.warmup_steps", "2", "--train.eval_batches", "2",
           "--train.tensorboard", "false"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    main(cfg(tmp_path / "single", corpus, max_steps=4, eval_every=2, save_every=2))
    a, b = losses(tmp_path / "ddp"), losses(tmp_path / "single")
    assert [s for s, _ in a] == [s for s, _ in b]
    for (_, x), (_, y) in zip(a, b):
        assert x == pytest.approx(y, abs=1e-5)


def test_bestfit_with_the_document_mask_trains(tmp_path, corpus, capsys):
    run = cfg(tmp_path / "masked", corpus, max_steps=4, save_every=4)
    run.doc_mask = True
    res = main(run)
    assert res.step == 4 and all(loss == loss for loss in res.train_losses)
    assert "documents masked apart" in capsys.readouterr().out
