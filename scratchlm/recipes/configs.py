"""The config dataclass of every command: its fields are the command's flags (``config.py``
turns them into ``--a.b`` options and reads them from YAML/JSON files), its defaults the
recipe's. They live here, apart from the recipes' code, so that building a command's flags or
its ``--help`` imports no torch; each recipe module re-exports its own
(``from scratchlm.recipes.pretrain import PretrainConfig`` works)."""

from __future__ import annotations

import re

from typing import Annotated
from dataclasses import dataclass, field

from scratchlm.config import (Count, Fraction, NonNegFloat, NonNegInt, Port, PositiveFloat,
                              Probability, Range)
from scratchlm.evaluate.settings import ChoiceSettings, EvalTasks, Gsm8kSettings, LMSettings
from scratchlm.finetune.config import GRPOSettings, LoraConfig
from scratchlm.training.config import TrainConfig
from scratchlm.recipes.speedrun_config import SpeedrunConfig  # noqa: F401 (its own module)


# ---- what every training command has: its run folder (training/run_dir.py)
@dataclass
class RunFolder:
    out: str = "runs/run"  # the run's folder
    overwrite: bool = False  # replace a previous run in --out (see training/run_dir.py)
    resume: str = ""  # "latest" or a checkpoint folder of this run: continue it exactly


def finetune_train(**changes) -> TrainConfig:
    """The training settings finetuning starts from: steps counted from --epochs, a constant
    rate without warm-up, a checkpoint at the end only."""
    base = dict(max_steps=0, batch_size=8, lr=5e-5, schedule="constant", warmup_steps=0,
                weight_decay=0.0, log_every=10, save_every=10**9, eval_batches=5)
    return TrainConfig(**{**base, **changes})


# ---- scratchlm pretrain: recipes/pretrain.py
@dataclass
class PretrainConfig(RunFolder):
    model: str = "gpt2-124m"  # a preset of any family, or a YAML/JSON file of config fields
    # (with ``family: qwen3`` etc.; default gpt)
    data: list[str] = field(default_factory=lambda: ["the-verdict"])  # files (.txt, .jsonl,
    # .jsonl.gz/.zst, .json, .parquet), folders, globs, registered data set names,
    # hf://datasets/ORG/NAME[/SUBSET][@REV], or one shard folder of `scratchlm prepare`;
    # PATH:WEIGHT mixes several
    text_field: str = "text"  # the field (column) that holds a document's text
    packing: str = "concat"  # concat (one stream cut into windows) | bestfit (rows of whole
    # documents from position 0, best-fit by length, no padding; see data/packing.py)
    doc_mask: bool = False  # attention stays inside each document of a row and positions
    # restart with it (nn/doc_mask.py)
    dedup: bool = False  # drop documents whose text appeared before (data read in memory)
    val_data: list[str] = field(default_factory=list)  # validation data (default: whole
    # documents held out of --data, see --val_fraction)
    tokenizer: str = "gpt2"  # "gpt2", or a tokenizer file (its vocab sets the model's)
    out: str = "runs/pretrain"
    context_length: Count | None = None  # shorter than the preset's trains faster
    n_layer: Count | None = None  # overrides of the preset, for quick experiments
    n_embd: Count | None = None  # embedding width
    n_head: Count | None = None  # attention heads
    depth: Count | None = None  # one dial (training/depth.py): n_layer = depth, n_embd = 64 x
    # depth, heads of 128, the FFN, the horizon (--tokens_per_param) and lr x sqrt(768 / n_embd)
    tokens_per_param: NonNegFloat | None = None  # the horizon: max_steps from this many tokens
    # per parameter (default 20 with --depth, Chinchilla; 0: --train.max_steps as given)
    drop_rate: Fraction | None = None  # dropout rate
    qkv_bias: bool | None = None  # biases on the query/key/value projections
    tie_embeddings: bool | None = None  # the output head shares the token embedding
    init: str | None = None  # "gpt2" (normal 0.02) or "torch" (PyTorch defaults, as the book)
    moe_num_experts: Count | None = None  # a mixture-of-experts FFN in every block (nn/moe.py)
    moe_top_k: Count | None = None  # experts per token
    moe_capacity_factor: PositiveFloat | None = None  # tokens an expert takes, as a multiple of
    # its fair share
    val_fraction: Fraction = 0.1  # share of the tokens held out for validation, as whole
    # documents (a corpus of too few documents: the tail of its tokens)
    sample_prompt: str = "Every effort moves you"  # the prompt of the samples printed at each
    # evaluation
    sample_tokens: NonNegInt = 25  # tokens per sample (0: no samples)
    eval: EvalTasks = field(default_factory=EvalTasks)  # the final model's report card
    train: TrainConfig = field(default_factory=TrainConfig)


