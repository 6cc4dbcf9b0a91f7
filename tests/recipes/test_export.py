"""``scratchlm export``: SmolLM2-135M-Instruct from its embedded GGUF out to HF and to GGUF
Q8_0 and back (the same chat answer at temperature 0, transformers included), an adapter
merged on the way, and bad requests refused with nothing half-written left behind."""

from __future__ import annotations

import math

import pytest
import torch

from scratchlm.recipes.configs import ExportConfig
from scratchlm.recipes.export import main as export

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _answer(model, tok, n=12):
    from scratchlm.generation.engine import Engine, SamplingParams
    from scratchlm.tokenizers.chat import encode_chat

    ids = encode_chat(tok, QUESTION, add_generation_prompt=True)
    out = Engine(model).generate([ids], SamplingParams(n, 0.0, stop_ids=(tok.eos_id,)))
    return out[0] if isinstance(out[0], list) else out[0].tokens


def _ppl(model, ids):
    x = torch.tensor([ids[:-1]])
    with torch.no_grad():
        logits = model(x)[0]
    return math.exp(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:])).item())


@pytest.mark.slow
def test_smollm2_round_trips_through_hf_and_gguf_q8(tmp_path, verdict_text, capsys):
    from transformers import AutoModelForCausalLM

    from scratchlm.checkpoints.load import load_model_and_tokenizer

    base, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    want = _answer(base, tok)
    hf_dir, q8 = tmp_path / "hf", tmp_path / "smol.gguf"
    res = export(ExportConfig(model="smollm2-135m-instruct", format="hf", dtype="f32",
                              out=str(hf_dir)))
    assert res["seconds"] > 0 and (hf_dir / "tokenizer_config.json").is_file()
    export(ExportConfig(model="smollm2-135m-instruct", quant="q8_0", out=str(q8)))
    printed = capsys.readouterr().out
    assert f"ollama create smol -f {tmp_path / 'smol.Modelfile'}" in printed
    assert 'PARAMETER stop "<|im_end|>"' in (tmp_path / "smol.Modelfile").read_text()

    hf_model, hf_tok = load_model_and_tokenizer(str(hf_dir))
    q8_model, q8_tok = load_model_and_tokenizer(str(q8))
    assert _answer(hf_model, hf_tok) == want and _answer(q8_model, q8_tok) == want
    theirs = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    from scratchlm.tokenizers.chat import encode_chat

    ids = torch.tensor([encode_chat(tok, QUESTION, add_generation_prompt=True)])
    got = theirs.generate(ids, max_new_tokens=len(want), do_sample=False)[0, ids.shape[1]:]
    assert got.tolist()[:len(want)] == list(want)

    text = tok.encode(verdict_text[:3000])[:512]
    base_ppl, q8_ppl = _ppl(base, text), _ppl(q8_model, text)
    print(f"held-out perplexity: source {base_ppl:.3f}, exported Q8_0 {q8_ppl:.3f}")
    assert abs(q8_ppl / base_ppl - 1) < 0.02


def _tiny_run(tmp_path, small_bpe):
    """A tiny Llama saved as a run's final/ folder, with a LoRA adapter trained off zero."""
    from scratchlm.finetune.config import LoraConfig
    from scratchlm.finetune.lora import apply_lora, save_adapter
    from scratchlm.checkpoints.ours import save_pretrained
    from scratchlm.models.registry import build_model, preset
    from scratchlm.tokenizers import save_tokenizer

    torch.manual_seed(0)
    base = build_model(preset("llama-tiny")[1]).eval()
    save_pretrained(base, tmp_path / "base")
    save_tokenizer(small_bpe, tmp_path / "base")
    lora = LoraConfig(rank=4, alpha=8, targets=["all"])
    apply_lora(base, lora.rank, lora.alpha, tuple(lora.targets))
    with torch.no_grad():
        for n, p in base.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    save_adapter(base, tmp_path / "adapter", lora)
    return tmp_path / "base", tmp_path / "adapter", base


def test_an_adapter_is_merged_into_the_export(tmp_path, small_bpe):
    from scratchlm.checkpoints.gguf import load_gguf

    base_dir, adapter, tuned = _tiny_run(tmp_path, small_bpe)
    out = tmp_path / "exp" / "tuned.gguf"
    export(ExportConfig(model=str(base_dir), adapter=str(adapter), dtype="f32", out=str(out)))
    back, _ = load_gguf(out)
    x = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(back(x), tuned(x), atol=1e-5, rtol=1e-5)


def test_bad_requests_are_refused_and_nothing_half_written_remains(tmp_path, small_bpe,
                                                                   monkeypatch):
    import gguf

    from scratchlm.cli import main as cli
    from scratchlm.models.registry import build_model, preset

    base_dir, adapter, _ = _tiny_run(tmp_path, small_bpe)
    out = tmp_path / "m.gguf"
    out.write_text("an older file")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        export(ExportConfig(model=str(base_dir), out=str(out)))
    with pytest.raises(ValueError, match="--quant applies to --format gguf only"):
        export(ExportConfig(model=str(base_dir), format="hf", quant="q8_0", out=str(tmp_path / "h")))
    with pytest.raises(ValueError, match="--max_shard_gb applies to --format hf only"):
        export(ExportConfig(model=str(base_dir), max_shard_gb=1, out=str(tmp_path / "s.gguf")))
    with pytest.raises(ValueError, match="--name applies to --format gguf only"):
        export(ExportConfig(model=str(base_dir), format="hf", name="x", out=str(tmp_path / "h")))
    with pytest.raises(ValueError, match="--out for GGUF is a file ending in .gguf"):
        export(ExportConfig(model=str(base_dir), out=str(tmp_path / "h")))

    other = tmp_path / "other"  # a base of another shape
    from scratchlm.checkpoints.ours import save_pretrained
    save_pretrained(build_model(preset("qwen3-tiny")[1]), other)
    with pytest.raises(ValueError, match="different base model|does not fit"):
        export(ExportConfig(model=str(other), adapter=str(adapter), out=str(tmp_path / "o.gguf")))

    def crash(self):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", crash)
    with pytest.raises(OSError, match="disk full"):
        export(ExportConfig(model=str(base_dir), out=str(out), overwrite=True))
    assert out.read_text() == "an older file"  # the last good file survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "base", "m.gguf", "other"]
    monkeypatch.undo()
    assert cli(["export", "--model", str(base_dir), "--out", str(out), "--overwrite", "true",
                "--quant", "q4_0"]) == 0
    assert out.stat().st_size > 1000 and (tmp_path / "m.Modelfile").is_file()
