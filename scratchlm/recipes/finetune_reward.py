"""``scratchlm finetune reward``: a reward model from preference pairs (see
``finetune/reward.py``), for best-of-N sampling (``scratchlm generate --best-of N
--reward-model RUN``) or RLHF.

    scratchlm finetune reward --model smollm2-135m-instruct --data instruction-data-with-preference

Data: the book's preference data or any Alpaca/JSONL file with ``chosen``/``rejected``, split
85/10/5 like the instruction data; pairs are rendered in the model's prompt style. Trains the
new one-number head plus the last block(s) (``trainable``), or LoRA adapters plus the head.
Outputs in ``--out``: metrics.csv, loss.png, rewards.json (held-out accuracy, margin and loss
before and after), final/ (the reward model, LoRA merged, with its tokenizer and reward.json,
the prompt style the scorer renders with).
"""

from __future__ import annotations

import json
from dataclasses import asdict

from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from scratchlm.config import to_dict
from scratchlm.data.instruction import PreferenceDataset, RewardCollate
from scratchlm.finetune.classification import prepare_head_finetuning
from scratchlm.finetune.reward import RewardLoss, RewardScorer, evaluate_rewards
from scratchlm.models.accounting import count_parameters
from scratchlm.finetune.setup import load_for_finetuning, save_final
from scratchlm.training.loop import fit, set_epochs
from scratchlm.training.optim import optimizer_for
from scratchlm.training.prepare import prepare_training, training_session, whole_model
from scratchlm.recipes.configs import RewardConfig  # noqa: F401 (its config)


def main(cfg: RewardConfig) -> dict:
    with training_session(cfg.train, cfg.out, resume=cfg.resume,
                          overwrite=cfg.overwrite) as (rt, out):
        model, tok, style, (train_ex, val_ex, test_ex), pad = load_for_finetuning(
            cfg.model, cfg.data, cfg.style, cfg.limit, cfg.split_seed, rt.device)
        train_ds = PreferenceDataset(train_ex, tok, style)
        held_out = PreferenceDataset(val_ex + test_ex, tok, style)
        collate = RewardCollate(pad, min(cfg.allowed_max_length, model.cfg.context_length),
                                packed=cfg.packing)
        trainable = prepare_head_finetuning(model, 1, cfg.trainable, cfg.last_k, cfg.lora,
                                            cfg.head_bias)
        tqdm.write(f"{len(train_ds)} training pairs, {len(held_out)} held out, style {style}; "
                   f"{trainable:,} trainable parameters of {count_parameters(model):,}")
        loader = DataLoader(held_out, batch_size=cfg.train.batch_size, collate_fn=collate)
        before = evaluate_rewards(model, loader, rt.device)
        tqdm.write(f"held-out preference accuracy before: {before.accuracy:.1%}")
        set_epochs(cfg.train, cfg.epochs, len(train_ds), rt.world_size)
        trainer = prepare_training(RewardLoss(model), model, rt, cfg.train)
        optimizer = optimizer_for(model, cfg.train, rt.device)
        fit(model, trainer, optimizer, train_ds, held_out, cfg.train, rt, out,
            to_dict(cfg), collate_fn=collate, resume=cfg.resume or None)
        after = evaluate_rewards(model, loader, rt.device)
        tqdm.write(f"held-out preference accuracy after: {after.accuracy:.1%} (margin "
                   f"{after.margin:.2f}, loss {after.loss:.3f})")
        result = {"style": style, "trainable": trainable, "before": asdict(before),
                  "after": asdict(after)}
        model = whole_model(model, rt)  # gathered under FSDP; None off the main rank
        if not rt.is_main:  # the main rank writes the run's outputs
            return result
        (out / "rewards.json").write_text(json.dumps(result, indent=2))
        final = save_final(model, tok, out / "final", cfg.lora, cfg.model)
        RewardScorer.write_style(final, style)
        return result
