"""``scratchlm speedrun``: your own chat model from scratch, in one command and one folder.

    scratchlm speedrun --preset cpu --out runs/speedrun          # <= 30 min on a 2-core CPU
    scratchlm speedrun --preset cpu --fast                       # every stage in seconds

Stages, each an existing recipe with the preset's settings (``recipes/speedrun_config.py``):

1. ``tokenizer``: the corpus (data set names) written as documents, the first one's tail held
   out; a byte-level BPE with ChatML's control tokens and chat template trained from scratch
   (``train-tokenizer --chat``); its compression against GPT-2's on the held-out text.
2. ``pretrain``: a model from the depth dial (``pretrain --depth``), Muon and WSD by default.
3. ``sft``: chat finetuning on a mixture of conversations and GSM8K's solved problems
   (``finetune instruct --style chat``), from the base model with ``<|im_end|>`` as its end
   of turn, so the chat model stops by itself.
4. ``evaluate``: bits per byte on the held-out text (base and chat model), GSM8K.
5. ``report``: ``REPORT.md`` with plots: what each stage made, its time and cost.

A finished stage is recorded in ``stages.json`` and not run again: run the same command to
resume (an interrupted pretraining or SFT continues from its last checkpoint). ``--overwrite``
starts over. The chat model is ``OUT/sft/final``: ``scratchlm chat|serve|export --model`` it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

from scratchlm.config import from_dict
from scratchlm.recipes.configs import SpeedrunConfig  # noqa: F401 (its config)
from scratchlm.recipes.speedrun_config import FAST, PRESETS, STAGES, Preset

# what a speedrun writes in its folder (``--overwrite`` removes these, and nothing else)
OUTPUTS = ("stages.json", "data", "tokenizer", "base", "base-chat", "sft", "eval", "REPORT.md",
           "plots")
CHAT_SAMPLES = ["What is the capital of France?", "Give me three tips for staying healthy.",
                "Natalia sold clips to 48 of her friends in April, and then she sold half as "
                "many clips in May. How many clips did Natalia sell altogether in April and May?"]


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


class Speedrun:
    def __init__(self, cfg: SpeedrunConfig):
        if cfg.preset not in PRESETS:
            raise ValueError(f"--preset must be one of {', '.join(PRESETS)}, got {cfg.preset!r}")
        self.cfg, self.preset = cfg, PRESETS[cfg.preset]
        self.out = Path(cfg.out)
        self.state_path = self.out / "stages.json"

    # ---- the stage record: what finished, with its result and time
    def state(self) -> dict:
        return json.loads(self.state_path.read_text()) if self.state_path.is_file() else {}

    def record(self, stage: str, seconds: float, result: dict) -> None:
        state = self.state()
        state[stage] = {"seconds": round(seconds, 1), "result": result}
        tmp = self.state_path.with_suffix(".part")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_path)

    def settings(self, stage: str) -> dict:
        own = getattr(self.preset, stage)
        return _merge(own, FAST.get(stage, {})) if self.cfg.fast else own

    # ---- stages
    def tokenizer(self) -> dict:
        from scratchlm.data.documents import mix_documents, resolve_source
        from scratchlm.recipes.configs import TrainTokenizerConfig
        from scratchlm.recipes.train_tokenizer import main as train_tokenizer
        from scratchlm.tokenizers import get_tokenizer

        data = self.out / "data"
        data.mkdir(parents=True, exist_ok=True)
        first, *rest = self.preset.corpus
        text = next(iter(mix_documents([resolve_source(first)], "text"))).text
        if self.cfg.fast:
            text = text[:FAST["corpus_chars"]]
        cut = text.rfind("\n", 0, int(len(text) * (1 - self.preset.heldout_fraction))) + 1
        (data / "heldout.txt").write_text(text[cut:], encoding="utf-8")
        n = 0
        with open(data / "train.jsonl", "w", encoding="utf-8") as f:
            f.write(json.dumps({"text": text[:cut]}) + "\n")
            for name in rest:
                for doc in _documents(name, self.cfg.fast):
                    f.write(json.dumps({"text": doc}) + "\n")
                    n += 1
        tok_cfg = from_dict(TrainTokenizerConfig, {**self.settings("tokenizer"), "chat": True,
                                                   "data": [str(data / "train.jsonl")],
                                                   "out": str(self.out / "tokenizer")})
        train_tokenizer(tok_cfg)
        held = (data / "heldout.txt").read_text(encoding="utf-8")
        n_bytes = len(held.encode("utf-8"))
        ours = len(get_tokenizer(str(self.out / "tokenizer")).encode(held))
        gpt2 = len(get_tokenizer("gpt2").encode(held))
        return {"vocab_size": tok_cfg.vocab_size, "documents": 1 + n,
                "heldout_bytes": n_bytes, "bytes_per_token": n_bytes / ours,
                "gpt2_bytes_per_token": n_bytes / gpt2}

    def pretrain(self) -> dict:
        from scratchlm.recipes.configs import PretrainConfig
        from scratchlm.recipes.pretrain import main as pretrain

        run = self.out / "base"
        cfg = from_dict(PretrainConfig, _merge(self.settings("pretrain"), {
            "data": [str(self.out / "data" / "train.jsonl")],
            "val_data": [str(self.out / "data" / "heldout.txt")],
            "tokenizer": str(self.out / "tokenizer"), "out": str(run)}))
        cfg.resume = "latest" if _has_checkpoints(run) else ""
        cfg.overwrite = not cfg.resume and run.exists()  # a run that died before its first save
        res = pretrain(cfg)
        saved = json.loads((run / "config.json").read_text())
        return {"model_config": saved["model_config"], "steps": saved["train"]["max_steps"],
                "final_train_loss": res.train_losses[-1] if res.train_losses else None,
                "final_val_loss": res.val_losses[-1][1] if res.val_losses else None}

    def sft(self) -> dict:
        from scratchlm.recipes.configs import InstructConfig
        from scratchlm.recipes.finetune_instruct import main as finetune

        base = chat_base(self.out / "base" / "final", self.out / "base-chat")
        run = self.out / "sft"
        cfg = from_dict(InstructConfig, _merge(self.settings("sft"),
                                               {"model": str(base), "out": str(run)}))
        cfg.resume = "latest" if _has_checkpoints(run) else ""
        cfg.overwrite = not cfg.resume and run.exists()
        return finetune(cfg)

    def evaluate(self) -> dict:
        """Bits per byte of the whole held-out text (base and chat model); GSM8K (the chat
        model, the preset's ``limit`` of problems)."""
        from scratchlm.recipes.configs import EvaluateConfig
        from scratchlm.recipes.evaluate import main as evaluate

        heldout = f"bpb:{self.out / 'data' / 'heldout.txt'}"
        results = {}
        for name, task, limited in (("base", heldout, False), ("sft", heldout, False),
                                    ("sft", "gsm8k", True)):
            cfg = from_dict(EvaluateConfig, _merge(self.settings("evaluate"), {
                "model": str(self.out / name / "final"), "tasks": [task],
                "out": str(self.out / "eval" / name)}))
            if not limited:
                cfg.limit = None
            got = evaluate(cfg)
            results.setdefault(name, {}).update({t: _scalars(m) for t, m in got.items()})
        return results

    def report(self) -> dict:
        from scratchlm.speedrun.report import write_report

        samples = chat_samples(self.out / "sft" / "final",
                               FAST["samples_tokens"] if self.cfg.fast else 128)
        path = write_report(self.out, self.cfg.preset, self.preset, self.state(), samples,
                            self.cfg.fast)
        print(f"[report] {path}")
        return {"report": str(path), "samples": samples}

    def run(self) -> dict:
        from scratchlm.training.run_dir import claim_run_dir, release_run_dir

        self.out.mkdir(parents=True, exist_ok=True)
        claim_run_dir(self.out, resume=True)  # the folder's lock: one speedrun in it at a time
        try:
            if self.cfg.overwrite:
                for name in OUTPUTS:
                    path = self.out / name
                    if path.is_dir():
                        shutil.rmtree(path)
                    elif path.exists():
                        path.unlink()
            elif not self.state() and any((self.out / n).exists() for n in OUTPUTS):
                raise ValueError(f"{self.out} holds a speedrun's files but no stages.json: "
                                 "pass --overwrite to start over")
            print(predict(self.cfg.preset, self.preset))
            done = self.state()
            for stage in self.cfg.stages:
                if stage in done and stage != "report":
                    print(f"[{stage}] done before ({done[stage]['seconds']:.0f} s): skipped")
                    continue
                print(f"[{stage}] ...")
                t0 = time.perf_counter()
                result = getattr(self, stage)()
                self.record(stage, time.perf_counter() - t0, _jsonable(result))
            return self.state()
        finally:
            release_run_dir(self.out)


def main(cfg: SpeedrunConfig) -> dict:
    return Speedrun(cfg).run()


# ---- helpers of the stages
def _documents(name: str, fast: bool):
    """The texts of a data set: a corpus's documents, or an instruction/GSM8K set's examples
    written out as plain text (user turn, then the answer)."""
    from scratchlm.data.instruction import read_examples
    from scratchlm.downloads.sources import fetch

    examples = read_examples(fetch(name))
    for i, ex in enumerate(examples):
        if fast and i >= 50:
            return
        yield "\n\n".join(_text(m["content"]) for m in ex.messages)


def _text(content) -> str:
    if isinstance(content, dict):  # Alpaca's instruction + input
        return "\n\n".join(v for v in content.values() if v)
    return content


def _has_checkpoints(run: Path) -> bool:
    from scratchlm.training.checkpoint import latest_checkpoint

    return run.is_dir() and not (run / "final").exists() and latest_checkpoint(run) is not None


def chat_base(final: Path, folder: Path) -> Path:
    """The base model as the chat model's start: the same files (hard links where the file
    system allows), its tokenizer ending turns at ``<|im_end|>``, so what SFT teaches the
    model to say last is what generation stops at."""
    from scratchlm.tokenizers.chat import CHATML_TOKENS

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for src in final.iterdir():
        if src.is_file() and src.name != "tokenizer_config.json":
            try:
                os.link(src, folder / src.name)
            except OSError:
                shutil.copy2(src, folder / src.name)
    tok_cfg = json.loads((final / "tokenizer_config.json").read_text())
    tok_cfg["eos_token"] = CHATML_TOKENS[1]
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    return folder


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


def predict(name: str, preset: Preset) -> str:
    """The planner's prediction for the preset's pretraining: parameters, tokens, FLOPs,
    memory per device, and time at the preset's MFU of its peak (on a CPU, the measured
    matmul rate)."""
    from scratchlm.models.accounting import flops_per_token
    from scratchlm.models.registry import preset as model_preset
    from scratchlm.training.depth import CHINCHILLA, horizon, shape_of
    from scratchlm.training.planner import duration, plan

    p, train = preset.pretrain, preset.pretrain["train"]
    family, base = model_preset(p["model"])
    shape = shape_of(p["depth"], family.config_cls.__dataclass_fields__)
    cfg = family.config({**base.to_dict(), **shape, "context_length": p["context_length"],
                         "vocab_size": preset.tokenizer.get("vocab_size", 4096)})
    bf16 = train.get("precision") == "bf16"
    planned = plan(cfg, batch=train["batch_size"], context=p["context_length"],
                   dtype="bf16" if bf16 else "fp32",
                   optimizer="sgd" if train.get("optimizer") == "muon" else "adamw")
    per_step = (train["batch_size"] * train.get("grad_accum_steps", 1) * preset.gpus
                * p["context_length"])
    h = horizon(planned.params, per_step, p.get("tokens_per_param") or CHINCHILLA)
    flops = flops_per_token(cfg, p["context_length"])[1] * h.tokens
    peak = preset.peak_tflops * 1e12 * preset.gpus if preset.peak_tflops else _cpu_peak()
    hours = flops / (peak * preset.mfu) / 3600
    status = "run end to end" if preset.ran else "NOT YET RUN: a prediction only"
    return (f"speedrun preset {name!r} ({preset.device}; {status}): depth {p['depth']}, "
            f"{planned.params:,} parameters, {h.tokens:,} pretraining tokens ({h.steps:,} "
            f"steps), {flops:.3g} FLOPs, about {duration(hours)} of pretraining at "
            f"{preset.mfu:.0%} MFU, {planned.peak / 2**30:.1f} GiB per device")


def _cpu_peak() -> float:
    import torch

    from scratchlm.training.runtime import Runtime

    return Runtime(torch.device("cpu"), "fp32").peak_flops()


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))

