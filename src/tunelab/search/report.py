"""What a study leaves behind: trials.csv, best.yaml (a ready recipe), report.md/.html with Optuna's
own plots (optimization history, parameter importances, Pareto front) and rank vs metric."""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

import optuna
import yaml

from tunelab.config.load import read_recipe
from tunelab.config.tune import TuneConfig
from tunelab.runs.io import atomic_write_text
from tunelab.runs.tables import markdown_table, write_table_report
from tunelab.search.space import trial_overrides

State = optuna.trial.TrialState


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def values_of(trial) -> list | None:
    return trial.values if trial.state == State.COMPLETE else None


def best_trials(study) -> list:
    complete = [t for t in study.get_trials(deepcopy=False, states=(State.COMPLETE,))]
    if not complete:
        return []
    return study.best_trials if len(study.directions) > 1 else [study.best_trial]


def best_value(study) -> str:
    best = best_trials(study)
    if not best:
        return "no complete trial yet"
    b = best[0]
    return f"best {_fmt(b.values[0])} (trial {b.number})" + (f", {len(best)} on the Pareto front" if len(best) > 1 else "")


def trial_line(study, trial) -> str:
    params = ", ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
    a = trial.user_attrs
    if trial.state == State.COMPLETE:
        res = "  ".join(_fmt(v) for v in trial.values)
    elif trial.state == State.PRUNED:
        res = f"[yellow]pruned at step {a.get('pruned_at_step')}[/]"
    else:
        res = f"[red]{trial.state.name.lower()}[/] {a.get('error', '')}"
    return f"  trial {trial.number:>3}  {params}  ->  {res}  ({_fmt(a.get('trial_seconds'))} s)"


def rows(study, t: TuneConfig, metric: str) -> tuple[list[str], list[list]]:
    keys = sorted({k for tr in study.trials for k in tr.params})
    names = [metric if o == "metric" else o for o in t.objectives]
    variant = any("variant" in tr.user_attrs for tr in study.trials)
    head = ["trial", *(["variant"] if variant else []), "state", *names, *keys, "pruned at step", "steps", "train s",
            "trial s", "trainable params", "error"]
    out = []
    for tr in study.trials:
        a = tr.user_attrs
        vals = values_of(tr) or [None] * len(names)
        out.append([tr.number, *([a.get("variant", "")] if variant else []), tr.state.name.lower(), *vals, *(tr.params.get(k) for k in keys), a.get("pruned_at_step"),
                    a.get("steps"), a.get("train_seconds"), a.get("trial_seconds"), a.get("trainable_params"), a.get("error", "")])
    return head, out


def best_recipe(study, recipe: str | None, user: list[str]) -> str | None:
    """The recipe with the user's overrides and the best trial's values, as YAML."""
    best = best_trials(study)
    if not best:
        return None
    raw, source = read_recipe(recipe)
    from tunelab.config.load import merge_dicts

    merged = merge_dicts(raw, trial_overrides(user, best[0].params))
    merged.pop("tune", None)
    merged["name"] = f"{raw['name']}-best"
    merged.setdefault("output", {}).pop("dir", None)
    head = (f"# Best trial {best[0].number} of study '{study.study_name}' (validation {', '.join(map(_fmt, best[0].values))}).\n"
            f"# From {source}; train it with: tunelab train best.yaml\n")
    return head + yaml.safe_dump(merged, sort_keys=False)


