from __future__ import annotations

import pytest
import torch
from torch import nn

from scratchlm.finetune.lora import (
    LinearWithLoRA,
    LoRALinear,
    adapter_state_dict,
    apply_lora,
    merge_lora,
    replace_linear_with_lora,
    set_lora_enabled,
)
from scratchlm.models.accounting import count_parameters
from scratchlm.models.gpt import GPT, GPTConfig
from scratchlm.models.llama import Llama, LlamaConfig


def test_book_lora_starts_as_the_base():
    torch.manual_seed(0)
    lin = nn.Linear(8, 4)
    wrapped = LinearWithLoRA(lin, rank=2, alpha=4)
    x = torch.randn(3, 8)
    assert torch.equal(wrapped(x), lin(x))
    assert wrapped.lora.A.shape == (8, 2) and torch.all(wrapped.lora.B == 0)
    with torch.no_grad():
        wrapped.lora.B.fill_(0.1)
    assert torch.allclose(wrapped(x), lin(x) + 4 * (x @ wrapped.lora.A @ wrapped.lora.B))
    seq = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 2)))
    replace_linear_with_lora(seq, 2, 1)
    assert isinstance(seq[0], LinearWithLoRA) and isinstance(seq[2][0], LinearWithLoRA)


def test_known_count_gpt2_124m_classifier():
    """The book's appendix E figure: 2-class head, everything frozen, rank 16 on every Linear."""
    model = GPT(GPTConfig.from_name("gpt2-124m"))
    model.out_head = nn.Linear(768, 2)
    assert count_parameters(model) == 124_441_346
    apply_lora(model, rank=16, alpha=16, targets="all")
    assert count_parameters(model, trainable_only=True) == 2_666_528


def test_the_books_replace_linear_with_lora_gives_the_books_count():
    """The book's own function on our GPT (fused QKV): the fused projection gets one adapter
    per part, so the count is the book's 2,666,528, as apply_lora's."""
    from scratchlm.finetune.lora import replace_linear_with_lora

    model = GPT(GPTConfig.from_name("gpt2-124m"))
    model.out_head = nn.Linear(768, 2)
    model.requires_grad_(False)
    replace_linear_with_lora(model, rank=16, alpha=16)
    assert count_parameters(model, trainable_only=True) == 2_666_528
    x = torch.randint(0, 50257, (1, 6))
    with torch.no_grad():  # B starts at zero: still the base model
        before = model(x)
        for n, p in model.named_parameters():
            if n.endswith(".B"):
                p.normal_(0, 0.01)
        assert (model(x) - before).abs().max() > 0


def _tiny_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=100, context_length=16, n_embd=32, n_layer=2, n_head=4))


def _randomize_adapters(model):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.05)


@pytest.mark.parametrize("targets", [("q", "v"), "all", ("k", "ff", "head")])
def test_merge_unmerge_and_disable(targets):
    model = _tiny_gpt().eval()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randint(0, 100, (2, 10))
    with torch.no_grad():
        base = model(x)
    apply_lora(model, rank=4, alpha=8, targets=targets)
    _randomize_adapters(model)
    with torch.no_grad():
        adapted = model(x)
        assert not torch.allclose(adapted, base)
        set_lora_enabled(model, False)
        assert torch.allclose(model(x), base, atol=1e-6)
        set_lora_enabled(model, True)
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.merge()
        assert torch.allclose(model(x), adapted, atol=1e-5)
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.unmerge()
        for k, v in base_state.items():
            assert torch.allclose(model.state_dict()[k], v, atol=1e-6), k
        merged = merge_lora(model)
        assert not any(isinstance(m, LoRALinear) for m in merged.modules())
        assert torch.allclose(merged(x), adapted, atol=1e-5)


def test_base_names_kept_and_only_adapters_train():
    model = _tiny_gpt()
    names = set(model.state_dict())
    apply_lora(model, rank=2, alpha=2, targets=("q", "v", "out"))
    assert names <= set(model.state_dict())  # a base checkpoint loads unchanged
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    assert set(adapter_state_dict(model)) == {n for n in model.state_dict() if ".lora_" in n}
    assert any(".qkv.lora_A.q." in n for n in trainable) and not any(".lora_A.k." in n for n in trainable)
    with pytest.raises(ValueError, match="unknown LoRA targets"):
        apply_lora(_tiny_gpt(), targets=("query",))


