"""The sweep report: `<results_dir>/report/index.html` and its figures, from the sweep's MLflow runs.

What a person needs to judge a sweep: the best score against the GPU time spent, every trial's
learning curve (stopped trials visible), which parameters mattered (Optuna's PED-ANOVA), how
the values relate to the score (parallel coordinates, log axes for log parameters) and a table
of the trials with their GPU-seconds. Written by `automl report -e SPEC` and at the end of a sweep,
and logged to the sweep's parent run.
"""

from __future__ import annotations

import html
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a GPU node
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from automl.search.space import SearchSpace  # noqa: E402
from automl.sweep_tracking import GPU_SECONDS, WALL_SECONDS  # noqa: E402
from automl.tracking import TRIAL_TAG, Tracker, trial_run_name  # noqa: E402

log = logging.getLogger(__name__)
REPORT_DIR = "report"
FIGURES = ("best_so_far.png", "learning_curves.png", "importance.png", "parallel_coordinates.png")
# PED-ANOVA compares the top fraction of trials with all of them: it needs a few of each.
MIN_TRIALS_FOR_IMPORTANCE = 4
STATUS_STYLE = {"finished": ("-", 1.0), "stopped": ("--", 0.55), "nan_loss": (":", 0.55), "error": (":", 0.55)}


@dataclass
class TrialRecord:
    """One trial as its MLflow child run holds it."""

    number: int
    name: str
    status: str
    params: dict[str, Any]
    curve: list[tuple[int, float, int]]  # (optimiser step, metric, timestamp ms) per validation
    gpu_seconds: list[tuple[int, float]] = field(default_factory=list)  # (timestamp ms, the trial's total so far)
    wall_seconds: list[tuple[int, float]] = field(default_factory=list)  # (timestamp ms, the trial's total so far)

    @property
    def values(self) -> list[float]:
        return [v for _, v, _ in self.curve if math.isfinite(v)]


def best_of(values: list[float], mode: str) -> float:
    if not values:
        return float("nan")
    return max(values) if mode == "max" else min(values)


def collect_trials(tracker: Tracker, parent_id: str, metric: str, space: SearchSpace) -> list[TrialRecord]:
    """The sweep's trials in start order, with their curves and GPU time, from MLflow."""
    records = []
    runs = sorted(tracker.children(parent_id), key=lambda run: run.info.start_time)
    for number, run in enumerate(runs, 1):
        client, run_id = tracker.client, run.info.run_id
        curve = sorted((m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, metric))
        gpu, wall = (sorted((m.timestamp, m.value) for m in client.get_metric_history(run_id, key)) for key in (GPU_SECONDS, WALL_SECONDS))
        params = {key: _typed(space[key], run.data.params[key]) for key in space.keys if key in run.data.params}
        name = run.info.run_name or trial_run_name(number, params)
        status = run.data.tags.get("status", run.info.status.lower())
        records.append(TrialRecord(number, name, status, params, curve, gpu, wall))
        log.debug("trial %s (%s): %d validations", run.data.tags.get(TRIAL_TAG), name, len(curve))
    return records


def _typed(parameter: Any, text: str) -> Any:
    """An MLflow param (a string) back to the parameter's type."""
    if parameter.kind == "float":
        return float(text)
    if parameter.kind == "int":
        return int(float(text))
    if parameter.kind == "bool":
        return text == "True"
    return text


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------
def best_so_far(trials: list[TrialRecord], mode: str) -> tuple[list[float], list[float], str]:
    """(device hours spent, best metric so far) at every validation of the sweep, in time order.

    Hours are GPU-hours (each trial's GPU share x its wall time); on a sweep without GPUs they
    are trial-hours (each trial's wall time), and the label says so.
    """
    uses_gpu = any(seconds > 0 for t in trials for _, seconds in t.gpu_seconds)
    events = []  # (timestamp, trial number, metric)
    for t in trials:
        events += [(timestamp, t.number, value) for _, value, timestamp in t.curve]
    events.sort()
    spent: dict[int, float] = {}
    hours, best, current = [], [], None
    for timestamp, number, value in events:
        trial = trials[number - 1]
        series = trial.gpu_seconds if uses_gpu else trial.wall_seconds
        spent[number] = max((s for ts, s in series if ts <= timestamp), default=spent.get(number, 0.0))
        if math.isfinite(value) and (current is None or (value > current if mode == "max" else value < current)):
            current = value
        if current is not None:
            hours.append(sum(spent.values()) / 3600)
            best.append(current)
    return hours, best, "GPU-hours" if uses_gpu else "trial-hours (no GPU)"


