"""The report's figures, drawn with matplotlib's Agg backend at one fixed size (1000x600 px).

Figures are built with the object API and an explicit Agg canvas, never pyplot: no display
is needed and the process's global backend (e.g. in the sweep driver) is left alone.

Each *_figure function takes plain rows (dicts of the Parquet trials / milestones tables) and
returns a Figure; `png_bytes` renders it. `build_plots` (at the end) decides which figures a
sweep gets and captions them. Nothing here reads files or knows about MLflow.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from defer_core.results import METRICS, metric_key

from ..intervals import T_INTERVAL, Interval
from ..protocol import OPTUNA_TRIAL, STAGE, STAGE_CONFIRM, THRESHOLD, Status, trial_label as label_of
from ..search.ranking import Bound, is_feasible
from ..search.space import describe_config
from ..sinks.records import bounds_text
from ..sinks.trial_curve import tf_curves
from ..spec import Choice as ChoiceRange, FloatRange, SweepSpec
from .data import SweepData, rel_loc_front, row_key, scorings_with_data, spec_front_ids, top_trainings, top_trials
from .importance import Importance

WIDTH_PX, HEIGHT_PX, DPI = 1000, 600, 100
COMPLETE_COLOR = "#4c72b0"
PRUNED_COLOR = "#9a9a9a"
FAILED_COLOR = "#8c564b"
FRONT_COLOR = "#dd8452"
BEST_COLOR = "#c44e52"
INFEASIBLE_COLOR = "#b0b0b0"
CONSTRAINT_COLOR = "#2ca02c"
TRAINING_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974")

LABELLED_CURVES = 5  # curves named at their end: best.yaml's trial and the top trials (the page's order)
Row = Mapping[str, Any]
METRIC_LABELS = {"rel": "Rel (edit prompts)", "gen": "Gen (rephrased prompts)", "loc": "Loc (unrelated prompts)"}
SCORING_LABELS = {"tf": "teacher-forced", "gen": "generation", "genctx": "generation, in-context target"}


def new_figure() -> Figure:
    """A figure of exactly WIDTH_PX x HEIGHT_PX pixels (never saved with bbox_inches='tight',
    which would change the size)."""
    figure = Figure(figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def trial_label(row: Row) -> str:
    """`#007`, as the console and MLflow run names print it (protocol.trial_label)."""
    return label_of(row.get(OPTUNA_TRIAL), str(row.get("trial_id", "?")))


def point_label(row: Row, curve_mode: bool) -> str:
    """A candidate's label: its trial's, in curve mode with its threshold (`#007@0.73`)."""
    return f"{trial_label(row)}@{row[THRESHOLD]:.2f}" if curve_mode and row.get(THRESHOLD) is not None else trial_label(row)


SHARED_LABELS = 3  # trials named in one label of equal points; the rest are counted


def shared_label(rows: Sequence[Row], curve_mode: bool) -> str:
    """One label for points with the same values: `#1, #4`; in curve mode a trial's several
    thresholds as a range, `#000@0.10–0.47 (8)`; past SHARED_LABELS trials, `+N more`."""
    by_trial: dict[str, list[Row]] = {}
    for r in rows:
        by_trial.setdefault(trial_label(r), []).append(r)
    names = []
    for name, ours in by_trial.items():
        thresholds = sorted(r[THRESHOLD] for r in ours if r.get(THRESHOLD) is not None)
        if not curve_mode or not thresholds:
            names.append(name)
        elif len(thresholds) == 1:
            names.append(f"{name}@{thresholds[0]:.2f}")
        else:
            names.append(f"{name}@{thresholds[0]:.2f}–{thresholds[-1]:.2f} ({len(thresholds)})")
    more = f" +{len(names) - SHARED_LABELS} more" if len(names) > SHARED_LABELS else ""
    return ", ".join(names[:SHARED_LABELS]) + more


def constraint_lines(ax: Any, constraints: Sequence[Bound], x_metric: str | None, y_metric: str | None) -> None:
    """Draws each bound on the axes' metrics as a dashed line (vertical for x, horizontal for y)."""
    for bound in constraints:
        for value, side in ((bound.min, ">="), (bound.max, "<=")):
            if value is None:
                continue
            label = f"constraint {bound.metric} {side} {value:g}"
            if bound.metric == x_metric:
                ax.axvline(value, color=CONSTRAINT_COLOR, linestyle="--", linewidth=1.3, label=label, zorder=1)
            if bound.metric == y_metric:
                ax.axhline(value, color=CONSTRAINT_COLOR, linestyle="--", linewidth=1.3, label=label, zorder=1)


