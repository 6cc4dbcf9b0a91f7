"""Several LoRA adapters over one base in one server (``scratchlm serve --adapter NAME=DIR``):
``/v1/models`` lists them, a request's ``model`` picks one, rows of different adapters (and the
base) decoded together each equal that adapter run alone through the Python API, token for
token; an adapter trained for another base stops the start with the reason."""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from conftest import serve_subprocess

PROMPTS = ["Once upon a time", "The capital of France is", "def add(a, b):"]


@pytest.fixture(scope="module")
def folders(tiny_chat_model, tmp_path_factory):
    """The base model folder and two adapters trained (here: drawn at random) on it."""
    from scratchlm.checkpoints.ours import load_ours
    from scratchlm.finetune.lora import LoraConfig, apply_lora, save_adapter

    base = tiny_chat_model(context_length=256)
    out = tmp_path_factory.mktemp("adapters")
    for name, targets, seed in (("polite", ["q", "v"], 1), ("terse", ["ff", "out"], 2)):
        model = load_ours(base)
        apply_lora(model, 4, 8.0, tuple(targets))
        torch.manual_seed(seed)
        for p in model.parameters():
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.3)
        save_adapter(model, out / name, LoraConfig(rank=4, alpha=8.0, targets=targets))
    return base, out


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def test_rows_of_different_adapters_equal_each_served_alone(folders):
    from scratchlm import LLM

    base, out = folders
    alone = {}
    for name in (None, "polite", "terse"):
        llm = LLM.load(str(base), adapter=out / name if name else None, quantize=None)
        alone[name] = [llm.generate(p, max_new_tokens=12) for p in PROMPTS]
    assert alone["polite"] != alone["terse"] != alone[None]
    with serve_subprocess("--model", str(base), "--prefill", "fp32", "--adapter",
                          f"polite={out / 'polite'}", f"terse={out / 'terse'}") as url:
        ids = [m["id"] for m in json.loads(urllib.request.urlopen(f"{url}/v1/models").read())
               ["data"]]
        assert ids[1:] == ["polite", "terse"]
        asks = [(name, i) for name in (None, "polite", "terse") for i in range(len(PROMPTS))]
        with ThreadPoolExecutor(len(asks)) as pool:  # all at once: mixed in decode steps
            answers = list(pool.map(lambda a: post(f"{url}/v1/completions", {
                "model": a[0] or ids[0], "prompt": PROMPTS[a[1]], "max_tokens": 12,
                "temperature": 0}), asks))
        health = json.loads(urllib.request.urlopen(f"{url}/health").read())
    for (name, i), answer in zip(asks, answers):
        assert answer["model"] == (name or ids[0])
        assert answer["choices"][0]["text"] == alone[name][i], (name, i)
    assert health["largest_batch"] > 3  # rows of different adapters shared steps


def test_an_adapter_for_another_base_stops_the_start(folders, tmp_path):
    from scratchlm.finetune.lora import LoraConfig, apply_lora, save_adapter
    from scratchlm.models.llama import Llama, LlamaConfig

    base, out = folders
    other = Llama(LlamaConfig(vocab_size=49152, context_length=256, n_embd=48, n_layer=2,
                              n_head=4, n_kv_head=2, intermediate_size=64))
    apply_lora(other, 4, 8.0, ("q", "v"))
    save_adapter(other, tmp_path / "wide", LoraConfig(rank=4, alpha=8.0, targets=["q", "v"]))
    with pytest.raises(RuntimeError, match="wide.*different base model"):
        with serve_subprocess("--model", str(base), "--adapter", f"ok={out / 'polite'}",
                              f"bad={tmp_path / 'wide'}"):
            pass
