"""The report's figures: each *_figure function takes plain rows (dicts of the Parquet trials /
milestones tables) and returns a Figure (drawing.png_bytes renders it). Nothing here reads
files, knows about MLflow or decides which figures a sweep gets (plots.py does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from defer_core.results import METRICS, metric_key

from ..intervals import T_INTERVAL, Interval
from ..protocol import THRESHOLD
from ..results.rows import Status
from ..results.ranking import Bound, is_feasible
from ..spec.trial_config import describe_config
from .data import row_key

from .drawing import BEST_COLOR, COMPLETE_COLOR, ErrorBars, FAILED_COLOR, FRONT_COLOR, Hotspot, INFEASIBLE_COLOR, METRIC_LABELS, Mark, PRUNED_COLOR, Row, TRAINING_COLORS, constraint_lines, error_bars, hotspots, new_figure, point_label, scoring_title, shared_label, trial_label, unit_axes

def pareto_figure(scoring: str, rows: Sequence[Row], front: Sequence[Row], best: Row | None, T: int, n_not_shown: int,
                  constraints: Sequence[Bound] = (), curve_mode: bool = False, bars: ErrorBars | None = None) -> tuple[Figure, tuple[Hotspot, ...]]:
    """Rel vs Loc at T for the candidates (completed trials, or in curve mode their curves'
    points); the non-dominated feasible ones joined and labelled, infeasible ones hollow, the
    constraints on Rel/Loc drawn, each trial's 95% intervals as error bars (`bars`); each
    point a hotspot naming its trial (and threshold)."""
    rel, loc = metric_key("rel", scoring), metric_key("loc", scoring)
    unit = "point" if curve_mode else "completed trial"
    figure = new_figure()
    ax = figure.add_subplot()
    if bars:
        error_bars(ax, rows, bars, rel, loc)
    front_keys = {row_key(r) for r in front}
    others = [r for r in rows if row_key(r) not in front_keys and is_feasible(r, constraints)]
    infeasible = [r for r in rows if not is_feasible(r, constraints)]
    ax.scatter([r[rel] for r in others], [r[loc] for r in others], s=45, color=COMPLETE_COLOR, alpha=0.6, label=f"{unit} ({len(others)})", zorder=2)
    if infeasible:
        ax.scatter([r[rel] for r in infeasible], [r[loc] for r in infeasible], s=40, facecolors="none", edgecolors=INFEASIBLE_COLOR,
                   label=f"infeasible {unit} ({len(infeasible)})", zorder=2)
    constraint_lines(ax, constraints, rel, loc)
    if front:
        ordered = sorted(front, key=lambda r: (r[rel], -r[loc]))
        xs, ys = [r[rel] for r in ordered], [r[loc] for r in ordered]
        ax.step(xs, ys, where="pre", color=FRONT_COLOR, linewidth=1.5, alpha=0.8, zorder=3)
        ax.scatter(xs, ys, s=90, color=FRONT_COLOR, edgecolor="black", linewidth=0.8, label=f"Pareto front ({len(front)})", zorder=4)
        labels: dict[tuple[float, float], list[Row]] = {}
        for r in ordered:  # points with equal values share one label: "#1, #4"
            labels.setdefault((r[rel], r[loc]), []).append(r)
        for (x, y), same in labels.items():
            ax.annotate(shared_label(same, curve_mode), (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
    if best is not None and best.get(rel) is not None and best.get(loc) is not None:
        ax.scatter([best[rel]], [best[loc]], s=260, marker="*", color=BEST_COLOR, edgecolor="black", linewidth=0.8, label=f"best.yaml ({point_label(best, curve_mode)})", zorder=5)
    unit_axes(ax)
    ax.set_xlabel(f"Rel at T={T} ({scoring})")
    ax.set_ylabel(f"Loc at T={T} ({scoring})")
    title = f"Pareto front of Rel vs Loc, {scoring_title(scoring)} scoring, {len(rows)} {unit}(s)"
    if n_not_shown:
        title += f"\n({n_not_shown} pruned/failed trial(s) not shown: they have no values at T)"
    ax.set_title(title)
    if not rows:
        ax.text(0.5, 0.5, "no completed trial", ha="center", va="center", transform=ax.transAxes, fontsize=14, color="dimgray")
    else:
        ax.legend(loc="best", fontsize=9)
    marks = [(ax, r[rel], r[loc], f"{trial_label(r)} {describe_config(r)}: {rel}={r[rel]:.3f}, {loc}={r[loc]:.3f}") for r in rows]
    return figure, hotspots(figure, marks)


Series = Sequence[tuple[float, Mapping[str, float]]]  # (threshold, metrics) ascending


def thresholds_figure(scoring: str, trainings: Sequence[Row], series: Mapping[str, Series], best: Row | None, T: int,
                      constraints: Sequence[Bound], exact: bool) -> Figure:
    """Rel, Gen and Loc against the threshold at T: one line per training (`trainings`, best
    first), steps for the exact tf curve (each value holds up to its breakpoint), points for a
    generation grid; best.yaml's threshold starred, constraints dashed."""
    figure = new_figure()
    axes = figure.subplots(1, 3, sharey=True)
    best_id = best["trial_id"] if best is not None else None
    for ax, metric in zip(axes, METRICS):
        key = metric_key(metric, scoring)
        for index, training in enumerate(trainings):
            points = [(t, m[key]) for t, m in series.get(str(training["trial_id"]), ()) if m.get(key) is not None]
            if not points:
                continue
            xs, ys = zip(*points)
            color = TRAINING_COLORS[index % len(TRAINING_COLORS)]
            width = 2.4 if training["trial_id"] == best_id else 1.3
            ax.plot(xs, ys, color=color, linewidth=width, drawstyle="steps-pre" if exact else "default", marker=None if exact else "o",
                    markersize=4, label=f"{trial_label(training)} {describe_config({k: v for k, v in training.items() if k != THRESHOLD})}", zorder=3)
        if best is not None and best.get(key) is not None and best.get(THRESHOLD) is not None:
            ax.scatter([best[THRESHOLD]], [best[key]], s=220, marker="*", color=BEST_COLOR, edgecolor="black", linewidth=0.8, zorder=5,
                       label=f"best.yaml ({trial_label(best)}, threshold {best[THRESHOLD]:.3f})")
        constraint_lines(ax, constraints, None, key)
        unit_axes(ax)
        ax.set_title(METRIC_LABELS[metric])
        ax.set_xlabel("threshold")
    axes[0].set_ylabel(f"accuracy at T={T} ({scoring})")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:  # constraints drawn in another panel
        for handle, text in zip(*ax.get_legend_handles_labels()):
            if text not in labels:
                handles.append(handle)
                labels.append(text)
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncol=min(3, len(handles)), fontsize=8)
    kind = "exact curve from the gates" if exact else "the spec's threshold grid"
    figure.suptitle(f"Rel / Gen / Loc vs threshold at T={T}, {scoring_title(scoring)} scoring ({kind}), top {len(trainings)} training(s)")
    return figure


