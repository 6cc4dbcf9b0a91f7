"""Every llama.cpp architecture we read and write, one ``Arch`` row each (``convert/gguf.py``
says what a row holds; the rules are in ``gguf_rules.py``, ``gguf_qwen35.py`` and
``gguf_gemma4.py``). A family names the architectures it reads in the registry
(``Family.gguf_archs``)."""

from __future__ import annotations

from scratchlm.models.convert.gguf import Arch
from scratchlm.models.convert.gguf_gemma4 import (_GEMMA4_BLOCK, _GEMMA4_TOP, _gemma4_check,
                                                  _gemma4_freqs_read, _gemma4_freqs_write,
                                                  _gemma4_from_names, _gemma4_kwargs,
                                                  _gemma4_metadata)
from scratchlm.models.convert.gguf_qwen35 import (_QWEN35_BLOCK, _qwen35_check, _qwen35_fix,
                                                  _qwen35_kwargs, _qwen35_metadata)
from scratchlm.models.convert.gguf_rules import (_GEMMA3_BLOCK, _GPT2_BLOCK, _GPT2_TOP,
                                                 _GPT_OSS_BLOCK, _LLAMA_BLOCK, _MOE, _OLMO2_BLOCK,
                                                 _QK_NORM, _gemma3_check, _gemma3_kwargs,
                                                 _gemma3_metadata, _gpt2_kwargs, _gpt2_metadata,
                                                 _gpt_oss_check, _gpt_oss_kwargs,
                                                 _gpt_oss_metadata, _llama3_freqs_read,
                                                 _llama3_freqs_write, _llama_kwargs,
                                                 _llama_metadata, _olmo2_check, _olmo2_kwargs,
                                                 _olmo2_metadata, _qwen3moe_kwargs,
                                                 _qwen3moe_metadata)

ARCHS = {
    "gpt2": Arch(_GPT2_BLOCK, read=_gpt2_kwargs, write=_gpt2_metadata, top=_GPT2_TOP,
                 zero_biases=("attn_qkv.bias",)),
    "llama": Arch(_LLAMA_BLOCK, read=_llama_kwargs, write=_llama_metadata, permute_qk=True,
                  rope_freqs=(_llama3_freqs_read, _llama3_freqs_write)),
    "qwen3": Arch({**_LLAMA_BLOCK, **_QK_NORM}, read=_llama_kwargs, write=_llama_metadata),
    "qwen3moe": Arch({**_LLAMA_BLOCK, **_QK_NORM, **_MOE}, read=_qwen3moe_kwargs,
                     write=_qwen3moe_metadata, experts=True),
    "gemma3": Arch(_GEMMA3_BLOCK, read=_gemma3_kwargs, write=_gemma3_metadata,
                   check=_gemma3_check, sliding_window=True, norm_shift=1.0),
    "olmo2": Arch(_OLMO2_BLOCK, read=_olmo2_kwargs, write=_olmo2_metadata, check=_olmo2_check,
                  sliding_window=True, yarn=True, head_always=True),
    "qwen35": Arch(_QWEN35_BLOCK, read=_qwen35_kwargs, write=_qwen35_metadata,
                   check=_qwen35_check, norm_shift=1.0, unshifted=("ssm_norm.weight",),
                   fix=(_qwen35_fix(False), _qwen35_fix(True)),
                   fixed_columns=("ssm_out.weight",)),
    "qwen35moe": Arch(_QWEN35_BLOCK, read=_qwen35_kwargs, write=_qwen35_metadata,
                      check=_qwen35_check, norm_shift=1.0, unshifted=("ssm_norm.weight",),
                      fix=(_qwen35_fix(False), _qwen35_fix(True)),
                      fixed_columns=("ssm_out.weight",), experts=True),
    "gemma4": Arch(_GEMMA4_BLOCK, read=_gemma4_kwargs, write=_gemma4_metadata,
                   check=_gemma4_check, sliding_window=True, top=_GEMMA4_TOP,
                   rope_freqs=(_gemma4_freqs_read, _gemma4_freqs_write),
                   from_names=_gemma4_from_names, experts=None, experts_under="moe",
                   fused_gate_up=True),
    "gpt-oss": Arch(_GPT_OSS_BLOCK, read=_gpt_oss_kwargs, write=_gpt_oss_metadata,
                    check=_gpt_oss_check, sliding_window=True, yarn=True, head_always=True,
                    experts=True),
}
