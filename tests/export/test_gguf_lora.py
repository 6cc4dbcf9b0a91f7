"""A LoRA adapter exported as llama.cpp's adapter GGUF (``--format gguf-lora``): the file holds
each adapted matrix's A and B under the base file's tensor names, and llama.cpp applying it to
the base GGUF gives our merged model's logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tiny_models import tiny
from scratchlm.recipes.configs import ExportConfig
from scratchlm.recipes.export import main as export

TARGETS = ("q", "k", "v", "out", "ff")


def _run(tmp_path, small_bpe, name="llama-tiny", targets=TARGETS, **changes):
    """A tiny base saved as a run folder, and an adapter (nonzero B) saved beside it; returns
    (base folder, adapter folder, the merged model)."""
    from scratchlm.checkpoints.ours import save_pretrained
    from scratchlm.finetune.config import LoraConfig
    from scratchlm.finetune.lora import apply_lora, merge_lora, save_adapter
    from scratchlm.tokenizers import save_tokenizer

    base = tiny(name, **changes)
    save_pretrained(base, tmp_path / "base")
    save_tokenizer(small_bpe, tmp_path / "base")
    lora = LoraConfig(rank=4, alpha=8, targets=list(targets))
    apply_lora(base, lora.rank, lora.alpha, tuple(lora.targets))
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in base.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    save_adapter(base, tmp_path / "adapter", lora)
    return tmp_path / "base", tmp_path / "adapter", merge_lora(base).eval()


def _delta(reader, name: str) -> np.ndarray:
    """alpha / rank * B @ A of one matrix in an adapter file, as llama.cpp computes it."""
    t = {x.name: x for x in reader.tensors}
    a = np.array(t[name + ".lora_a"].data, dtype=np.float32)
    b = np.array(t[name + ".lora_b"].data, dtype=np.float32)
    alpha = float(reader.fields["adapter.lora.alpha"].parts[-1][0])
    return alpha / a.shape[0] * b @ a


@pytest.mark.parametrize("name,targets,changes", [
    ("llama-tiny", TARGETS, {}),
    ("llama-tiny", (*TARGETS, "head"), {"tie_embeddings": False}),
    ("gpt-tiny", ("q", "v", "out"), {"vocab_size": 512}),  # fused qkv: parts of summed rank
    # Qwen3.5's linear layers: B's rows (A's columns for out_proj) in llama.cpp's head order
    ("qwen3.5-tiny", (*TARGETS, "lin"), {}),
])
def test_the_file_holds_each_matrixs_update(name, targets, changes, small_bpe, tmp_path):
    """Base + the file's alpha / rank * B @ A, read back as llama.cpp reads it, is our merged
    model's weight, under the base file's tensor names (llama's q/k rows permuted alike)."""
    import gguf

    from scratchlm.export.gguf import write_gguf
    base_dir, adapter, merged = _run(tmp_path, small_bpe, name, targets, **changes)
    out = tmp_path / "lora.gguf"
    export(ExportConfig(model=str(base_dir), adapter=str(adapter), format="gguf-lora",
                        dtype="f32", out=str(out)))
    reader = gguf.GGUFReader(str(out))
    assert bytes(reader.fields["general.type"].parts[-1]).decode() == "adapter"
    assert bytes(reader.fields["adapter.type"].parts[-1]).decode() == "lora"
    base = {t.name: np.array(t.data) for t in
            gguf.GGUFReader(str(write_gguf(tiny(name, **changes), small_bpe,
                                           tmp_path / "base.gguf", "f32"))).tensors}
    want = {t.name: np.array(t.data) for t in
            gguf.GGUFReader(str(write_gguf(merged, small_bpe, tmp_path / "merged.gguf",
                                           "f32"))).tensors}
    adapted = {t.name.rsplit(".", 1)[0] for t in reader.tensors}
    assert adapted and adapted <= set(base)
    for target in adapted:
        np.testing.assert_allclose(base[target] + _delta(reader, target), want[target],
                                   atol=1e-5, rtol=1e-5)
    unchanged = set(base) - adapted
    assert all(np.array_equal(base[k], want[k]) for k in unchanged)


@pytest.mark.parametrize("name,targets", [("llama-tiny", TARGETS),
                                          ("qwen3.5-tiny", (*TARGETS, "lin"))])
def test_llama_cpp_applies_it_to_the_base(name, targets, small_bpe, tmp_path):
    """llama.cpp with the base GGUF and our adapter file (--lora) gives our merged model's
    logits within 1e-3 of their scale; the Modelfile beside it is FROM the base with the
    ADAPTER line."""
    llama_cpp = pytest.importorskip("llama_cpp")
    base_dir, adapter, merged = _run(tmp_path, small_bpe, name, targets, tie_embeddings=False)
    base = tmp_path / "exports" / "base.gguf"
    export(ExportConfig(model=str(base_dir), dtype="f32", out=str(base)))
    lora = tmp_path / "exports" / "tuned-lora.gguf"
    export(ExportConfig(model=str(base), adapter=str(adapter), format="gguf-lora",
                        dtype="f32", out=str(lora)))
    modelfile = lora.with_suffix(".Modelfile").read_text()
    assert "FROM ./base.gguf\nADAPTER ./tuned-lora.gguf\n" in modelfile
    ids = small_bpe.encode("I had always thought Jack Gisburn rather a cheap genius")
    llm = llama_cpp.Llama(model_path=str(base), lora_path=str(lora), n_ctx=128, n_threads=2,
                          verbose=False, logits_all=True)
    llm.eval(ids)
    theirs = np.array(llm.scores[: len(ids)])
    with torch.no_grad():
        ours = merged(torch.tensor([ids]))[0].numpy()
        plain = tiny(name, tie_embeddings=False)(torch.tensor([ids]))[0].numpy()
    assert np.abs(ours - plain).max() > 1e-2  # the adapter changes the logits
    assert np.abs(theirs - ours).max() <= 1e-3 * np.abs(ours).max()


def test_what_llama_cpp_could_not_apply_is_refused(small_bpe, tmp_path):
    base_dir, adapter, _ = _run(tmp_path, small_bpe, targets=("q", "head"))  # a tied head
    with pytest.raises(ValueError, match="tied output head"):
        export(ExportConfig(model=str(base_dir), adapter=str(adapter), format="gguf-lora",
                            out=str(tmp_path / "a.gguf")))
    assert not (tmp_path / "a.gguf").exists()
    with pytest.raises(ValueError, match="give --adapter"):
        export(ExportConfig(model=str(base_dir), format="gguf-lora",
                            out=str(tmp_path / "a.gguf")))
    with pytest.raises(ValueError, match="--quant applies to --format gguf only"):
        export(ExportConfig(model=str(base_dir), adapter=str(adapter), format="gguf-lora",
                            quant="q8_0", out=str(tmp_path / "a.gguf")))


@pytest.mark.slow
def test_llama_cpp_applies_a_smollm2_adapter(tmp_path):
    """SmolLM2-135M (its tied head stays unadapted) with an adapter on every projection, taken
    a few optimizer steps from zero: llama.cpp on the exported base + adapter file gives our
    merged model's last logits within 1e-3 of their scale."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from scratchlm.checkpoints.load import load_model_and_tokenizer
    from scratchlm.finetune.lora import apply_lora, merge_lora, save_adapter
    from scratchlm.finetune.config import LoraConfig

    base = tmp_path / "smol.gguf"
    export(ExportConfig(model="smollm2-135m-instruct", dtype="f32", out=str(base)))
    model, tok = load_model_and_tokenizer(str(base))
    lora = LoraConfig(rank=8, alpha=16, targets=list(TARGETS))
    apply_lora(model, lora.rank, lora.alpha, tuple(lora.targets))
    ids = tok.encode("The capital of France is Paris. The capital of Italy is Rome.")
    x = torch.tensor([ids])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(3):
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits[0], x[0, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_adapter(model, tmp_path / "adapter", lora)
    out = tmp_path / "smol-lora.gguf"
    export(ExportConfig(model=str(base), adapter=str(tmp_path / "adapter"), format="gguf-lora",
                        dtype="f32", out=str(out)))
    merged = merge_lora(model).eval()
    llm = llama_cpp.Llama(model_path=str(base), lora_path=str(out), n_ctx=128, n_threads=2,
                          verbose=False, logits_all=True)
    llm.eval(ids)
    theirs = np.array(llm.scores[: len(ids)])
    with torch.no_grad():
        ours = merged(x)[0].numpy()
    assert np.abs(theirs - ours).max() <= 1e-3 * np.abs(ours).max()