def tradeoff_figure(scoring: str, trainings: Sequence[Row], series: Mapping[str, Series], top_ids: Sequence[str], best: Row | None, T: int,
                    constraints: Sequence[Bound]) -> Figure:
    """Rel against Loc at T as the threshold moves: one line per complete training, the top
    ones coloured and named, the constraints on Rel/Loc dashed, best.yaml's point starred."""
    rel, loc = metric_key("rel", scoring), metric_key("loc", scoring)
    figure = new_figure()
    ax = figure.add_subplot()
    constraint_lines(ax, constraints, rel, loc)
    colors = {trial_id: TRAINING_COLORS[i % len(TRAINING_COLORS)] for i, trial_id in enumerate(top_ids)}
    for training in sorted(trainings, key=lambda t: str(t["trial_id"]) in colors):  # the top ones drawn last, on top
        trial_id = str(training["trial_id"])
        points = [(m[rel], m[loc]) for _, m in series.get(trial_id, ()) if m.get(rel) is not None and m.get(loc) is not None]
        if not points:
            continue
        xs, ys = zip(*points)
        if trial_id in colors:
            ax.plot(xs, ys, "-o", color=colors[trial_id], linewidth=1.8, markersize=3, label=f"{trial_label(training)}", zorder=3)
        else:
            ax.plot(xs, ys, "-", color=INFEASIBLE_COLOR, linewidth=0.8, alpha=0.7, zorder=2)
    if best is not None and best.get(rel) is not None and best.get(loc) is not None:
        ax.scatter([best[rel]], [best[loc]], s=260, marker="*", color=BEST_COLOR, edgecolor="black", linewidth=0.8, zorder=5,
                   label=f"best.yaml ({point_label(best, True)})")
    unit_axes(ax)
    ax.set_xlabel(f"Rel at T={T} ({scoring})")
    ax.set_ylabel(f"Loc at T={T} ({scoring})")
    ax.set_title(f"Rel–Loc trade-off over thresholds, {scoring_title(scoring)} scoring, {len(trainings)} training(s) (grey: not in the top {len(top_ids)})")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", fontsize=8)
    return figure


