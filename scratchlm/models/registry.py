"""The model families, in one table: what every other module asks about a model.

    family   config class   model class   presets          HF model_types            GGUF arch
    gpt      GPTConfig      GPT           gpt2-124m ...    gpt2                      gpt2
    llama    LlamaConfig    Llama         smollm2-135m ... llama                     llama
    qwen3    Qwen3Config    Qwen3         qwen3-0.6b ...   qwen3, qwen3_moe          qwen3, qwen3moe
    gemma3   Gemma3Config   Gemma3        gemma3-270m ...  gemma3_text               gemma3
    olmo3    Olmo3Config    Olmo3         olmo3-7b, -32b   olmo3                     olmo2
    gpt_oss  GptOssConfig   GptOss        gpt-oss-20b ...  gpt_oss                   gpt-oss
    qwen3_5  Qwen35Config   Qwen35        qwen3.5-0.8b ... qwen3_5(_moe)(_text)      qwen35(moe)
    gemma4   Gemma4Config   Gemma4        gemma4-e2b ...   gemma4_text, gemma4       gemma4

Loading and saving (``scratchlm/checkpoints``), the planner, ``plan``, ``distill``, the engine and the
native decoder look a family up here (``family_of(model_or_config)``, ``family_named``,
``family_for_hf``, ``family_for_gguf``, ``preset``); no other module tests a model's class.
Key maps live in ``models/convert/`` and are named here by module, imported when used. A GGUF
architecture's rules (its tensor names and how its metadata is read into a config and written
from one, with what export refuses) are its row of ``ARCHS`` in ``models/convert/gguf_archs.py``;
a family names its architectures here (``gguf_archs``).

Adding a family: a model file with its config (presets included), a converter module with the
HF key map (and an ``ARCHS`` row in ``convert/gguf_archs.py`` if llama.cpp has the
architecture),
one ``Family`` below, and tests. See docs/families.md.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType

from scratchlm.models.gemma3 import GEMMA3_PRESETS, Gemma3, Gemma3Config
from scratchlm.models.gemma4 import GEMMA4_PRESETS, Gemma4, Gemma4Config
from scratchlm.models.gpt import GPT, GPT_PRESETS, GPTConfig
from scratchlm.models.gpt_oss import GPT_OSS_PRESETS, GptOss, GptOssConfig
from scratchlm.models.llama import LLAMA_PRESETS, Llama, LlamaConfig
from scratchlm.models.olmo3 import OLMO3_PRESETS, Olmo3, Olmo3Config
from scratchlm.models.qwen3 import QWEN3_PRESETS, Qwen3, Qwen3Config
from scratchlm.models.qwen3_5 import QWEN35_PRESETS, Qwen35, Qwen35Config
from scratchlm.nn.moe import upgrade_legacy_moe


@dataclass(frozen=True)
class Family:
    name: str
    config_cls: type
    model_cls: type
    presets: dict
    hf_model_types: tuple[str, ...] = ()
    hf_convert: str = ""  # module in models/convert with config_from_hf/_to_hf, hf_to_ours, ...
    gguf_archs: tuple[str, ...] = ()  # llama.cpp "general.architecture" names it reads
    # how its GGUF files' SentencePiece merges are ranked: "scores", or "positions" where the
    # scores do not follow the merge order and the pieces' order does (Gemma's, as transformers
    # reads them; tokenizers/spm_vocab.py)
    gguf_spm_merge_order: str = "scores"
    # What the native C decode layers must support to run this family (see
    # generation/native_decode.py): a model whose features are not all supported there runs
    # its one-token steps in PyTorch. Switches a config turns on (sliding window, q/k norms,
    # MoE, attention biases) are added from the config by ``model_features``.
    features: frozenset = field(default_factory=frozenset)
    # Weight names (ours or Hugging Face's) only this family has: a checkpoint of another
    # family is told from a damaged one by them (checkpoints/).
    weight_marks: tuple[str, ...] = ()
    # preset -> the Hugging Face repository with its published weights (checkpoints/names.py)
    hf_repos: dict = field(default_factory=dict)
    # the keys a saved config of this family holds and the others' lack: how an old config file
    # without a "family" field is told apart (``family_of_config``)
    config_marks: tuple[str, ...] = ()

    def hf(self) -> ModuleType:
        return importlib.import_module(f"scratchlm.models.convert.{self.hf_convert}")

    def config(self, data: dict):
        """A config of this family from a saved dict (``cfg.to_dict()``, older layouts too)."""
        data = upgrade_legacy_moe(dict(data))
        known = set(self.config_cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{self.config_cls.__name__}: unknown field {unknown[0]!r}")
        return self.config_cls(**data)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("gpt", GPTConfig, GPT, GPT_PRESETS, ("gpt2",), "hf_gpt2", ("gpt2",),
           features=frozenset({"layernorm", "learned_positions", "gelu", "biases"}),
           weight_marks=("pos_emb", "att.qkv", "c_attn", "wte.weight"),
           hf_repos={"gpt2-124m": "openai-community/gpt2",
                     "gpt2-355m": "openai-community/gpt2-medium",
                     "gpt2-774m": "openai-community/gpt2-large",
                     "gpt2-1558m": "openai-community/gpt2-xl"}),
    Family("llama", LlamaConfig, Llama, LLAMA_PRESETS, ("llama",), "hf_llama", ("llama",),
           features=frozenset({"rmsnorm", "rope", "swiglu"}),
           hf_repos={"smollm2-135m": "HuggingFaceTB/SmolLM2-135M",
                     "llama-3.2-1b": "meta-llama/Llama-3.2-1B"},  # gated: set HF_TOKEN
           config_marks=("intermediate_size",)),
    Family("qwen3", Qwen3Config, Qwen3, QWEN3_PRESETS, ("qwen3", "qwen3_moe"), "hf_llama",
           ("qwen3", "qwen3moe"), features=frozenset({"rmsnorm", "rope", "swiglu"}),
           weight_marks=("q_norm",),
           hf_repos={"qwen3-0.6b": "Qwen/Qwen3-0.6B", "qwen3-1.7b": "Qwen/Qwen3-1.7B",
                     "qwen3-4b": "Qwen/Qwen3-4B", "qwen3-8b": "Qwen/Qwen3-8B",
                     "qwen3-30b-a3b": "Qwen/Qwen3-30B-A3B"}),
    Family("gemma3", Gemma3Config, Gemma3, GEMMA3_PRESETS, ("gemma3_text", "gemma3"),
           "hf_gemma3", ("gemma3",),
           features=frozenset({"rmsnorm_unit_offset", "rope", "geglu", "qk_norm", "post_norms",
                               "embed_scale", "query_scale"}),
           weight_marks=("post_att_norm", "post_ff_norm", "feedforward_layernorm"),
           gguf_spm_merge_order="positions",
           hf_repos={"gemma3-270m": "google/gemma-3-270m",  # gated: set HF_TOKEN
                     "gemma3-1b": "google/gemma-3-1b-pt"}),  # gated: set HF_TOKEN
    Family("olmo3", Olmo3Config, Olmo3, OLMO3_PRESETS, ("olmo3",), "hf_olmo3", ("olmo2",),
           features=frozenset({"rmsnorm", "rope", "swiglu", "qk_norm_all_heads",
                               "post_norms_only"}),
           weight_marks=("att_out_norm",),
           hf_repos={"olmo3-7b": "allenai/Olmo-3-1025-7B",
                     "olmo3-32b": "allenai/Olmo-3-1125-32B"}),
    Family("gpt_oss", GptOssConfig, GptOss, GPT_OSS_PRESETS, ("gpt_oss",), "hf_gpt_oss",
           ("gpt-oss",),
           features=frozenset({"rmsnorm", "rope", "clamped_swiglu", "attention_sinks",
                               "biases", "out_bias"}),
           weight_marks=("att.sinks", "self_attn.sinks"),
           hf_repos={"gpt-oss-20b": "openai/gpt-oss-20b",
                     "gpt-oss-120b": "openai/gpt-oss-120b"}),
    Family("qwen3_5", Qwen35Config, Qwen35, QWEN35_PRESETS,
           ("qwen3_5_text", "qwen3_5", "qwen3_5_moe_text", "qwen3_5_moe"),
           "hf_qwen3_5", ("qwen35", "qwen35moe"),
           features=frozenset({"rmsnorm_unit_offset", "rope", "swiglu", "qk_norm",
                               "gated_deltanet", "output_gate", "partial_rope"}),
           weight_marks=("lin.qkv_proj", "linear_attn."),
           hf_repos={"qwen3.5-0.8b": "Qwen/Qwen3.5-0.8B", "qwen3.5-2b": "Qwen/Qwen3.5-2B",
                     "qwen3.5-4b": "Qwen/Qwen3.5-4B", "qwen3.5-9b": "Qwen/Qwen3.5-9B",
                     "qwen3.5-27b": "Qwen/Qwen3.5-27B",
                     "qwen3.5-35b-a3b": "Qwen/Qwen3.5-35B-A3B",
                     "qwen3.5-122b-a10b": "Qwen/Qwen3.5-122B-A10B",
                     "qwen3.5-397b-a17b": "Qwen/Qwen3.5-397B-A17B"}),
    Family("gemma4", Gemma4Config, Gemma4, GEMMA4_PRESETS, ("gemma4_text", "gemma4"),
           "hf_gemma4", ("gemma4",),
           features=frozenset({"rmsnorm", "rope", "geglu", "qk_norm", "v_norm", "post_norms",
                               "embed_scale", "per_layer_embeddings", "kv_sharing",
                               "partial_rope", "logit_softcap"}),
           weight_marks=("layer_scalar",),
           hf_repos={"gemma4-e2b": "google/gemma-4-E2B",  # gated: set HF_TOKEN
                     "gemma4-e4b": "google/gemma-4-E4B",
                     "gemma4-26b-a4b": "google/gemma-4-26B-A4B",
                     "gemma4-31b": "google/gemma-4-31B"}),
)}
DEFAULT_FAMILY = "gpt"  # the book's: what a saved config that names no family is


def hub_repos() -> dict[str, str]:
    """Preset -> Hugging Face repository, for every preset with published weights."""
    return {p: repo for fam in FAMILIES.values() for p, repo in fam.hf_repos.items()}


def family_of_config(data: dict) -> Family:
    """The family of a saved config dict that names none (an older run's ``config.json``): the
    one whose ``config_marks`` it holds, else the book's GPT."""
    for fam in FAMILIES.values():
        if fam.config_marks and all(k in data for k in fam.config_marks):
            return fam
    return FAMILIES[DEFAULT_FAMILY]


def family_named(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


def family_of(obj) -> Family:
    """The family of a model or a config (the one place that looks at classes)."""
    cfg = getattr(obj, "cfg", obj)
    for fam in FAMILIES.values():
        if type(cfg) is fam.config_cls:
            return fam
    raise ValueError(f"{type(obj).__name__} is not a model or config of a known family "
                     f"({', '.join(FAMILIES)})")


def _family_by(attr: str, value, what: str, source: str) -> Family:
    for fam in FAMILIES.values():
        if value in getattr(fam, attr):
            return fam
    known = sorted(v for f in FAMILIES.values() for v in getattr(f, attr))
    raise ValueError(f"{source}: unsupported {what} {value!r} (supported: {', '.join(known)})")


def family_for_hf(model_type: str | None, source: str = "config.json") -> Family:
    """The family of a Hugging Face ``config.json``'s ``model_type``."""
    return _family_by("hf_model_types", model_type, "model_type", source)


def family_for_gguf(arch: str | None, source: str = "GGUF") -> Family:
    """The family of a GGUF file's ``general.architecture``."""
    return _family_by("gguf_archs", arch, "architecture", source)


def preset_names() -> list[str]:
    return [name for fam in FAMILIES.values() for name in fam.presets]


def preset(name: str, **overrides):
    """(family, config) for a preset name of any family, e.g. ``preset("qwen3-0.6b")``."""
    for fam in FAMILIES.values():
        if name in fam.presets:
            return fam, fam.config_cls.from_name(name, **overrides)
    raise ValueError(f"unknown preset {name!r}; known: {', '.join(preset_names())}")


def build_model(cfg):
    """The model of ``cfg``'s family."""
    return family_of(cfg).model_cls(cfg)


def model_features(model) -> set[str]:
    """The features a model uses: its family's, plus the switches its config turns on."""
    cfg = getattr(model, "cfg", model)
    switches = {"sliding_window": getattr(cfg, "sliding_window", 0),
                "qk_norm": getattr(cfg, "qk_norm", False),
                "moe": cfg.moe.num_experts, "biases": getattr(cfg, "qkv_bias", False)}
    return set(family_of(cfg).features) | {name for name, on in switches.items() if on}


def family_of_weights(keys) -> str:
    """The family whose weight names ``keys`` (ours or Hugging Face's) carry; "llama", whose
    names the others extend, when none is marked. Later families are asked first: Gemma 3
    also has Qwen3's q/k norms."""
    for fam in reversed(FAMILIES.values()):
        if any(m in k for k in keys for m in fam.weight_marks):
            return fam.name
    return "llama"
