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
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from scratchlm.config import to_dict
from scratchlm.data.instruction import (
    InstructionCollate,
    InstructionDataset,
    format_input,
    read_examples,
    render_prompt,
    split_examples,
)
from scratchlm.data.sources import SOURCES, fetch
from scratchlm.evaluate.offline import text_metrics
from scratchlm.finetune.lora import LoraConfig, apply_lora, merge_lora, save_adapter
from scratchlm.generation.engine import Engine, SamplingParams
from scratchlm.nn.moe import freeze_for_moe_finetuning
from scratchlm.models.accounting import count_parameters
from scratchlm.models.loading import load_model_and_tokenizer, save_pretrained
from scratchlm.tokenizers import save_tokenizer
from scratchlm.training.evaluation import evaluate_loss, perplexity
from scratchlm.training.loop import TrainConfig, fit
from scratchlm.training.losses import CausalLMLoss
from scratchlm.training.optim import build_optimizer
from scratchlm.training.prepare import prepare_training, training_session


@dataclass
class InstructConfig:
    model: str = "smollm2-135m-instruct"
    data: str = "instruction-data"
    out: str = "runs/instruct"
    epochs: int = 2
    max_new_tokens: int = 256
    response_batch: int = 8  # prompts per batch when writing test responses
    test_responses: bool = True
    style: str = "auto"  # auto (chat template if the tokenizer has one, else alpaca) | alpaca | phi3 | chat
    mask_prompt: bool | None = None  # default: on for chat, off for alpaca/phi3 (as the book)
    allowed_max_length: int = 1024
    limit: int | None = None  # use only the first N examples (quick runs)
    split_seed: int | None = None  # shuffle before splitting (the book splits in file order)
    moe_train: str = ""  # MoE models: "router" or "router,0,3" trains only routers (+ experts 0, 3)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        batch_size=8, lr=5e-5, schedule="constant", warmup_steps=0, weight_decay=0.1,
        log_every=10, save_every=10**9, eval_batches=5))


def load_examples(data: str):
    return read_examples(fetch(data) if data in SOURCES else data)


def resolve_style(style: str, tokenizer) -> str:
    if style == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "alpaca"
    return style


def load_for_finetuning(model_name: str, data: str, style: str, limit: int | None,
                        split_seed: int | None, device):
    """What the instruct and DPO recipes start from: (model, tokenizer, resolved style,
    (train, val, test) examples, pad id)."""
    model, tok = load_model_and_tokenizer(model_name, device=device)
    examples = load_examples(data)[:limit]
    train_ex, val_ex, test_ex = split_examples(examples, seed=split_seed)
    if not train_ex or not test_ex:
        raise ValueError(f"{data}: {len(examples)} examples are too few to split 85/10/5")
    pad = tok.eos_id if tok.eos_id is not None else 0
    return model, tok, resolve_style(style, tok), (train_ex, val_ex, test_ex), pad