def plot_best_so_far(trials: list[TrialRecord], metric: str, mode: str, path: Path) -> None:
    hours, best, label = best_so_far(trials, mode)
    fig, ax = plt.subplots(figsize=(7, 4))
    if hours:
        ax.step(hours, best, where="post", color="tab:blue", linewidth=2)
        ax.plot(hours, best, "o", color="tab:blue", markersize=3)
    ax.set_xlabel(label)
    ax.set_ylabel(f"best {metric} so far")
    ax.set_title(f"Best {metric} against the compute spent")
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_learning_curves(trials: list[TrialRecord], metric: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = plt.cm.tab20(np.linspace(0, 1, max(len(trials), 2)))
    for t, colour in zip(trials, colours):
        if not t.curve:
            continue
        style, alpha = STATUS_STYLE.get(t.status, ("-", 1.0))
        steps = [s for s, _, _ in t.curve]
        values = [v for _, v, _ in t.curve]
        ax.plot(steps, values, style, color=colour, alpha=alpha, marker="o", markersize=3, label=f"t{t.number:02d} ({t.status})")
        if t.status != "finished":  # where a stopped trial ended
            ax.plot(steps[-1], values[-1], "x", color=colour, markersize=9, markeredgewidth=2)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} of every trial (dashed, x: stopped early)")
    ax.grid(alpha=0.3)
    if len(trials) <= 20:
        ax.legend(fontsize=7, ncol=2, loc="best")
    _save(fig, path)


def parameter_importance(trials: list[TrialRecord], space: SearchSpace, mode: str) -> dict[str, float]:
    """Optuna's PED-ANOVA importance of each parameter for the trials' best values ({} with too few trials)."""
    scored = [t for t in trials if t.values and all(k in t.params for k in space.keys)]
    if len(scored) < MIN_TRIALS_FOR_IMPORTANCE:
        return {}
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    distributions = {p.key: _distribution(p) for p in space}
    for t in scored:
        study.add_trial(optuna.trial.create_trial(params=t.params, distributions=distributions, value=best_of(t.values, mode)))
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    return optuna.importance.get_param_importances(study, evaluator=evaluator, normalize=True)


def _distribution(p: Any) -> optuna.distributions.BaseDistribution:
    if p.is_choice:
        return optuna.distributions.CategoricalDistribution(list(p.options))
    if p.kind == "int":
        return optuna.distributions.IntDistribution(int(p.low), int(p.high), log=p.log)
    return optuna.distributions.FloatDistribution(p.low, p.high, log=p.log)


