from __future__ import annotations

import pytest
import torch

from scratchlm.data.classification import (
    ClassificationDataError,
    ClassificationDataset,
    balance,
    random_split,
    read_sms_spam,
    read_table,
)
from scratchlm.downloads.sources import fetch
from scratchlm.finetune.classification import add_classifier_head, class_logits, classify_text
from scratchlm.models.gpt import GPT, GPTConfig


def test_sms_pipeline_counts():
    rows = read_sms_spam(fetch("sms-spam"))
    assert len(rows) == 5574 and sum(1 for label, _ in rows if label == "spam") == 747
    bal = balance(rows, seed=123)
    assert len(bal) == 1494
    train, val, test = random_split(bal, 0.7, 0.1, seed=123)
    assert (len(train), len(val), len(test)) == (1045, 149, 300)  # the book's split sizes


def test_malformed_rows_name_file_and_line(tmp_path):
    f = tmp_path / "sms.txt"
    f.write_text("ham\thello\nspam free money\n")
    with pytest.raises(ClassificationDataError, match=r"sms.txt:2"):
        read_sms_spam(f)
    c = tmp_path / "d.csv"
    c.write_text("label,text\npos,good\n,missing\n")
    with pytest.raises(ClassificationDataError, match=r"d.csv:3"):
        read_table(c)
    j = tmp_path / "d.jsonl"
    j.write_text('{"label": "a", "text": "x"}\n{"text": "y"}\n')
    with pytest.raises(ClassificationDataError, match=r"d.jsonl:2"):
        read_table(j)


def test_padding_never_changes_the_prediction(gpt2_tok):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, context_length=64, n_embd=32, n_layer=2, n_head=2)).eval()
    add_classifier_head(model, 2)
    rows = [("ham", "see you at noon"), ("spam", "WIN a FREE prize now, reply YES to claim")]
    short = ClassificationDataset(rows, gpt2_tok, {"ham": 0, "spam": 1})
    long = ClassificationDataset(rows, gpt2_tok, {"ham": 0, "spam": 1}, max_length=40)
    assert long.ids.shape[1] == 40 and short.ids.shape[1] == short.lengths.max()
    with torch.no_grad():
        a = class_logits(model, short.ids, short.lengths)
        b = class_logits(model, long.ids, long.lengths)
    assert torch.allclose(a, b, atol=1e-5)
    assert classify_text(rows[1][1], model, gpt2_tok, label_names=["ham", "spam"]) in ("ham", "spam")


def test_finetune_classify_recipe_learns(tmp_path):
    """Two epochs on a tiny model and a synthetic two-class task: accuracy well above chance."""
    import csv

    from scratchlm.checkpoints.load import load_pretrained
    from scratchlm.checkpoints.ours import save_pretrained
    from scratchlm.recipes.finetune_classifier import ClassifyConfig, LoraConfig, main
    from scratchlm.training.loop import TrainConfig

    torch.manual_seed(0)
    base = GPT(GPTConfig(vocab_size=50257, context_length=32, n_embd=32, n_layer=2, n_head=2))
    save_pretrained(base, tmp_path / "base")
    data = tmp_path / "d.csv"
    with open(data, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "text"])
        for i in range(200):
            w.writerow(["pos", f"great lovely good {i}"] if i % 2 else ["neg", f"awful bad terrible {i}"])
    for i, lora in enumerate((LoraConfig(), LoraConfig(rank=4, alpha=8),
                              LoraConfig(rank=4, alpha=8, quantize_base="nf4"))):
        out = tmp_path / f"run{i}"
        cfg = ClassifyConfig(model=str(tmp_path / "base"), data=str(data), out=str(out), epochs=2,
                             trainable="all", lora=lora,
                             train=TrainConfig(max_steps=0, batch_size=8, lr=3e-3, schedule="constant",
                                               warmup_steps=0, save_every=10**9, log_every=5,
                                               eval_batches=2, tensorboard=False))
        res = main(cfg)
        assert res["test"] >= 0.9, res
        assert (out / "accuracy.png").is_file() and (out / "data" / "test.csv").is_file()
        if lora.quantize_base:  # QLoRA keeps the adapter apart from its 4-bit base
            assert (out / "final" / "adapter" / "adapter.safetensors").is_file()
            continue
        model = load_pretrained(str(out / "final"))
        assert model.out_head.out_features == 2
