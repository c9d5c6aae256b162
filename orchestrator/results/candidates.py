"""The one rule for which recorded rows rank (`candidates`): what best.yaml, the Pareto front,
the progress summary, the report and the confirm stage choose among. With a sampled threshold
a candidate is a trial that completed all T edits; in curve mode it is a (training, threshold)
point of such a trial's curve at T, carrying its training's columns with the point's threshold
and metrics. Also what a trials row says about the trial behind it: whose training its numbers
come from (`training_of`), the dtype it ran in (`trial_dtype`), its threshold mode.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

from ..protocol import FEASIBLE, METRIC_COLUMNS, N_EDITS, REUSE_OF, THRESHOLD, THRESHOLD_CURVE, THRESHOLD_SAMPLED, trial_order_key
from ..spec import SweepSpec
from .ranking import Bound, feasible_or_none


def threshold_mode(spec: SweepSpec) -> str:
    """The trials table's threshold_mode of the spec's trials: curve or sampled."""
    return THRESHOLD_CURVE if spec.curve_mode else THRESHOLD_SAMPLED


def trial_dtype(spec: SweepSpec, row: Mapping[str, Any]) -> str:
    """The dtype a trial ran in (what its gates are exact in): its row's, or the spec's for rows
    written before it was recorded."""
    return row.get("dtype") or spec.model.run_dtype


def training_of(row: Mapping[str, Any]) -> str:
    """The DEFER trial whose training a row's numbers come from: the one it reuses, or its own."""
    return str(row.get(REUSE_OF) or row["trial_id"])


def point_row(trial: Mapping[str, Any], point: Mapping[str, Any], constraints: Sequence[Bound]) -> dict[str, Any]:
    """A curve point as a candidate: its training's columns (config, ids, model ...) with the
    point's threshold and metrics (every metric column, null where the point has none)."""
    row = {**trial, **{key: point.get(key) for key in METRIC_COLUMNS}, THRESHOLD: float(point[THRESHOLD])}
    row[FEASIBLE] = feasible_or_none(row, constraints)
    return row


def candidates(spec: SweepSpec, complete: Iterable[Mapping[str, Any]], points: Iterable[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """The rows best/Pareto/export/report rank, from the rows of trials that completed all T
    edits (`trial_id`, config and metric columns, e.g. the trials table's) and, in curve mode,
    the points rows (`trial_id`, `n_edits`, threshold, metrics): each point at n_edits == T of
    a complete trial becomes one candidate (a complete trial without points stays one, at its
    recorded threshold). A reuse trial repeats its original's numbers, so a (training,
    threshold) pair is a candidate once: the original's row when it is there."""
    trials = [dict(row) for row in complete]
    if spec.curve_mode:
        at_t: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for point in points:
            if point[N_EDITS] == spec.T:
                at_t[str(point["trial_id"])].append(point)
        rows = []
        for trial in trials:
            ours = sorted(at_t.get(str(trial["trial_id"]), []), key=lambda point: point[THRESHOLD])
            rows += [point_row(trial, point, spec.constraints) for point in ours] if ours else [trial]
    else:
        rows = trials
    kept: dict[tuple[str, float | None], dict[str, Any]] = {}
    for row in sorted(rows, key=lambda row: (row.get(REUSE_OF) is not None, trial_order_key(row))):
        kept.setdefault((training_of(row), row.get(THRESHOLD)), row)
    return sorted(kept.values(), key=lambda row: (trial_order_key(row), row.get(THRESHOLD) or 0.0))
