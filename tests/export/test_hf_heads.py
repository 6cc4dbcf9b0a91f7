"""Classifier, reward and tagger heads exported as transformers' ``...ForSequenceClassification``
and ``...ForTokenClassification``: transformers loads the folder and gives our logits."""

from __future__ import annotations

import json

import pytest
import torch

from tiny_models import tiny
from scratchlm.recipes.configs import ExportConfig
from scratchlm.recipes.export import main as export

transformers = pytest.importorskip("transformers")


def _saved(tmp_path, small_bpe, name, changes, classes, bias, meta):
    """A tiny model with a new head, saved as a run's final/ folder with the recipe's file."""
    from scratchlm.checkpoints.ours import save_pretrained
    from scratchlm.finetune.classification import add_classifier_head
    from scratchlm.tokenizers import save_tokenizer

    model = add_classifier_head(tiny(name, **changes), classes, bias).eval()
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.out_head.parameters():
            p.normal_(0, 0.5)
    folder = tmp_path / "final"
    save_pretrained(model, folder)
    save_tokenizer(small_bpe, folder)
    for file, content in meta.items():
        (folder / file).write_text(json.dumps(content))
    return model, folder


def _batch(small_bpe):
    texts = ["I had always thought Jack Gisburn rather a cheap genius", "the picture", "Yes"]
    rows = [small_bpe.encode(t) for t in texts]
    pad = small_bpe.encode("<|endoftext|>", allowed_special="all")[0]
    width = max(map(len, rows))
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])  # right-padded
    return ids, torch.tensor([len(r) for r in rows])


@pytest.mark.parametrize("name,changes", [
    ("llama-tiny", {}), ("qwen3-tiny", {}), ("gpt-tiny", {"vocab_size": 512}),
    ("qwen3-tiny", {"moe": {"num_experts": 4, "top_k": 2, "intermediate_size": 32}}),
    ("gemma3-tiny", {}), ("olmo3-tiny", {}), ("gpt-oss-tiny", {}), ("qwen3.5-tiny", {})])
@pytest.mark.parametrize("meta,classes,labels", [
    ({"classifier.json": {"labels": ["ham", "spam", "other"]}}, 3, ["ham", "spam", "other"]),
    ({"reward.json": {"style": "alpaca"}}, 1, ["reward"]),
])
def test_sequence_heads_give_our_logits(name, changes, meta, classes, labels, small_bpe,
                                        tmp_path):
    from scratchlm.finetune.classification import class_logits

    model, folder = _saved(tmp_path, small_bpe, name, changes, classes, False, meta)
    out = tmp_path / "hf"
    export(ExportConfig(model=str(folder), format="hf", dtype="f32", out=str(out)))
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert [hf.config.id2label[i] for i in range(classes)] == labels
    ids, lengths = _batch(small_bpe)
    with torch.no_grad():
        ours = class_logits(model, ids, lengths)
        theirs = hf(ids).logits  # pooled at the last token that is not padding
        alone = torch.cat([hf(ids[i:i + 1, :n]).logits for i, n in enumerate(lengths)])
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(alone, ours, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name,changes,bias", [("llama-tiny", {}, True), ("llama-tiny", {}, False),
                                               ("gpt-tiny", {"vocab_size": 512}, True),
                                               ("gpt-oss-tiny", {}, False)])
def test_a_tagger_gives_our_logits_per_token(name, changes, bias, small_bpe, tmp_path):
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    model, folder = _saved(tmp_path, small_bpe, name, changes, len(tags), bias,
                           {"tagger.json": {"tags": tags}})
    out = tmp_path / "hf"
    export(ExportConfig(model=str(folder), format="hf", dtype="f32", out=str(out)))
    hf = transformers.AutoModelForTokenClassification.from_pretrained(out).eval()
    ids, _ = _batch(small_bpe)
    with torch.no_grad():
        ours = model.out_head(model.hidden_states(ids))
        theirs = hf(ids).logits
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    assert hf.config.id2label[1] == "B-PER"


def test_what_transformers_cannot_hold_is_refused(small_bpe, tmp_path):
    from scratchlm.checkpoints.load import load_model_and_tokenizer

    model, folder = _saved(tmp_path, small_bpe, "llama-tiny", {}, 2, True,
                           {"classifier.json": {"labels": ["a", "b"]}})
    with pytest.raises(ValueError, match="--head_bias false"):
        export(ExportConfig(model=str(folder), format="hf", out=str(tmp_path / "hf")))
    assert not (tmp_path / "hf").exists()
    (folder / "classifier.json").unlink()
    with pytest.raises(ValueError, match="no classifier.json, tagger.json or reward.json"):
        export(ExportConfig(model=str(folder), format="hf", out=str(tmp_path / "hf")))
    _, no_bias = _saved(tmp_path / "b", small_bpe, "llama-tiny", {}, 2, False, {})
    loaded, _ = load_model_and_tokenizer(str(no_bias))  # a head without bias loads back as one
    assert loaded.out_head.bias is None and loaded.out_head.out_features == 2


def test_heads_transformers_has_no_class_for_are_refused_by_name(small_bpe, tmp_path):
    _, tagger = _saved(tmp_path / "t", small_bpe, "gemma3-tiny", {}, 3, False,
                       {"tagger.json": {"tags": ["O", "B", "I"]}})
    with pytest.raises(ValueError, match="no token classifier for Gemma3ForCausalLM"):
        export(ExportConfig(model=str(tagger), format="hf", out=str(tmp_path / "hf")))
    _, gemma4 = _saved(tmp_path / "g", small_bpe, "gemma4-tiny", {}, 2, False,
                       {"classifier.json": {"labels": ["a", "b"]}})
    with pytest.raises(ValueError, match="Gemma4ForCausalLM is not exported"):
        export(ExportConfig(model=str(gemma4), format="hf", out=str(tmp_path / "hf")))
    assert not (tmp_path / "hf").exists()