def _edit_axis(ax: Any, milestones: Sequence[int]) -> None:
    if milestones and min(milestones) > 0 and max(milestones) / min(milestones) >= 20:
        ax.set_xscale("log")
    if milestones:
        ax.set_xticks(list(milestones))
        ax.set_xticklabels([str(m) for m in milestones])
        ax.minorticks_off()


@dataclass(frozen=True)
class Curve:
    """One line of a curves panel: the trials whose points are all the same (drawn once)."""

    trials: tuple[Row, ...]
    points: tuple[tuple[int, float], ...]

    @property
    def ids(self) -> set[str]:
        return {t["trial_id"] for t in self.trials}


def curves(trials: Sequence[Row], milestones_by_trial: Mapping[str, Sequence[Row]], key: str) -> list[Curve]:
    """Trials with the same status and the same points (to 6 decimals) share one Curve: many
    pruned trials stop at 0.0 together, and drawn one over the other they would look like one."""
    groups: dict[tuple[Any, ...], list[Row]] = {}
    points_of: dict[tuple[Any, ...], tuple[tuple[int, float], ...]] = {}
    for trial in trials:
        points = tuple((int(m["n_edits"]), float(m[key])) for m in milestones_by_trial.get(trial["trial_id"], []) if m.get(key) is not None)
        if not points:
            continue
        group = (trial["status"], tuple((n, round(v, 6)) for n, v in points))
        groups.setdefault(group, []).append(trial)
        points_of.setdefault(group, points)
    return [Curve(tuple(members), points_of[group]) for group, members in groups.items()]


def _curve_title(curve: Curve, key: str, n_edits: int, value: float) -> str:
    names = ", ".join(f"{trial_label(t)} {describe_config(t)}" for t in curve.trials)
    same = f"{len(curve.trials)} trials with this curve: " if len(curve.trials) > 1 else ""
    return f"{same}{names} ({curve.trials[0]['status']}): {key}={value:.3f} at {n_edits} edits"


def _end_label(curve: Curve, labelled: Sequence[str]) -> str:
    """`#004`, `#004, #009` or `×3` (with the labelled members' numbers when there are some)."""
    named = [trial_label(t) for trial_id in labelled for t in curve.trials if t["trial_id"] == trial_id]
    count = f"×{len(curve.trials)}" if len(curve.trials) > 1 else ""
    return " ".join(part for part in (", ".join(named), count) if part)