# ---- scratchlm finetune classifier: recipes/finetune_classifier.py
@dataclass
class ClassifyConfig(RunFolder):
    model: str = "smollm2-135m-instruct"  # a preset with weights, a model folder (a run's final/)
    # or a .gguf file
    data: str = "sms-spam"  # a registered data set name or a file
    out: str = "runs/classify"
    text_col: str = "text"  # the text column of a CSV/TSV file
    label_col: str = "label"  # the label column of a CSV/TSV file
    trainable: str = "last_block"  # head | last_block | all (without LoRA)
    last_k: Count = 1  # with trainable last_k: how many final blocks train
    head_bias: bool = True  # false: a head without bias, as transformers' ...ForSequenceClassification (needed to export it with --format hf)
    max_length: Count | None = None  # default: the longest training text
    epochs: Count = 5  # passes over the training data
    eval_batches: Count = 5  # batches for the per-epoch train/val accuracy
    seed: int = 123  # random seed
    limit: Count | None = None  # use only N (balanced, shuffled) rows before splitting: quick runs
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=lambda: finetune_train(weight_decay=0.1))


# ---- scratchlm finetune instruct: recipes/finetune_instruct.py
@dataclass
class InstructConfig(RunFolder):
    model: str = "smollm2-135m-instruct"  # a preset with weights, a model folder (a run's final/)
    # or a .gguf file
    data: list[str] = field(default_factory=lambda: ["instruction-data"])  # registered data
    # set names or files (Alpaca, OpenAI messages, ShareGPT; JSON, JSONL(.gz/.zst), parquet);
    # NAME:WEIGHT mixes sets, each split on its own and counted WEIGHT times an epoch
    out: str = "runs/instruct"
    epochs: Count = 2  # passes over the training data
    max_new_tokens: Count = 256  # tokens generated per response at most
    response_batch: Count = 8  # prompts per batch when writing test responses
    test_responses: bool = True  # generate the test set's responses before and after training
    style: str = "auto"  # auto (chat template if the tokenizer has one, else alpaca) | alpaca | phi3 | chat
    mask_prompt: bool | None = None  # default: on for chat, off for alpaca/phi3 (as the book)
    allowed_max_length: Count = 1024  # tokens per example at most (longer ones are truncated)
    limit: Count | None = None  # use only the first N examples (quick runs)
    split_seed: int | None = None  # shuffle before splitting (the book splits in file order)
    moe_train: str = ""  # MoE models: "router" or "router,0,3" trains only routers (+ experts 0, 3)
    packing: bool = False  # padding-free batches: a batch's examples side by side in rows, each
    # attending only to itself from position 0 (same loss and gradients, no padding computed)
    lora: LoraConfig = field(default_factory=LoraConfig)
    eval: EvalTasks = field(default_factory=EvalTasks)  # the final model's report card
    train: TrainConfig = field(default_factory=lambda: finetune_train(weight_decay=0.1))


# ---- scratchlm finetune dpo: recipes/finetune_dpo.py
@dataclass
class DPOSettings:
    beta: PositiveFloat = 0.1  # DPO's strength of the pull towards the reference
