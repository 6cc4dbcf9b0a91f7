"""Token classification: reading CoNLL files, first-sub-token label alignment, entity F1
against seqeval, and the recipe learning a synthetic tagging task (full and LoRA)."""

from __future__ import annotations

import json
import random

import pytest

from scratchlm.data.conll import (IGNORE_INDEX, Sentence, TaggingCollate, encode_sentence,
                                  read_conll, tag_vocabulary)
from scratchlm.evaluate.entities import entities, entity_scores

PEOPLE = ["John", "Mary", "Alice Cooper", "Bob", "Eve", "Zbigniew Brzezinski", "Carla"]
PLACES = ["Paris", "London", "New York", "Berlin", "Kyoto", "Ouagadougou"]
TEMPLATES = ["{p} lives in {l} .", "{p} visited {l} yesterday .", "In {l} , {p} met {q} .",
             "We saw {p} near {l} .", "Nobody went anywhere ."]


def synthetic_conll(path, n=120, seed=0):
    """Sentences made from templates; people are PER, places LOC (IOB2)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        t = rng.choice(TEMPLATES)
        fill = {"p": rng.choice(PEOPLE), "q": rng.choice(PEOPLE), "l": rng.choice(PLACES)}
        for word in t.split():
            if word.startswith("{"):
                kind = "PER" if word[1] in "pq" else "LOC"
                for j, w in enumerate(fill[word[1]].split()):
                    lines.append(f"{w}\t{'B' if j == 0 else 'I'}-{kind}")
            else:
                lines.append(f"{word}\tO")
        lines.append("")
    path.write_text("-DOCSTART-\tO\n\n" + "\n".join(lines))
    return path


def test_read_conll_and_errors(tmp_path):
    sents = read_conll(synthetic_conll(tmp_path / "a.conll", n=10))
    assert len(sents) == 10 and all(len(s.words) == len(s.tags) for s in sents)
    assert tag_vocabulary(sents)[0] == "O"
    bad = tmp_path / "bad.conll"
    bad.write_text("John\tB-PER\nlives\n")
    with pytest.raises(ValueError, match=r"bad.conll:2: expected 'token<TAB>tag'"):
        read_conll(bad)
    bad.write_text("John\tPERSON\n")
    with pytest.raises(ValueError, match=r"bad.conll:1: tag 'PERSON' is not IOB2"):
        read_conll(bad)


def test_labels_go_to_the_first_sub_token(gpt2_tok):
    s = Sentence(["Zbigniew", "lives", "in", "Ouagadougou"], ["B-PER", "O", "O", "B-LOC"])
    tag_ids = {"O": 0, "B-LOC": 1, "B-PER": 2}
    ids, labels = encode_sentence(s, gpt2_tok, tag_ids, 100)
    assert gpt2_tok.decode(ids) == "Zbigniew lives in Ouagadougou"
    firsts = [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]
    assert [labels[i] for i in firsts] == [2, 0, 0, 1]
    assert len(ids) > 4  # the names are several sub-tokens each, labelled only once
    assert gpt2_tok.decode(ids[firsts[3]:]) == " Ouagadougou"
    x, y = TaggingCollate(0)([(ids, labels), ([5], [0])])
    assert x.shape == y.shape == (2, len(ids)) and (y[1, 1:] == IGNORE_INDEX).all()


def test_entity_scores_match_seqeval():
    seqeval = pytest.importorskip("seqeval.metrics")
    rng = random.Random(1)
    kinds = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    gold = [[rng.choice(kinds) for _ in range(rng.randint(1, 12))] for _ in range(300)]
    pred = [[t if rng.random() < 0.7 else rng.choice(kinds) for t in g] for g in gold]
    ours = entity_scores(gold, pred)
    report = seqeval.classification_report(gold, pred, output_dict=True, zero_division=0)
    for kind in ("PER", "LOC", "ORG"):
        for k in ("precision", "recall", "f1"):  # seqeval says "f1-score"
            assert ours[kind][k] == pytest.approx(report[kind][k if k != "f1" else "f1-score"])
        assert ours[kind]["support"] == report[kind]["support"]
    assert ours["micro"]["f1"] == pytest.approx(seqeval.f1_score(gold, pred))
    assert entities(["I-PER", "I-PER", "B-PER", "I-LOC", "O"]) == {
        ("PER", 0, 1), ("PER", 2, 2), ("LOC", 3, 3)}


@pytest.mark.parametrize("lora", [0, 8])
def test_tagging_recipe_learns_synthetic_entities(tiny_chat_model, tmp_path, lora):
    from scratchlm.finetune.lora import LoraConfig
    from scratchlm.recipes.finetune_tokens import TaggingConfig, main
    from scratchlm.training.loop import TrainConfig

    data = synthetic_conll(tmp_path / "train.conll", n=150)
    res = main(TaggingConfig(model=str(tiny_chat_model()), data=str(data),
                             out=str(tmp_path / "tag"), epochs=4,
                             lora=LoraConfig(rank=lora, alpha=2 * lora),
                             train=TrainConfig(max_steps=0, batch_size=8, lr=3e-3, schedule="constant",
                                               warmup_steps=0, save_every=10**9,
                                               tensorboard=False)))
    assert res["after"]["micro"]["f1"] >= 0.9 > res["before"]["micro"]["f1"]
    assert set(res["after"]) == {"PER", "LOC", "micro"}
    report = json.loads((tmp_path / "tag" / "report.json").read_text())
    assert report["tags"] == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]

    from scratchlm.finetune.token_classification import tag_words
    from scratchlm.checkpoints.load import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(tmp_path / "tag" / "final"))
    words = "Mary lives in New York .".split()
    assert tag_words(model, tok, words, report["tags"]) == [
        "B-PER", "O", "O", "B-LOC", "I-LOC", "O"]