@dataclass(frozen=True)
class Hotspot:
    """A point of a figure, in image pixels (origin top left), that the page gives a hover title."""

    x: float
    y: float
    title: str


Mark = tuple[Any, float, float, str]  # (axes, x, y in data units, title)


def hotspots(figure: Figure, marks: Iterable[Mark]) -> tuple[Hotspot, ...]:
    """Data points → image pixels. Draws the figure first, so constrained layout has placed
    the axes exactly where the PNG (same size and dpi) will have them."""
    figure.canvas.draw()
    spots = []
    for ax, x, y, title in marks:
        px, py = ax.transData.transform((x, y))
        spots.append(Hotspot(round(float(px), 1), round(HEIGHT_PX - float(py), 1), title))
    return tuple(spots)


def scoring_title(scoring: str) -> str:
    return f"{scoring} ({SCORING_LABELS.get(scoring, scoring)})"


def _unit_axes(ax: Any) -> None:
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.grid(True, alpha=0.3)


ErrorBars = Mapping[str, tuple[Interval | None, Interval | None]]  # trial id -> (Rel interval, Loc interval) at T


def error_bars(ax: Any, rows: Sequence[Row], bars: ErrorBars, x_key: str, y_key: str) -> int:
    """Draws each row's intervals as error bars around its point (thin, under the points);
    returns how many rows had one."""
    drawn = 0
    for r in rows:
        x_interval, y_interval = bars.get(str(r["trial_id"]), (None, None))
        if x_interval is None and y_interval is None:
            continue
        x, y = r[x_key], r[y_key]
        xerr = None if x_interval is None else [[max(0.0, x - x_interval.low)], [max(0.0, x_interval.high - x)]]
        yerr = None if y_interval is None else [[max(0.0, y - y_interval.low)], [max(0.0, y_interval.high - y)]]
        ax.errorbar([x], [y], xerr=xerr, yerr=yerr, fmt="none", ecolor="#555555", elinewidth=0.9, capsize=2.5, alpha=0.7, zorder=1.5,
                    label=None if drawn else "95% interval")
        drawn += 1
    return drawn


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
    _unit_axes(ax)
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
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(True, alpha=0.3)
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
    _unit_axes(ax)
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



# -- which figures a sweep gets ---------------------------------------------------------------------

SECTIONS = ("pareto", "thresholds", "curves", "importance", "params")  # in page order; thresholds only in curve mode
_PER_SCORING_OR_OBJECTIVE = ("pareto_", "thresholds_", "tradeoff_", "curves_", "bands_", "params_")  # file name prefixes; importance.png is alone


@dataclass(frozen=True)
class Plot:
    name: str  # file stem: <name>.png
    section: str  # one of SECTIONS
    title: str
    caption: str
    png: bytes
    hotspots: tuple[Hotspot, ...] = ()  # points the page titles on hover (trial numbers)


def is_report_png(name: str) -> bool:
    """A PNG an earlier report may have written (so a rerun may delete it), nothing else."""
    return name.endswith(".png") and (name == "importance.png" or name.startswith(_PER_SCORING_OR_OBJECTIVE))


def build_plots(data: SweepData, importance: Importance) -> list[Plot]:
    """Every figure of the page, in page order, rendered to PNG."""
    scorings = scorings_with_data(data)
    return [
        *(_pareto_plot(data, s) for s in scorings),
        *(_threshold_plots(data) if data.spec.curve_mode else []),
        *(plot for s in scorings for plot in (_curves_plot(data, s), *_bands_plot(data, s))),
        *([_importance_plot(importance)] if importance.values else []),
        *_params_plots(data),
    ]


