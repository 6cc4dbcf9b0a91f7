"""``scratchlm finetune instruct``: supervised instruction finetuning (the book's chapter 7),
full or with LoRA.

    scratchlm finetune instruct --model smollm2-135m-instruct --data instruction-data [--lora.rank 16]

Data: ``instruction-data`` (the book's 1,100 entries, split 85/10/5 -> 935 train / 110 test /
55 validation) or an Alpaca/chat JSON(L) file. The prompt style is the model's chat template
when it has one (prompt tokens masked), else the book's Alpaca format (whole text learned).
Outputs in ``--out``: metrics.csv, loss.png, a sample response per epoch, test loss before and
after, ``test-with-responses.json`` (the test split with ``model_response``), final/ (the model,
LoRA merged, with its tokenizer) and final/adapter/ (with LoRA).
"""

from __future__ import annotations

import json

from tqdm.auto import tqdm

from scratchlm.config import to_dict
from scratchlm.data.instruction import InstructionCollate, InstructionDataset, format_input
from scratchlm.evaluate.offline import text_metrics
from scratchlm.evaluate.tasks import check_eval, evaluate_final
from scratchlm.finetune.setup import apply_lora_config, load_for_finetuning, save_final
from scratchlm.generation.responses import generate_responses
from scratchlm.models.accounting import count_parameters
from scratchlm.nn.moe import freeze_for_moe_finetuning
from scratchlm.training.evaluation import dataset_loss, perplexity
from scratchlm.training.loop import fit, set_epochs
from scratchlm.training.losses import CausalLMLoss
from scratchlm.training.optim import optimizer_for
from scratchlm.training.prepare import prepare_training, training_session, whole_model
from scratchlm.recipes.configs import InstructConfig  # noqa: F401 (its config)


def parse_moe_train(spec: str) -> list[int]:
    """"router" -> [], "router,0,3" -> [0, 3]: the experts trained beside the routers."""
    head, *experts = [p.strip() for p in spec.split(",")]
    if head != "router" or not all(e.isdigit() for e in experts):
        raise ValueError(f"moe_train must be 'router' or 'router,E1,E2,...', got {spec!r}")
    return [int(e) for e in experts]


def main(cfg: InstructConfig) -> dict:
    check_eval(cfg.eval)  # a bad --eval.tasks is refused before training
    with training_session(cfg.train, cfg.out, resume=cfg.resume,
                          overwrite=cfg.overwrite) as (rt, out):
        model, tok, style, (train_ex, val_ex, test_ex), pad = load_for_finetuning(
            cfg.model, cfg.data, cfg.style, cfg.limit, cfg.split_seed, rt.device)
        make = lambda ex: InstructionDataset(ex, tok, style, cfg.mask_prompt)  # noqa: E731
        train_ds, val_ds, test_ds = make(train_ex), make(val_ex), make(test_ex)
        limit = min(cfg.allowed_max_length, model.cfg.context_length)
        collate = InstructionCollate(pad, limit, packed=cfg.packing)
        if cfg.moe_train:
            freeze_for_moe_finetuning(model, parse_moe_train(cfg.moe_train))
        if cfg.lora.rank > 0:
            apply_lora_config(model, cfg.lora)
        trainable = count_parameters(model, trainable_only=True)
        tqdm.write(f"{len(train_ds)} train / {len(val_ds)} val / {len(test_ds)} test examples, "
                   f"style {style}; {trainable:,} trainable parameters of "
                   f"{count_parameters(model):,}")
        loss_module = CausalLMLoss(model)
        before = dataset_loss(loss_module, test_ds, collate, rt, cfg.train.batch_size)
        tqdm.write(f"test loss before: {before:.3f}")
        responses_before = (generate_responses(model, tok, test_ex, style, cfg.max_new_tokens,
                                               cfg.response_batch)
                            if cfg.test_responses and rt.is_main else None)
        steps_per_epoch = set_epochs(cfg.train, cfg.epochs, len(train_ds), rt.world_size)
        trainer = prepare_training(loss_module, model, rt, cfg.train)
        optimizer = optimizer_for(model, cfg.train, rt.device)
        samples = []

        def on_eval(step: int) -> None:
            if step % steps_per_epoch and step != cfg.train.max_steps:
                return
            sample = val_ex[0] if val_ex else test_ex[0]
            (answer,) = generate_responses(model, tok, [sample], style, min(cfg.max_new_tokens, 64),
                                           progress=False)
            samples.append({"step": step, "instruction": sample.instruction, "response": answer})
            tqdm.write(f"sample after step {step}: {answer!r}")

        fit(model, trainer, optimizer, train_ds, val_ds if len(val_ds) else None, cfg.train,
            rt, out, to_dict(cfg), on_eval=on_eval, collate_fn=collate,
            resume=cfg.resume or None)
        after = dataset_loss(loss_module, test_ds, collate, rt, cfg.train.batch_size)
        tqdm.write(f"test loss after: {after:.3f} (before {before:.3f})")
        result = {"style": style, "trainable": trainable, "test_loss_before": before,
                  "test_loss_after": after, "test_ppl_after": perplexity(after)}
        model = whole_model(model, rt)  # gathered under FSDP; None off the main rank
        if not rt.is_main:  # the main rank writes the run's outputs
            return result
        if cfg.test_responses:
            responses = generate_responses(model, tok, test_ex, style, cfg.max_new_tokens,
                                           cfg.response_batch)
            rows = [{"instruction": e.instruction, "reference": e.response,
                     "prompt": format_input(e.user_turn), "response_before": b,
                     "model_response": r}
                    for e, b, r in zip(test_ex, responses_before, responses)]
            (out / "test-with-responses.json").write_text(json.dumps(rows, indent=2))
            references = [e.response for e in test_ex]
            result.update(text_metrics(responses, references))
            result.update({f"{k}_before": v
                           for k, v in text_metrics(responses_before, references).items()})
            tqdm.write(f"test responses vs the references ({len(test_ex)}): word-overlap F1 "
                       f"{result['reference_f1_before']:.3f} -> {result['reference_f1']:.3f}, "
                       f"containing the reference {result['contains_reference_before']:.0%} -> "
                       f"{result['contains_reference']:.0%}")
        save_final(model, tok, out / "final", cfg.lora, cfg.model)
        evaluate_final(cfg.eval, model, tok, out, str(out / "final"))
        (out / "samples.json").write_text(json.dumps(samples, indent=2))
        (out / "result.json").write_text(json.dumps(result, indent=2))
        return result
