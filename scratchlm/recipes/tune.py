"""``scratchlm tune``: hyperparameter search over a recipe with Optuna.

    scratchlm tune --recipe pretrain --trials 20 --space "lr=1e-4:3e-3:log,n_layer=2:6:int" \\
        --config base.yaml --set train.max_steps=300 --out runs/tune-pretrain

Each trial is a normal run of the recipe in ``OUT/trial-NNN`` (metrics, plots, checkpoints),
with the sampled values on top of the base config (``--config`` file, then ``--set``). The
objective is the last validation loss; TPE proposes values, and a median pruner stops a
trial whose validation loss at an evaluation step is worse than the median of earlier trials
at that step. The study lives in ``OUT/study.db`` (SQLite): running the command again
continues it up to ``--trials``. Outputs: ``trials.csv`` (one row per trial) and
``best-config.json`` (the best trial's full config, usable as ``--config``).

Space syntax, comma-separated: ``name=low:high`` (float), ``name=low:high:log``,
``name=low:high:int``, ``name=a|b|c`` (a choice). ``name`` is a config key (``train.lr``,
``lora.rank``) or a field of ``train`` given alone (``lr``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from scratchlm.config import build, flatten, load_file, to_dict
from scratchlm.training.loop import report_evals

from scratchlm.recipes.registry import tunable

RECIPES = tunable()  # short name -> Recipe (recipes/registry.py)


@dataclass
class Param:
    name: str  # a flattened config key, e.g. "train.lr"
    kind: str  # float | int | choice
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[str, ...] = ()


def parse_space(text: str, keys: set[str]) -> list[Param]:
    params = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, spec = item.partition("=")
        if not sep or not spec:
            raise ValueError(f"--space item {item!r}: expected name=low:high[:log|:int] or "
                             "name=a|b")
        name = name.strip()
        if name not in keys and f"train.{name}" in keys:
            name = f"train.{name}"
        if name not in keys:
            raise ValueError(f"--space: unknown config key {name!r}")
        if "|" in spec:
            params.append(Param(name, "choice", choices=tuple(spec.split("|"))))
            continue
        parts = spec.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("log", "int")):
            raise ValueError(f"--space item {item!r}: expected low:high, low:high:log or "
                             "low:high:int")
        try:
            low, high = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(f"--space item {item!r}: bounds must be numbers") from None
        if not low < high:
            raise ValueError(f"--space item {item!r}: low must be below high")
        kind = "int" if len(parts) == 3 and parts[2] == "int" else "float"
        params.append(Param(name, kind, low, high, log=len(parts) == 3 and parts[2] == "log"))
    if not params:
        raise ValueError("--space is empty")
    return params


def suggest(trial, p: Param):
    if p.kind == "choice":
        return trial.suggest_categorical(p.name, list(p.choices))
    if p.kind == "int":
        return trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)
    return trial.suggest_float(p.name, p.low, p.high, log=p.log)


def _recipe(name: str):
    if name not in RECIPES:
        raise ValueError(f"--recipe must be one of {', '.join(RECIPES)}, got {name!r}")
    return RECIPES[name].load()


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected key=value")
        out[key.strip()] = value
    return out


def run_study(recipe: str, trials: int, space: str, out: str | Path, config: str | None = None,
              overrides: list[str] | None = None, seed: int = 123, pruner=None,
              study_name: str | None = None) -> dict:
    """Run (or continue) the search; returns the best trial's number, value and params."""
    import optuna

    cfg_cls, recipe_main = _recipe(recipe)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = load_file(config) if config else {}
    keys = set(flatten(cfg_cls()))
    params = parse_space(space, keys)
    sets = _parse_set(overrides or [])
    unknown = sorted(set(sets) - keys)
    if unknown:
        raise ValueError(f"--set: unknown config key {unknown[0]!r}")
    storage = f"sqlite:///{(out / 'study.db').resolve()}"
    study = optuna.create_study(
        study_name=study_name or f"scratchlm-{recipe}", storage=storage, load_if_exists=True,
        direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=pruner if pruner is not None else optuna.pruners.MedianPruner(
            n_startup_trials=2, n_warmup_steps=0))

    def objective(trial) -> float:
        values = {p.name: suggest(trial, p) for p in params}
        run_dir = out / f"trial-{trial.number:03d}"
        cfg = build(cfg_cls, {**sets, **values, "out": str(run_dir)}, base=base)
        last: list[float] = []

        def listen(step: int, val_loss: float) -> None:
            last.append(val_loss)
            trial.report(val_loss, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"val loss {val_loss:.4f} at step {step}")

        with report_evals(listen):
            recipe_main(cfg)
        if not last:
            raise ValueError(f"trial {trial.number} reported no validation loss: the recipe "
                             "needs a validation split and at least one evaluation")
        trial.set_user_attr("run_dir", str(run_dir))
        return last[-1]

    done = [t for t in study.trials if t.state.is_finished()]
    remaining = max(0, trials - len(done))
    study.optimize(objective, n_trials=remaining, catch=())
    write_summary(study, out)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return {"best": None, "trials": len(study.trials)}
    best = study.best_trial
    best_cfg = build(cfg_cls, {**sets, **best.params,
                               "out": str(out / f"trial-{best.number:03d}")}, base=base)
    (out / "best-config.json").write_text(json.dumps(to_dict(best_cfg), indent=2))
    return {"best": best.number, "value": best.value, "params": best.params,
            "trials": len(study.trials)}


def write_summary(study, out: Path) -> None:
    names = sorted({k for t in study.trials for k in t.params})
    rows = [{"trial": t.number, "state": t.state.name,
             "value": "" if t.value is None else f"{t.value:.5f}",
             "last_step": max(t.intermediate_values, default=""),
             **{k: t.params.get(k, "") for k in names}} for t in study.trials]
    with open(out / "trials.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["trial", "state", "value", "last_step", *names])
        w.writeheader()
        w.writerows(rows)
    width = max([len(n) for n in names] + [8])
    print(f"{'trial':>5}  {'state':<8}  {'val loss':>9}  " + "  ".join(f"{n:>{width}}" for n in names))
    for r in rows:
        print(f"{r['trial']:>5}  {r['state']:<8}  {r['value']:>9}  "
              + "  ".join(f"{_short(r[n]):>{width}}" for n in names))


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)



def command(cfg) -> bool:
    """``scratchlm tune``: the study, its best trial printed; False (exit status 1) when no
    trial completed."""
    if cfg.recipe not in tunable() or not cfg.space:
        raise ValueError(f"tune needs --recipe ({'|'.join(sorted(tunable()))}) and --space")
    res = run_study(cfg.recipe, cfg.trials, cfg.space, cfg.out, cfg.base_config, cfg.set,
                    cfg.seed, study_name=cfg.study_name)
    if res["best"] is None:
        print("no trial completed (all pruned or failed)")
        return False
    print(f"best: trial {res['best']} val loss {res['value']:.4f} {res['params']} -> "
          f"{cfg.out}/best-config.json")
    return True
