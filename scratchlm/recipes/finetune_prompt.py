"""``scratchlm finetune prompt``: prompt tuning, a trained soft prompt in front of a frozen
model (see ``finetune/prompt_tuning.py``).

    scratchlm finetune prompt --model smollm2-135m --data sms-spam --num_virtual_tokens 20 \\
        --init_text "Classify if the text message is spam or not:"
    scratchlm finetune prompt --model smollm2-135m-instruct --data instruction-data

Two kinds of data:
- classification by generation (``sms-spam`` or a CSV/JSONL of text and label, split like
  ``finetune classify``): the model reads ``text + "\\nLabel:"`` and learns to answer with a
  label word (the label names, or ``--label_words``); accuracy compares the label words' next-
  token probabilities;
- instruction data (``instruction-data`` or an Alpaca/chat JSON file): SFT with the prompt
  style of ``finetune instruct``; test loss before and after.
Outputs in ``--out``: metrics.csv, loss.png, result.json, final/prompt/ (the soft prompt alone,
PEFT's prompt-tuning layout).
"""

from __future__ import annotations

import json

from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from scratchlm.config import to_dict
from scratchlm.data.classification import classification_splits, label_prompt, label_word_items
from scratchlm.data.instruction import InstructionCollate, InstructionDataset
from scratchlm.finetune.prompt_tuning import PromptTuned, classify_by_label_words, save_prompt
from scratchlm.models.accounting import count_parameters
from scratchlm.checkpoints.load import load_model_and_tokenizer
from scratchlm.finetune.setup import load_for_finetuning
from scratchlm.training.evaluation import dataset_loss, evaluate_loss
from scratchlm.training.loop import fit, set_epochs
from scratchlm.training.losses import CausalLMLoss
from scratchlm.training.optim import optimizer_for
from scratchlm.training.prepare import prepare_training, training_session, whole_model
from scratchlm.recipes.configs import PromptConfig  # noqa: F401 (its config)


def resolve_task(cfg: PromptConfig) -> str:
    if cfg.task != "auto":
        if cfg.task not in ("classify", "instruct"):
            raise ValueError(f"task must be auto, classify or instruct, got {cfg.task!r}")
        return cfg.task
    json_like = cfg.data.endswith((".json", ".jsonl")) or cfg.data.startswith("instruction-data")
    return "instruct" if json_like else "classify"


def main(cfg: PromptConfig) -> dict:
    task = resolve_task(cfg)
    with training_session(cfg.train, cfg.out, seed=cfg.seed, resume=cfg.resume,
                          overwrite=cfg.overwrite) as (rt, out):
        if task == "classify":
            model, tok = load_model_and_tokenizer(cfg.model, device=rt.device)
        else:
            model, tok, style, (train_ex, val_ex, test_ex), _ = load_for_finetuning(
                cfg.model, cfg.data, "auto", cfg.limit, None, rt.device)
        tuned = PromptTuned(model, cfg.num_virtual_tokens, cfg.init_text or None, tok, cfg.seed)
        trainable = count_parameters(tuned, trainable_only=True)
        pad = tok.eos_id if tok.eos_id is not None else 0
        collate = InstructionCollate(pad, tuned.cfg.context_length)
        loss_module = CausalLMLoss(tuned)
        result: dict = {"task": task, "trainable": trainable,
                        "base_parameters": count_parameters(model)}
        if task == "classify":
            train_rows, val_rows, test_rows, labels = classification_splits(
                cfg.data, cfg.text_col, cfg.label_col, cfg.limit, cfg.seed,
                out if rt.is_main else None)
            names = sorted(labels, key=labels.get)
            words = cfg.label_words or names
            if len(words) != len(names):
                raise ValueError(f"{len(words)} label words for {len(names)} labels {names}")
            word_of = dict(zip(names, words))
            train_ds = label_word_items(train_rows, tok, word_of, cfg.max_length)
            val_ds = label_word_items(val_rows, tok, word_of, cfg.max_length)

            def accuracy() -> float:
                prompts = [label_prompt(t, tok, cfg.max_length) for _, t in test_rows]
                pred = classify_by_label_words(tuned, tok, prompts, words)
                return sum(p == labels[lab] for p, (lab, _) in zip(pred, test_rows)) / len(pred)

            result["label_words"] = word_of
            result["test_accuracy_before"] = accuracy()
            tqdm.write(f"test accuracy before: {result['test_accuracy_before']:.2%}")
        else:
            make = lambda ex: InstructionDataset(ex, tok, style)  # noqa: E731
            train_ds, val_ds, test_ds = make(train_ex), make(val_ex), make(test_ex)
            result["test_loss_before"] = dataset_loss(loss_module, test_ds, collate, rt,
                                                    cfg.train.batch_size)
            tqdm.write(f"test loss before: {result['test_loss_before']:.3f}")
        tqdm.write(f"{len(train_ds)} training examples; {trainable:,} trainable parameters "
                   f"(the soft prompt) in front of {result['base_parameters']:,} frozen")
        set_epochs(cfg.train, cfg.epochs, len(train_ds), rt.world_size)
        trainer = prepare_training(loss_module, tuned, rt, cfg.train)
        optimizer = optimizer_for(tuned, cfg.train, rt.device)
        fit(tuned, trainer, optimizer, train_ds, val_ds if len(val_ds) else None, cfg.train,
            rt, out, to_dict(cfg), collate_fn=collate, resume=cfg.resume or None)
        if task == "classify":
            result["test_accuracy"] = accuracy()
            tqdm.write(f"test accuracy after: {result['test_accuracy']:.2%}")
        else:
            loader = DataLoader(test_ds, batch_size=cfg.train.batch_size, collate_fn=collate)
            result["test_loss"] = evaluate_loss(loss_module, loader, rt)
            tqdm.write(f"test loss after: {result['test_loss']:.3f}")
        tuned = whole_model(tuned, rt)  # gathered under FSDP; None off the main rank
        if not rt.is_main:  # the main rank writes the run's outputs
            return result
        save_prompt(tuned, out / "final" / "prompt", cfg.model)
        (out / "result.json").write_text(json.dumps(result, indent=2))
        return result
