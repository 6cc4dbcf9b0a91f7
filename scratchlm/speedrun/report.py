"""The speedrun's report card: ``REPORT.md`` and ``plots/`` from what the stages recorded
(``stages.json``) and wrote (metrics, evaluations), in the format of ``evaluate``'s cards,
with the chat model's answers to a few questions."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

from scratchlm.evaluate.report import markdown

# a few questions for the chat model: a fact, advice, and GSM8K's first problem
CHAT_SAMPLES = ["What is the capital of France?", "Give me three tips for staying healthy.",
                "Natalia sold clips to 48 of her friends in April, and then she sold half as "
                "many clips in May. How many clips did Natalia sell altogether in April and May?"]


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def write_report(out: Path, name: str, preset, state: dict, samples: list[dict],
                 fast: bool) -> Path:
    from scratchlm.training.plots import plot_series

    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    lines = [f"# Speedrun report: preset `{name}`", ""]
    if fast:
        lines += ["**A `--fast` run: every stage shrunk to seconds. It shows the pipeline "
                  "works; the numbers say nothing about the model.**", ""]
    lines += [f"Sized for {preset.device}; machine: {_machine()}.", ""]

    # ---- time and cost per stage
    lines += ["## Stages", "", "| stage | time | cost |", "|---|---|---|"]
    total = 0.0
    for stage, rec in state.items():
        total += rec["seconds"]
        cost = (f"${rec['seconds'] / 3600 * preset.dollars_per_hour:.2f}"
                if preset.dollars_per_hour else "-")
        lines.append(f"| {stage} | {_minutes(rec['seconds'])} | {cost} |")
    lines += [f"| **all** | **{_minutes(total)}** | |", ""]

    tok = state.get("tokenizer", {}).get("result", {})
    if tok:
        lines += ["## Tokenizer", "",
                  f"Byte-level BPE of {tok['vocab_size']:,} tokens trained from scratch on "
                  f"{tok['documents']:,} documents, with ChatML's control tokens. On the "
                  f"held-out text ({tok['heldout_bytes']:,} bytes): "
                  f"**{tok['bytes_per_token']:.2f} bytes per token** (GPT-2's 50,257-token "
                  f"vocabulary: {tok['gpt2_bytes_per_token']:.2f}).", ""]

    pre = state.get("pretrain", {}).get("result", {})
    rows = _rows(out / "base" / "metrics.csv")
    if pre:
        mc = pre["model_config"]
        mfu = [float(r["mfu"]) for r in rows if r.get("mfu")]
        lines += ["## Pretraining", "",
                  f"{mc['n_layer']} layers, {mc['n_embd']} wide, {mc['n_head']} heads, context "
                  f"{mc['context_length']}; {pre['steps']:,} steps; final training loss "
                  f"{_fmt(pre['final_train_loss'])}, validation loss "
                  f"{_fmt(pre['final_val_loss'])} (held-out text)."
                  + (f" Mean MFU {sum(mfu) / len(mfu):.1%}{_mfu_basis()}." if mfu else ""), ""]
        if (out / "base" / "loss.png").is_file():
            shutil.copyfile(out / "base" / "loss.png", plots / "pretrain-loss.png")
            lines += ["![pretraining loss](plots/pretrain-loss.png)", ""]
        if tok:  # bits per byte: the loss in bits, spread over the bytes a token stands for
            per_token = tok["bytes_per_token"]
            bpb = [{"step": r["step"], "val_bpb": float(r["val_loss"]) / math.log(2) / per_token}
                   for r in rows if r.get("val_loss")]
            if plot_series(bpb, ["val_bpb"], plots / "pretrain-bpb.png",
                           "Held-out bits per byte", "bits per byte"):
                lines += ["![held-out bits per byte](plots/pretrain-bpb.png)", ""]

    base = state.get("baseline", {}).get("result", {})
    if base:
        better = (base["baseline_bpb"] - base["bpb"]) / base["baseline_bpb"]
        lines += ["## Against today's defaults", "",
                  f"The same model shape and the same training FLOPs ({base['flops']:.3g}) with "
                  "AdamW, the cosine schedule, concatenated windows and GPT-2's tokenizer "
                  f"({base['steps']:,} steps, its larger vocabulary making each dearer, against "
                  f"{base['ours_steps']:,}):", "",
                  "| pretraining | held-out bits per byte |", "|---|---|",
                  f"| this speedrun's | {base['bpb']:.4f} |",
                  f"| today's defaults | {base['baseline_bpb']:.4f} |", "",
                  f"This speedrun's is **{'better' if better > 0 else 'worse'} by "
                  f"{abs(better):.1%}** (bits per byte, lower is better).", ""]

    sft = state.get("sft", {}).get("result", {})
    if sft:
        lines += ["## Chat finetuning", "",
                  f"Test loss {_fmt(sft.get('test_loss_before'))} -> "
                  f"{_fmt(sft.get('test_loss_after'))} ({sft.get('style')} format, "
                  f"{sft.get('trainable', 0):,} parameters trained).", ""]
        if (out / "sft" / "loss.png").is_file():
            shutil.copyfile(out / "sft" / "loss.png", plots / "sft-loss.png")
            lines += ["![SFT loss](plots/sft-loss.png)", ""]

    ev = state.get("evaluate", {}).get("result", {})
    for model, tasks in ev.items():
        card = markdown({"model": f"the {model} model", "tasks": tasks})
        lines += ["## " + card.splitlines()[0].lstrip("# "), *card.splitlines()[1:], ""]

    if samples:
        lines += ["## Chat samples (greedy)", ""]
        for s in samples:
            ended = "ended by itself" if s["stopped_by_itself"] else "cut at the token limit"
            lines += [f"**User:** {s['prompt']}", "", f"**Model** ({ended}):", "",
                      "> " + s["answer"].replace("\n", "\n> "), ""]

    final = out / "sft" / "final"
    lines += ["## Use it", "", "```",
              f"scratchlm chat --model {final}",
              f"scratchlm serve --model {final}",
              f"scratchlm export --model {final} --format gguf --quant q8_0 --out model.gguf",
              "```", ""]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines))
    return path


def _mfu_basis() -> str:
    import torch

    return ("" if torch.cuda.is_available() else
            " (of this CPU's measured fp32 matmul rate: bf16 units can pass it)")


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _machine() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"PyTorch CPU capability {torch.backends.cpu.get_cpu_capability()}")


def chat_samples(model_dir: Path, max_new_tokens: int) -> list[dict]:
    """The chat model's greedy answers to a few questions through its chat template, and
    whether each ended by itself (its end-of-turn token) before ``max_new_tokens``."""
    from scratchlm.checkpoints.load import load_model_and_tokenizer
    from scratchlm.data.instruction import GSM8K_PROMPT_SUFFIX, Example, render_prompt
    from scratchlm.generation.engine import Engine, SamplingParams

    model, tok = load_model_and_tokenizer(str(model_dir))
    engine = Engine(model.eval())
    out = []
    for question in CHAT_SAMPLES:
        content = question + (GSM8K_PROMPT_SUFFIX if "clips" in question else "")
        prompt = render_prompt(Example([{"role": "user", "content": content}]), tok, "chat")
        room = min(max_new_tokens, engine.max_len - len(prompt))
        if room < 1:
            out.append({"prompt": question, "answer": "(the prompt fills the model's context)",
                        "stopped_by_itself": False})
            continue
        (ids,) = engine.generate([prompt], SamplingParams(max_new_tokens=room,
                                                          stop_ids=(tok.eos_id,)))
        out.append({"prompt": question, "answer": tok.decode(ids).strip(),
                    "stopped_by_itself": len(ids) < room})
    return out
