"""GGUF files of every architecture the registry reads (llama.cpp's qwen3, qwen3moe, gemma3,
olmo2),
written with ``gguf.GGUFWriter`` the way llama.cpp's converter writes them, load with the
logits of the same weights loaded from safetensors; K-quant blocks dequantize exactly as the
``gguf`` package's reference does; bad metadata names the file and the field."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import random_blocks

gguf = pytest.importorskip("gguf")

from scratchlm.models.convert.gguf import GGUFError, dequantize  # noqa: E402
from scratchlm.models.gemma3 import Gemma3Config  # noqa: E402
from scratchlm.models.olmo3 import Olmo3Config  # noqa: E402
from scratchlm.checkpoints.gguf import load_gguf
from scratchlm.checkpoints.hf import save_hf
from scratchlm.checkpoints.load import load_pretrained  # noqa: E402
from scratchlm.models.qwen3 import Qwen3Config  # noqa: E402
from scratchlm.models.registry import build_model  # noqa: E402
from scratchlm.tokenizers.bpe import bytes_to_unicode  # noqa: E402

Q = gguf.GGMLQuantizationType
VOCAB = 300


def tokens() -> list[str]:
    byte_tokens = list(bytes_to_unicode().values())
    return byte_tokens + [f"<extra{i}>" for i in range(VOCAB - len(byte_tokens))]


def llama_cpp_names(arch: str) -> dict[str, str]:
    """Our block key suffix -> llama.cpp tensor name suffix for ``arch``."""
    names = {"norm1.weight": "attn_norm", "att.q_proj.weight": "attn_q",
             "att.k_proj.weight": "attn_k", "att.v_proj.weight": "attn_v",
             "att.out_proj.weight": "attn_output", "att.q_norm.weight": "attn_q_norm",
             "att.k_norm.weight": "attn_k_norm", "norm2.weight": "ffn_norm",
             "ff.fc1.weight": "ffn_gate", "ff.fc2.weight": "ffn_up", "ff.fc3.weight": "ffn_down",
             "ff.router.weight": "ffn_gate_inp"}
    if arch == "gemma3":
        names.update({"post_att_norm.weight": "post_attention_norm",
                      "post_ff_norm.weight": "post_ffw_norm"})
    if arch == "olmo2":
        names.update({"att_out_norm.weight": "post_attention_norm",
                      "ff_out_norm.weight": "post_ffw_norm"})
    return names


def write_family_gguf(path, model, arch: str, qtypes: dict | None = None):
    """``model`` as llama.cpp's convert_hf_to_gguf.py writes ``arch`` (Gemma norms stored as
    1 + w, experts stacked (E, out, in)); ``qtypes`` maps a tensor name to raw K-quant bytes."""
    cfg = model.cfg
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.n_layer)
    w.add_context_length(cfg.context_length)
    w.add_embedding_length(cfg.n_embd)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.n_head)
    w.add_head_count_kv(cfg.n_kv_head)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_base)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    if arch == "gemma3":
        w.add_sliding_window(cfg.sliding_window)
    if arch == "olmo2" and cfg.sliding_window:  # as conversion/olmo.py writes OLMo 3
        w.add_sliding_window(cfg.sliding_window)
        w.add_sliding_window_pattern([(i + 1) % cfg.sliding_window_pattern != 0
                                      for i in range(cfg.n_layer)])
    if arch == "olmo2" and cfg.rope_scaling:  # and TextModel its YaRN
        s = cfg.rope_scaling
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(s["factor"])
        w.add_rope_scaling_orig_ctx_len(s["original_context_length"])
        w.add_rope_scaling_yarn_beta_fast(32.0)  # written, and not read by llama.cpp's olmo2
        w.add_rope_scaling_yarn_beta_slow(1.0)
    if arch == "qwen3moe":
        w.add_expert_count(cfg.moe.num_experts)
        w.add_expert_used_count(cfg.moe.top_k)
        w.add_expert_feed_forward_length(cfg.moe.intermediate_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2" if arch.startswith("qwen") else "default")
    w.add_token_list(tokens())
    w.add_token_merges([])
    w.add_token_types([1] * (VOCAB - 1) + [3])  # the last token is a control token (EOS)
    w.add_eos_token_id(VOCAB - 1)
    names = llama_cpp_names(arch)
    shift = 1.0 if arch == "gemma3" else 0.0
    stacked: dict[str, list[np.ndarray]] = {}
    for key, t in model.state_dict().items():
        a = t.detach().numpy().astype(np.float32)
        if key == "out_head.weight":
            if cfg.tie_embeddings and arch != "olmo2":
                continue
            name = "output.weight"
        elif key == "tok_emb.weight":
            name = "token_embd.weight"
        elif key == "final_norm.weight":
            name, a = "output_norm.weight", a + shift
        else:
            _, layer, rest = key.split(".", 2)
            if rest.startswith("ff.experts."):
                e, _, tail = rest.removeprefix("ff.experts.").partition(".")
                part = {"fc1.weight": "ffn_gate_exps", "fc2.weight": "ffn_up_exps",
                        "fc3.weight": "ffn_down_exps"}[tail]
                stacked.setdefault(f"blk.{layer}.{part}.weight", []).append(a)
                continue
            name = f"blk.{layer}.{names[rest]}.weight"
            if rest.endswith("norm.weight") or "norm" in rest:
                a = a + shift
        if qtypes and name in qtypes:
            raw, qtype = qtypes[name]
            w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qtype)
        else:
            w.add_tensor(name, a)
    for name, parts in stacked.items():
        w.add_tensor(name, np.stack(parts))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def random_model(cfg):
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.normal_(0.0 if "Gemma" in type(cfg).__name__ else 1.0, 0.2)
    return model


CASES = {
    "qwen3": lambda: Qwen3Config.from_name("qwen3-tiny", vocab_size=VOCAB),
    "qwen3-untied": lambda: Qwen3Config.from_name("qwen3-tiny", vocab_size=VOCAB,
                                                  tie_embeddings=False),
    "qwen3moe": lambda: Qwen3Config.from_name(
        "qwen3-tiny", vocab_size=VOCAB, tie_embeddings=False,
        moe={"num_experts": 4, "top_k": 2, "intermediate_size": 32}),
    "gemma3": lambda: Gemma3Config.from_name("gemma3-tiny", vocab_size=VOCAB, n_layer=6,
                                             sliding_window_pattern=6, sliding_window=8,
                                             query_pre_attn_scalar=32),
    # OLMo 3 as llama.cpp's olmo2: 3 local layers to 1 global with YaRN, post-norms only
    "olmo2": lambda: Olmo3Config.from_name("olmo3-tiny", vocab_size=VOCAB, n_layer=8),
    # OLMo 2: every layer global, plain RoPE
    "olmo2-plain": lambda: Olmo3Config.from_name("olmo3-tiny", vocab_size=VOCAB,
                                                 sliding_window=0, sliding_window_pattern=0,
                                                 rope_scaling=None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_gguf_logits_equal_safetensors(tmp_path, case):
    model = random_model(CASES[case]())
    arch = case.removesuffix("-untied").removesuffix("-plain")
    write_family_gguf(tmp_path / "m.gguf", model, arch)
    save_hf(model, tmp_path / "hf")
    from_gguf, tok = load_gguf(tmp_path / "m.gguf")
    from_st = load_pretrained(str(tmp_path / "hf"))
    assert type(from_gguf) is type(from_st) and from_gguf.cfg == from_st.cfg
    x = torch.randint(0, VOCAB, (2, 24))
    with torch.no_grad():
        assert (from_gguf(x) - from_st(x)).abs().max().item() <= 1e-4
        assert (from_gguf(x) - model(x)).abs().max().item() <= 1e-4
    assert tok.eos_id == VOCAB - 1


@pytest.mark.parametrize("qtype", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
def test_k_quants_dequantize_as_the_gguf_reference(qtype):
    raw = random_blocks(qtype, 3, 512)
    want = gguf.quants.dequantize(raw, Q[qtype]).reshape(3, 512)
    got = dequantize(raw.reshape(-1), qtype, (3, 512))
    assert np.array_equal(got, want) and np.isfinite(got).all() and np.abs(got).max() > 0


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K"])
def test_a_k_quant_tensor_in_a_file_loads(tmp_path, qtype):
    cfg = Qwen3Config.from_name("qwen3-tiny", vocab_size=VOCAB, n_embd=256, n_head=4,
                                head_dim=64, intermediate_size=256)
    model = random_model(cfg)
    raw = random_blocks(qtype, 256, 256, seed=1)  # blk.0.ffn_up: (256 out, 256 in)
    write_family_gguf(tmp_path / "k.gguf", model, "qwen3",
                      qtypes={"blk.0.ffn_up.weight": (raw, Q[qtype])})
    loaded, _ = load_gguf(tmp_path / "k.gguf")
    want = gguf.quants.dequantize(raw, Q[qtype]).reshape(256, 256)
    assert np.array_equal(loaded.trf_blocks[0].ff.fc2.weight.detach().numpy(), want)


def write_meta_only(path, arch: str, **fields):
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in fields.items():
        w.add_uint32(f"{arch}.{key}", value)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


GOOD = dict(context_length=64, embedding_length=64, block_count=2, feed_forward_length=128,
            **{"attention.head_count": 4, "attention.head_count_kv": 2})


@pytest.mark.parametrize("field,value", [("attention.head_count", 0),
                                         ("block_count", 10**6),
                                         ("embedding_length", 2**31)])
def test_hostile_metadata_names_file_and_field(tmp_path, field, value):
    write_meta_only(tmp_path / "bad.gguf", "qwen3", **{**GOOD, field: value})
    with pytest.raises(GGUFError, match=rf"bad.gguf.*{field}"):
        load_gguf(tmp_path / "bad.gguf")


def test_unknown_architecture_names_itself_and_the_file(tmp_path):
    write_meta_only(tmp_path / "m.gguf", "mamba", **GOOD)
    with pytest.raises(GGUFError, match=r"m.gguf.*'mamba'.*gemma3"):
        load_gguf(tmp_path / "m.gguf")


def test_a_tokenizer_model_we_do_not_read_is_refused_by_name_but_the_weights_load(tmp_path):
    """A vocabulary of a kind we do not read (T5's Unigram, tokenizer.ggml.model = t5):
    load_gguf says so; load_pretrained (weights only) works. (SentencePiece, 'llama', is read:
    tests/export/test_gguf_sentencepiece.py.)"""
    from scratchlm.checkpoints.files import CheckpointError

    model = random_model(CASES["gemma3"]())
    write_family_gguf(tmp_path / "g.gguf", model, "gemma3")
    import gguf as g

    raw = g.GGUFReader(str(tmp_path / "g.gguf"))  # rewrite the tokenizer model field
    w = g.GGUFWriter(str(tmp_path / "spm.gguf"), "gemma3")
    for key, field in raw.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = field.contents()
        if key == "tokenizer.ggml.model":
            value = "t5"
        w.add_key_value(key, value, field.types[0],
                        sub_type=field.types[-1] if len(field.types) > 1 else None)
    for t in raw.tensors:
        w.add_tensor(t.name, np.array(t.data), raw_shape=list(reversed(t.shape.tolist())))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CheckpointError, match=r"spm.gguf: tokenizer model 't5' is not supported"):
        load_gguf(tmp_path / "spm.gguf")
    loaded = load_pretrained(str(tmp_path / "spm.gguf"))
    x = torch.randint(0, VOCAB, (1, 12))
    with torch.no_grad():
        assert (loaded(x) - model(x)).abs().max() <= 1e-4


@pytest.mark.parametrize("arch", ["qwen3", "gemma3"])
def test_keep_quantized_runs_the_files_blocks(tmp_path, arch):
    """``load_gguf(keep_quantized=True)`` on a file mixing Q8_0, Q4_0, Q4_1, Q4_K, Q6_K and F32
    tensors: those layers keep their blocks (the embedding too) and the model computes what
    the dequantized model computes, in prefill and in decode."""
    from scratchlm.generation.engine import Engine, SamplingParams
    from scratchlm.nn.gguf_linear import GGUFEmbedding, GGUFLinear

    base = (Qwen3Config.from_name("qwen3-tiny", vocab_size=VOCAB, n_embd=256, n_head=4,
                                  head_dim=64, intermediate_size=256) if arch == "qwen3" else
            Gemma3Config.from_name("gemma3-tiny", vocab_size=VOCAB, n_embd=256, n_head=4,
                                   head_dim=64, intermediate_size=256, n_layer=2,
                                   sliding_window_pattern=2, sliding_window=8))
    model = random_model(base)
    state = model.state_dict()
    plan = {"token_embd.weight": ("Q8_0", "tok_emb.weight"),
            "blk.0.attn_q.weight": ("Q4_0", "trf_blocks.0.att.q_proj.weight"),
            "blk.0.attn_k.weight": ("Q4_1", "trf_blocks.0.att.k_proj.weight"),
            "blk.0.attn_v.weight": ("Q5_0", "trf_blocks.0.att.v_proj.weight"),
            "blk.1.attn_q.weight": ("Q5_1", "trf_blocks.1.att.q_proj.weight"),
            "blk.0.ffn_up.weight": ("Q4_K", None), "blk.1.ffn_down.weight": ("Q6_K", None),
            "blk.1.ffn_up.weight": ("Q5_K", None)}
    qtypes = {}
    for name, (qtype, key) in plan.items():
        if key is None:
            raw = random_blocks(qtype, 256, 256, seed=len(qtypes))
        else:
            raw = gguf.quants.quantize(state[key].numpy(), Q[qtype])
        qtypes[name] = (raw, Q[qtype])
    write_family_gguf(tmp_path / "m.gguf", model, arch, qtypes=qtypes)
    plain, _ = load_gguf(tmp_path / "m.gguf")
    blocks, _ = load_gguf(tmp_path / "m.gguf", keep_quantized=True)
    kept = {m.qtype for m in blocks.modules() if isinstance(m, GGUFLinear)}
    assert kept == {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"}  # Q8_0: head
    assert isinstance(blocks.tok_emb, GGUFEmbedding)
    x = torch.randint(0, VOCAB, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(blocks(x), plain(x), atol=1e-4, rtol=1e-4)
    prompts, params = [[5, 6, 7, 8], [9, 10]], SamplingParams(max_new_tokens=8)
    assert Engine(blocks).generate(prompts, params) == Engine(plain).generate(prompts, params)


def test_mxfp4_dequantizes_as_the_gguf_reference():
    """gpt-oss's experts as llama.cpp's converter writes them: random e8m0 scales around 1
    (denormal and large ones included) and random 4-bit codes."""
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (6 * 4, 17), dtype=np.uint8)
    raw[:, 0] = np.concatenate([[0, 1, 254], rng.integers(110, 140, raw.shape[0] - 3)])
    raw = raw.reshape(6, 4 * 17)
    want = gguf.quants.dequantize(raw, Q.MXFP4).reshape(6, 128)
    got = dequantize(raw.reshape(-1), "MXFP4", (6, 128))
    assert np.array_equal(got, want) and np.abs(got).max() > 0


def test_gpt_oss_with_mxfp4_experts_loads(tmp_path):
    """A gpt-oss file whose experts are MXFP4 blocks (as published) loads them dequantized."""
    from scratchlm.export.gguf import _add_metadata
    from scratchlm.models.convert.gguf import ARCHS, config_metadata
    from scratchlm.models.gpt_oss import GptOssConfig

    model = random_model(GptOssConfig.from_name("gpt-oss-tiny", vocab_size=VOCAB))
    cfg, want = model.cfg, {}
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "gpt-oss")
    _add_metadata(w, config_metadata(cfg, "gpt-oss"))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens())
    w.add_token_merges([])
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    for name, array in ARCHS["gpt-oss"].to_gguf(state, cfg):
        if name.endswith("_exps.weight"):  # (E, out, in): blocks along `in`
            raw = gguf.quants.quantize(array, Q.MXFP4)
            want[name] = gguf.quants.dequantize(raw, Q.MXFP4).reshape(array.shape)
            w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=Q.MXFP4)
        else:
            w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    loaded, _ = load_gguf(tmp_path / "m.gguf")
    ff = loaded.trf_blocks[1].ff.experts[3]
    assert np.array_equal(ff.fc1.weight.detach().numpy(), want["blk.1.ffn_gate_exps.weight"][3])
    assert np.array_equal(ff.fc3.weight.detach().numpy(), want["blk.1.ffn_down_exps.weight"][3])
    assert torch.equal(loaded.trf_blocks[1].att.sinks, model.trf_blocks[1].att.sinks)


@pytest.mark.parametrize("arch,key,value", [
    ("qwen35", "rope.dimension_sections", [11, 11]),          # too short to index by pair
    ("qwen35", "attention.recurrent_layers", [3, 2]),           # no bool array
    ("gemma4", "attention.head_count_kv", [2, 1 << 30]),       # a size past every bound
    ("gemma4", "attention.sliding_window_pattern", [True]),    # not one per layer
])
def test_hostile_per_layer_arrays_name_file_and_field(tmp_path, arch, key, value):
    w = gguf.GGUFWriter(str(tmp_path / "bad.gguf"), arch)
    fields = {**GOOD, "rope.dimension_count": 16, "attention.key_length": 16,
              "attention.key_length_swa": 16, "attention.sliding_window": 8,
              "ssm.conv_kernel": 4, "ssm.state_size": 8, "ssm.group_count": 2,
              "ssm.time_step_rank": 2, "ssm.inner_size": 16}
    for k, v in fields.items():
        if k != key:
            w.add_uint32(f"{arch}.{k}", v)
    if key != "attention.sliding_window_pattern":
        w.add_array(f"{arch}.attention.sliding_window_pattern", [True, False])
    w.add_array(f"{arch}.{key}", value)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(GGUFError, match=rf"bad.gguf.*{key}"):
        load_gguf(tmp_path / "bad.gguf")


def test_qwen35_keeps_its_blocks_but_the_reordered_columns(tmp_path, small_bpe):
    """A Q8_0 Qwen3.5 file kept as blocks: the layers whose rows llama.cpp reordered keep
    their blocks (rows move whole), ``ssm_out`` (columns reordered) is dequantized, and the
    model computes what the dequantized one does."""
    from scratchlm.export.gguf import write_gguf
    from scratchlm.models.qwen3_5 import Qwen35Config
    from scratchlm.nn.gguf_linear import GGUFLinear

    model = random_model(Qwen35Config.from_name("qwen3.5-tiny", n_embd=256, intermediate_size=256,
                                                linear_key_dim=32, linear_value_dim=32))
    path = write_gguf(model, small_bpe, tmp_path / "q.gguf", "f32", quant="q8_0")
    kept, _ = load_gguf(path, keep_quantized=True)
    plain, _ = load_gguf(path)
    lin = kept.trf_blocks[0].lin
    assert isinstance(lin.qkv_proj, GGUFLinear) and isinstance(lin.z_proj, GGUFLinear)
    assert type(lin.out_proj) is torch.nn.Linear
    x = torch.randint(0, 512, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(kept(x), plain(x), atol=1e-4, rtol=1e-4)
