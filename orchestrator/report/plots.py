"""Which figures a sweep gets, captioned: `build_plots` turns a sweep's data into the report's
plots (figures.py draws each one)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


from defer_core.results import TF, metric_key

from ..protocol import STAGE, STAGE_CONFIRM, THRESHOLD
from ..results.ranking import bounds_text
from ..results.curve import tf_curves
from ..spec import Choice as ChoiceRange, FloatRange, SweepSpec
from .data import SweepData, rel_loc_front, scorings_with_data, spec_front_ids, top_trainings, top_trials
from .importance import Importance

from .drawing import Hotspot, LABELLED_CURVES, png_bytes, scoring_title
from .figures import bands_figure, curves_figure, importance_figure, params_figure, pareto_figure, thresholds_figure, tradeoff_figure

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
    if scoring == TF:
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
        if not any(t.get(objective.metric) is not None for t in data.trials):
            continue  # no trial reported it (all failed, say): nothing to plot, and no axis to scale
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