def _pareto_plot(data: SweepData, scoring: str) -> Plot:
    spec, T = data.spec, data.spec.T
    rel, loc = metric_key("rel", scoring), metric_key("loc", scoring)
    rows = [r for r in data.candidates if r.get(rel) is not None and r.get(loc) is not None]
    front = rel_loc_front(rows, scoring, spec.constraints)
    bars = {trial_id: (by_metric.get(rel, {}).get(T), by_metric.get(loc, {}).get(T)) for trial_id, by_metric in data.spreads.items()}
    figure, spots = pareto_figure(scoring, rows, front, data.exported_best, T, len(data.trials) - len(data.completed), spec.constraints, spec.curve_mode, bars)
    what = f"a (training, threshold) point of a trial that made all {T} edits: the trial's adaptor read at one threshold of its curve" if spec.curve_mode else f"a trial that made all {T} edits"
    caption = (
        f"Each point is {what}, scored {scoring_title(scoring)}. "
        f"Orange: the {len(front)} non-dominated point(s) (no other is at least as good on both Rel and Loc and better on one). "
        + (f"Only points satisfying the constraints ({bounds_text(spec.constraints)}, dashed) count; hollow grey points do not. " if spec.constraints else "")
        + "Red star: best.yaml. "
        + (f"Bars: 95% intervals at T, {_SPREAD_CAPTION}. " if any(x or y for x, y in bars.values()) else "")
        + "Hover a point for its trial."
    )
    return Plot(f"pareto_{scoring}", "pareto", f"Pareto front: Rel vs Loc ({scoring})", caption, png_bytes(figure), spots)


def threshold_series(data: SweepData, scoring: str) -> tuple[dict[str, list[tuple[float, dict[str, float]]]], bool]:
    """Per complete trial, its (threshold, metrics) at T under one scoring, and whether they
    are exact: tf from the gate rows (every breakpoint), generation scorings from the grid."""
    if scoring == "tf":
        curves = tf_curves(data.spec, data.completed, data.gates, data.spec.T)
        return {trial_id: [(p.threshold, p.metrics) for p in points] for trial_id, points in curves.items()}, True
    grid: dict[str, list[tuple[float, dict[str, float]]]] = {}
    for row in sorted(data.grid, key=lambda r: r[THRESHOLD]):
        grid.setdefault(str(row["trial_id"]), []).append((row[THRESHOLD], {k: v for k, v in row.items() if v is not None}))
    return grid, False


def _threshold_plots(data: SweepData) -> list[Plot]:
    """Curve mode: per scoring with data at T, the top trainings' Rel/Gen/Loc against the
    threshold and every training's Rel–Loc trade-off over thresholds."""
    spec, T = data.spec, data.spec.T
    top = top_trainings(data)
    top_ids = [str(t["trial_id"]) for t in top]
    plots = []
    for scoring in spec.scorings:
        series, exact = threshold_series(data, scoring)
        if not series:
            continue
        figure = thresholds_figure(scoring, top, series, data.exported_best, T, spec.constraints, exact)  # starred at best.yaml's threshold: the same metrics
        how = ("exact: each step is where a probe's gate crosses the threshold (defer-sweep curve prints the numbers)" if exact
               else "measured at the spec's threshold grid only (generation depends on the threshold at every token)")
        caption = f"The top {len(top)} training(s) by the candidates' ranking, at T={T}, {scoring_title(scoring)} scoring; {how}. Red star: best.yaml's threshold."
        plots.append(Plot(f"thresholds_{scoring}", "thresholds", f"Rel / Gen / Loc vs threshold ({scoring})", caption, png_bytes(figure)))
        figure = tradeoff_figure(scoring, data.completed, series, top_ids, data.exported_best, T, spec.constraints)
        caption = (f"Each line is one training that made all {T} edits, traced over thresholds: raising the threshold trades Rel for Loc. "
                   + (f"Dashed: the constraints ({bounds_text(spec.constraints)}). " if spec.constraints else "") + "Red star: best.yaml.")
        plots.append(Plot(f"tradeoff_{scoring}", "thresholds", f"Rel–Loc trade-off over thresholds ({scoring})", caption, png_bytes(figure)))
    return plots