def set_epochs(train: TrainConfig, epochs: int, num_examples: int) -> int:
    """Steps for ``epochs`` passes (evaluating at least once per epoch); returns steps per epoch."""
    steps_per_epoch = max(1, num_examples // train.batch_size)
    train.max_steps = epochs * steps_per_epoch
    train.eval_every = min(train.eval_every, steps_per_epoch)
    return steps_per_epoch


def apply_lora_config(model, cfg: LoraConfig) -> None:
    apply_lora(model, cfg.rank, cfg.alpha, tuple(cfg.targets), cfg.dropout, cfg.scaling,
               quantize_base=cfg.quantize_base)


def parse_moe_train(spec: str) -> list[int]:
    """"router" -> [], "router,0,3" -> [0, 3]: the experts trained beside the routers."""
    head, *experts = [p.strip() for p in spec.split(",")]
    if head != "router" or not all(e.isdigit() for e in experts):
        raise ValueError(f"moe_train must be 'router' or 'router,E1,E2,...', got {spec!r}")
    return [int(e) for e in experts]


def generate_responses(model, tokenizer, examples, style: str, max_new_tokens: int = 256,
                       batch_size: int = 8, progress: bool = True) -> list[str]:
    """Greedy answers to each example's prompt, batched through the engine, ending at
    end-of-text (the book's test-set response extraction)."""
    engine = Engine(model)
    stop = tuple(i for i in (tokenizer.eos_id,) if i is not None)
    prompts = [render_prompt(e, tokenizer, style) for e in examples]
    out: list[str] = []
    was_training = model.training
    bar = tqdm(total=len(prompts), desc="responses", unit="ex", disable=not progress)
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        room = engine.max_len - max(map(len, chunk))
        params = SamplingParams(max_new_tokens=max(1, min(max_new_tokens, room)), stop_ids=stop)
        out += [tokenizer.decode(ids).strip() for ids in engine.generate(chunk, params)]
        bar.update(len(chunk))
    bar.close()
    model.train(was_training)
    return out


def save_final(model, tokenizer, final: Path, lora: LoraConfig) -> None:
    """``final/adapter/`` (with LoRA) and ``final/`` (the model, LoRA merged, with its
    tokenizer); a 4-bit (QLoRA) base keeps only the adapter."""
    if lora.rank > 0:
        save_adapter(model, final / "adapter", lora)
    if lora.rank == 0 or lora.quantize_base is None:
        save_merged(model, tokenizer, final)


def save_merged(model, tokenizer, final: Path) -> None:
    """``final/``: the model with any LoRA adapters merged, and its tokenizer."""
    merge_lora(model)
    save_pretrained(model, final)
    save_tokenizer(tokenizer, final)


def split_loss(loss_module, dataset, collate, rt, batch_size: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    return evaluate_loss(loss_module, loader, rt)


def main(cfg: InstructConfig) -> dict:
    with training_session(cfg.train, cfg.out) as (rt, out):
        model, tok, style, (train_ex, val_ex, test_ex), pad = load_for_finetuning(
            cfg.model, cfg.data, cfg.style, cfg.limit, cfg.split_seed, rt.device)
        make = lambda ex: InstructionDataset(ex, tok, style, cfg.mask_prompt)  # noqa: E731
        train_ds, val_ds, test_ds = make(train_ex), make(val_ex), make(test_ex)
        limit = min(cfg.allowed_max_length, model.cfg.context_length)
        collate = InstructionCollate(pad, limit)
        if cfg.moe_train:
            freeze_for_moe_finetuning(model, parse_moe_train(cfg.moe_train))
        if cfg.lora.rank > 0:
            apply_lora_config(model, cfg.lora)
        trainable = count_parameters(model, trainable_only=True)
        tqdm.write(f"{len(train_ds)} train / {len(val_ds)} val / {len(test_ds)} test examples, "
                   f"style {style}; {trainable:,} trainable parameters of "
                   f"{count_parameters(model):,}")
        loss_module = CausalLMLoss(model)
        before = split_loss(loss_module, test_ds, collate, rt, cfg.train.batch_size)
        tqdm.write(f"test loss before: {before:.3f}")
        steps_per_epoch = set_epochs(cfg.train, cfg.epochs, len(train_ds))
        optimizer = build_optimizer(model, cfg.train.optimizer, cfg.train.lr,
                                    cfg.train.weight_decay, (cfg.train.beta1, cfg.train.beta2),
                                    rt.device.type)
        samples = []

        def on_eval(step: int) -> None:
            if step % steps_per_epoch and step != cfg.train.max_steps:
                return
            sample = val_ex[0] if val_ex else test_ex[0]
            (answer,) = generate_responses(model, tok, [sample], style, min(cfg.max_new_tokens, 64),
                                           progress=False)
            samples.append({"step": step, "instruction": sample.instruction, "response": answer})
            tqdm.write(f"sample after step {step}: {answer!r}")

        trainer = prepare_training(loss_module, model, rt, cfg.train)

        fit(model, trainer, optimizer, train_ds, val_ds if len(val_ds) else None, cfg.train,
            rt, out, to_dict(cfg), on_eval=on_eval, collate_fn=collate)
        after = split_loss(loss_module, test_ds, collate, rt, cfg.train.batch_size)
        tqdm.write(f"test loss after: {after:.3f} (before {before:.3f})")
        result = {"style": style, "trainable": trainable, "test_loss_before": before,
                  "test_loss_after": after, "test_ppl_after": perplexity(after)}
        if not rt.is_main:  # the main rank writes the run's outputs
            return result
        if cfg.test_responses:
            responses = generate_responses(model, tok, test_ex, style, cfg.max_new_tokens,
                                           cfg.response_batch)
            rows = [{"instruction": e.instruction, "reference": e.response,
                     "prompt": format_input(e.user_turn), "model_response": r}
                    for e, r in zip(test_ex, responses)]
            (out / "test-with-responses.json").write_text(json.dumps(rows, indent=2))
            result.update(text_metrics(responses, [e.response for e in test_ex]))
        save_final(model, tok, out / "final", cfg.lora)
        (out / "samples.json").write_text(json.dumps(samples, indent=2))
        (out / "result.json").write_text(json.dumps(result, indent=2))
        return result
