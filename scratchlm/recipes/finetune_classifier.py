"""``scratchlm finetune classify``: a text classifier from a pretrained model (the book's
chapter 6), by finetuning the last block(s) or with LoRA adapters.

    scratchlm finetune classify --model smollm2-135m-instruct --data sms-spam [--lora.rank 16]

Data: ``sms-spam`` (downloaded, balanced, split 70/10/20 with seed 123, CSVs written to the run
folder), or a CSV/JSONL file with text and label columns (split the same way). Outputs in
``--out``: data/*.csv, metrics.csv, loss.png, accuracy.png, checkpoints/, final/ (the model
with its classifier head; LoRA merged) and final/adapter/ (the adapter alone, with LoRA).
"""

from __future__ import annotations

import json

from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from scratchlm.config import to_dict
from scratchlm.data.classification import ClassificationDataset, classification_splits
from scratchlm.finetune.classification import (
    ClassificationLoss,
    calc_accuracy_loader,
    prepare_head_finetuning,
)
from scratchlm.finetune.setup import save_final
from scratchlm.models.accounting import count_parameters
from scratchlm.checkpoints.load import load_model_and_tokenizer
from scratchlm.training.loop import fit, set_epochs
from scratchlm.training.optim import optimizer_for
from scratchlm.training.plots import plot_accuracy
from scratchlm.training.prepare import prepare_training, training_session, whole_model
from scratchlm.recipes.configs import ClassifyConfig, LoraConfig  # noqa: F401 (its config)


def main(cfg: ClassifyConfig) -> dict:
    with training_session(cfg.train, cfg.out, seed=cfg.seed, resume=cfg.resume,
                          overwrite=cfg.overwrite) as (rt, out):
        model, tok = load_model_and_tokenizer(cfg.model, device=rt.device)
        pad = tok.eos_id if tok.eos_id is not None else 0
        train_rows, val_rows, test_rows, labels = classification_splits(
            cfg.data, cfg.text_col, cfg.label_col, cfg.limit, cfg.seed, out if rt.is_main else None)
        train_ds = ClassificationDataset(train_rows, tok, labels, cfg.max_length, pad,
                                         model.cfg.context_length)
        val_ds = ClassificationDataset(val_rows, tok, labels, train_ds.max_length, pad)
        test_ds = ClassificationDataset(test_rows, tok, labels, train_ds.max_length, pad)
        total_before = count_parameters(model)
        trainable = prepare_head_finetuning(model, len(labels), cfg.trainable, cfg.last_k, cfg.lora,
                                            cfg.head_bias)
        tqdm.write(f"{len(train_ds)} train / {len(val_ds)} val / {len(test_ds)} test examples, "
                   f"max_length {train_ds.max_length}; {trainable:,} trainable parameters of "
                   f"{count_parameters(model):,} (base {total_before:,})")
        steps_per_epoch = set_epochs(cfg.train, cfg.epochs, len(train_ds), rt.world_size)
        # at least four points on the accuracy curve: every epoch, or a quarter epoch when
        # the run is shorter than four epochs
        cfg.train.eval_every = max(1, steps_per_epoch // max(1, 4 // max(cfg.epochs, 1)))
        loss_module = ClassificationLoss(model)
        loaders = {name: DataLoader(ds, batch_size=cfg.train.batch_size)
                   for name, ds in (("train", train_ds), ("val", val_ds), ("test", test_ds))}
        before = calc_accuracy_loader(model, loaders["test"], rt.device)
        tqdm.write(f"test accuracy before finetuning: {before:.2%} (all {len(test_ds)} test "
                   "examples, as after)")
        n_train_eval = min(len(train_ds), cfg.eval_batches * cfg.train.batch_size)
        trainer = prepare_training(loss_module, model, rt, cfg.train)
        optimizer = optimizer_for(model, cfg.train, rt.device)
        history: list[dict] = []

        def on_eval(step: int) -> None:
            row = {"epoch": step / steps_per_epoch,
                   "train_acc": calc_accuracy_loader(model, loaders["train"], rt.device, cfg.eval_batches),
                   "val_acc": calc_accuracy_loader(model, loaders["val"], rt.device)}
            history.append(row)
            tqdm.write(f"epoch {row['epoch']:.2f}: training accuracy {row['train_acc']:.2%} "
                       f"(first {n_train_eval} of {len(train_ds)}) | validation accuracy "
                       f"{row['val_acc']:.2%} (all {len(val_ds)})")
            if rt.is_main:
                plot_accuracy(history, out / "accuracy.png",
                              f"training (first {n_train_eval})", f"validation (all {len(val_ds)})")

        fit(model, trainer, optimizer, train_ds, val_ds, cfg.train, rt, out,
            to_dict(cfg), on_eval=on_eval, resume=cfg.resume or None)
        result = {name: calc_accuracy_loader(model, loader, rt.device)
                  for name, loader in loaders.items()}
        tqdm.write(f"accuracy: train {result['train']:.2%}, validation {result['val']:.2%}, "
                   f"test {result['test']:.2%}")
        summary = {**result, "test_before": before, "trainable": trainable,
                   "max_length": train_ds.max_length}
        model = whole_model(model, rt)  # gathered under FSDP; None off the main rank
        if not rt.is_main:  # the main rank writes the run's outputs
            return summary
        final = save_final(model, tok, out / "final", cfg.lora, cfg.model)
        final.mkdir(parents=True, exist_ok=True)
        (final / "classifier.json").write_text(json.dumps(
            {"labels": labels, "max_length": train_ds.max_length, "accuracy": result}, indent=2))
        return summary
