"""A recorded trial's threshold curve, read back from the Parquet dataset alone: no model, no
torch (defer_core.curve is torch-free), so `defer-sweep curve` and the report can draw it on
any machine that has the sweep's folder.

The tf curve is exact: each milestone's gate rows (the `gates` table) give every probe's
accuracy at any threshold. Generation scorings exist only at the spec's grid thresholds (the
`grid` table). A trial is named by its DEFER trial id or by its Optuna number (`#007`, `7`),
as protocol.trial_label prints it; a reuse trial (protocol.REUSE_OF) shows its original's
training.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from statistics import fmean
from typing import Any, Iterable, Mapping, Sequence

from defer_core.curve import CurvePoint, edit_success_at, exact_curve, tf_metrics_at
from defer_core.errors import DeferInputError
from defer_core.results import GateRow

from ..protocol import METRIC_COLUMNS, N_EDITS, OPTUNA_TRIAL, REUSE_OF, THRESHOLD, trial_label, trial_order_key
from ..spec import SweepSpec
from .candidates import trial_dtype
from .store import SweepFolder, read_tables

LISTED_TRIALS = 8  # trials an unknown-trial error names as examples


@dataclass(frozen=True)
class TrialCurve:
    """One trial's curve at one milestone: the exact tf curve, the gen grid, and what a
    threshold reading needs (its gate rows and edit rows)."""

    trial: dict[str, Any]  # its trials-table row
    n_edits: int
    milestones: tuple[int, ...]  # the trial's milestones with gate rows
    dtype: str  # the model dtype its gates are exact in
    tf: tuple[CurvePoint, ...]
    grid: tuple[dict[str, Any], ...]  # {threshold, <gen metric columns>} per grid threshold, ascending
    gates: tuple[GateRow, ...]
    edits: tuple[dict[str, Any], ...]  # the edit rows behind this milestone

    @property
    def label(self) -> str:
        return trial_label(self.trial.get(OPTUNA_TRIAL), self.trial["trial_id"])

    @property
    def grid_columns(self) -> list[str]:
        return [key for key in METRIC_COLUMNS if any(point.get(key) is not None for point in self.grid)]


@dataclass(frozen=True)
class Reading:
    """The metrics at one threshold: tf exact; generation scorings only on the grid."""

    threshold: float
    tf: dict[str, float]
    grid: dict[str, float] | None  # None: the threshold is not a grid point
    edit_success: float | None  # mean over the milestone's edits; None without their gate rows


def gate_rows(rows: Iterable[Mapping[str, Any]]) -> tuple[GateRow, ...]:
    """`gates` table rows as defer_core's GateRow."""
    return tuple(GateRow(str(r["record_id"]), r["probe"], float(r["gate"]), float(r["on"]), float(r["off"]), int(r["chunk"] or 0)) for r in rows)


def find_trial(spec: SweepSpec, trials: Sequence[Mapping[str, Any]], name: str) -> dict[str, Any]:
    """The trials-table row a person means: a DEFER trial id, or an Optuna number (`#007`, `7`)."""
    for row in trials:
        if row["trial_id"] == name:
            return dict(row)
    number = name.strip().removeprefix("#")
    if number.isdigit():
        for row in trials:
            if row.get(OPTUNA_TRIAL) is not None and int(row[OPTUNA_TRIAL]) == int(number):
                return dict(row)
    known = [trial_label(r.get(OPTUNA_TRIAL), r["trial_id"]) for r in sorted(trials, key=trial_order_key)]
    listed = ", ".join(known[:LISTED_TRIALS]) + (", ..." if len(known) > LISTED_TRIALS else "")
    raise DeferInputError(f"trial {name!r}: not a trial of sweep '{spec.name}' (expected a trial id or an Optuna number; trials: {listed or 'none yet'})")


