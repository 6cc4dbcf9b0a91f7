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
import os
import shutil
import time
from pathlib import Path

from scratchlm.config import from_dict, to_dict
from scratchlm.recipes.configs import SpeedrunConfig  # noqa: F401 (its config)
from scratchlm.recipes.speedrun_config import EXTRA_STAGES, FAST, PRESETS, STAGES

# what a speedrun writes in its folder (``--overwrite`` removes these, and nothing else)
OUTPUTS = ("stages.json", "data", "tokenizer", "base", "base-chat", "sft", "eval", "baseline",
           "REPORT.md", "plots")


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


# the stages every process runs under torchrun (their recipes are distributed); the first
# process runs the others while the rest wait
EVERY_PROCESS = ("pretrain", "sft", "baseline")
# what each stage needs finished before it
NEEDS = {"tokenizer": (), "pretrain": ("tokenizer",), "sft": ("pretrain",),
         "evaluate": ("sft",), "baseline": ("pretrain",), "report": ("tokenizer",)}


class Speedrun:
    def __init__(self, cfg: SpeedrunConfig):
        self.cfg, self.preset = cfg, PRESETS[cfg.preset]
        self.out = Path(cfg.out)
        self.state_path = self.out / "stages.json"
        self.main = int(os.environ.get("RANK", "0")) == 0  # under torchrun: the first process

    # ---- the record: the preset it runs, and each finished stage's result and time
    def state(self) -> dict:
        if not self.state_path.is_file():
            return {"preset": self.cfg.preset, "fast": self.cfg.fast, "stages": {}}
        return json.loads(self.state_path.read_text())

    def save(self, state: dict) -> None:
        tmp = self.state_path.with_suffix(".part")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_path)

    def record(self, stage: str, seconds: float, result: dict) -> None:
        state = self.state()
        state["stages"][stage] = {"seconds": round(seconds, 1), "result": result}
        self.save(state)

    def settings(self, stage: str) -> dict:
        own = getattr(self.preset, stage)
        if stage in ("pretrain", "sft") and "precision" not in own.get("train", {}):
            own = _merge(own, {"train": {"precision": _precision()}})
        return _merge(own, FAST.get(stage, {})) if self.cfg.fast else own

    def train_run(self, recipe, cfg, run: Path):
        """A training recipe into ``run``: resumed from its last checkpoint when it was
        interrupted, started over when it died before its first, and not run again when its
        model is already in ``final/`` (then None)."""
        if (run / "final").is_dir() and (run / "config.json").is_file():
            print(f"[{run.name}] {run / 'final'} is there already: not trained again")
            return None
        cfg.resume = "latest" if _has_checkpoints(run) else ""
        cfg.overwrite = not cfg.resume and run.exists()
        return recipe(cfg)

    # ---- stages
    def tokenizer(self) -> dict:
        from scratchlm.recipes.configs import TrainTokenizerConfig
        from scratchlm.recipes.train_tokenizer import main as train_tokenizer
        from scratchlm.tokenizers import get_tokenizer

        data = self.out / "data"
        data.mkdir(parents=True, exist_ok=True)
        limit = FAST["corpus_chars"] if self.cfg.fast else None
        first, *rest = self.preset.corpus
        train, held = split_heldout(list(_corpus_texts(first, limit)),
                                    self.preset.heldout_fraction)
        (data / "heldout.txt").write_text(held, encoding="utf-8")
        n = 0
        with open(data / "train.jsonl", "w", encoding="utf-8") as f:
            texts = [train, *(t for name in rest for t in _corpus_texts(name, limit)),
                     *(t for name in self.preset.examples_as_text
                       for t in _example_texts(name, 50 if self.cfg.fast else None))]
            for text in texts:
                f.write(json.dumps({"text": text}) + "\n")
                n += 1
        tok_cfg = from_dict(TrainTokenizerConfig, {**self.settings("tokenizer"), "chat": True,
                                                   "data": [str(data / "train.jsonl")],
                                                   "out": str(self.out / "tokenizer")})
        train_tokenizer(tok_cfg)
        n_bytes = len(held.encode("utf-8"))
        ours = len(get_tokenizer(str(self.out / "tokenizer")).encode(held))
        gpt2 = len(get_tokenizer("gpt2").encode(held))
        return {"vocab_size": tok_cfg.vocab_size, "documents": n,
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
        self.train_run(pretrain, cfg, run)
        return _pretrain_result(run) if self.main else {}

    def sft(self) -> dict:
        from scratchlm.recipes.configs import InstructConfig
        from scratchlm.recipes.finetune_instruct import main as finetune

        run = self.out / "sft"
        if self.main and not (run / "final").is_dir():  # (a finished SFT keeps its base-chat)
            chat_base(self.out / "base" / "final", self.out / "base-chat")
        _sync()
        cfg = from_dict(InstructConfig, _merge(self.settings("sft"), {
            "model": str(self.out / "base-chat"), "out": str(run)}))
        self.train_run(finetune, cfg, run)
        return json.loads((run / "result.json").read_text()) if self.main else {}

    def evaluate(self) -> dict:
        """Bits per byte of the whole held-out text (base and chat model); GSM8K (the chat
        model, the preset's ``limit`` of problems)."""
        heldout = self.heldout_task()
        results = {}
        for name, task, limited in (("base", heldout, False), ("sft", heldout, False),
                                    ("sft", "gsm8k", True)):
            got = self.evaluate_model(name, task, limited)
            results.setdefault(name, {}).update({t: _scalars(m) for t, m in got.items()})
        return results

    def heldout_task(self) -> str:
        return f"bpb:{self.out / 'data' / 'heldout.txt'}"

    def evaluate_model(self, name: str, task: str, limited: bool) -> dict:
        from scratchlm.recipes.configs import EvaluateConfig
        from scratchlm.recipes.evaluate import main as evaluate

        cfg = from_dict(EvaluateConfig, _merge(self.settings("evaluate"), {
            "model": str(self.out / name / "final"), "tasks": [task],
            "out": str(self.out / "eval" / name)}))
        if not limited:
            cfg.limit = None
        return evaluate(cfg)

    def baseline(self) -> dict:
        """The pretraining stage again with today's defaults (AdamW at the default rate, the
        cosine schedule, concatenated windows, GPT-2's tokenizer) at the same model shape and
        the same training FLOPs (its larger vocabulary makes each step dearer, so it takes
        fewer), and both models' bits per byte on the held-out text, which no tokenizer
        changes."""
        from scratchlm.models.accounting import flops_per_token
        from scratchlm.models.registry import family_named
        from scratchlm.recipes.configs import PretrainConfig
        from scratchlm.recipes.pretrain import main as pretrain
        from scratchlm.tokenizers import get_tokenizer
        from scratchlm.training.config import TrainConfig
        from scratchlm.training.depth import lr_scale

        ours = json.loads((self.out / "base" / "config.json").read_text())
        family = family_named(ours["model_family"])
        ours_cfg = family.config(ours["model_config"])
        theirs_cfg = family.config({**ours["model_config"],
                                    "vocab_size": get_tokenizer("gpt2").vocab_size})
        ctx = ours_cfg.context_length
        per_step = ours["train"]["batch_size"] * ours["train"]["grad_accum_steps"] * ctx
        flops = flops_per_token(ours_cfg, ctx)[1] * per_step * ours["train"]["max_steps"]
        steps = max(1, round(flops / (flops_per_token(theirs_cfg, ctx)[1] * per_step)))
        settings = self.settings("pretrain")
        keep = {k: v for k, v in settings["train"].items()
                if k not in ("optimizer", "schedule", "lr", "min_lr", "muon_lr", "decay_fraction")}
        # the dial scales the rate it is given by the width: give it the default over that
        unscale = lr_scale(ours_cfg.n_embd) if settings.get("depth") else 1.0
        defaults = TrainConfig()
        run = self.out / "baseline"
        cfg = from_dict(PretrainConfig, {
            **{k: v for k, v in settings.items() if k not in ("train", "packing")},
            "tokens_per_param": 0, "tokenizer": "gpt2", "out": str(run),
            "data": [str(self.out / "data" / "train.jsonl")],
            "val_data": [str(self.out / "data" / "heldout.txt")],
            "train": {**keep, "max_steps": steps, "lr": defaults.lr / unscale,
                      "min_lr": defaults.min_lr / unscale}})
        self.train_run(pretrain, cfg, run)
        if not self.main:  # the first process evaluates
            return {}
        task = self.heldout_task()
        bpb = {name: self.evaluate_model(name, task, False)[task]["bpb"]
               for name in ("base", "baseline")}
        return {"flops": flops, "steps": steps, "ours_steps": ours["train"]["max_steps"],
                "bpb": bpb["base"], "baseline_bpb": bpb["baseline"]}

    def report(self) -> dict:
        from scratchlm.speedrun.report import chat_samples, write_report

        done = self.state()["stages"]
        samples = (chat_samples(self.out / "sft" / "final",
                                FAST["samples_tokens"] if self.cfg.fast else 128)
                   if "sft" in done else [])
        path = write_report(self.out, self.cfg.preset, self.preset, done, samples,
                            self.cfg.fast)
        print(f"[report] {path}")
        return {"report": str(path), "samples": samples}

    def run(self) -> dict:
        """The stages in order. Under torchrun the training stages (pretrain, sft, baseline)
        train on every process, as their recipes do; the rest runs on the first, the others
        waiting."""
        from scratchlm.training.run_dir import claim_run_dir, release_run_dir

        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            claim_run_dir(self.out, resume=True)  # the folder's lock: one speedrun at a time
        try:
            with _process_group():
                return self.stages()
        finally:
            if self.main:
                release_run_dir(self.out)

    def stages(self) -> dict:
        """Each asked-for stage in order, skipping finished ones; returns the record."""
        if self.main:
            self.start()
            print(predict(self.cfg.preset, self))
        _sync()
        order = [s for s in (*STAGES[:-1], *EXTRA_STAGES, STAGES[-1]) if s in self.cfg.stages]
        for stage in order:
            done = self.state()["stages"]
            if stage in done and stage != "report":
                if self.main:
                    print(f"[{stage}] done before ({done[stage]['seconds']:.0f} s): skipped")
                continue
            missing = [n for n in NEEDS[stage] if n not in done]
            if missing:
                raise ValueError(f"stage {stage!r} needs {', '.join(missing)} finished "
                                 f"first (in {self.state_path})")
            if self.main or stage in EVERY_PROCESS:
                if self.main:
                    print(f"[{stage}] ...")
                t0 = time.perf_counter()
                result = getattr(self, stage)()
                if self.main:
                    self.record(stage, time.perf_counter() - t0, _jsonable(result))
            _sync()
        return self.state()

    def start(self) -> None:
        """``--overwrite``: the speedrun's outputs removed. Else a record of another preset
        (or of --fast) is refused, and a first run writes its record before any stage, so a
        crash in the first stage resumes like any other."""
        if self.cfg.overwrite:
            for name in OUTPUTS:
                path = self.out / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        if self.state_path.is_file():
            state = self.state()
            was = (state.get("preset"), state.get("fast"))
            if was != (self.cfg.preset, self.cfg.fast):
                raise ValueError(f"{self.out} holds a speedrun of preset {was[0]!r} "
                                 f"(fast={was[1]}): run it with those, or pass --overwrite")
        elif any((self.out / n).exists() for n in OUTPUTS):
            raise ValueError(f"{self.out} holds a speedrun's files but no stages.json: pass "
                             "--overwrite to start over")
        else:
            self.save(self.state())


def main(cfg: SpeedrunConfig) -> dict:
    return Speedrun(cfg).run()


# ---- helpers of the stages
def _corpus_texts(name: str, limit_chars: int | None):
    """A pretraining corpus's document texts (anything --data reads), up to ``limit_chars``."""
    from scratchlm.data.documents import mix_documents, resolve_source

    used = 0
    for doc in mix_documents([resolve_source(name)], "text"):
        text = doc.text if limit_chars is None else doc.text[:limit_chars - used]
        used += len(text)
        yield text
        if limit_chars is not None and used >= limit_chars:
            return


def _example_texts(name: str, limit: int | None):
    """An instruction or GSM8K set's examples as plain texts: each turn's content in order."""
    from scratchlm.data.instruction import read_examples
    from scratchlm.downloads.sources import fetch

    for ex in read_examples(fetch(name))[:limit]:
        yield "\n\n".join(_text(m["content"]) for m in ex.messages)


def split_heldout(texts: list[str], fraction: float) -> tuple[str, str]:
    """(training text, held-out text): the last documents holding ``fraction`` of the
    characters, or of a single document its end from a line boundary on."""
    total = sum(map(len, texts))
    if len(texts) == 1:
        text = texts[0]
        cut = text.rfind("\n", 0, int(len(text) * (1 - fraction))) + 1
        return text[:cut], text[cut:]
    held, size = [], 0
    while texts and size < fraction * total:
        held.insert(0, texts.pop())
        size += len(held[0])
    if not texts:
        raise ValueError("the corpus is too small to hold any of it out")
    return "\n\n".join(texts), "\n\n".join(held)


def _text(content) -> str:
    if isinstance(content, dict):  # Alpaca's instruction + input
        return "\n\n".join(v for v in content.values() if v)
    return content


def _pretrain_result(run: Path) -> dict:
    """What a finished pretraining run made: its model's shape, steps and last losses."""
    import csv

    saved = json.loads((run / "config.json").read_text())
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    last = lambda key: next((float(r[key]) for r in reversed(rows) if r.get(key)), None)  # noqa: E731
    return {"model_config": saved["model_config"], "steps": saved["train"]["max_steps"],
            "final_train_loss": last("loss"), "final_val_loss": last("val_loss")}


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


def predict(name: str, run: Speedrun) -> str:
    """The planner's prediction for the run's pretraining (the preset's, shrunk by --fast):
    parameters, tokens, FLOPs, memory per device, and time at the preset's MFU of its peak
    (on a CPU, the measured fp32 matmul rate)."""
    from scratchlm.models.accounting import flops_per_token
    from scratchlm.models.registry import preset as model_preset
    from scratchlm.training.config import TrainConfig
    from scratchlm.training.depth import horizon, shape_of, tokens_ratio
    from scratchlm.training.planner import duration, plan

    preset, p = run.preset, run.settings("pretrain")
    train = {**to_dict(TrainConfig()), **p["train"]}
    family, base = model_preset(p["model"])
    shape = shape_of(p["depth"], family.config_cls.__dataclass_fields__)
    ctx = p["context_length"]
    cfg = family.config({**base.to_dict(), **shape, "context_length": ctx,
                         "vocab_size": run.settings("tokenizer").get("vocab_size", 4096)})
    planned = plan(cfg, batch=train["batch_size"], context=ctx,
                   dtype="bf16" if train["precision"] == "bf16" else "fp32",
                   optimizer="sgd" if train["optimizer"] == "muon" else "adamw")  # one state
    per_step = train["batch_size"] * train["grad_accum_steps"] * preset.gpus * ctx
    ratio = tokens_ratio(p["depth"], p.get("tokens_per_param"))
    steps = horizon(planned.params, per_step, ratio).steps if ratio else train["max_steps"]
    flops = flops_per_token(cfg, ctx)[1] * steps * per_step
    peak = preset.peak_tflops * 1e12 * preset.gpus if preset.peak_tflops else _cpu_peak()
    hours = flops / (peak * preset.mfu) / 3600
    status = "run end to end" if preset.ran else "NOT YET RUN: a prediction only"
    return (f"speedrun preset {name!r} ({preset.device}; {status}): depth {p['depth']}, "
            f"{planned.params:,} parameters, {steps * per_step:,} pretraining tokens "
            f"({steps:,} steps), {flops:.3g} FLOPs, about {duration(hours)} of pretraining at "
            f"{preset.mfu:.0%} MFU of {peak / 1e12:.3g} TFLOP/s, {planned.peak / 2**30:.1f} GiB "
            "per device")


def _sync() -> None:
    """Under torchrun: wait until every process is here (the first may be writing the files
    the others read next)."""
    import torch.distributed as dist

    if dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        dist.barrier(**({"device_ids": [local]} if dist.get_backend() == "nccl" else {}))


def _process_group():
    """Under torchrun: one process group for the whole speedrun, which the training recipes
    use rather than start their own (a group started again after one ended can find the old
    one's addresses in the store). Its waits may last a stage (the tokenizer of a large
    corpus). A context manager; nothing without torchrun."""
    from contextlib import contextmanager
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    @contextmanager
    def group():
        if int(os.environ.get("WORLD_SIZE", "1")) == 1 or dist.is_initialized():
            yield
            return
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                timeout=timedelta(hours=12))
        try:
            yield
        finally:
            dist.destroy_process_group()

    return group()


def _precision() -> str:
    """The training stages' precision where a preset names none: bf16 autocast where matrix
    products in bf16 are native (a GPU, or a CPU with avx512_bf16 / AMX), else fp32."""
    import torch

    from scratchlm.training.runtime import bf16_native

    return "bf16" if bf16_native("cuda" if torch.cuda.is_available() else "cpu") else "fp32"


def _cpu_peak() -> float:
    import torch

    from scratchlm.training.runtime import Runtime

    return Runtime(torch.device("cpu"), "fp32").peak_flops()


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))