@dataclass
class DPOConfig(RunFolder):
    model: str = "smollm2-135m-instruct"  # a preset with weights, a model folder (a run's final/)
    # or a .gguf file
    data: list[str] = field(default_factory=lambda: ["instruction-data-with-preference"])  # sets
    # of chosen/rejected pairs; NAME:WEIGHT mixes several, as finetune instruct
    out: str = "runs/dpo"
    style: str = "auto"  # auto | alpaca | phi3 | chat (see finetune instruct)
    allowed_max_length: Count = 1024  # tokens per example at most (longer ones are truncated)
    packing: bool = False  # padding-free batches: the pairs' answers side by side in rows with
    # a document mask (same loss and gradients as padded batches)
    limit: Count | None = None  # use only the first N pairs
    epochs: Count = 1  # passes over the training data
    max_new_tokens: Count = 128  # tokens generated per response at most
    test_responses: bool = True  # generate the test set's responses before and after training
    dpo: DPOSettings = field(default_factory=DPOSettings)
    lora: LoraConfig = field(default_factory=LoraConfig)
    eval: EvalTasks = field(default_factory=EvalTasks)  # the final model's report card
    train: TrainConfig = field(default_factory=lambda: finetune_train(
        batch_size=4, lr=5e-6, weight_decay=0.01, log_every=5))


# ---- scratchlm finetune grpo: recipes/finetune_grpo.py
@dataclass
class GRPOConfig(RunFolder):
    model: str = "smollm2-135m-instruct"  # a preset with weights, a model folder (a run's final/)
    # or a .gguf file
    task: str = "arithmetic"  # arithmetic (generated, checked exactly) | gsm8k | preference
    # (RLHF: instructions of --data, rewarded by a reward model; nothing to check exactly)
    data: str = "instruction-data-with-preference"  # preference: where the instructions come from
    out: str = "runs/grpo"
    difficulty: Count = 1  # arithmetic: operands, their size and operations (data/arithmetic.py)
    train_size: Count = 256  # arithmetic problems to train on (gsm8k: the first N train problems)
    test_size: NonNegInt = 50  # held-out problems for accuracy before/after (gsm8k: first N
    # of test)
    seed: int = 0  # draws the arithmetic problems
    grpo: GRPOSettings = field(default_factory=GRPOSettings)
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(rank=16, alpha=32,
                                                                scaling="peft"))
    eval: EvalTasks = field(default_factory=EvalTasks)  # the final model's report card
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        max_steps=20, batch_size=1, grad_accum_steps=8, lr=5e-5, schedule="constant",
        warmup_steps=0, weight_decay=0.0, log_every=1, eval_every=10, save_every=10,
        eval_batches=1))  # 8 prompts a step, sampled in one batch, then trained one group at
    # a time: the activations of one group, so no block checkpointing (no recompute)


# ---- scratchlm finetune reward: recipes/finetune_reward.py
@dataclass
class RewardConfig(RunFolder):
    model: str = "smollm2-135m-instruct"  # a preset with weights, a model folder (a run's final/)
    # or a .gguf file
    data: list[str] = field(default_factory=lambda: ["instruction-data-with-preference"])  # sets
    # of chosen/rejected pairs; NAME:WEIGHT mixes several, as finetune instruct
    out: str = "runs/reward"
    epochs: Count = 1  # passes over the training data
    style: str = "auto"  # as finetune instruct: the chat template if any, else alpaca
    trainable: str = "last_block"  # head | last_block | all (without LoRA)
    last_k: Count = 2  # with trainable last_k: how many final blocks train
    head_bias: bool = True  # false: a head without bias, as transformers' ...ForSequenceClassification (needed to export it with --format hf)
    allowed_max_length: Count = 512  # tokens per example at most (longer ones are truncated)
    packing: bool = False  # padding-free batches: the pairs' sequences side by side in rows
    # with a document mask, each scored at its own last token
    limit: Count | None = None  # use only the first N examples (quick runs)
    split_seed: int | None = 123  # shuffled: the book's file order groups similar entries
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(rank=0))
    train: TrainConfig = field(default_factory=lambda: finetune_train(
        batch_size=4, lr=3e-5, eval_batches=10))


