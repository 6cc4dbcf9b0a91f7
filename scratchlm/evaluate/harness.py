"""Our models inside lm-evaluation-harness (``pip install lm_eval``): a registered ``scratchlm``
model class, so every harness task runs on a scratchlm model.

    python -m scratchlm.evaluate.harness --model_args pretrained=runs/sft/final \\
        --tasks hellaswag,arc_easy --batch_size 1          # any lm_eval CLI flags

    import scratchlm.evaluate.harness, lm_eval             # or from Python
    lm_eval.simple_evaluate(model="scratchlm", model_args="pretrained=runs/sft/final",
                            tasks=["hellaswag"])

The three request kinds map onto our own scorers: ``loglikelihood`` on ``choice.loglikelihoods``
(the shared-context KV-cache path, with lm-eval's pair tokenization), ``loglikelihood_rolling``
on ``lm.score_ids`` (windows of the model's context, after the end-of-text token), and
``generate_until`` on the batched engine with its stop strings. Importing this module
registers the class (it needs lm_eval installed).
"""

from __future__ import annotations

import lm_eval.models  # noqa: F401 (the built-in backends register first, as lm_eval expects)
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm

from scratchlm.evaluate.choice import encode_pair, loglikelihoods
from scratchlm.evaluate.lm import prefix_token, score_ids


@register_model("scratchlm")
class ScratchLM(LM):
    def __init__(self, pretrained: str, adapter: str | None = None, quantize: str | None = None,
                 max_gen_toks: int = 256, batch_size: int | str = 8, **_unused) -> None:
        super().__init__()
        from scratchlm.checkpoints.load import load_model_and_tokenizer

        self.model, self.tokenizer = load_model_and_tokenizer(pretrained, quantize=quantize)
        if adapter:
            from scratchlm.finetune.lora import load_adapter, merge_lora

            merge_lora(load_adapter(self.model, adapter))
        self.max_gen_toks = int(max_gen_toks)
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [encode_pair(self.tokenizer, *r.args) for r in requests]
        return loglikelihoods(self.model, pairs, greedy=True, progress=True,
                              batch_size=self.batch_size)

    def loglikelihood_rolling(self, requests) -> list[float]:
        first = prefix_token(self.tokenizer)
        out = []
        for r in tqdm(requests, desc="rolling loglikelihood", unit="doc"):
            ids = ([first] if first is not None else []) + self.tokenizer.encode(r.args[0])
            nll, _, _ = score_ids(self.model, ids)
            out.append(-nll)
        return out

    def generate_until(self, requests) -> list[str]:
        from scratchlm.generation.engine import Engine, SamplingParams, stream_text

        engine = Engine(self.model)
        eos = tuple(i for i in (self.tokenizer.eos_id,) if i is not None)
        out = []
        for r in tqdm(requests, desc="generate_until", unit="request"):
            context, kwargs = r.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") \
                else 0.0
            params = SamplingParams(int(kwargs.get("max_gen_toks", self.max_gen_toks)),
                                    temperature, stop_ids=eos)
            out.append("".join(stream_text(engine, self.tokenizer,
                                           self.tokenizer.encode(context), params, until)))
        return out


def main(argv: list[str] | None = None) -> None:
    """lm_eval's command line with ``--model scratchlm`` (registered here)."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    args = list(sys.argv[1:] if argv is None else argv)
    if "--model" not in args:
        args = ["--model", "scratchlm", *args]
    sys.argv = ["lm_eval", *args]
    cli_evaluate()


if __name__ == "__main__":
    main()
