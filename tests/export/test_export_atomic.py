"""``scratchlm export`` lands whole or not at all: a full disk (an injected ENOSPC) ends in one
line naming the file and its disk and leaves the previous export as it was; two exports to one
path at once end with one of them, whole and loadable; no hidden temporary or backup stays."""

from __future__ import annotations

import errno
import os
import threading

import pytest
import torch

from scratchlm.recipes.configs import ExportConfig
from scratchlm.recipes.export import main as export

NO_SPACE = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
# how safetensors (Rust) reports the same: an error that is not an OSError, the errno in its text
RUST_NO_SPACE = ('Error while serializing: I/O error: No space left on device (os error 28) at '
                 'path "/data/.tmpnV1Ekh"')


def _saved_model(folder, small_bpe, seed):
    """A tiny Llama (its weights drawn from ``seed``) saved as a run's final/ folder."""
    from scratchlm.checkpoints.ours import save_pretrained
    from scratchlm.models.registry import build_model, preset
    from scratchlm.tokenizers import save_tokenizer

    torch.manual_seed(seed)
    model = build_model(preset("llama-tiny")[1]).eval()
    save_pretrained(model, folder)
    save_tokenizer(small_bpe, folder)
    return model


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, small_bpe):
    root = tmp_path_factory.mktemp("models")
    return [(root / f"m{seed}", _saved_model(root / f"m{seed}", small_bpe, seed))
            for seed in (0, 1)]


def _cli_export(*args) -> int:
    from scratchlm.cli import main as cli

    return cli(["export", *args, "--dtype", "f32", "--overwrite", "true"])


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    return err[0]


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.allclose(sa[k], sb[k]) for k in sa)


def test_a_full_disk_during_a_gguf_export_names_the_file_and_disk(tmp_path, two_models,
                                                                   monkeypatch, capsys):
    import gguf

    (src, _), _ = two_models
    dest = tmp_path / "out"
    dest.mkdir()
    out = dest / "m.gguf"
    out.write_text("the previous export")

    def full(self):
        raise NO_SPACE

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", full)
    assert _cli_export("--model", str(src), "--out", str(out)) == 2
    line = _one_error_line(capsys)
    assert str(out) in line and f"disk holding {dest}" in line, line
    assert "No space left on device" in line and "ENOSPC" in line, line
    assert out.read_text() == "the previous export"  # the last good file survives
    assert sorted(os.listdir(dest)) == ["m.gguf"]  # no temporary left behind


@pytest.mark.parametrize("raised", ["oserror", "rust"])
def test_a_full_disk_during_an_hf_export_names_the_folder_and_disk(tmp_path, two_models,
                                                                   monkeypatch, capsys, raised):
    from safetensors import SafetensorError

    import scratchlm.checkpoints.files as files

    (src, _), _ = two_models
    out = tmp_path / "hf"
    out.mkdir()
    (out / "config.json").write_text("{}")

    def full(*args, **kwargs):
        raise NO_SPACE if raised == "oserror" else SafetensorError(RUST_NO_SPACE)

    monkeypatch.setattr(files, "save_file", full)
    assert _cli_export("--model", str(src), "--format", "hf", "--out", str(out)) == 2
    line = _one_error_line(capsys)
    assert str(out) in line and f"disk holding {tmp_path}" in line, line
    assert "No space left on device" in line and "ENOSPC" in line, line
    assert os.listdir(out) == ["config.json"]  # the previous export is as it was
    assert sorted(os.listdir(tmp_path)) == ["hf"]  # no temporary or backup left behind


def _race(fmt, out, two_models, monkeypatch):
    """Export both models to ``out`` from two threads, held together until both have written
    their weights, so that they finish at the same moment."""
    import gguf

    import scratchlm.export.hf as hf

    both = threading.Barrier(2, timeout=120)
    owner, attr = ((gguf.GGUFWriter, "write_tensors_to_file") if fmt == "gguf" else
                   (hf, "save_hf"))
    real = getattr(owner, attr)

    def held(*args, **kwargs):
        result = real(*args, **kwargs)
        both.wait()
        return result

    monkeypatch.setattr(owner, attr, held)
    results, errors = {}, []

    def run(i, src):
        try:
            results[i] = export(ExportConfig(model=str(src), format=fmt, dtype="f32",
                                             out=str(out), overwrite=True))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            both.abort()

    threads = [threading.Thread(target=run, args=(i, src)) for i, (src, _) in
               enumerate(two_models)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    return results


@pytest.mark.parametrize("fmt", ["gguf", "hf"])
def test_two_exports_to_one_path_end_with_one_whole_export(tmp_path, two_models, monkeypatch,
                                                           fmt):
    from scratchlm.checkpoints.gguf import load_gguf
    from scratchlm.checkpoints.load import load_model_and_tokenizer

    out = tmp_path / ("m.gguf" if fmt == "gguf" else "hf")
    if fmt == "gguf":
        out.write_text("the previous export")
    else:
        out.mkdir()
        (out / "config.json").write_text("{}")
    results = _race(fmt, out, two_models, monkeypatch)
    assert len(results) == 2 and all(r["bytes"] > 1000 for r in results.values())
    back = load_gguf(out)[0] if fmt == "gguf" else load_model_and_tokenizer(str(out))[0]
    assert sum(_same_weights(back, model) for _, model in two_models) == 1  # one, not a mix
    left = sorted(os.listdir(tmp_path))
    assert left == (["m.Modelfile", "m.gguf"] if fmt == "gguf" else ["hf"])


def test_a_folder_replaces_another_where_renames_cannot_exchange(tmp_path, monkeypatch):
    """Without an atomic exchange (not Linux, or a filesystem without it) the old folder is
    moved aside and removed: the new one in place, nothing else left."""
    from scratchlm.export import atomic

    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    dest = tmp_path / "hf"
    dest.mkdir()
    (dest / "old.json").write_text("old")
    with atomic.staging(dest, folder=True) as part:
        (part / "new.json").write_text("new")
        atomic.replace_folder(part, dest)
    assert os.listdir(dest) == ["new.json"] and os.listdir(tmp_path) == ["hf"]