def curves_figure(scoring: str, trials: Sequence[Row], milestones_by_trial: Mapping[str, Sequence[Row]], best: Row | None, front_ids: set[str], milestones: Sequence[int], labelled: Sequence[str] = ()) -> tuple[Figure, tuple[Hotspot, ...]]:
    """Rel, Gen and Loc against the number of edits: one line per trial (identical ones drawn
    once, with their count at the end), the best on top, the `labelled` trials named at their
    line's end; every point a hotspot naming its trial(s)."""
    figure = new_figure()
    axes = figure.subplots(1, 3, sharey=True)
    best_id = best["trial_id"] if best is not None else None
    styles = {Status.COMPLETE: ("-", COMPLETE_COLOR, 0.45), Status.PRUNED: ("--", PRUNED_COLOR, 0.7), Status.FAILED: (":", FAILED_COLOR, 0.7)}
    marks: list[Mark] = []
    for ax, metric in zip(axes, METRICS):
        key = metric_key(metric, scoring)
        ends: dict[tuple[int, float], list[str]] = {}  # end point → labels; curves ending together share one
        for curve in sorted(curves(trials, milestones_by_trial, key), key=lambda c: best_id in c.ids):  # the best's line last, on top
            xs, ys = zip(*curve.points)
            if best_id in curve.ids:
                ax.plot(xs, ys, "-o", color=BEST_COLOR, linewidth=3.0, markersize=7, zorder=5)
            elif curve.ids & front_ids:
                ax.plot(xs, ys, "-o", color=FRONT_COLOR, linewidth=1.6, markersize=4, alpha=0.9, zorder=3)
            else:
                status = curve.trials[0]["status"]
                style, color, alpha = styles.get(status, styles[Status.COMPLETE])
                ax.plot(xs, ys, style, color=color, linewidth=1.0, alpha=alpha, marker="o", markersize=3, zorder=2)
                if status != Status.COMPLETE:
                    ax.plot(xs[-1:], ys[-1:], "x", color=color, markersize=7, zorder=2)
            marks.extend((ax, n, v, _curve_title(curve, key, n, v)) for n, v in curve.points)
            text = _end_label(curve, labelled)
            if text:
                ends.setdefault(curve.points[-1], []).append(text)
        for (x, y), texts in ends.items():
            ax.annotate(", ".join(texts), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7, zorder=6)
        ax.margins(x=0.12)  # room for the end labels inside the panel
        _edit_axis(ax, milestones)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(True, alpha=0.3)
        ax.set_title(METRIC_LABELS[metric])
        ax.set_xlabel("number of edits")
    axes[0].set_ylabel(f"accuracy ({scoring})")
    handles = [
        Line2D([], [], color=COMPLETE_COLOR, marker="o", markersize=3, alpha=0.6, label="completed"),
        Line2D([], [], color=PRUNED_COLOR, linestyle="--", marker="x", label="pruned (stopped early)"),
    ]
    if any(t["status"] == Status.FAILED for t in trials):
        handles.append(Line2D([], [], color=FAILED_COLOR, linestyle=":", marker="x", label="failed"))
    if front_ids:
        handles.append(Line2D([], [], color=FRONT_COLOR, marker="o", label="Pareto front"))
    if best is not None:
        handles.append(Line2D([], [], color=BEST_COLOR, linewidth=3, marker="o", label=f"best.yaml ({trial_label(best)})"))
    figure.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9)
    figure.suptitle(f"Rel / Gen / Loc vs number of edits, {scoring_title(scoring)} scoring, {len(trials)} trial(s); ×N: N trials with the same curve")
    return figure, hotspots(figure, marks)


Spreads = Mapping[str, Mapping[str, Mapping[int, Interval]]]  # trial id -> metric key -> n_edits -> interval


def spread_text(intervals: Iterable[Interval]) -> str:
    """`t, n=6` / `bootstrap over records` / `no interval`: how a trial's band was made."""
    kinds = {(i.kind, i.n if i.kind == T_INTERVAL else 0) for i in intervals}
    if not kinds:
        return "no interval"
    if all(kind == T_INTERVAL for kind, _ in kinds):
        return ", ".join(f"t, n={n}" for _, n in sorted(kinds))
    return "bootstrap over records"


def bands_figure(scoring: str, trials: Sequence[Row], milestones_by_trial: Mapping[str, Sequence[Row]], spreads: Spreads, best: Row | None,
                 milestones: Sequence[int]) -> tuple[Figure, tuple[Hotspot, ...]]:
    """Rel, Gen and Loc against the number of edits for a few trials, each line the stored
    mean with its 95% interval as a band; every point a hotspot with the interval."""
    figure = new_figure()
    axes = figure.subplots(1, 3, sharey=True)
    best_id = best["trial_id"] if best is not None else None
    marks: list[Mark] = []
    for ax, metric in zip(axes, METRICS):
        key = metric_key(metric, scoring)
        for index, trial in enumerate(trials):
            trial_id = str(trial["trial_id"])
            points = [(int(m["n_edits"]), float(m[key])) for m in milestones_by_trial.get(trial_id, []) if m.get(key) is not None]
            if not points:
                continue
            color = TRAINING_COLORS[index % len(TRAINING_COLORS)]
            intervals = spreads.get(trial_id, {}).get(key, {})
            xs, ys = zip(*points)
            banded = [(n, intervals[n]) for n in xs if n in intervals]
            if banded:
                ax.fill_between([n for n, _ in banded], [i.low for _, i in banded], [i.high for _, i in banded], color=color, alpha=0.18, linewidth=0, zorder=2)
            width = 2.6 if trial_id == best_id else 1.5
            ax.plot(xs, ys, "-o", color=color, linewidth=width, markersize=4, zorder=3,
                    label=f"{trial_label(trial)} {describe_config(trial)} ({spread_text(intervals.values())})")
            for n, value in points:
                found = intervals.get(n)
                spread = f" [{found.low:.3f}, {found.high:.3f}] ({found.kind}, n={found.n})" if found is not None else ""
                marks.append((ax, n, value, f"{trial_label(trial)}: {key}={value:.3f}{spread} at {n} edits"))
        _edit_axis(ax, milestones)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(True, alpha=0.3)
        ax.set_title(METRIC_LABELS[metric])
        ax.set_xlabel("number of edits")
    axes[0].set_ylabel(f"accuracy ({scoring})")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncol=min(2, len(handles)), fontsize=8)
    else:
        axes[1].text(0.5, 0.5, "no trial to show", ha="center", va="center", transform=axes[1].transAxes, fontsize=14, color="dimgray")
    figure.suptitle(f"Rel / Gen / Loc vs number of edits with 95% intervals, {scoring_title(scoring)} scoring, {len(trials)} trial(s)")
    return figure, hotspots(figure, marks)


