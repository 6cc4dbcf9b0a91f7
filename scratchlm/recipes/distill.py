"""``scratchlm distill``: train a smaller student language model from a trained teacher (see
``finetune/distill.py``).

    scratchlm pretrain --model gpt2-124m --data tinyshakespeare --out runs/teacher ...
    scratchlm distill --teacher runs/teacher/final --student_layers 6 --data tinyshakespeare

The student is the teacher with ``student_layers`` blocks (initialised from every other
teacher block), or ``--student`` a preset of the teacher's family (fresh weights) or a model
folder; it must share the teacher's vocabulary. Outputs in ``--out``: metrics.csv, loss.png,
checkpoints/, final/ (the student with the teacher's tokenizer) and result.json: parameters,
validation perplexity and forward tokens/s of both, and their ratios.
"""

from __future__ import annotations

import json
import time

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from scratchlm.config import to_dict
from scratchlm.evaluate.tasks import check_eval, evaluate_final
from scratchlm.data.pretrain import text_datasets
from scratchlm.finetune.distill import (DistillationLoss, check_same_vocabulary,
                                        student_from_teacher)
from scratchlm.models.accounting import count_parameters
from scratchlm.checkpoints.load import load_model_and_tokenizer
from scratchlm.checkpoints.ours import save_pretrained
from scratchlm.models.registry import family_of
from scratchlm.tokenizers import save_tokenizer
from scratchlm.training.evaluation import evaluate_loss, perplexity
from scratchlm.training.loop import fit
from scratchlm.training.losses import CausalLMLoss
from scratchlm.training.optim import optimizer_for
from scratchlm.training.prepare import prepare_training, training_session, whole_model
from scratchlm.recipes.configs import DistillConfig  # noqa: F401 (its config)


def build_student(cfg: DistillConfig, teacher, device) -> torch.nn.Module:
    if not cfg.student:
        return student_from_teacher(teacher, cfg.student_layers)
    family = family_of(teacher)
    if cfg.student in family.presets:
        scfg = family.config_cls.from_name(cfg.student, vocab_size=teacher.cfg.vocab_size,
                                           context_length=teacher.cfg.context_length)
        torch.manual_seed(cfg.train.seed)
        student = family.model_cls(scfg).to(device)
    else:
        student, _ = load_model_and_tokenizer(cfg.student, device=device)
        student.train()
    check_same_vocabulary(student, teacher)
    return student


@torch.no_grad()
def tokens_per_second(model, loader, batches: int, rt) -> float:
    """Forward tokens/s over the first ``batches`` batches (best of two passes)."""
    model.eval()
    best = 0.0
    for _ in range(2):
        n, t0 = 0, time.perf_counter()
        for i, (x, _) in enumerate(loader):
            if i >= batches:
                break
            model(x.to(rt.device))
            n += x.numel()
        best = max(best, n / max(time.perf_counter() - t0, 1e-9))
    return best


def main(cfg: DistillConfig) -> dict:
    check_eval(cfg.eval)  # a bad --eval.tasks is refused before training
    with training_session(cfg.train, cfg.out, resume=cfg.resume,
                          overwrite=cfg.overwrite) as (rt, out):
        teacher, tok = load_model_and_tokenizer(cfg.teacher, device=rt.device)
        student = build_student(cfg, teacher, rt.device)
        context = cfg.context_length or min(teacher.cfg.context_length,
                                            student.cfg.context_length, 256)
        train_ds, val_ds = text_datasets(cfg.data, cfg.val_fraction, tok, context)
        if val_ds is None:
            raise ValueError(f"{cfg.data}: too little text for a validation split of "
                             f"{cfg.val_fraction} at context {context}")
        val_loader = DataLoader(val_ds, batch_size=cfg.train.batch_size)
        ce = lambda m: evaluate_loss(CausalLMLoss(m), val_loader, rt,  # noqa: E731
                                     max_batches=cfg.train.eval_batches)
        teacher_loss, before = ce(teacher), ce(student)
        sizes = count_parameters(teacher), count_parameters(student)
        tqdm.write(f"teacher {sizes[0]:,} parameters ({teacher.cfg.n_layer} layers), val ppl "
                   f"{perplexity(teacher_loss):.2f}; student {sizes[1]:,} "
                   f"({student.cfg.n_layer} layers), val ppl {perplexity(before):.2f} before")
        loss_module = DistillationLoss(student, teacher, cfg.alpha, cfg.temperature)
        trainer = prepare_training(loss_module, student, rt, cfg.train)
        optimizer = optimizer_for(student, cfg.train, rt.device)
        fit(student, trainer, optimizer, train_ds, val_ds, cfg.train, rt, out,
            {**to_dict(cfg), "model_config": student.cfg.to_dict()},
            resume=cfg.resume or None)
        after = ce(student)
        speed = (tokens_per_second(teacher, val_loader, cfg.speed_batches, rt),
                 tokens_per_second(student, val_loader, cfg.speed_batches, rt))
        result = {
            "teacher_params": sizes[0], "student_params": sizes[1],
            "size_ratio": sizes[1] / sizes[0],
            "teacher_val_ppl": perplexity(teacher_loss),
            "student_val_ppl_before": perplexity(before),
            "student_val_ppl": perplexity(after),
            "ppl_ratio": perplexity(after) / perplexity(teacher_loss),
            "teacher_tokens_per_s": speed[0], "student_tokens_per_s": speed[1],
            "speedup": speed[1] / speed[0],
        }
        tqdm.write(f"student val ppl {result['student_val_ppl']:.2f} (teacher "
                   f"{result['teacher_val_ppl']:.2f}); {result['size_ratio']:.0%} of the "
                   f"parameters, {result['speedup']:.2f}x the forward speed")
        student = whole_model(student, rt)  # gathered under FSDP; None off the main rank
        if not rt.is_main:  # the main rank writes the run's outputs
            return result
        save_pretrained(student, out / "final")
        save_tokenizer(tok, out / "final")
        evaluate_final(cfg.eval, student, tok, out, str(out / "final"))
        (out / "result.json").write_text(json.dumps(result, indent=2))
        return result
