"""``scratchlm export``: a trained model out to where people run models.

    scratchlm export --model runs/sft/final --format gguf --quant q4_k_m --out exports/sft.gguf
    scratchlm export --model smollm2-135m-instruct --adapter runs/sft/final/adapter \\
        --format hf --out exports/sft-hf

GGUF (``export/gguf.py``): one file for llama.cpp, Ollama and LM Studio, with NAME.Modelfile
beside it and the two ``ollama`` commands printed. HF (``export/hf.py``): a folder that
``transformers``' ``AutoModelForCausalLM`` / ``AutoTokenizer`` load. An adapter is merged
first. Everything is written under a temporary name of its own beside ``--out``, flushed and
renamed at the end (``export/atomic.py``), so an interrupted export never looks complete, of two
exports to one path the last to finish wins whole, and a full disk ends in one line naming the
file and its disk; an existing ``--out`` is refused unless ``--overwrite``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from scratchlm.config import check_bounds
from scratchlm.export.atomic import replace_file, replace_folder, staging
from scratchlm.recipes.configs import ExportConfig  # noqa: F401 (its config)

FORMATS = ("gguf", "hf", "gguf-lora")


def _check(cfg: ExportConfig) -> Path:
    from scratchlm.export.quant_mix import DTYPES, FILE_TYPES

    if not cfg.model or not cfg.out:
        raise ValueError("--model and --out are required")
    if cfg.format not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {cfg.format!r}")
    if cfg.dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {DTYPES}, got {cfg.dtype!r}")
    if cfg.format == "gguf-lora" and not cfg.adapter:
        raise ValueError("--format gguf-lora writes an --adapter as llama.cpp's adapter file: "
                         "give --adapter")
    if cfg.quant is not None:
        if cfg.format != "gguf":
            raise ValueError("--quant applies to --format gguf only (an HF folder and an "
                             "adapter file hold f32/f16/bf16 tensors)")
        if cfg.quant not in FILE_TYPES:
            raise ValueError(f"--quant must be one of {', '.join(FILE_TYPES)}, got "
                             f"{cfg.quant!r}")
    check_bounds(cfg)  # --max_shard_gb > 0 (its field's Range), also for a config built in Python
    default = ExportConfig()
    if cfg.format != "hf" and cfg.max_shard_gb != default.max_shard_gb:
        raise ValueError("--max_shard_gb applies to --format hf only (a GGUF is one file)")
    if cfg.format == "hf" and cfg.name:
        raise ValueError("--name applies to --format gguf only (the file's name and Ollama's)")
    out = Path(cfg.out)
    if cfg.format in ("gguf", "gguf-lora") and out.suffix != ".gguf":
        raise ValueError(f"--out for GGUF is a file ending in .gguf, got {out}")
    if out.exists() and not cfg.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    return out


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(cfg: ExportConfig) -> dict:
    out = _check(cfg)
    base_gguf = Path(cfg.model).resolve() if cfg.model.endswith(".gguf") else None
    if base_gguf and cfg.format == "gguf" and cfg.quant and not cfg.adapter:
        return _requantize(cfg, out)  # GGUF to GGUF: no model built (export/requantize.py)
    import torch

    from scratchlm.finetune.lora import load_adapter, merge_lora
    from scratchlm.checkpoints.load import load_model_and_tokenizer

    t0 = time.perf_counter()
    model, tok = load_model_and_tokenizer(cfg.model)
    if cfg.adapter:
        load_adapter(model, cfg.adapter)
        if cfg.format != "gguf-lora":
            merge_lora(model)
    name = cfg.name or out.stem
    # each export writes into its own hidden folder beside --out and moves in when complete
    with staging(out, folder=True) as stage:
        if cfg.format == "gguf":
            from scratchlm.export.gguf import write_gguf
            from scratchlm.export.ollama import write_modelfile

            path = write_gguf(model, tok, stage / out.name, cfg.dtype, cfg.quant, name)
            write_modelfile(path, tok, model.cfg.context_length)
        elif cfg.format == "gguf-lora":
            from scratchlm.export.gguf_lora import write_gguf_lora
            from scratchlm.export.ollama import write_modelfile

            path = write_gguf_lora(model, stage / out.name, cfg.dtype, name)
            if base_gguf:  # the base is a GGUF file: Ollama's FROM it, ADAPTER this
                write_modelfile(path, tok, model.cfg.context_length,
                                base=os.path.relpath(base_gguf, out.parent.resolve()))
        else:
            from scratchlm.export.hf import write_hf

            dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
            write_hf(model, tok, stage, dtype[cfg.dtype], int(cfg.max_shard_gb * 1024**3),
                     *head_of(Path(cfg.model), model))
        # measured here: after the move --out may already hold another export's files
        size = _size(stage if cfg.format == "hf" else stage / out.name)
        _publish(stage, out, cfg.format)
    seconds = time.perf_counter() - t0
    result = {"out": str(out), "format": cfg.format, "seconds": seconds,
              "bytes": size, "peak_rss_mb": _peak_rss_mb()}
    print(f"exported {cfg.model} -> {out} ({size / 1e6:.1f} MB) in {seconds:.1f}s, "
          f"peak memory {result['peak_rss_mb']:.0f} MB")
    if cfg.format == "gguf":
        _how_to_run(name, out)
    elif cfg.format == "gguf-lora":
        base = base_gguf or "BASE.gguf (the base model exported with --format gguf)"
        _how_to_run(name, out, ollama=bool(base_gguf), llama_cli=f"-m {base} --lora {out}")
    else:
        print(f"load it with transformers:\n  AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return result


def _requantize(cfg: ExportConfig, out: Path) -> dict:
    """``--model FILE.gguf --quant Q``: the file's tensors written again in Q's mix, its
    metadata copied, and the Modelfile from its chat template and EOS (``llama-quantize``'s
    job; the model exporter writes the same tensors)."""
    from scratchlm.export.ollama import save_modelfile
    from scratchlm.export.requantize import requantize_gguf

    t0 = time.perf_counter()
    name = cfg.name or out.stem
    with staging(out, folder=True) as stage:
        path = stage / out.name
        meta = requantize_gguf(cfg.model, path, cfg.quant, cfg.dtype, name)
        tokens = meta.get("tokenizer.ggml.tokens") or []
        eos = meta.get("tokenizer.ggml.eos_token_id")
        eos = tokens[eos] if isinstance(eos, int) and 0 <= eos < len(tokens) else None
        context = meta.get(f"{meta.get('general.architecture')}.context_length")
        template = meta.get("tokenizer.chat_template")
        save_modelfile(path, template if isinstance(template, str) else None, eos,
                       context if isinstance(context, int) else 2048)
        size = _size(path)
        _publish(stage, out, cfg.format)
    seconds = time.perf_counter() - t0
    result = {"out": str(out), "format": cfg.format, "seconds": seconds, "bytes": size,
              "peak_rss_mb": _peak_rss_mb()}
    print(f"requantized {cfg.model} -> {out} ({size / 1e6:.1f} MB) in {seconds:.1f}s, "
          f"peak memory {result['peak_rss_mb']:.0f} MB")
    _how_to_run(name, out)
    return result


def _how_to_run(name: str, out: Path, ollama: bool = True, llama_cli: str = "") -> None:
    """The commands that run an exported GGUF: Ollama on the Modelfile beside it, llama.cpp
    on the file (``llama_cli``: other arguments than ``-m OUT``)."""
    if ollama:
        print(f"run it with Ollama:\n  ollama create {name} -f {out.with_suffix('.Modelfile')}"
              f"\n  ollama run {name}")
    print(f"{'or ' if ollama else ''}llama.cpp:\n  llama-cli {llama_cli or f'-m {out}'} -cnv")


def head_of(folder: Path, model) -> tuple[str | None, list[str] | None]:
    """What a classifier or reward run's head classifies, and its labels, from the file its
    recipe wrote beside the weights: (None, None) for a language model."""
    import json

    from scratchlm.checkpoints.ours import class_head_size

    if class_head_size(model) is None:
        return None, None
    for name, task, key in (("classifier.json", "sequences", "labels"),
                            ("tagger.json", "tokens", "tags"), ("reward.json", "sequences", None)):
        if (folder / name).is_file():
            labels = json.loads((folder / name).read_text())[key] if key else ["reward"]
            return task, [str(label) for label in labels]
    raise ValueError(f"{folder}: the model has a classifier head but no classifier.json, "
                     "tagger.json or reward.json saying what it classifies")


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size
                                                          for f in path.iterdir())


def _publish(stage: Path, out: Path, fmt: str) -> None:
    """Move the finished export from ``stage`` onto ``out``, each file or the folder in one
    rename (``export/atomic.py``); an old ``out`` is replaced and removed."""
    if fmt in ("gguf", "gguf-lora"):
        replace_file(stage / out.name, out)
        if (stage / f"{out.stem}.Modelfile").exists():
            replace_file(stage / f"{out.stem}.Modelfile", out.with_suffix(".Modelfile"))
    else:
        replace_folder(stage, out)