def _curves_plot(data: SweepData, scoring: str) -> Plot:
    front_ids = spec_front_ids(data)
    labelled = _labelled_trials(data)
    figure, spots = curves_figure(scoring, data.trials, data.milestones, data.best, front_ids, data.spec.milestones, labelled)
    caption = (
        "One line per trial, evaluated over all edits made so far at each milestone. Dashed grey lines end where the "
        "scheduler pruned a trial; the thick red line is the trial in best.yaml"
        + ("; orange lines are the spec's Pareto front" if front_ids else "")
        + f". The best.yaml trial and the top {LABELLED_CURVES} trials are named at their line's end; trials whose curves are "
        "identical are drawn once, marked ×N. Hover a point for its trial(s)."
    )
    return Plot(f"curves_{scoring}", "curves", f"Rel / Gen / Loc vs number of edits ({scoring})", caption, png_bytes(figure), spots)


_SPREAD_CAPTION = ("Student t over a trial's repeat members (seeds × edit orders) where it has several, "
                   "else a percentile bootstrap over the records scored there (defer-sweep table --interval t computes the same)")


def _bands_plot(data: SweepData, scoring: str) -> list[Plot]:
    """The band trials' edit curves with their intervals; none in curve mode (no band trials)."""
    if not data.band_trials:
        return []
    figure, spots = bands_figure(scoring, data.band_trials, data.milestones, data.spreads, data.best, data.spec.milestones)
    confirmed = any(t.get(STAGE) == STAGE_CONFIRM for t in data.band_trials)
    which = "the confirm-stage trials" if confirmed else f"the top {len(data.band_trials)} trial(s) (the spec's Pareto front first)"
    caption = (f"Each line is the mean at each milestone of {which}, the shaded band its 95% interval: {_SPREAD_CAPTION}. "
               "The legend says which each trial got. Hover a point for its interval.")
    return [Plot(f"bands_{scoring}", "curves", f"Rel / Gen / Loc vs number of edits, with 95% intervals ({scoring})", caption, png_bytes(figure), spots)]


def _labelled_trials(data: SweepData) -> list[str]:
    """Trial ids named at their curve's end, in the page's order: best.yaml's trial, then the top ones."""
    ranked, _ = top_trials(data, LABELLED_CURVES)
    ids = [data.best["trial_id"]] if data.best is not None else []
    ids += [r["trial_id"] for r in ranked if r["trial_id"] not in ids]
    return ids[: LABELLED_CURVES + 1]


def _importance_plot(importance: Importance) -> Plot:
    figure = importance_figure(importance.values, importance.caveats)
    caption = f"How much of the objective's variation each hyperparameter explains, over {importance.n_complete} completed trial(s) of the Optuna study."
    if importance.caveats:
        caption += f" Every method here saw a small sample ({', '.join(importance.caveats)}): see the notes above."
    return Plot("importance", "importance", "Hyperparameter importance", caption, png_bytes(figure))


def _params_plots(data: SweepData) -> list[Plot]:
    spec, T = data.spec, data.spec.T
    params = _searched_params(spec)
    if not params:
        return []
    result = []
    for objective in spec.objectives:
        figure = params_figure(objective.metric, objective.direction, params, data.trials, data.best, T)
        caption = f"{objective.metric} against each searched hyperparameter. Filled: value at T={T}; hollow grey: a pruned trial's value at the milestone where it stopped."
        result.append(Plot(f"params_{objective.metric}", "params", f"Hyperparameters vs {objective.metric}", caption, png_bytes(figure)))
    return result


def _searched_params(spec: SweepSpec) -> list[tuple[str, bool, Sequence[Any] | None]]:
    """(name, log scale, categorical choices or None) per searched hyperparameter, as params_figure takes them."""
    out = []
    for name, param in spec.search_space.searched().items():
        log_scale = isinstance(param, FloatRange) and param.log
        choices = tuple(param.values) if isinstance(param, ChoiceRange) else None
        out.append((name, log_scale, choices))
    return out
