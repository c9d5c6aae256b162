"""Curve mode: a milestone's (threshold, metrics) points, the best of them, and each point's
single objective at every milestone so far (what Optuna gets as its intermediate values).

A training's tf metrics at any threshold follow exactly from its gate rows (defer_core.curve);
the generation scorings are known at the spec's grid thresholds only. So a milestone's points
are the tf curve's breakpoints thinned to `curve.resolution`, plus the grid thresholds when a
generation scoring is scored (those get tf metrics too; breakpoints get no generation
metrics). The best point is feasible first, then best by the early-stopping metric (what
ASHA compares) or else the first objective, ties to the lower threshold; the worker reports
its metrics at the top level, so Tune, ASHA and the searcher read one number per milestone.

A breakpoint is a gate value, a knife edge: what is handed on (best.yaml, the report, `defer-sweep
curve`'s chosen point) is `point_margin`'s threshold, the same metrics with a margin.

Imports no torch: the searcher (driver) and the worker both use it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

from defer_core.curve import TF, SafeThreshold, curve_thresholds, thin, tf_metrics_at, threshold_margin
from defer_core.results import GENERATION_SCORINGS, METRICS, GateRow, GridPoint, MilestoneResult, metric_key

from ..protocol import DERIVED_METRICS, FEASIBLE, INTERMEDIATE_KEY, THRESHOLD
from ..spec import Objective, SweepSpec
from .ranking import is_feasible

Point = dict[str, Any]
MEAN = DERIVED_METRICS[0]


def with_mean_metrics(metrics: Mapping[str, float], scorings: Sequence[str]) -> dict[str, float]:
    """Adds mean_{scoring} = mean(rel, gen, loc) for each scoring that has all three."""
    out = dict(metrics)
    for scoring in scorings:
        parts = [metrics.get(metric_key(m, scoring)) for m in METRICS]
        if all(p is not None for p in parts):
            out[metric_key(MEAN, scoring)] = math.fsum(parts) / len(parts)  # type: ignore[arg-type]
    return out


def generation_grid(spec: SweepSpec) -> tuple[float, ...]:
    """The thresholds a curve-mode training evaluates generation at: the spec's grid when a
    generation scoring is scored, else none."""
    return spec.curve.gen_grid if spec.curve_mode and any(s in spec.scorings for s in GENERATION_SCORINGS) else ()


@dataclass(frozen=True)
class MilestoneCurve:
    """What one milestone leaves for reading it at any threshold: its gate rows and grid."""

    n_edits: int
    gates: tuple[GateRow, ...] = ()
    grid: tuple[GridPoint, ...] = ()

    @classmethod
    def of(cls, milestone: MilestoneResult) -> MilestoneCurve:
        return cls(int(milestone.n_edits), tuple(milestone.gates), tuple(milestone.grid))


def gate_dicts(gates: Iterable[GateRow]) -> list[dict[str, Any]]:
    """Gate rows as a report carries them (protocol.GATES_KEY)."""
    return [asdict(row) for row in gates]


def gate_rows(dicts: Iterable[Mapping[str, Any]]) -> tuple[GateRow, ...]:
    """A report's gate rows back as GateRow."""
    return tuple(GateRow(**row) for row in dicts)


def grid_dicts(grid: Iterable[GridPoint]) -> list[dict[str, Any]]:
    """The grid as a report carries it (protocol.GRID_KEY): {"threshold": t, **metrics}."""
    return [{THRESHOLD: point.threshold, **point.metrics} for point in grid]


def metrics_at(curve: MilestoneCurve, threshold: float, spec: SweepSpec) -> dict[str, float]:
    """The spec's metrics known at `threshold`: tf exactly from the gate rows; generation
    scorings where the grid has this threshold; each mean_* whose three parts are known."""
    metrics: dict[str, float] = {}
    if TF in spec.scorings and curve.gates:
        metrics.update(tf_metrics_at(curve.gates, threshold, spec.model.run_dtype))
    for point in curve.grid:
        if point.threshold == threshold:
            metrics.update({key: float(value) for key, value in point.metrics.items() if key.rsplit("_", 1)[-1] in spec.scorings})
    return with_mean_metrics(metrics, spec.scorings)