def test_peft_loads_our_adapter_onto_the_hf_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from scratchlm.finetune.peft_format import load_peft_adapter, save_peft_adapter
    from scratchlm.checkpoints.hf import load_hf_llama

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=120, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=32)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path / "base")
    ours = load_hf_llama(tmp_path / "base").eval()
    apply_lora(ours, rank=4, alpha=8, targets=("q", "k", "v", "out", "ff"), scaling="book")
    _randomize_adapters(ours)
    save_peft_adapter(ours, tmp_path / "adapter", str(tmp_path / "base"))
    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    x = torch.randint(0, 120, (2, 12))
    with torch.no_grad():
        assert (ours(x) - peft_model(x).logits).abs().max() <= 1e-4
    # and back: the PEFT folder onto a fresh copy of our model
    again = load_peft_adapter(load_hf_llama(tmp_path / "base").eval(), tmp_path / "adapter")
    with torch.no_grad():
        assert (again(x) - ours(x)).abs().max() <= 1e-5
    assert isinstance(Llama(LlamaConfig.from_name("llama-tiny")), nn.Module)


def test_named_adapters_switch(tmp_path):
    """Two adapters of different rank and targets on one base: each, when active, gives the
    outputs of a model with only that adapter; None gives the base."""
    from scratchlm.finetune.adapter_bank import (
        add_named_adapter,
        adapter_names,
        set_adapter,
        set_row_adapters,
    )
    from scratchlm.finetune.lora import LoraConfig, load_adapter, save_adapter

    cfg = GPTConfig(vocab_size=97, context_length=16, n_embd=32, n_layer=2, n_head=4)
    torch.manual_seed(0)
    base = GPT(cfg).eval()
    x = torch.randint(0, 97, (2, 10))
    want = {None: base(x)}
    for name, lc in (("polite", LoraConfig(rank=4, alpha=8, targets=["q", "v"])),
                     ("terse", LoraConfig(rank=2, alpha=4, targets=["ff", "out"]))):
        m = GPT(cfg).eval()
        m.load_state_dict(base.state_dict())
        apply_lora(m, lc.rank, lc.alpha, tuple(lc.targets))
        for p in m.parameters():
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.2)  # a "trained" adapter
        want[name] = m(x)
        save_adapter(m, tmp_path / name, lc)
        again = load_adapter(GPT(cfg).eval(), tmp_path / name)
        again.load_state_dict(base.state_dict(), strict=False)
        torch.testing.assert_close(again(x), want[name])
    model = GPT(cfg).eval()
    model.load_state_dict(base.state_dict())
    add_named_adapter(model, "polite", tmp_path / "polite")
    add_named_adapter(model, "terse", tmp_path / "terse")
    assert adapter_names(model) == ["polite", "terse"]
    for name in ("terse", "polite", None, "terse"):
        set_adapter(model, name)
        torch.testing.assert_close(model(x), want[name])
    assert not torch.allclose(want["polite"], want["terse"])
    with pytest.raises(KeyError, match="loaded"):
        set_adapter(model, "nope")
    # one batch, each row its own adapter (or none): each row equals its adapter's forward
    rows = ["terse", None, "polite", "terse"]
    xs = torch.cat([x, x])  # (4, 10): rows 0-1 are x's rows, and 2-3 again
    set_row_adapters(model, rows)
    got = model(xs)
    for i, name in enumerate(rows):
        torch.testing.assert_close(got[i], want[name][i % 2], atol=1e-5, rtol=1e-5)
    set_adapter(model, "polite")  # back to one for all
    torch.testing.assert_close(model(x), want["polite"])
    # an adapter of another base (other sizes) is refused, naming the folder
    other = GPT(GPTConfig(vocab_size=97, context_length=16, n_embd=48, n_layer=2, n_head=4))
    apply_lora(other, 4, 8, ("q", "v"))
    save_adapter(other, tmp_path / "other", LoraConfig(rank=4, alpha=8, targets=["q", "v"]))
    with pytest.raises(ValueError, match="other.*different base model"):
        add_named_adapter(model, "other", tmp_path / "other")


