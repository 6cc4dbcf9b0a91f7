"""``scratchlm pretrain``: train a GPT from scratch on text (the book's chapter 5, grown up).

    scratchlm pretrain --model gpt2-124m --data corpus.txt --out runs/NAME --train.max_steps 2000
    torchrun --nproc_per_node 4 -m scratchlm pretrain ... [--train.strategy fsdp]

Data (``data/pretrain.py``): files of any format ``data/documents.py`` reads (text, JSON Lines
plain or compressed, JSON, parquet), folders, globs, registered data set names, Hub data sets,
weighted mixtures (``a.parquet:0.7 b.jsonl.zst:0.3``), tokenized in memory; or one folder of
token shards from ``scratchlm prepare`` (any size, memory-mapped). Validation is whole held-out
documents (``--val_fraction``) or ``--val_data``. Rows: ``--packing concat`` (windows of the
stream) or ``bestfit`` (whole documents from position 0, no padding; ``data/packing.py``).
Outputs in ``--out``: config.json, metrics.csv, tb/, loss.png, checkpoints/, final/ (not after
Ctrl-C: the checkpoint is saved, and ``--resume`` continues).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from scratchlm.config import load_file, to_dict
from scratchlm.data.pretrain import corpus_datasets
from scratchlm.evaluate.tasks import check_eval, evaluate_final
from scratchlm.generation.sampling import generate, text_to_token_ids, token_ids_to_text
from scratchlm.models.accounting import count_parameters, flops_per_token
from scratchlm.models.registry import (DEFAULT_FAMILY, FAMILIES, build_model, family_named,
                                       family_of, preset)
from scratchlm.checkpoints.ours import save_pretrained
from scratchlm.tokenizers import get_tokenizer, save_tokenizer
from scratchlm.training.prepare import is_sharded, prepare_training, whole_model
from scratchlm.training.run_dir import claim_run_dir, finish_run, release_run_dir
from scratchlm.training.depth import PLANNED_MFU, horizon, lr_scale, shape_of, tokens_ratio
from scratchlm.training.loop import FitResult, fit
from scratchlm.training.losses import CausalLMLoss
from scratchlm.training.optim import optimizer_for
from scratchlm.training.planner import duration, plan
from scratchlm.training.runtime import setup_runtime, teardown_runtime
from scratchlm.recipes.configs import PretrainConfig  # noqa: F401 (its config)


def build_model_config(cfg: PretrainConfig, vocab_size: int):
    overrides = {k: getattr(cfg, k) for k in ("context_length", "n_layer", "n_embd", "n_head",
                                              "drop_rate", "qkv_bias", "tie_embeddings", "init")
                 if getattr(cfg, k) is not None}
    moe = {k: getattr(cfg, f"moe_{k}") for k in ("num_experts", "top_k", "capacity_factor")
           if getattr(cfg, f"moe_{k}") is not None}
    if moe:
        overrides["moe"] = moe
    overrides["vocab_size"] = vocab_size
    overrides["grad_checkpointing"] = cfg.train.grad_checkpointing
    if Path(cfg.model).is_file():
        base = dict(load_file(cfg.model))
        family = family_named(base.pop("family", DEFAULT_FAMILY))
    else:
        family, base = preset(cfg.model)[0], None
    fields = family.config_cls.__dataclass_fields__
    if cfg.depth is not None:
        dialled = [f"--{k}" for k in ("n_layer", "n_embd", "n_head") if getattr(cfg, k)]
        if dialled:
            raise ValueError(f"--depth sets the shape; leave out {', '.join(dialled)}")
        overrides.update(shape_of(cfg.depth, fields))
    for key in overrides:  # a flag the family's config has no field for is refused
        if key not in fields:
            owners = [f.config_cls.__name__.removesuffix("Config") for f in FAMILIES.values()
                      if key in f.config_cls.__dataclass_fields__]
            raise ValueError(f"--{key} applies to {', '.join(owners)} models only; "
                             f"{cfg.model!r} is a {family.name} model")
    if base is not None:
        return family.config({**base, **overrides})
    return family.config_cls.from_name(cfg.model, **overrides)


def report_plan(model_cfg, n_params: int, train_tokens: int, cfg: PretrainConfig,
                memory_available: int, peak_flops: float | None = None) -> str:
    """The Chinchilla check, a training-memory estimate and the compute (FLOPs, and the time
    at ``PLANNED_MFU`` of ``peak_flops``: a data sheet's on GPUs, a measured matmul rate on a
    CPU), printed at the start."""
    optimal = 20 * n_params
    tokens_planned = (cfg.train.max_steps * cfg.train.batch_size * cfg.train.grad_accum_steps
                      * model_cfg.context_length)
    p = plan(model_cfg, "full", batch=cfg.train.batch_size, context=model_cfg.context_length,
             grad_checkpointing=cfg.train.grad_checkpointing)
    mem = {"weights": p.weights, "gradients": p.gradients, "optimizer": p.optimizer,
           "activations": p.activations + p.loss, "peak": p.peak}
    gib = 2**30
    lines = [
        f"model: {n_params:,} parameters ({model_cfg.n_layer} layers, {model_cfg.n_embd} wide, "
        f"context {model_cfg.context_length})",
        f"data: {train_tokens:,} training tokens; Chinchilla-optimal is ~20 per parameter = "
        f"{optimal:,} ({train_tokens / optimal:.2%} of that); this run sees {tokens_planned:,} "
        f"({tokens_planned / max(train_tokens, 1):.1f} epochs)",
        "memory estimate: " + ", ".join(f"{k} {v / gib:.2f} GiB" for k, v in mem.items())
        + f" (device has {memory_available / gib:.1f} GiB)",
    ]
    flops = flops_per_token(model_cfg, model_cfg.context_length)[1] * tokens_planned
    when = (f"; about {duration(flops / (peak_flops * PLANNED_MFU) / 3600)} at "
            f"{PLANNED_MFU:.0%} of this device's {peak_flops / 1e12:.2g} TFLOP/s"
            if peak_flops else "")
    lines.append(f"compute: {flops:.3g} FLOPs{when}")
    if mem["peak"] > memory_available:
        lines.append("WARNING: the estimate exceeds the device memory; lower train.batch_size, "
                     "set train.grad_checkpointing true, or use a smaller model")
    return "\n".join(lines)


def apply_dial(cfg: PretrainConfig, model_cfg, n_params: int, world_size: int) -> str | None:
    """What ``--depth`` and ``--tokens_per_param`` derive, set on ``cfg.train`` (the horizon,
    the AdamW rate at this width); returns the lines that say so, or None without them."""
    ratio = tokens_ratio(cfg.depth, cfg.tokens_per_param)
    lines = []
    if cfg.depth is not None:
        scale = lr_scale(model_cfg.n_embd)
        cfg.train.lr, cfg.train.min_lr = cfg.train.lr * scale, cfg.train.min_lr * scale
        lines.append(f"depth {cfg.depth}: {model_cfg.n_layer} layers, {model_cfg.n_embd} wide, "
                     f"{model_cfg.n_head} heads; lr x {scale:.3f} = {cfg.train.lr:.3g} at this "
                     "width" + (f", muon_lr {cfg.train.muon_lr_value}"
                                if cfg.train.optimizer == "muon" else ""))
    if ratio:
        per_step = (cfg.train.batch_size * cfg.train.grad_accum_steps * world_size
                    * model_cfg.context_length)
        h = horizon(n_params, per_step, ratio)
        cfg.train.max_steps = h.steps
        lines.append(f"horizon: {ratio:g} tokens per parameter = {h.tokens:,} tokens = "
                     f"{h.steps:,} steps of {per_step:,} tokens (--train.max_steps; "
                     "--tokens_per_param 0 keeps the one given)")
    return "\n".join(lines) or None


def main(cfg: PretrainConfig) -> FitResult:
    check_eval(cfg.eval)  # a bad --eval.tasks is refused before training
    rt = setup_runtime(cfg.train.precision, cfg.train.device, cfg.train.seed)
    out = Path(cfg.out)
    try:
        if rt.is_main:  # first: a folder in use or holding another run is refused at once
            claim_run_dir(out, cfg.resume, cfg.overwrite)
        tokenizer = get_tokenizer(cfg.tokenizer)
        model_cfg = build_model_config(cfg, tokenizer.vocab_size)
        corpus = corpus_datasets(cfg.data, cfg.val_fraction, tokenizer,
                                 model_cfg.context_length, packing=cfg.packing,
                                 text_field=cfg.text_field, seed=cfg.train.seed,
                                 dedup=cfg.dedup, val_data=cfg.val_data,
                                 doc_mask=cfg.doc_mask)
        train_ds, val_ds = corpus.train, corpus.val
        if rt.is_main:
            cropped = (f"; {corpus.cropped_fraction:.2%} of the tokens cropped to fill rows"
                       if cfg.packing == "bestfit" else "")
            masked = ", documents masked apart" if cfg.doc_mask else ""
            tqdm.write(f"data: {len(train_ds):,} rows of {model_cfg.context_length} tokens "
                       f"({cfg.packing}{cropped}{masked}); validation: {corpus.split}")
        torch.manual_seed(cfg.train.seed)
        model = build_model(model_cfg).to(rt.device)
        n_params = count_parameters(model)
        dial = apply_dial(cfg, model_cfg, n_params, rt.world_size)  # before config.json
        if dial and rt.is_main:
            tqdm.write(dial)
        if rt.is_main:
            out.mkdir(parents=True, exist_ok=True)
            resolved = {**to_dict(cfg), "model_family": family_of(model_cfg).name,
                        "model_config": model_cfg.to_dict()}
            (out / "config.json").write_text(json.dumps(resolved, indent=2))
            tqdm.write(report_plan(model_cfg, n_params, len(train_ds) * model_cfg.context_length,
                                   cfg, rt.memory_bytes(), rt.peak_flops()))
        loss_module = prepare_training(CausalLMLoss(model, cfg.train.fused_loss), model, rt,
                                       cfg.train)
        optimizer = optimizer_for(model, cfg.train, rt.device)

        sharded = is_sharded(loss_module)

        def on_eval(step: int) -> None:
            # under FSDP every rank takes part in the sample's forward passes; the main prints
            if cfg.sample_tokens > 0 and (rt.is_main or sharded):
                model.eval()
                idx = text_to_token_ids(cfg.sample_prompt, tokenizer).to(rt.device)
                with torch.no_grad():
                    text = token_ids_to_text(generate(model, idx, cfg.sample_tokens), tokenizer)
                model.train()
                if rt.is_main:
                    tqdm.write(f"sample: {text!r}")

        result = fit(model, loss_module, optimizer, train_ds, val_ds, cfg.train, rt, out,
                     {**to_dict(cfg), "model_config": model_cfg.to_dict()},
                     flops_per_token=flops_per_token(model_cfg, model_cfg.context_length)[1],
                     on_eval=on_eval, resume=cfg.resume or None)
        final = whole_model(model, rt)  # gathered from the shards under FSDP
        if rt.is_main:
            save_pretrained(final, out / "final")
            evaluate_final(cfg.eval, final, tokenizer, out, str(out / "final"))
            save_tokenizer(tokenizer, out / "final")  # final/ works on its own
            finish_run(out, cfg.train.keep_checkpoints)
        return result
    finally:
        release_run_dir(out)  # also after an error or Ctrl-C (a no-op off the main rank)
        teardown_runtime(rt)

