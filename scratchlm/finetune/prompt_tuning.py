"""Prompt tuning (Lester et al., 2021): learn ``num_virtual_tokens`` input embeddings, a "soft
prompt", placed before every input while the whole model stays frozen.

    ids (B, T) -> tok_emb -> [soft prompt (P, C) ; token embeddings]  (B, P+T, C)
               -> the frozen transformer -> states of the T real positions -> out_head

Only P * C numbers train (20 x 576 = 11,520 for SmolLM2-135M), and one base model can serve
many tasks by swapping prompts. The prompt starts as random embeddings (drawn from the
embedding matrix's own scale) or as the embeddings of a text such as "Classify if the tweet is
a complaint or not:" (repeated or cut to P tokens), which usually trains faster.

``save_prompt`` writes the Hugging Face PEFT layout (``adapter_config.json`` with
``peft_type: PROMPT_TUNING`` and ``adapter_model.safetensors`` holding ``prompt_embeddings``),
so PEFT can load our prompts and we can load PEFT's.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn


class PromptTuned(nn.Module):
    """A frozen ``model`` behind a trainable soft prompt. It looks like a model to the rest of
    the code (``cfg``, ``hidden_states``, ``out_head``, ``forward``); its ``cfg`` has
    ``context_length`` reduced by P, so generation crops inputs to what still fits."""

    def __init__(self, model: nn.Module, num_virtual_tokens: int = 20,
                 init_text: str | None = None, tokenizer=None, seed: int = 123):
        super().__init__()
        if not 1 <= num_virtual_tokens < model.cfg.context_length:
            raise ValueError(f"num_virtual_tokens must be in [1, context_length), got "
                             f"{num_virtual_tokens}")
        model.requires_grad_(False)
        self.model = model
        self.init_text = init_text
        emb = model.tok_emb.weight.detach()
        if init_text:
            if tokenizer is None:
                raise ValueError("init_text needs the tokenizer")
            ids = tokenizer.encode(init_text)
            if not ids:
                raise ValueError("init_text encodes to no tokens")
            ids = (ids * (num_virtual_tokens // len(ids) + 1))[:num_virtual_tokens]
            init = emb[torch.tensor(ids, device=emb.device)].clone()
        else:
            g = torch.Generator().manual_seed(seed)
            init = torch.randn(num_virtual_tokens, emb.shape[1], generator=g) * emb.float().std()
        self.prompt = nn.Parameter(init.to(emb.device, torch.float32))
        self.cfg = dataclasses.replace(model.cfg, context_length=model.cfg.context_length
                                       - num_virtual_tokens)

    @property
    def num_virtual_tokens(self) -> int:
        return self.prompt.shape[0]

    @property
    def out_head(self) -> nn.Module:
        return self.model.out_head

    def hidden_states(self, in_idx: torch.Tensor, cache=None, last: int = 0) -> torch.Tensor:
        return self.model.hidden_states(in_idx, cache, prefix=self.prompt, last=last)

    def forward(self, in_idx: torch.Tensor, cache=None) -> torch.Tensor:
        logits = self.out_head(self.hidden_states(in_idx, cache))
        return logits[..., : self.cfg.vocab_size]


def save_prompt(tuned: PromptTuned, folder: str | Path, base_model: str = "") -> Path:
    """The soft prompt alone, in PEFT's layout."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"prompt_embeddings": tuned.prompt.detach().float().cpu().contiguous()},
              folder / "adapter_model.safetensors")
    config = {
        "peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM",
        "num_virtual_tokens": tuned.num_virtual_tokens, "token_dim": tuned.prompt.shape[1],
        "num_transformer_submodules": 1, "num_attention_heads": tuned.model.cfg.n_head,
        "num_layers": tuned.model.cfg.n_layer,
        "prompt_tuning_init": "TEXT" if tuned.init_text else "RANDOM",
        "prompt_tuning_init_text": tuned.init_text, "base_model_name_or_path": base_model,
        "inference_mode": True,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return folder


def load_prompt(model: nn.Module, folder: str | Path) -> PromptTuned:
    """Put the soft prompt saved in ``folder`` (ours or PEFT's) in front of ``model``."""
    folder = Path(folder)
    cfg_path = folder / "adapter_config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder}: no adapter_config.json")
    config = json.loads(cfg_path.read_text())
    if config.get("peft_type") != "PROMPT_TUNING":
        raise ValueError(f"{cfg_path}: peft_type is {config.get('peft_type')!r}, not "
                         "PROMPT_TUNING")
    weights = load_file(folder / "adapter_model.safetensors")
    prompt = weights["prompt_embeddings"]
    if prompt.shape[1] != model.cfg.n_embd:
        raise ValueError(f"{folder}: prompt width {prompt.shape[1]} does not match the model's "
                         f"n_embd {model.cfg.n_embd}")
    tuned = PromptTuned(model, prompt.shape[0])
    tuned.init_text = config.get("prompt_tuning_init_text")
    with torch.no_grad():
        tuned.prompt.copy_(prompt)
    return tuned


@torch.no_grad()
def classify_by_label_words(model: nn.Module, tokenizer, prompts: list[list[int]],
                            label_words: list[str]) -> list[int]:
    """For each prompt, the index of the label word whose first token is most likely next
    (classification by generation, restricted to the label words)."""
    firsts = [tokenizer.encode(" " + w)[0] for w in label_words]
    if len(set(firsts)) != len(firsts):
        raise ValueError(f"label words {label_words} share a first token; choose distinct words")
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    out = []
    for ids in prompts:
        ids = ids[-model.cfg.context_length:]
        logits = model(torch.tensor([ids], device=device))[0, -1]
        out.append(int(logits[torch.tensor(firsts, device=device)].argmax()))
    model.train(was)
    return out
