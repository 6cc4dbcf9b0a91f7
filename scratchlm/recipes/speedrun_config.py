"""The speedrun's config and presets: what each stage runs with, per machine
(``scratchlm/speedrun/run.py``).

Each stage's settings are fields of that stage's own recipe config (``recipes/configs.py``),
so a preset is checked like a config file: an unknown key is an error. ``fast`` is applied on
top of any preset to shrink every stage to seconds (the CI smoke run).

``ran`` says whether the preset has been run end to end as written; a preset that has not
prints the planner's prediction (time, memory) and says "not yet run".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scratchlm.training.depth import PLANNED_MFU


STAGES = ("tokenizer", "pretrain", "sft", "evaluate", "report")
# run only when asked (--stages baseline report): the pretraining again with today's defaults
# (AdamW, cosine, concat windows, GPT-2's tokenizer) for the same FLOPs, and its bits per byte
EXTRA_STAGES = ("baseline",)


@dataclass(frozen=True)
class Preset:
    device: str  # what it is sized for
    ran: bool  # run end to end as written
    corpus: tuple[str, ...]  # the pretraining documents: any --data the pretrain recipe reads
    # (data set names, files, hf:// corpora); the first one's tail is held out for validation
    # and bits per byte
    heldout_fraction: float  # of the first corpus, by characters (its last documents, or the
    # end of a single text at a line boundary)
    examples_as_text: tuple[str, ...] = ()  # instruction / GSM8K sets whose examples join the
    # pretraining documents as plain text (the question, then the answer)
    tokenizer: dict = field(default_factory=dict)  # TrainTokenizerConfig fields
    pretrain: dict = field(default_factory=dict)  # PretrainConfig fields (train: TrainConfig;
    # without a train.precision: bf16 where this machine multiplies bf16 natively, else fp32)
    sft: dict = field(default_factory=dict)  # InstructConfig fields
    evaluate: dict = field(default_factory=dict)  # EvaluateConfig fields (tasks added by the run)
    peak_tflops: float | None = None  # per device, for the prediction (None: measured on a CPU)
    gpus: int = 1
    mfu: float = PLANNED_MFU  # the share of the peak the prediction assumes
    dollars_per_hour: float | None = None  # the machine's price, for the cost column


# GSM8K's training problems in the pretraining mix and the SFT mix teach the answer format
# (a worked solution ending "#### N") that the GSM8K evaluation grades.
_SFT_DATA = ["instruction-data", "gsm8k-train:0.25"]
# the data sets the project downloads (and its tests find in the mirror); a GPU-scale run puts
# a web-scale corpus (any `pretrain --data`) in `corpus`
_MIRROR_DATA = dict(corpus=("tinyshakespeare",),
                    examples_as_text=("gsm8k-train", "instruction-data"), heldout_fraction=0.05)

PRESETS: dict[str, Preset] = {
    # this 2-core CPU, <= 30 minutes in all, on the data sets the project downloads
    "cpu": Preset(
        device="a 2-core CPU", ran=True,
        **_MIRROR_DATA,
        tokenizer={"vocab_size": 4096},
        pretrain={"model": "qwen3-tiny", "depth": 4, "tokens_per_param": 1.0,
                  "context_length": 256, "packing": "bestfit", "sample_tokens": 0,
                  "train": {"batch_size": 16, "optimizer": "muon", "schedule": "wsd",
                            "lr": 4e-3, "min_lr": 0.0, "warmup_steps": 50,
                            "eval_every": 250, "eval_batches": 8, "save_every": 500,
                            "log_every": 10}},
        sft={"data": _SFT_DATA, "epochs": 2, "style": "chat", "test_responses": False,
             "allowed_max_length": 256, "packing": True,
             "train": {"batch_size": 16, "lr": 1e-3, "eval_every": 100, "eval_batches": 4}},
        evaluate={"limit": 100, "gsm8k": {"max_new_tokens": 192}},
    ),
    # one consumer GPU (24 GB: an RTX 3090/4090)
    "gpu-24gb": Preset(
        device="one 24 GB GPU", ran=False, peak_tflops=165.0, dollars_per_hour=0.5,
        **_MIRROR_DATA,
        tokenizer={"vocab_size": 16384},
        pretrain={"model": "qwen3-tiny", "depth": 12, "tokens_per_param": 20,
                  "context_length": 1024, "packing": "bestfit", "sample_tokens": 0,
                  "train": {"batch_size": 16, "grad_accum_steps": 4, "optimizer": "muon",
                            "schedule": "wsd", "lr": 4e-3, "min_lr": 0.0,
                            "warmup_steps": 100, "precision": "bf16", "compile": True}},
        sft={"data": _SFT_DATA, "epochs": 2, "style": "chat", "test_responses": False,
             "allowed_max_length": 1024, "packing": True,
             "train": {"batch_size": 32, "lr": 5e-4, "precision": "bf16"}},
        evaluate={"limit": 500},
    ),
    # a nanochat-scale run: 8 x H100 (torchrun --nproc_per_node 8 -m scratchlm speedrun)
    "8xh100": Preset(
        device="8 x H100 80 GB", ran=False, peak_tflops=989.0, gpus=8, dollars_per_hour=24.0,
        **_MIRROR_DATA,
        tokenizer={"vocab_size": 65536},
        pretrain={"model": "qwen3-tiny", "depth": 20, "tokens_per_param": 20,
                  "context_length": 2048, "packing": "bestfit", "sample_tokens": 0,
                  "train": {"batch_size": 32, "optimizer": "muon", "schedule": "wsd",
                            "lr": 4e-3, "min_lr": 0.0, "warmup_steps": 100,
                            "precision": "bf16", "compile": True, "strategy": "ddp"}},
        sft={"data": _SFT_DATA, "epochs": 2, "style": "chat", "test_responses": False,
             "allowed_max_length": 2048, "packing": True,
             "train": {"batch_size": 32, "lr": 3e-4, "precision": "bf16"}},
        evaluate={},
    ),
}

# ``--fast``: every stage in seconds; the pipeline is checked, no model is made
FAST = {
    "corpus_chars": 60_000,
    "tokenizer": {"vocab_size": 512},
    "pretrain": {"depth": 2, "tokens_per_param": 0, "context_length": 128,
                 "train": {"max_steps": 12, "batch_size": 4, "eval_every": 6, "eval_batches": 2,
                           "warmup_steps": 2, "save_every": 6, "log_every": 2}},
    "sft": {"limit": 60, "epochs": 1, "allowed_max_length": 128,
            "train": {"batch_size": 4, "eval_every": 4, "eval_batches": 1}},
    "evaluate": {"limit": 4, "gsm8k": {"max_new_tokens": 16}},
    "samples_tokens": 16,
}


# ---- scratchlm speedrun: speedrun/run.py
@dataclass
class SpeedrunConfig:
    preset: str = "cpu"  # cpu (a 2-core CPU, <= 30 min) | gpu-24gb | 8xh100 (PRESETS above)
    out: str = "runs/speedrun"  # the run's one folder (run the command again to resume it)
    stages: list[str] = field(default_factory=lambda: list(STAGES))  # which stages,
    # in order: tokenizer, pretrain, sft, evaluate, report; and baseline (after pretrain: the
    # same FLOPs with AdamW, cosine, concat windows and GPT-2's tokenizer, for the report)
    fast: bool = False  # every stage shrunk to seconds: checks the pipeline, makes no model
    overwrite: bool = False  # remove this folder's speedrun outputs and start over

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"--preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        self.stages = [s for item in self.stages for s in str(item).split(",") if s]
        unknown = [s for s in self.stages if s not in STAGES + EXTRA_STAGES]
        if unknown:
            raise ValueError(f"unknown stage {unknown[0]!r}; stages: "
                             f"{', '.join(STAGES + EXTRA_STAGES)}")