# ---- scratchlm finetune tokens: recipes/finetune_tokens.py
@dataclass
class TaggingConfig(RunFolder):
    model: str = "smollm2-135m"  # a preset with weights, a model folder (a run's final/) or a
    # .gguf file
    data: str = ""  # a CoNLL file (training split, or all of it without val/test)
    val: str = ""  # a validation file (default: split off the training file)
    test: str = ""  # a test file (default: split off the training file)
    out: str = "runs/tokens"
    epochs: Count = 3  # passes over the training data
    max_length: Count = 256  # sub-word tokens per sentence
    trainable: str = "all"  # head | last_block | all (without LoRA)
    last_k: Count = 1  # with trainable last_k: how many final blocks train
    seed: int = 123  # random seed
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(rank=0))
    train: TrainConfig = field(default_factory=lambda: finetune_train(batch_size=16))


# ---- scratchlm finetune prompt: recipes/finetune_prompt.py
@dataclass
class PromptConfig(RunFolder):
    model: str = "smollm2-135m"  # a preset with weights, a model folder (a run's final/) or a
    # .gguf file
    data: str = "sms-spam"  # a registered data set name or a file
    task: str = "auto"  # auto | classify | instruct (auto: instruct for JSON, else classify)
    out: str = "runs/prompt"
    num_virtual_tokens: Count = 20  # soft-prompt length in tokens
    init_text: str = ""  # "" = random initialisation
    label_words: list[str] = field(default_factory=list)  # default: the label names
    text_col: str = "text"  # the text column of a CSV/TSV file
    label_col: str = "label"  # the label column of a CSV/TSV file
    max_length: Count = 128  # text tokens per example (classification)
    epochs: Count = 3  # passes over the training data
    limit: Count | None = None  # use only the first N examples (quick runs)
    seed: int = 123  # random seed
    train: TrainConfig = field(default_factory=lambda: finetune_train(lr=3e-2))


# ---- scratchlm distill: recipes/distill.py
@dataclass
class DistillConfig(RunFolder):
    teacher: str = "runs/teacher/final"  # a model folder or preset with weights
    student: str = ""  # "": the teacher with student_layers blocks; or a preset / model folder
    student_layers: Count = 6  # blocks of the student (taken from the teacher's)
    data: list[str] = field(default_factory=lambda: ["tinyshakespeare"])  # a registered data set
    # name or a file
    out: str = "runs/distill"
    context_length: Count | None = None  # training windows (default: the teacher's, up to 256)
    alpha: Annotated[float, Range(0, 1)] = 0.5  # weight of the hard-label cross-entropy; 1 -
    # alpha on the teacher's KL
    temperature: PositiveFloat = 2.0  # softmax temperature
    val_fraction: Fraction = 0.1  # share of the data held out for validation
    speed_batches: Count = 5  # validation batches timed for the tokens/s comparison
    eval: EvalTasks = field(default_factory=EvalTasks)  # the final model's report card
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        max_steps=500, batch_size=8, lr=1e-3, min_lr=1e-4, warmup_steps=20, eval_every=100,
        save_every=500))


# ---- scratchlm chat: recipes/chat.py
@dataclass
class ChatConfig:
    model: str = "smollm2-135m-instruct"  # a preset with weights, a model folder (a run's final/)
    # or a .gguf file
    system: str | None = None  # a system message before the conversation
    max_new_tokens: Count = 256  # tokens generated per response at most
    temperature: NonNegFloat | None = None  # default: the model's (generation_config.json, GGUF), else 0 (greedy)
    top_k: int | None = None  # default: the model's; 0: off
    top_p: Probability | None = None  # default: the model's; 1.0: off
    seed: int | None = None  # random seed
    quantize: str | None = "auto"  # "int8": weight-only int8 (nn/quant.py); "gguf": a GGUF file's own blocks (Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/Q4_K/Q5_K/Q6_K); "gguf-a8": those blocks with a decode step's activations rounded to 8 bits (integer dot products, as llama.cpp); "auto": for a GGUF model on the CPU in fp32 (the embedded SmolLM2) gguf-a8 where the kernel has it (x86), else gguf where it vectorizes the formats, else int8; none for other models; "none": as stored
    device: str = "cpu"  # cpu | cuda | cuda:N: where the model runs
    dtype: str = "fp32"  # fp32 | bf16 | fp16 (CUDA): the weights' dtype while generating