def edits_behind(spec: SweepSpec, n_edits: int, edits: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The edit rows a milestone's numbers come after (edit indices start at 1): the first
    n_edits (stream, immediate); for chunks, the block of whole chunks of size n_edits, which
    follow the chunks of every smaller milestone."""
    if spec.protocol != "chunks":
        return [dict(e) for e in edits if e["edit_index"] <= n_edits]
    start = sum(spec.T // size * size for size in spec.milestones if size < n_edits)
    stop = start + spec.T // n_edits * n_edits
    return [dict(e) for e in edits if start < e["edit_index"] <= stop]


def load_trial_curve(layout: SweepFolder, spec: SweepSpec, name: str, n_edits: int | None = None) -> TrialCurve:
    """The named trial's curve at milestone `n_edits` (default: its last with gate rows)."""
    tables = read_tables(layout.parquet, ("trials", "gates", "grid", "edits"), skip_unreadable=True)
    trial = find_trial(spec, tables["trials"].to_pylist(), name)
    label = trial_label(trial.get(OPTUNA_TRIAL), trial["trial_id"])
    trial_id = trial["trial_id"]
    rows = _rows_of(tables["gates"], trial_id)
    if not rows and trial.get(REUSE_OF):  # a reuse trial replayed its original's training: its gate rows are the original's
        trial_id = trial[REUSE_OF]
        rows = _rows_of(tables["gates"], trial_id)
    by_milestone: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_milestone[int(row[N_EDITS])].append(row)
    if not by_milestone:
        raise DeferInputError(f"trial {label} ({trial['trial_id']}): no gate rows recorded in {layout.parquet} (it reached no milestone, or the sweep predates gate rows)")
    milestones = tuple(sorted(by_milestone))
    chosen = milestones[-1] if n_edits is None else n_edits
    if chosen not in by_milestone:
        raise DeferInputError(f"--n-edits {n_edits}: trial {label} has gate rows at {', '.join(map(str, milestones))} edits")
    dtype = trial_dtype(spec, trial)
    gates = gate_rows(by_milestone[chosen])
    grid = tuple(sorted(({THRESHOLD: r[THRESHOLD], **{k: r[k] for k in METRIC_COLUMNS if r.get(k) is not None}}
                         for r in _rows_of(tables["grid"], trial_id) if r[N_EDITS] == chosen), key=lambda r: r[THRESHOLD]))
    edits = tuple(edits_behind(spec, chosen, _rows_of(tables["edits"], trial_id)))
    return TrialCurve(trial, chosen, milestones, dtype, tuple(exact_curve(gates, dtype)), grid, gates, edits)


def _rows_of(table: Any, trial_id: str) -> list[dict[str, Any]]:
    import pyarrow.compute as pc

    return table.filter(pc.equal(table["trial_id"], trial_id)).to_pylist()


def read_at(curve: TrialCurve, threshold: float) -> Reading:
    """The trial's metrics at `threshold`: tf exact from its gates, the generation scorings if
    it is a grid point, and the mean edit success there."""
    if not 0.0 <= threshold <= 1.0:
        raise DeferInputError(f"--threshold {threshold:g}: expected a threshold in [0, 1]")
    tf = tf_metrics_at(curve.gates, threshold, curve.dtype)
    on_grid = next((point for point in curve.grid if math.isclose(point[THRESHOLD], threshold, rel_tol=0.0, abs_tol=1e-12)), None)
    grid = None if on_grid is None else {k: v for k, v in on_grid.items() if k != THRESHOLD}
    successes = [edit_success_at(e.get("gate"), e.get("success_on"), e.get("success_off"), threshold, curve.dtype) for e in curve.edits]
    success = fmean(successes) if successes and all(s is not None for s in successes) else None
    return Reading(threshold, tf, grid, success)


def tf_curves(spec: SweepSpec, trials: Sequence[Mapping[str, Any]], gates: Iterable[Mapping[str, Any]], n_edits: int) -> dict[str, list[CurvePoint]]:
    """Exact tf curves at milestone `n_edits` of the given trials (those with gate rows there), by trial id."""
    wanted = {str(t["trial_id"]): t for t in trials}
    rows: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in gates:
        if row["trial_id"] in wanted and row[N_EDITS] == n_edits:
            rows[row["trial_id"]].append(row)
    return {trial_id: exact_curve(gate_rows(found), trial_dtype(spec, wanted[trial_id])) for trial_id, found in rows.items()}
