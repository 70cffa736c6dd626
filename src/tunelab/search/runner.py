"""`tunelab tune`: a study over the recipe's `tune:` section, run by this worker until the study has
its n_trials (counted over every worker sharing the storage) or this worker's time is up.

    runs/tune-<recipe>-<timestamp>/
      study.db           the Optuna study (unless --storage names another place)
      tune.json          what this folder holds: storage, study name, recipe, overrides
      trials/trial-NNNN/ each trial's run folder: config.yaml and metrics.jsonl
      trials.csv         one row per trial: values, params, state, pruned at which step, time, error
      best.yaml          the best trial as a recipe: `tunelab train best.yaml` reproduces it
      report.md/.html    the trials table and the plots

Strategy `rank` (tune.strategy=rank or --rank) is the course notes' procedure made exact: train at
rank_start, double the rank while the validation metric gains more than min_gain, and recommend the
smallest rank within min_gain of the best. Its trials are ordinary trials of the same study."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import optuna

from tunelab.config import load_config
from tunelab.config.load import read_recipe
from tunelab.config.tune import Dimension, TuneConfig
from tunelab.console import console
from tunelab.errors import TunelabError
from tunelab.runs.io import atomic_write_json
from tunelab.search.progress import TuneProgress
from tunelab.search.report import best_value, trial_line, write_study_outputs
from tunelab.search.space import check_space
from tunelab.search.study import make_pruner, make_sampler, open_storage, open_study, storage_url
from tunelab.search.trial import Objective
from tunelab.tasks import make_task
from tunelab.tracking import ParentRun

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


def resolve(recipe: str | None, overrides: list[str], rank: bool = False, n_trials: int | None = None,
            timeout_minutes: float | None = None):
    """The validated config, its tune section (command-line flags applied) and the objective metric.
    Every mistake in the tune section fails here, before any trial."""
    extra = [*overrides, *(["tune.strategy=rank"] if rank else []),
             *([f"tune.n_trials={n_trials}"] if n_trials else []),
             *([f"tune.timeout_minutes={timeout_minutes}"] if timeout_minutes else [])]
    cfg = load_config(recipe, extra)
    t = cfg.tune
    if t.strategy == "rank":
        ranks = [r for r in (t.rank_start * 2 ** i for i in range(16)) if r <= t.rank_max]
        space = {t.rank_key: Dimension(choices=ranks)}
        if t.alpha_per_rank and t.rank_key == "method.r":
            space["method.alpha"] = Dimension(choices=[t.alpha_per_rank * r for r in ranks])
        t = t.model_copy(update={"space": space, "n_trials": len(ranks), "pruner": "none", "objectives": ["metric"]})
    if t.strategy == "layer_rank":
        if cfg.method.name != "lora":
            raise TunelabError(f"tune.strategy=layer_rank needs method.name=lora (the recipe has '{cfg.method.name}')")
        t = t.model_copy(update={"space": {}, "pruner": "none", "objectives": ["metric"]})
    elif not t.space:
        raise TunelabError("tune.space is empty: give the keys to search, e.g. "
                           "tune.space.train.lr='{log_uniform: [1e-5, 1e-2]}', or use --rank")
    task = make_task(cfg)
    metric = t.metric or task.metric_for_best()
    if metric not in task.higher_is_better:
        raise TunelabError(f"tune.metric '{metric}' is not a validation metric of task '{cfg.task.type}'; "
                           f"choose one of: {', '.join(sorted(task.higher_is_better))}")
    check_space(recipe, extra, t.space)
    directions = [("maximize" if task.higher_is_better[metric] else "minimize") if o == "metric" else "minimize"
                  for o in t.objectives]
    return cfg, t, extra, metric, directions


def fingerprint(cfg, t: TuneConfig, metric: str) -> str:
    """Identifies a search: what trials train (the resolved config but its output folder) and what they
    are scored on. Worker settings (trial count, time, heartbeat, sampler) may differ between workers."""
    doc = cfg.model_dump(mode="json", exclude={"output", "tune", "compare"})
    doc["search"] = {"space": {k: d.model_dump(mode="json") for k, d in t.space.items()}, "metric": metric,
                     "objectives": t.objectives, "strategy": t.strategy}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def tune(recipe: str | None, overrides: list[str] | None = None, *, out: str | None = None, storage: str | None = None,
         study_name: str | None = None, rank: bool = False, n_trials: int | None = None,
         timeout_minutes: float | None = None, show_progress: bool = True) -> Path:
    overrides = list(overrides or [])
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial gets its own line below, failures included
    cfg, t, extra, metric, directions = resolve(recipe, overrides, rank, n_trials, timeout_minutes)
    raw_name = read_recipe(recipe)[0]["name"]
    root = Path(out) if out else Path(cfg.output.root) / f"tune-{raw_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    root.mkdir(parents=True, exist_ok=True)
    url = storage_url(storage, root)
    name = study_name or f"tune-{raw_name}"
    seed = cfg.seed if t.seed is None else t.seed
    study = open_study(open_storage(url, t.heartbeat_seconds), name, directions, make_sampler(t, seed),
                       make_pruner(t), fingerprint(cfg, t, metric))
    atomic_write_json(root / "tune.json", {"storage": url, "study": name, "recipe": recipe or raw_name,
                                           "overrides": overrides, "strategy": t.strategy, "metric": metric,
                                           "objectives": t.objectives, "directions": directions})
    console.print(f"[bold]Tune[/] {root}  (study '{name}' in {url}; {t.strategy}; objective: validation {metric}"
                  + (f" + {', '.join(t.objectives[1:])}" if len(t.objectives) > 1 else "") + ")")
    objective = Objective(recipe, extra, t.space, metric, t.objectives, cfg.method.name, root / "trials", t.keep_trial_runs,
                          isolate=t.isolate_trials and t.strategy != "layer_rank", storage_url=url)
    parent = ParentRun(cfg, root.name, "tune", root)  # each trial's run is a child of the study's tracked run
    objective.tracking = parent.child_settings()
    if t.strategy == "rank":
        _rank_steps(study, objective, t, show_progress)
    elif t.strategy == "layer_rank":
        _layer_rank(study, objective, t, show_progress)
    else:
        _search(study, objective, t, show_progress)
    write_study_outputs(study, root, recipe, extra, t, metric)
    complete = [tr for tr in study.trials if tr.state == optuna.trial.TrialState.COMPLETE]
    if complete and len(t.objectives) == 1:
        parent.log({f"best/{metric}": study.best_value, "trials/complete": len(complete), "trials/all": len(study.trials)})
    parent.finish({n: root / n for n in ("report.md", "report.html", "trials.csv", "best.yaml", "plots") if (root / n).exists()})
    console.print(f"Report: {root / 'report.md'}  Best recipe: {root / 'best.yaml'}  Trials: {root / 'trials.csv'}")
    return root


def _done(study) -> int:
    return len([tr for tr in study.get_trials(deepcopy=False) if tr.state in FINISHED])


def _search(study, objective: Objective, t: TuneConfig, show_progress: bool) -> None:
    left = t.n_trials - _done(study) if t.n_trials else None
    if left is not None and left <= 0:
        console.print(f"study already has {_done(study)} finished trials (tune.n_trials={t.n_trials}): writing the report")
        return
    with TuneProgress(t.n_trials, show_progress) as bar:
        objective.progress = bar
        bar.bar.update(bar.trials, completed=_done(study))

        def after(study, trial):
            bar.trial_done(trial_line(study, trial), best_value(study))

        callbacks = [after]
        if t.n_trials:  # the whole study's count, whichever worker ran the trials
            callbacks.append(optuna.study.MaxTrialsCallback(t.n_trials, states=FINISHED))
        study.optimize(objective, n_trials=left, timeout=t.timeout_minutes * 60 if t.timeout_minutes else None,
                       catch=(Exception,), callbacks=callbacks, gc_after_trial=True)


def _rank_steps(study, objective: Objective, t: TuneConfig, show_progress: bool) -> None:
    """Double the rank while the best metric so far improves by more than min_gain."""
    ranks = t.space[t.rank_key].choices
    sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
    with TuneProgress(len(ranks), show_progress) as bar:
        objective.progress = bar
        best = None
        for r in ranks:
            done = [tr for tr in study.trials if tr.state == optuna.trial.TrialState.COMPLETE
                    and tr.params.get(t.rank_key) == r]
            if done:  # resumed: this rank was trained already
                trial = done[0]
            else:
                params = {t.rank_key: r, **({"method.alpha": t.alpha_per_rank * r} if "method.alpha" in t.space else {})}
                study.enqueue_trial(params)
                study.optimize(objective, n_trials=1, catch=(Exception,))
                trial = study.trials[-1]
                bar.trial_done(trial_line(study, trial), best_value(study))
            if trial.state != optuna.trial.TrialState.COMPLETE:
                console.print(f"rank {r}: trial failed ({trial.user_attrs.get('error')}); stopping the doubling")
                break
            if best is not None and sign * (trial.value - best) <= t.min_gain:
                break  # doubling no longer pays
            best = trial.value if best is None else (max if sign > 0 else min)(best, trial.value)


def run_variant(study, objective: Objective, variant: str, *, overrides: dict | None = None,
                config: dict | None = None, bar: TuneProgress | None = None):
    """Run one trial with fixed values (`overrides` on the recipe) or a whole `config`, or reuse it when
    a resumed study has it already. Layer-rank's variants and compare's methods are trials of this kind."""
    done = [tr for tr in study.trials if tr.user_attrs.get("variant") == variant and tr.state == optuna.trial.TrialState.COMPLETE]
    if done:
        return done[0]
    attrs = {"variant": variant, **({"overrides": overrides} if overrides else {}), **({"config": config} if config else {})}
    study.enqueue_trial({}, user_attrs=attrs)
    study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
    trial = study.trials[-1]
    if bar:
        bar.trial_done(f"  {variant}:" + trial_line(study, trial).split("->", 1)[-1], best_value(study))
    return trial


def _layer_rank(study, objective: Objective, t: TuneConfig, show_progress: bool) -> None:
    """A short probe at probe_rank, its per-layer spectral ranks, then three variants at equal size."""
    from tunelab.search.layer_rank import spectral_ranks, variants

    def inspect(trial, session):
        if trial.user_attrs.get("variant") == "probe":
            trial.set_user_attr("layer_ranks", spectral_ranks(session.model, t.energy))

    objective.inspect = inspect
    probe = {"method.r": t.probe_rank, "method.alpha": (t.alpha_per_rank or 2.0) * t.probe_rank,
             **({"train.max_steps": t.probe_steps} if t.probe_steps else {"train.epochs": 1})}
    with TuneProgress(4, show_progress) as bar:
        objective.progress = bar
        trial = run_variant(study, objective, "probe", overrides=probe, bar=bar)
        if trial.state != optuna.trial.TrialState.COMPLETE:
            raise TunelabError(f"layer_rank: the probe run failed: {trial.user_attrs.get('error')}")
        for name, overrides in variants(trial.user_attrs["layer_ranks"], t).items():
            run_variant(study, objective, name, overrides=overrides, bar=bar)
