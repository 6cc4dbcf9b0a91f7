"""Packed rows with a document mask: each document's logits are those of the document run
alone (1e-5), in every family, sliding-window layers and gradient checkpointing included."""

from __future__ import annotations

import pytest
import torch

from scratchlm.models.registry import build_model, preset
from scratchlm.nn.doc_mask import DocumentMask
from scratchlm.training.losses import CausalLMLoss


@pytest.mark.parametrize("name", ["gpt-tiny", "llama-tiny", "qwen3-tiny", "gemma3-tiny",
                                  "gemma3-tiny-w4", "gemma4-tiny", "gpt-oss-tiny"])
@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("rows", [[[5, 12, 3], [20]], [[5, 6, 4, 5], [7, 7, 6]]],
                         ids=["whole-row-mask", "pieces"])
def test_each_document_sees_only_itself(name, checkpointing, rows):
    """``rows``: document lengths of two packed rows (20 tokens each); few long documents get
    one mask of the whole rows, more shorter ones attention per document (PackedMask).
    gemma3 with a window of 4 tokens inside the documents; gpt-oss's sinks take the pieces as
    one mask."""
    torch.manual_seed(0)
    _, cfg = preset(name.removesuffix("-w4"))
    if name.endswith("-w4"):
        cfg.sliding_window = 4
    cfg.grad_checkpointing = checkpointing
    model = build_model(cfg).eval()
    pieces = DocumentMask(torch.zeros(2, 20, dtype=torch.long))._pieces
    assert pieces is None  # one document a row: the whole rows' mask
    ids = torch.randint(0, min(cfg.vocab_size, 500), (2, 20))
    segments = torch.stack([torch.repeat_interleave(torch.arange(len(r)), torch.tensor(r))
                            for r in rows])
    mask = DocumentMask(segments)
    assert (mask._pieces is not None) == (len(rows[0]) > 3)
    with torch.enable_grad() if checkpointing else torch.no_grad():
        packed = model(ids, mask)
        for b, lengths in enumerate(rows):
            start = 0
            for n in lengths:
                alone = model(ids[b:b + 1, start:start + n])
                torch.testing.assert_close(packed[b:b + 1, start:start + n], alone, atol=1e-5,
                                           rtol=1e-5)
                start += n


def test_without_the_mask_documents_do_see_each_other():
    """The test above can fail: unmasked, a later document's logits differ from its own run."""
    torch.manual_seed(0)
    model = build_model(preset("llama-tiny")[1]).eval()
    ids = torch.randint(0, 500, (1, 12))
    with torch.no_grad():
        assert not torch.allclose(model(ids)[:, 6:], model(ids[:, 6:]), atol=1e-3)


def test_the_loss_takes_ids_and_segments():
    torch.manual_seed(0)
    model = build_model(preset("gpt-tiny")[1])
    ids, targets = torch.randint(0, 500, (2, 16)), torch.randint(0, 500, (2, 16))
    segments = torch.tensor([[0] * 7 + [1] * 9, [0] * 16])
    for fused in (True, False):
        loss = CausalLMLoss(model, fused)((ids, segments), targets)
        loss.backward()
        assert torch.isfinite(loss)
    whole = CausalLMLoss(model)((ids, torch.zeros_like(ids)), targets)
    torch.testing.assert_close(whole, CausalLMLoss(model)(ids, targets))


@pytest.mark.parametrize("window", [0, 3])
def test_packed_pieces_equal_one_mask_of_the_whole_row(window):
    """PackedMask's attention, piece by piece (with and without a shared prefix, grouped
    key/value heads, a window), equals SDPA with its dense() mask, which equals the mask
    written out here."""
    from scratchlm.nn.packed_attention import PackedMask, sdpa

    torch.manual_seed(0)
    # row 0: a prefix of 4 keys, then pieces of 3 and 5 queries; row 1: two documents, no prefix
    pieces = [(0, 0, 3, 4, 4), (0, 3, 8, 4, 7), (1, 0, 6, 0, 0), (1, 6, 8, 0, 6)]
    mask = PackedMask(pieces, (2, 8, 12), window)
    q = torch.randn(2, 4, 8, 16, requires_grad=True)
    k, v = torch.randn(2, 2, 12, 16), torch.randn(2, 2, 12, 16)
    want = torch.zeros(2, 1, 8, 12, dtype=torch.bool)
    for row, q_lo, q_hi, prefix, k_lo in pieces:
        for j in range(q_hi - q_lo):
            for s in [*range(prefix), *range(k_lo, k_lo + j + 1)]:
                pos_s = s if s < prefix else prefix + s - k_lo
                if not window or prefix + j - pos_s < window:
                    want[row, 0, q_lo + j, s] = True
    assert torch.equal(mask.dense(), want)
    got = sdpa(q, k, v, mask, False, enable_gqa=True)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=want,
                                                           enable_gqa=True)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)
    g1, = torch.autograd.grad(got.sum(), q)
    g2, = torch.autograd.grad(ref.sum(), q)
    torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="cover"):
        PackedMask(pieces[1:], (2, 8, 12))