def point_thresholds(curve: MilestoneCurve, spec: SweepSpec) -> list[float]:
    """The tf curve's breakpoints thinned to the spec's resolution, and the grid's thresholds."""
    breakpoints = thin(curve_thresholds(row.gate for row in curve.gates), spec.curve.resolution) if TF in spec.scorings and curve.gates else []
    return sorted(set(breakpoints) | {point.threshold for point in curve.grid})


def single_objective(spec: SweepSpec) -> str | None:
    """The metric Optuna keeps intermediate values of (it keeps none with several objectives)."""
    return None if spec.multi_objective else spec.objectives[0].metric


def curve_points(curve: MilestoneCurve, spec: SweepSpec, earlier: Sequence[MilestoneCurve] = ()) -> list[Point]:
    """The milestone's points, by threshold: {"threshold", metrics..., "feasible"} and, with one
    objective, "intermediate": that objective at the same threshold at each milestone so far
    (`earlier` and this one), for those milestones that know it."""
    objective = single_objective(spec)
    points = []
    for threshold in point_thresholds(curve, spec):
        point: Point = {THRESHOLD: threshold, **metrics_at(curve, threshold, spec)}
        point[FEASIBLE] = is_feasible(point, spec.constraints)
        if objective is not None:
            history = {m.n_edits: (point if m is curve else metrics_at(m, threshold, spec)).get(objective) for m in (*earlier, curve)}
            point[INTERMEDIATE_KEY] = {n: float(v) for n, v in history.items() if v is not None}
        points.append(point)
    return points


def ranking_objective(spec: SweepSpec) -> Objective:
    """What picks a milestone's best point: the early-stopping metric (what ASHA compares
    across trials), else the first objective."""
    stop = spec.early_stopping
    return Objective(stop.metric, stop.direction) if stop is not None else spec.objectives[0]


def best_point(points: Sequence[Point], spec: SweepSpec) -> Point | None:
    """Feasible first, then best by `ranking_objective`, ties to the lower threshold; None
    when no point has that metric."""
    objective = ranking_objective(spec)
    sign = 1.0 if objective.direction == "maximize" else -1.0
    candidates = [p for p in points if p.get(objective.metric) is not None and not math.isnan(float(p[objective.metric]))]
    if not candidates:
        return None
    return min(candidates, key=lambda p: (not is_feasible(p, spec.constraints), -sign * float(p[objective.metric]), float(p[THRESHOLD])))


def point_metrics(point: Mapping[str, Any]) -> dict[str, float]:
    """A point's metric values alone (no threshold, feasibility or history)."""
    return {key: value for key, value in point.items() if key not in (THRESHOLD, FEASIBLE, INTERMEDIATE_KEY)}


def point_margin(spec: SweepSpec, threshold: float | None, gates: Sequence[GateRow], dtype: str) -> SafeThreshold | None:
    """Where a curve point's threshold is handed on from: for a tf breakpoint (a gate value, or
    the curve's end 0 or 1) of `gates` (the training's gate rows at that milestone), the middle
    of the thresholds that give its metrics (defer_core.curve.threshold_margin). None, the
    threshold kept as it is: outside curve mode, without gate rows, for a threshold of the
    generation grid (its generation scorings were measured there and nowhere else) and for one
    that is no breakpoint (it lies inside an interval already). Raises if the moved threshold's
    tf metrics differ from the breakpoint's (they cannot: nothing fires differently)."""
    if not spec.curve_mode or threshold is None or not gates or threshold in generation_grid(spec):
        return None
    if threshold not in curve_thresholds(row.gate for row in gates):
        return None
    found = threshold_margin(threshold, (row.gate for row in gates), dtype)
    at_breakpoint, moved = tf_metrics_at(gates, threshold, dtype), tf_metrics_at(gates, found.threshold, dtype)
    if moved != at_breakpoint:
        raise AssertionError(f"threshold {found.threshold!r} gives {moved}, not the breakpoint {threshold!r}'s {at_breakpoint}")
    return found


def kept_text(spec: SweepSpec, threshold: float) -> str:
    """Why `point_margin` keeps a curve-mode threshold as it is."""
    if threshold in generation_grid(spec):
        return "a threshold of the generation grid, where its generation scorings were measured: kept as it is"
    return "not a breakpoint of the tf curve (or no gate rows recorded): kept as it is"