# ---- scratchlm judge: recipes/judge.py
@dataclass
class JudgeConfig:
    responses: str = ""  # a test-with-responses.json (required; also the first argument)
    out: str | None = None  # the run's folder
    api: str = "ollama"  # ollama | openai
    judge_model: str | None = None  # the judge model's name on the judge server
    url: str | None = None  # the judge server's base URL
    api_key: str | None = None  # the judge server's API key (default: OPENAI_API_KEY)
    concurrency: Count = 4  # requests in flight at once
    timeout: PositiveFloat = 120.0  # seconds per request
    retries: NonNegInt = 3  # retries of a failed request


# ---- scratchlm evaluate run / compare: recipes/evaluate.py
@dataclass
class EvaluateConfig:
    model: str = ""  # a run's final/ folder, a preset with weights or a .gguf file (required)
    adapter: str | None = None  # a LoRA adapter folder applied first
    # each task: gsm8k | bpb:TEXT (a data set name or a text file) | choice:FILE[:LAYOUT]
    # (LAYOUT: jsonl, hellaswag, arc, mmlu, piqa)
    tasks: list[str] = field(default_factory=lambda: ["bpb:tinyshakespeare"])  # evaluation tasks
    # (see docs/evaluation.md)
    limit: Count | None = None  # only the first N examples (or characters of a text) per task
    out: str = ""  # results folder (default: RUN/eval beside a run's final/, else eval/)
    quantize: str | None = None  # "int8": weight-only int8 for faster generation; "gguf": a GGUF file's own blocks; "gguf-a8": those with 8-bit activations in decode steps
    lm: LMSettings = field(default_factory=LMSettings)
    choice: ChoiceSettings = field(default_factory=ChoiceSettings)
    gsm8k: Gsm8kSettings = field(default_factory=Gsm8kSettings)


@dataclass
class CompareConfig:
    runs: list[str] = field(default_factory=list)  # two results folders (or runs holding eval/)


# ---- scratchlm serve: serve/app.py
@dataclass
class ServeConfig:
    model: str = "smollm2-135m-instruct"  # a preset with weights, a model folder (a run's final/)
    # or a .gguf file
    adapter: list[str] = field(default_factory=list)  # LoRA adapters: one folder DIR applied
    # on top of the model, or NAME=DIR ... each served as model NAME over one base (a request's
    # model picks it; rows of different adapters share decode steps)
    host: str = "127.0.0.1"  # address to listen on
    port: Port = 8000  # port to listen on
    api_key: str | None = None  # default: SCRATCHLM_API_KEY; unset: no key needed
    max_tokens_cap: Count = 1024  # the largest max_tokens a request may ask for
    max_batch: Count = 16  # requests decoded together at most
    quantize: str | None = "auto"  # "int8" | "gguf" (a GGUF file's own blocks) | "gguf-a8" (those, a decode step's activations rounded to 8 bits as llama.cpp does) | "auto" (for a GGUF model on the CPU in fp32: gguf-a8 where the kernel has it, else gguf where it vectorizes the formats, else int8; unless an adapter is given; else none) | "none"
    device: str = "cpu"  # cpu | cuda | cuda:N: where the model runs
    dtype: str = "fp32"  # fp32 | bf16 | fp16 (CUDA): the weights' dtype while generating
    max_request_bytes: Count = 4_000_000  # a larger request body is answered 413
    max_messages: Count = 256  # messages in one chat request
    max_prompt_tokens: NonNegInt = 0  # 0: the model's context length (a longer prompt is a 400)
    request_timeout: PositiveFloat = 30.0  # seconds for a request's headers and body to arrive whole
    max_connections: Count = 1000  # open connections; over it the slowest waiting one is closed
    prefix_cache: bool = True  # copy the keys/values of a prompt start shared with an earlier
    # request (a chat template's system prompt) instead of computing them again
    prefill: str = "auto"  # precision of prompt processing: fp32 | bf16 (autocast) | auto (bf16
    # where the CPU or GPU has native bf16 products: about 2x faster prompts, so earlier first tokens)

    def __post_init__(self):
        if self.prefill not in ("fp32", "bf16", "auto"):
            raise ValueError(f"--prefill must be fp32, bf16 or auto, got {self.prefill!r}")
        if isinstance(self.adapter, str):  # one folder, as the field was before
            self.adapter = [self.adapter]
        named = [a for a in self.adapter if "=" in a]
        if named and len(named) != len(self.adapter):
            raise ValueError("--adapter: give one folder DIR, or only NAME=DIR entries")
        if not named and len(self.adapter) > 1:
            raise ValueError("--adapter: several adapters need names (NAME=DIR ...)")
        names = list(self.named_adapters())
        if len(set(names)) != len(names):
            raise ValueError(f"--adapter: two adapters are named {names!r}")
        bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", n)]
        if bad:
            raise ValueError(f"--adapter: {bad[0]!r} is not a name (letters, digits, _ . -)")
        if named and self.quantize not in (None, "none", "auto"):
            raise ValueError("--adapter NAME=DIR runs LoRA on float weights; leave --quantize "
                             "at auto or none")

    def named_adapters(self) -> dict[str, str]:
        """NAME -> folder of the adapters served by name (empty for one plain folder)."""
        return dict(a.split("=", 1) for a in self.adapter if "=" in a)