def plots(study, root: Path, t: TuneConfig, metric: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out_dir = root / "plots"
    out_dir.mkdir(exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(State.COMPLETE,))
    names = [metric if o == "metric" else o for o in t.objectives]
    made = []

    def save(name, draw):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                ax = draw()
            fig = (ax if hasattr(ax, "savefig") else (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure())
            fig.set_size_inches(7, 4.5)
            fig.tight_layout()
            fig.savefig(out_dir / f"{name}.png", dpi=110)
            plt.close(fig)
            made.append(out_dir / f"{name}.png")
        except (ValueError, RuntimeError, ZeroDivisionError, IndexError):
            plt.close("all")  # too few trials for this plot

    if complete:
        save("optimization_history", lambda: ovm.plot_optimization_history(
            study, target=(lambda tr: tr.values[0]) if len(names) > 1 else None, target_name=names[0]))
    if len(complete) >= 2 and any(len({tr.params.get(k) for tr in complete}) > 1 for k in t.space):
        save("param_importances", lambda: ovm.plot_param_importances(
            study, target=(lambda tr: tr.values[0]) if len(names) > 1 else None, target_name=names[0]))
    if len(names) == 2 and complete:
        save("pareto_front", lambda: ovm.plot_pareto_front(study, target_names=names))
    rank_key = next((k for k in ("method.r", t.rank_key) if k in t.space), None)
    if rank_key and complete:
        def rank_plot():
            pts = sorted((tr.params[rank_key], tr.values[0]) for tr in complete if rank_key in tr.params)
            fig, ax = plt.subplots()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-")
            ax.set_xscale("log", base=2)
            ax.set_xlabel(rank_key)
            ax.set_ylabel(f"validation {names[0]}")
            ax.set_title("rank vs metric")
            return fig
        save("rank_vs_metric", rank_plot)
    return made


def rank_summary(study, t: TuneConfig) -> list[str]:
    """The rank strategy's table and recommendation: the smallest rank within min_gain of the best."""
    done = sorted((tr for tr in study.get_trials(deepcopy=False, states=(State.COMPLETE,)) if t.rank_key in tr.params),
                  key=lambda tr: tr.params[t.rank_key])
    if not done:
        return []
    sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
    best = max(done, key=lambda tr: sign * tr.value)
    pick = next(tr for tr in done if sign * (best.value - tr.value) <= t.min_gain)
    table = markdown_table(["rank", "validation", "trainable params", "train s"],
                           [[tr.params[t.rank_key], _fmt(tr.value), _fmt(tr.user_attrs.get("trainable_params")),
                             _fmt(tr.user_attrs.get("train_seconds"))] for tr in done])
    return ["## Rank selection", "", *table, "",
            f"Recommended: {t.rank_key}={pick.params[t.rank_key]} (validation {_fmt(pick.value)}; best "
            f"{_fmt(best.value)} at {best.params[t.rank_key]}; min_gain {t.min_gain}).", ""]


def layer_rank_summary(study, t: TuneConfig) -> list[str]:
    """Per-layer ranks found by the probe, and the three variants at equal parameter count."""
    by = {tr.user_attrs.get("variant"): tr for tr in study.trials if tr.user_attrs.get("variant")}
    probe = by.get("probe")
    if not probe or "layer_ranks" not in probe.user_attrs:
        return []
    ranks = probe.user_attrs["layer_ranks"]
    rows_ = [[name, tr.state.name.lower(), _fmt(tr.value if tr.state == State.COMPLETE else None),
              _fmt(tr.user_attrs.get("trainable_params")), _fmt(tr.user_attrs.get("train_seconds"))]
             for name, tr in by.items()]
    layers = [[k, v["rank"]] for k, v in ranks.items()]
    return ["## Per-layer rank", "",
            f"Probe: rank {t.probe_rank}; each layer keeps {t.energy:.0%} of the spectral energy of its update B @ A.", "",
            *markdown_table(["variant", "state", "validation", "trainable params", "train s"], rows_), "",
            *markdown_table(["layer", "rank"], layers), ""]


def write_study_outputs(study, root: Path, recipe: str | None, user: list[str], t: TuneConfig, metric: str) -> None:
    head, table = rows(study, t, metric)
    buf = io.StringIO()
    csv.writer(buf).writerows([head, *([("" if v is None else v) for v in r] for r in table)])
    atomic_write_text(root / "trials.csv", buf.getvalue())
    best = best_recipe(study, recipe, user)
    if best:
        atomic_write_text(root / "best.yaml", best)
    states = {s.name.lower(): sum(tr.state == s for tr in study.trials) for s in State}
    intro = [f"Study '{study.study_name}': {len(study.trials)} trials ("
             + ", ".join(f"{n} {k}" for k, n in states.items() if n) + f"); objective: validation {metric}"
             + (f" and {', '.join(t.objectives[1:])}" if len(t.objectives) > 1 else "")
             + f"; sampler {t.sampler}, pruner {t.pruner}. {best_value(study)}."]
    extra = {"rank": rank_summary, "layer_rank": layer_rank_summary}.get(t.strategy, lambda s, t: [])(study, t)
    shown = [[_fmt(v) for v in r] for r in table]
    write_table_report(root, f"Tune: {study.study_name}", intro, head, shown, plots(study, root, t, metric), extra)