def test_lora_head_is_fused_with_the_loss_exactly():
    """A LoRA-wrapped head goes through the fused head+loss with W + s*B@A: same loss and
    adapter gradients as materialising the logits, and the effective weight of a multi-part
    layer (GPT's qkv) reproduces its forward."""
    from scratchlm.finetune.lora import apply_lora, lora_modules
    from scratchlm.models.gpt import GPT, GPTConfig
    from scratchlm.nn.loss import head_weight
    from scratchlm.training.losses import causal_lm_loss

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, context_length=32, n_embd=32, n_head=2, n_layer=2))
    apply_lora(model, 4, 8.0, ("all",))
    for m in lora_modules(model).values():
        for b in m.lora_B.values():
            torch.nn.init.normal_(b.weight, std=0.1)
    x = torch.randint(0, 300, (3, 20))
    y = torch.randint(0, 300, (3, 20))
    y[0, :5] = -100
    assert head_weight(model.out_head) is not None
    grads = []
    for fused in (True, False):
        model.zero_grad()
        loss = causal_lm_loss(model, x, y, fused=fused)
        loss.backward()
        grads.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()
                                    if p.requires_grad}))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5)
    for n, g in grads[0][1].items():
        torch.testing.assert_close(g, grads[1][1][n], atol=1e-5, rtol=1e-4)
    from scratchlm.finetune.lora import LoRALinear

    parted = LoRALinear(nn.Linear(8, 12, bias=False), 2, 4.0, {"q": slice(0, 4), "v": slice(8, 12)})
    for b in parted.lora_B.values():
        torch.nn.init.normal_(b.weight)
    h = torch.randn(2, 5, 8)
    torch.testing.assert_close(torch.nn.functional.linear(h, parted.effective_weight()), parted(h))
    model.out_head.dropout.p = 0.1  # dropout on the adapter input: no longer a weight
    assert head_weight(model.out_head) is None


@pytest.mark.parametrize("x_grad,bias", [(True, False), (False, True)])
def test_one_matmul_path_equals_the_plain_formula(x_grad, bias):
    """LoRALinear's [x, a] @ [W, B].T path: output and gradients (x, A, B) equal the formula
    x W^T + s (x A^T) B^T + b written out, and W gets no gradient."""
    from scratchlm.finetune.lora import LoRALinear

    torch.manual_seed(0)
    lin = torch.nn.Linear(24, 40, bias=bias).requires_grad_(False)
    lora = LoRALinear(lin, rank=4, alpha=8, scaling="peft")
    torch.nn.init.normal_(lora.lora_B["all"].weight)
    x = torch.randn(3, 5, 24, requires_grad=x_grad)
    assert lora._fusable(x)
    y = lora(x)
    A, B = lora.lora_A["all"].weight, lora.lora_B["all"].weight
    ref = x @ lin.weight.T + (x @ A.T * lora.scale) @ B.T + (lin.bias if bias else 0)
    assert torch.allclose(y, ref, atol=1e-5)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, [A, B] + ([x] if x_grad else []), g)
    want = torch.autograd.grad(ref, [A, B] + ([x] if x_grad else []), g)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-4)
    assert lin.weight.grad is None


def test_merging_a_head_adapter_of_a_tied_model_survives_save_and_load(tmp_path):
    from scratchlm.finetune.lora import apply_lora, merge_lora
    from scratchlm.checkpoints.load import load_pretrained
    from scratchlm.checkpoints.ours import save_pretrained
    from scratchlm.models.registry import build_model, preset

    torch.manual_seed(0)
    model = build_model(preset("llama-tiny")[1]).eval()
    assert model.cfg.tie_embeddings
    apply_lora(model, 4, 8, ("all",))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    x = torch.randint(0, 512, (1, 12))
    with torch.no_grad():
        want = model(x)
    merge_lora(model)
    assert not model.cfg.tie_embeddings and model.out_head.weight is not model.tok_emb.weight
    save_pretrained(model, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(load_pretrained(str(tmp_path))(x), want, atol=1e-5, rtol=1e-5)