# ---- scratchlm demo: demo.py
STAGES = ("tokenizer", "pretrain", "chat", "classify", "instruct", "serve")


@dataclass
class DemoConfig:
    out: str = "runs/demo"  # the run's folder
    stages: list[str] = field(default_factory=lambda: list(STAGES))  # which stages to run, in
    # order
    fast: bool = False  # shrink every stage (a smoke run in about a minute)
    corpus: str = "tinyshakespeare"  # a registered data set name (see downloads/sources.py)
    bpe_vocab_size: Count = 4096  # vocabulary size of the BPE trained from scratch
    precision: str = "auto"  # of the training stages: auto (bf16 autocast where the CPU has
    # bf16 matrix units, as avx512_bf16 or AMX, or on CUDA; else fp32) | fp32 | bf16

    def __post_init__(self):
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"--precision must be auto, fp32 or bf16, got {self.precision!r}")
        # "--stages tokenizer,pretrain" and "--stages tokenizer pretrain" both work
        self.stages = [s for item in self.stages for s in str(item).split(",") if s]
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"stages: unknown {unknown}; choose from {', '.join(STAGES)}")


# ---- scratchlm generate: recipes/generate.py
@dataclass
class GenerateConfig:
    model: str = ""  # a preset with weights, a model folder or a .gguf file (required)
    prompt: str = "Every effort moves you"  # the text to continue
    max_new_tokens: Count = 50  # tokens generated per response at most
    temperature: NonNegFloat | None = None  # default: the model's (generation_config.json, GGUF), else 0 (greedy)
    top_k: int | None = None  # default: the model's; 0: off
    top_p: Probability | None = None  # default: the model's; 1.0: off
    seed: int | None = None  # random seed
    tokenizer: str | None = None  # default: the model folder's, else gpt2
    quantize: str | None = "auto"  # "int8": weight-only int8; "gguf": a GGUF file's own blocks; "gguf-a8": those with 8-bit activations in decode steps; "auto": for a GGUF model on the CPU in fp32 gguf-a8 where the kernel has it, else gguf where it vectorizes the formats, else int8; else none; "none": as stored
    device: str = "cpu"  # cpu | cuda | cuda:N: where the model runs
    dtype: str = "fp32"  # fp32 | bf16 | fp16 (CUDA): the weights' dtype while generating
    chat: bool = False  # send the prompt as a user turn of the model's chat template
    best_of: Count = 1  # sample N answers, print the one the reward model rates best
    reward_model: str | None = None  # a `finetune reward` final/ folder