def plot_importance(importance: dict[str, float], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 0.4 * max(len(importance), 3) + 1.2))
    if importance:
        keys = list(importance)[::-1]
        ax.barh(keys, [importance[k] for k in keys], color="tab:green")
        ax.set_xlabel("importance (PED-ANOVA, normalised)")
    else:
        ax.text(0.5, 0.5, f"needs at least {MIN_TRIALS_FOR_IMPORTANCE} trials with a score", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title("Which parameters mattered")
    _save(fig, path)


def plot_parallel_coordinates(trials: list[TrialRecord], space: SearchSpace, metric: str, mode: str, path: Path) -> None:
    """One axis per parameter (log axes for log parameters) and the score; one line per trial, coloured by its score."""
    scored = [t for t in trials if t.values]
    axes = list(space)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * (len(axes) + 1)), 4.8))
    if not scored:
        ax.text(0.5, 0.5, "no trial has a score yet", ha="center", va="center")
        ax.set_axis_off()
        _save(fig, path)
        return
    scores = np.array([best_of(t.values, mode) for t in scored])
    low, high = float(scores.min()), float(scores.max())
    norm = plt.Normalize(low, high if high > low else low + 1)
    cmap = plt.cm.viridis if mode == "max" else plt.cm.viridis_r
    positions = {p.key: _axis_position(p) for p in axes}
    for t, score in sorted(zip(scored, scores), key=lambda pair: pair[1] if mode == "max" else -pair[1]):
        ys = [positions[p.key](t.params.get(p.key, p.spec_value)) for p in axes] + [norm(score)]
        ax.plot(range(len(ys)), ys, color=cmap(norm(score)), alpha=0.85, linewidth=1.5)
    for i, p in enumerate(axes):
        ax.axvline(i, color="grey", linewidth=0.8)
        for y, text in _axis_ticks(p):
            ax.text(i + 0.03, y, text, fontsize=7, va="center")
    ax.axvline(len(axes), color="grey", linewidth=0.8)
    for y in (0.0, 0.5, 1.0):
        ax.text(len(axes) + 0.03, y, f"{low + y * (high - low):.3g}", fontsize=7, va="center")
    ax.set_xticks(range(len(axes) + 1), [_axis_label(p) for p in axes] + [metric], rotation=25, ha="right", fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlim(-0.2, len(axes) + 0.5)
    ax.set_title(f"Parameters of every trial, coloured by its best {metric}")
    _save(fig, path)


def _axis_label(p: Any) -> str:
    return p.key.rsplit(".", 1)[-1] + (" (log)" if p.log and not p.is_choice else "")


def _axis_position(p: Any):
    """Value -> [0, 1] on this parameter's axis: log for log scales, index for choices."""
    if p.is_choice:
        options = list(p.options)
        return lambda v: options.index(v) / max(len(options) - 1, 1) if v in options else 0.5
    if p.log:
        low, high = math.log(p.low), math.log(p.high)
        return lambda v: (math.log(v) - low) / (high - low) if high > low else 0.5
    return lambda v: (v - p.low) / (p.high - p.low) if p.high > p.low else 0.5


def _axis_ticks(p: Any) -> list[tuple[float, str]]:
    if p.is_choice:
        return [(i / max(len(p.options) - 1, 1), str(o)) for i, o in enumerate(p.options)]
    middle = math.sqrt(p.low * p.high) if p.log else (p.low + p.high) / 2
    return [(0.0, f"{p.low:.3g}"), (0.5, f"{middle:.3g}"), (1.0, f"{p.high:.3g}")]


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# the page
# ---------------------------------------------------------------------------------------------
def write_report(spec: DictConfig, tracker: Tracker, parent_id: str, space: SearchSpace, metric: str) -> Path:
    """Write <results_dir>/report/ (index.html and the figures), log it to the parent run; returns index.html."""
    mode = spec.automl.mode
    out = Path(spec.results_dir) / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    trials = collect_trials(tracker, parent_id, metric, space)
    importance = parameter_importance(trials, space, mode)
    plot_best_so_far(trials, metric, mode, out / FIGURES[0])
    plot_learning_curves(trials, metric, out / FIGURES[1])
    plot_importance(importance, out / FIGURES[2])
    plot_parallel_coordinates(trials, space, metric, mode, out / FIGURES[3])
    index = out / "index.html"
    index.write_text(_page(spec, trials, importance, space, metric, mode))
    for name in (*FIGURES, "index.html"):
        tracker.log_artifact(parent_id, out / name, REPORT_DIR)
    return index


def sweep_gpu_seconds(trials: list[TrialRecord]) -> float:
    """The GPU-seconds every trial used, summed (each trial's last report holds its total)."""
    return sum(t.gpu_seconds[-1][1] for t in trials if t.gpu_seconds)


def _page(spec: DictConfig, trials: list[TrialRecord], importance: dict[str, float], space: SearchSpace, metric: str, mode: str) -> str:
    sign = -1.0 if mode == "max" else 1.0
    ranked = sorted(trials, key=lambda t: (not t.values, sign * best_of(t.values, mode) if t.values else 0.0))
    winner = ranked[0] if ranked and ranked[0].values else None
    statuses = {}
    for t in trials:
        statuses[t.status] = statuses.get(t.status, 0) + 1
    gpu_hours = sweep_gpu_seconds(trials) / 3600
    wall_hours = sum(t.wall_seconds[-1][1] for t in trials if t.wall_seconds) / 3600
    summary = [
        ("trials", f"{len(trials)} ({', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))})"),
        (f"best {metric}", f"{best_of(winner.values, mode):.2f} ({html.escape(winner.name)})" if winner else "-"),
        ("GPU-hours used", f"{gpu_hours:.3f}"),
        ("trial-hours (wall time of every trial, summed)", f"{wall_hours:.3f}"),
        ("search space", html.escape(space.source)),
        ("algorithm / scheduler", f"{spec.automl.algorithm} / {spec.automl.scheduler}"),
    ]
    keys = space.keys
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["#", "status", f"best {metric}", "validations", "GPU-s", "wall s", *keys])
    rows = []
    for t in ranked:
        cells = [f"t{t.number:02d}", t.status, f"{best_of(t.values, mode):.2f}" if t.values else "-", str(len(t.curve)),
                 f"{t.gpu_seconds[-1][1]:.0f}" if t.gpu_seconds else "-", f"{t.wall_seconds[-1][1]:.0f}" if t.wall_seconds else "-",
                 *(_format_value(t.params.get(k, "")) for k in keys)]  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    importance_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.2f}</td></tr>" for k, v in importance.items())
    figures = "".join(f'<figure><img src="{name}" alt="{name}"></figure>' for name in FIGURES)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Sweep report: {html.escape(str(spec.results_dir))}</title>
<style>
body {{ font: 14px/1.4 sans-serif; margin: 24px; max-width: 1400px; }}
table {{ border-collapse: collapse; margin: 8px 0 20px; }}
td, th {{ padding: 3px 10px; text-align: right; border-bottom: 1px solid #ddd; }}
th {{ background: #f3f3f3; }} td:first-child, th:first-child {{ text-align: left; }}
figure {{ display: inline-block; margin: 8px; }} img {{ max-width: 680px; border: 1px solid #eee; }}
</style></head><body>
<h1>Sweep report</h1>
<table>{"".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in summary)}</table>
{figures}
<h2>Parameter importance (PED-ANOVA)</h2>
<table>{importance_rows or f"<tr><td>needs at least {MIN_TRIALS_FOR_IMPORTANCE} trials with a score</td></tr>"}</table>
<h2>Trials, best first</h2>
<table><tr>{head}</tr>{"".join(rows)}</table>
</body></html>
"""


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
