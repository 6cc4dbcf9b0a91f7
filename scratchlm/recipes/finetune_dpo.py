"""``scratchlm finetune dpo``: preference tuning with DPO (see ``finetune/dpo.py``).

    scratchlm finetune dpo --model RUN_OR_PRESET --data instruction-data-with-preference --dpo.beta 0.1

Data: the book's instruction-data-with-preference.json (polite ``chosen`` vs impolite
``rejected`` answers) or any Alpaca/JSONL file with ``chosen``/``rejected``; split 85/10/5 like
the instruction data (the 10% is held out for preference accuracy). With ``--lora.rank`` the
reference is the model with its adapters off; without, a frozen copy. Outputs: metrics.csv,
loss.png, preferences.json (held-out loss / reward margin / accuracy before and after),
test-with-responses.json with the share of answers closer to the chosen style, final/.
"""

from __future__ import annotations

import json

from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from scratchlm.config import to_dict
from scratchlm.evaluate.tasks import check_eval, evaluate_final
from scratchlm.data.instruction import PreferenceCollate, PreferenceDataset
from scratchlm.evaluate.offline import closer_to_chosen
from scratchlm.finetune.dpo import DPOLoss, evaluate_preferences
from scratchlm.models.accounting import count_parameters
from scratchlm.finetune.setup import apply_lora_config, load_for_finetuning, save_final
from scratchlm.generation.responses import generate_responses
from scratchlm.training.loop import fit, set_epochs
from scratchlm.training.optim import optimizer_for
from scratchlm.training.prepare import prepare_training, training_session, whole_model
from scratchlm.recipes.configs import DPOConfig, DPOSettings  # noqa: F401 (its config)


def main(cfg: DPOConfig) -> dict:
    check_eval(cfg.eval)  # a bad --eval.tasks is refused before training
    with training_session(cfg.train, cfg.out, resume=cfg.resume,
                          overwrite=cfg.overwrite) as (rt, out):
        model, tok, style, (train_ex, val_ex, test_ex), pad = load_for_finetuning(
            cfg.model, cfg.data, cfg.style, cfg.limit, None, rt.device)
        train_ds, test_ds = PreferenceDataset(train_ex, tok, style), PreferenceDataset(test_ex, tok, style)
        val_ds = PreferenceDataset(val_ex, tok, style) if val_ex else None
        collate = PreferenceCollate(pad, min(cfg.allowed_max_length, model.cfg.context_length),
                                    packed=cfg.packing)
        if cfg.lora.rank > 0:
            apply_lora_config(model, cfg.lora)
            loss_module = DPOLoss(model, cfg.dpo.beta)  # reference: adapters off
        else:
            loss_module = DPOLoss(model, cfg.dpo.beta, reference="copy")
        trainable = count_parameters(model, trainable_only=True)
        tqdm.write(f"{len(train_ds)} train / {len(test_ds)} held-out pairs, style {style}, "
                   f"beta {cfg.dpo.beta}; {trainable:,} trainable parameters")
        test_loader = DataLoader(test_ds, batch_size=cfg.train.batch_size, collate_fn=collate)
        before = evaluate_preferences(loss_module, test_loader, rt.device)
        responses_before = (generate_responses(model, tok, test_ex, style, cfg.max_new_tokens)
                            if cfg.test_responses else None)
        set_epochs(cfg.train, cfg.epochs, len(train_ds), rt.world_size)
        trainer = prepare_training(loss_module, model, rt, cfg.train)
        optimizer = optimizer_for(model, cfg.train, rt.device)
        fit(model, trainer, optimizer, train_ds, val_ds, cfg.train, rt, out, to_dict(cfg),
            collate_fn=collate, resume=cfg.resume or None)
        after = evaluate_preferences(loss_module, test_loader, rt.device)
        tqdm.write(f"held-out pairs: loss {before.loss:.4f} -> {after.loss:.4f}, reward margin "
                   f"{before.margin:.3f} -> {after.margin:.3f}, preference accuracy "
                   f"{before.accuracy:.2%} -> {after.accuracy:.2%}")
        result = dict(style=style, trainable=trainable, before=vars(before), after=vars(after))
        model = whole_model(model, rt)  # gathered under FSDP; None off the main rank
        if not rt.is_main:  # the main rank writes the run's outputs
            return result
        if cfg.test_responses:
            responses = generate_responses(model, tok, test_ex, style, cfg.max_new_tokens)
            chosen = [e.chosen for e in test_ex]
            rejected = [e.rejected for e in test_ex]
            result["closer_to_chosen_before"] = closer_to_chosen(responses_before, chosen, rejected)
            result["closer_to_chosen_after"] = closer_to_chosen(responses, chosen, rejected)
            tqdm.write(f"responses closer to the chosen style: "
                       f"{result['closer_to_chosen_before']:.2%} -> "
                       f"{result['closer_to_chosen_after']:.2%}")
            rows = [{"instruction": e.instruction, "chosen": e.chosen, "rejected": e.rejected,
                     "response_before": b, "model_response": r}
                    for e, b, r in zip(test_ex, responses_before, responses)]
            (out / "test-with-responses.json").write_text(json.dumps(rows, indent=2))
        save_final(model, tok, out / "final", cfg.lora, cfg.model)
        evaluate_final(cfg.eval, model, tok, out, str(out / "final"))
        (out / "preferences.json").write_text(json.dumps(result, indent=2))
        return result