# ---- scratchlm export: recipes/export.py
@dataclass
class ExportConfig:
    model: str = ""  # a run's final/ folder, a preset with weights or a .gguf file (required)
    adapter: str | None = None  # a LoRA adapter folder (ours or PEFT), merged before export
    format: str = "gguf"  # gguf (llama.cpp / Ollama) | hf (transformers) | gguf-lora (--adapter as llama.cpp's adapter file, for llama-cli --lora / Ollama's ADAPTER)
    dtype: str = "f16"  # f32 | f16 | bf16: matrices (gguf), or every tensor (hf)
    quant: str | None = None  # gguf only: q4_k_m | q5_k_m | q6_k | q8_0 | q4_0 | q4_k_s | q5_k_s (llama.cpp's mix per tensor)
    out: str = ""  # the .gguf file, or the HF folder (required)
    name: str = ""  # the model's name in the file and in Ollama (default: from --out)
    overwrite: bool = False  # replace an existing --out
    max_shard_gb: PositiveFloat = 5.0  # hf: split model.safetensors into shards above this size


# ---- scratchlm plan: recipes/plan.py
@dataclass
class PlanLora:
    rank: Count = 16  # of --method lora / qlora
    targets: list[str] = field(default_factory=lambda: ["all"])  # q k v out ff head lin, or all


@dataclass
class PlanConfig:
    model: str = "gpt2-124m"  # a preset of any family, a model folder or a config file
    method: str = "full"  # full | lora | qlora | qlora-dq
    batch: Count = 8  # sequences per step
    context: int | None = None  # default: the model's
    dtype: str = "fp32"  # fp32 | bf16 | fp16
    optimizer: str = "adamw"  # adamw | adamw8bit | sgd
    lora: PlanLora = field(default_factory=lambda: PlanLora())  # --lora.rank, as finetuning
    tokens: NonNegFloat = 0.0  # training tokens planned
    peak_tflops: float | None = None  # e.g. 989 for an H100 (bf16)
    mfu: Probability = 0.4  # model FLOPs utilisation assumed for the time
    gpu_memory: float | None = None  # GiB available
    grad_checkpointing: bool = False  # recompute block activations in backward
    json: bool = False  # print the plan as JSON


# ---- scratchlm prepare: data/shards.py
@dataclass
class PrepareConfig:
    data: list[str] = field(default_factory=list)  # files (.txt, .jsonl, .jsonl.gz/.zst,
    # .json, .parquet), folders, globs, registered data set names or
    # hf://datasets/ORG/NAME[/SUBSET][@REV]; PATH:WEIGHT mixes several
    text_field: str = "text"  # the field (column) that holds a document's text
    dedup: bool = False  # drop documents whose text appeared before
    seed: int = 0  # the order a mixture's documents are drawn in
    out: str = ""  # the shard folder (required)
    tokenizer: str = "gpt2"  # gpt2, a tokenizer file or a model folder
    shard_tokens: Count = 100_000_000  # tokens per shard file
    workers: Count | None = None  # processes tokenizing in parallel


# ---- scratchlm train-tokenizer: recipes/train_tokenizer.py (tokenizers/bpe_train.py)
@dataclass
class TrainTokenizerConfig:
    data: list[str] = field(default_factory=list)  # files (.txt, .jsonl(.gz/.zst), .json,
    # .parquet), folders, globs or registered data set names: each file or record a document
    text_field: str = "text"  # the field (column) that holds a document's text
    workers: Count | None = None  # processes counting words (default: one per core)
    vocab_size: Count = 4096  # vocabulary size
    chat: bool = False  # add ChatML's <|im_start|>/<|im_end|> and its chat template: --out is
    # then a folder holding a Hugging Face tokenizer.json and tokenizer_config.json
    out: str = ""  # the tokenizer file, or folder with --chat (required)


# ---- scratchlm tune: recipes/tune.py
@dataclass
class TuneConfig:
    recipe: str = ""  # pretrain | classify | instruct | distill (required)
    trials: Count = 20  # total trials in the study
    space: str = ""  # e.g. "lr=1e-5:1e-3:log,batch_size=4:16:int,schedule=cosine|constant"
    base_config: str | None = None  # the recipe's base config file (YAML/JSON)
    set: list[str] = field(default_factory=list)  # base config values, e.g. train.max_steps=200
    out: str = "runs/tune"  # the run's folder
    seed: int = 123  # random seed
    study_name: str | None = None  # the Optuna study's name (resume it by name)
