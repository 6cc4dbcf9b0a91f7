"""``scratchlm finetune tokens``: a token tagger (named entities, ...) from a pretrained model,
full finetuning or LoRA (see ``finetune/token_classification.py``).

    scratchlm finetune tokens --model smollm2-135m --data train.conll [--val dev.conll --test test.conll] [--lora.rank 16]

Data: CoNLL-style files (``token<TAB>tag``, IOB2 tags, blank line between sentences). Without
``--val``/``--test`` the training file is split 80/10/10 (seeded). Outputs in ``--out``:
metrics.csv, loss.png, report.json (entity precision/recall/F1 per type, seqeval-style, on the
test split before and after), final/ (the tagger, LoRA merged, with its tokenizer and
tagger.json listing the tags).
"""

from __future__ import annotations

import json
import random

from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from scratchlm.config import to_dict
from scratchlm.data.conll import TaggingCollate, TokenTaggingDataset, read_conll, tag_vocabulary
from scratchlm.evaluate.entities import entity_scores
from scratchlm.finetune.classification import prepare_head_finetuning
from scratchlm.finetune.token_classification import TaggingLoss, predict_tags
from scratchlm.models.accounting import count_parameters
from scratchlm.checkpoints.load import load_model_and_tokenizer
from scratchlm.finetune.setup import save_final
from scratchlm.training.loop import fit, set_epochs
from scratchlm.training.optim import optimizer_for
from scratchlm.training.prepare import prepare_training, training_session, whole_model
from scratchlm.recipes.configs import TaggingConfig  # noqa: F401 (its config)


def load_splits(cfg: TaggingConfig):
    if not cfg.data:
        raise ValueError("--data: a CoNLL file (token<TAB>tag lines) is required")
    train = read_conll(cfg.data)
    if cfg.val and cfg.test:
        return train, read_conll(cfg.val), read_conll(cfg.test)
    if cfg.val or cfg.test:
        raise ValueError("give both --val and --test, or neither (then --data is split 80/10/10)")
    train = list(train)
    random.Random(cfg.seed).shuffle(train)
    n_val = n_test = max(1, len(train) // 10)
    if len(train) < 3 * n_val:
        raise ValueError(f"{cfg.data}: {len(train)} sentences are too few to split")
    return train[n_val + n_test:], train[:n_val], train[n_val:n_val + n_test]


def main(cfg: TaggingConfig) -> dict:
    with training_session(cfg.train, cfg.out, resume=cfg.resume,
                          overwrite=cfg.overwrite) as (rt, out):
        train_s, val_s, test_s = load_splits(cfg)  # bad data fails before any weights load
        model, tok = load_model_and_tokenizer(cfg.model, device=rt.device)
        tags = tag_vocabulary(train_s)
        length = min(cfg.max_length, model.cfg.context_length)
        train_ds, val_ds, test_ds = (TokenTaggingDataset(s, tok, tags, length)
                                     for s in (train_s, val_s, test_s))
        pad = tok.eos_id if tok.eos_id is not None else 0
        collate = TaggingCollate(pad)
        trainable = prepare_head_finetuning(model, len(tags), cfg.trainable, cfg.last_k, cfg.lora)
        tqdm.write(f"{len(train_ds)} train / {len(val_ds)} val / {len(test_ds)} test sentences, "
                   f"{len(tags)} tags; {trainable:,} trainable parameters of "
                   f"{count_parameters(model):,}")
        test_loader = DataLoader(test_ds, batch_size=cfg.train.batch_size, collate_fn=collate)
        before = entity_scores(*predict_tags(model, test_loader, tags, rt.device))
        set_epochs(cfg.train, cfg.epochs, len(train_ds), rt.world_size)
        trainer = prepare_training(TaggingLoss(model), model, rt, cfg.train)
        optimizer = optimizer_for(model, cfg.train, rt.device)
        fit(model, trainer, optimizer, train_ds, val_ds, cfg.train, rt, out,
            to_dict(cfg), collate_fn=collate, resume=cfg.resume or None)
        after = entity_scores(*predict_tags(model, test_loader, tags, rt.device))
        for kind, row in after.items():
            tqdm.write(f"{kind:>10}: precision {row['precision']:.3f} recall {row['recall']:.3f} "
                       f"f1 {row['f1']:.3f} ({row['support']} entities)")
        result = {"tags": tags, "trainable": trainable, "before": before, "after": after}
        model = whole_model(model, rt)  # gathered under FSDP; None off the main rank
        if not rt.is_main:  # the main rank writes the run's outputs
            return result
        (out / "report.json").write_text(json.dumps(result, indent=2))
        final = save_final(model, tok, out / "final", cfg.lora, cfg.model)
        (final / "tagger.json").write_text(json.dumps({"tags": tags}, indent=2))
        return result
