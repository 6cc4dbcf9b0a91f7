"""Packed rows with a document mask: each document's logits are those of the document run
alone (1e-5), in every family, sliding-window layers and gradient checkpointing included."""

from __future__ import annotations

import pytest
import torch

from scratchlm.models.registry import build_model, preset
from scratchlm.nn.doc_mask import DocumentMask
from scratchlm.training.losses import CausalLMLoss


@pytest.mark.parametrize("name", ["gpt-tiny", "llama-tiny", "qwen3-tiny", "gemma3-tiny",
                                  "gemma4-tiny"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_each_document_sees_only_itself(name, checkpointing):
    torch.manual_seed(0)
    _, cfg = preset(name)
    cfg.grad_checkpointing = checkpointing
    model = build_model(cfg).eval()
    rows = [[5, 12, 3], [20]]  # document lengths of two packed rows (20 tokens each)
    ids = torch.randint(0, min(cfg.vocab_size, 500), (2, 20))
    segments = torch.stack([torch.repeat_interleave(torch.arange(len(r)), torch.tensor(r))
                            for r in rows])
    with torch.enable_grad() if checkpointing else torch.no_grad():
        packed = model(ids, DocumentMask(segments))
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