def importance_figure(importances: Mapping[str, Mapping[str, Mapping[str, float]]], caveats: Mapping[str, str] | None = None) -> Figure:
    """importances[objective][evaluator][param] (normalised to sum 1): grouped horizontal bars,
    one panel per objective; an evaluator's caveat (e.g. a small sample) tags its legend entry."""
    caveats = caveats or {}
    figure = new_figure()
    objectives = list(importances)
    axes = figure.subplots(1, len(objectives), squeeze=False)[0]
    for ax, objective in zip(axes, objectives):
        by_evaluator = importances[objective]
        evaluators = list(by_evaluator)
        params = sorted({p for values in by_evaluator.values() for p in values}, key=lambda p: -max(v.get(p, 0.0) for v in by_evaluator.values()))
        height = 0.8 / max(1, len(evaluators))
        for index, evaluator in enumerate(evaluators):
            ys = [i + (index - (len(evaluators) - 1) / 2) * height for i in range(len(params))]
            values = [by_evaluator[evaluator].get(p, 0.0) for p in params]
            label = f"{evaluator} ({caveats[evaluator]})" if evaluator in caveats else evaluator
            bars = ax.barh(ys, values, height=height * 0.95, label=label, color=("#55a868", "#8172b3", "#64b5cd")[index % 3])
            ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=8, padding=2)
        ax.set_yticks(range(len(params)))
        ax.set_yticklabels(params)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.1)
        ax.set_xlabel("importance (normalised, sums to 1)")
        ax.set_title(f"for {objective}")
        ax.grid(True, axis="x", alpha=0.3)
        ax.legend(loc="lower right", fontsize=9)
    figure.suptitle("Hyperparameter importance (Optuna evaluators, completed trials)")
    return figure


def params_figure(objective: str, direction: str, params: Sequence[tuple[str, bool, Sequence[Any] | None]], trials: Sequence[Row], best: Row | None, T: int) -> Figure:
    """One panel per searched hyperparameter: the objective's value against it.

    params: (name, log_scale, categorical_choices_or_None). Completed trials at T; pruned
    trials at their last milestone (hollow grey: not comparable, but they show where the
    search stopped early)."""
    figure = new_figure()
    columns = max(1, len(params))
    axes = figure.subplots(1, columns, sharey=True, squeeze=False)[0]
    best_id = best["trial_id"] if best is not None else None
    for ax, (name, log_scale, choices) in zip(axes, params):
        complete = [t for t in trials if t["status"] == Status.COMPLETE and t.get(objective) is not None]
        stopped = [t for t in trials if t["status"] != Status.COMPLETE and t.get(objective) is not None]
        ax.scatter([t[name] for t in stopped], [t[objective] for t in stopped], s=40, facecolors="none", edgecolors=PRUNED_COLOR, label="pruned (value at its last milestone)", zorder=2)
        ax.scatter([t[name] for t in complete], [t[objective] for t in complete], s=45, color=COMPLETE_COLOR, alpha=0.75, label=f"completed (value at T={T})", zorder=3)
        best_row = next((t for t in complete if t["trial_id"] == best_id), None)
        if best_row is not None:
            ax.scatter([best_row[name]], [best_row[objective]], s=260, marker="*", color=BEST_COLOR, edgecolor="black", linewidth=0.8, label=f"best.yaml ({trial_label(best_row)})", zorder=4)
        if log_scale:
            ax.set_xscale("log")
        if choices:
            ax.set_xticks(list(choices))
            ax.set_xticklabels([str(c) for c in choices])
            ax.minorticks_off()
        elif name == "layer":
            values = [int(t[name]) for t in trials if t.get(name) is not None]
            if values:
                ax.set_xticks(range(min(values), max(values) + 1))
        ax.set_xlabel(name)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"{objective} ({direction})")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncol=len(handles), fontsize=9)
    figure.suptitle(f"Hyperparameters vs objective {objective}")
    return figure
