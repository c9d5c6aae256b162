"""What the driver knows about one trial, built from Tune's results; both sinks and the
progress lines read it. Its status is a results.rows.Status. Which recorded rows rank is
results/candidates.py's rule.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..protocol import (
    CONFIRMS, EDITS_KEY, EVAL_SECONDS, FEASIBLE, GATES_KEY, GRID_KEY, MEMBER_COUNT, MODEL_LOAD_SECONDS, N_EDITS, NODE_ID, OPTUNA_TRIAL,
    ORDER, POINTS_KEY, RECORDS_KEY, REPEATS_KEY, REUSE_OF, SEED, STAGE, STAGE_CONFIRM, STAGE_SEARCH, THRESHOLD, WORKER_PID,
)
from ..results.candidates import threshold_mode
from ..results.ranking import feasible_or_none
from ..results.rows import EditRow, GridRow, MemberMilestoneRow, MilestoneRow, PointRow, RecordScoreRow, Row, Status, TrialGateRow, TrialRow, metrics_of
from ..spec import OTHER_EDITORS_PARAMS, SweepSpec
from ..spec.trial_config import describe_config, full_config, module_for


def spec_columns(spec: SweepSpec) -> dict[str, Any]:
    """The trial columns every trial of a sweep shares: what the sweep's MLflow parent run also
    records as its params."""
    return {
        "model": spec.model.name,
        "dtype": spec.model.run_dtype,
        "protocol": spec.protocol,
        "T": spec.T,
        "strip": spec.data.strip,
        "threads": spec.resources_per_trial.threads,
        "threshold_mode": threshold_mode(spec),
        "editor": spec.editor,
        "grace_key": spec.grace_key if spec.editor == "grace" else None,
    }


def config_text(spec: SweepSpec, config: Mapping[str, Any], threshold: float | None = None) -> str:
    """`L27 lr=... th=0.50` for a trial's full config; in curve mode a training has no one
    threshold, so th= shows only a point's (`threshold`)."""
    shown = {k: v for k, v in config.items() if not (spec.curve_mode and k == THRESHOLD)}
    if threshold is not None:
        shown[THRESHOLD] = threshold
    return describe_config(shown)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def trial_error_text(trial: Any) -> str | None:
    """The traceback Tune recorded for a failed trial. At callback time it sits in the trial's
    local (driver-side) directory; the storage copy is only synced later."""
    path = getattr(trial, "error_file", None)
    if path:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except OSError:
            pass
    return trial.get_error()


def short_error(text: str | None) -> str | None:
    """The last meaningful line of a traceback: the exception type and message."""
    if not text:
        return None
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if not line.startswith(("Failure #", "File ", "^", "~")):
            return line[:500]
    return lines[-1][:500]


def report_members(result: Mapping[str, Any], default: tuple[int, int]) -> list[tuple[int, int, Mapping[str, Any]]]:
    """(seed, order, report) of each run behind a milestone report: its repeat members, or the
    report itself (a report without SEED/ORDER, e.g. a replayed one, ran as `default`)."""
    members = result.get(REPEATS_KEY) or [result]
    return [(int(m.get(SEED, default[0])), int(m.get(ORDER, default[1])), m) for m in members]


@dataclass
class TrialLog:
    """One trial as the driver sees it: config, milestone rows, edit rows, status. With
    repeats its milestones hold the mean over members, and each member's metrics, records,
    edits and gate rows are kept with its seed and order."""

    trial_id: str
    config: dict[str, int | float]
    optuna_trial: int | None
    pack_id: str  # the Tune trial that ran it: its own id unless the sweep packs trials
    started_at: dt.datetime = field(default_factory=utcnow)
    milestones: dict[int, dict[str, Any]] = field(default_factory=dict)
    edits: dict[tuple[int, int, int], dict[str, Any]] = field(default_factory=dict)  # (order, seed, edit index) -> edit
    status: Status = Status.RUNNING
    error: str | None = None
    finished_at: dt.datetime | None = None
    seconds: float | None = None
    worker_pid: int | None = None
    node_id: str | None = None
    model_load_seconds: float | None = None
    reuse_of: str | None = None  # the DEFER trial whose training this one replays instead of training
    # per milestone (n_edits): the report's gate rows, gen grid and curve points, as dicts
    gates: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    grid: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    points: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    # repeats: per milestone each member's metrics and each member's record scores, with seed and order
    member_metrics: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    records: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    members: int = 1  # repeat members the milestones are the mean of
    default_member: tuple[int, int] = (0, 0)  # (seed, order) of a report that names none
    stage: str = STAGE_SEARCH
    confirms: str | None = None  # a confirm run: the DEFER trial it re-checks

    @classmethod
    def start(cls, spec: SweepSpec, trial_id: str, config: Mapping[str, Any], pack_id: str | None = None) -> "TrialLog":
        optuna_trial = config.get(OPTUNA_TRIAL)
        reuse_of = config.get(REUSE_OF)
        confirms = config.get(CONFIRMS)
        return cls(
            trial_id=trial_id,
            config=full_config(spec, config),
            optuna_trial=None if optuna_trial is None else int(optuna_trial),
            pack_id=pack_id or trial_id,
            reuse_of=None if reuse_of is None else str(reuse_of),
            members=len(spec.repeat_members),
            default_member=spec.repeat_members[0],
            stage=str(config.get(STAGE) or (STAGE_CONFIRM if confirms is not None else STAGE_SEARCH)),
            confirms=None if confirms is None else str(confirms),
        )

    @property
    def last_milestone(self) -> dict[str, Any] | None:
        return self.milestones[max(self.milestones)] if self.milestones else None

    @property
    def reached(self) -> int | None:
        return max(self.milestones) if self.milestones else None

    def add_result(self, result: Mapping[str, Any]) -> dict[str, Any] | None:
        """Records a milestone report; returns the new milestone row (None if not a milestone)."""
        if N_EDITS not in result:
            return None
        n_edits = int(result[N_EDITS])
        members = report_members(result, self.default_member)
        self.members = len(members)
        for seed, order, member in members:
            for edit in member.get(EDITS_KEY) or []:
                self.edits[(order, seed, int(edit["index"]))] = {**edit, SEED: seed, ORDER: order}
        self.member_metrics[n_edits] = [{SEED: seed, ORDER: order, **metrics_of(member)} for seed, order, member in members]
        self.records[n_edits] = [
            {SEED: seed, ORDER: order, "record_id": str(record["record_id"]), "chunk": int(record.get("chunk", 0)), **metrics_of(record)}
            for seed, order, member in members
            for record in member.get(RECORDS_KEY) or []
        ]
        row = metrics_of(result)
        row.update(n_edits=n_edits, eval_seconds=float(result.get(EVAL_SECONDS, 0.0)), elapsed_seconds=float(result.get("time_total_s", 0.0)))
        row[MEMBER_COUNT] = self.members
        threshold = result.get(THRESHOLD, self.config.get(THRESHOLD))  # curve mode: the milestone's best point's
        row[THRESHOLD] = None if threshold is None else float(threshold)
        self.milestones[n_edits] = row
        self.gates[n_edits] = [{**gate, SEED: seed, ORDER: order} for seed, order, member in members for gate in member.get(GATES_KEY) or []]
        self.grid[n_edits] = [dict(point) for point in result.get(GRID_KEY) or []]
        self.points[n_edits] = [dict(point) for point in result.get(POINTS_KEY) or []]
        self.seconds = row["elapsed_seconds"]
        if result.get(WORKER_PID) is not None:
            self.worker_pid = int(result[WORKER_PID])
            self.node_id = result.get(NODE_ID)
            self.model_load_seconds = float(result.get(MODEL_LOAD_SECONDS, 0.0))
        return row

    def finish(self, spec: SweepSpec, errored: bool, error_text: str | None = None) -> None:
        self.status = Status.after(self.reached, spec.T, errored)
        self.error = error_text
        self.finished_at = utcnow()

    def threshold(self, spec: SweepSpec) -> float | None:
        """The threshold the trial's metrics are read at: its config's, or in curve mode its
        last milestone's best point's (None before its first milestone)."""
        if not spec.curve_mode:
            return self.config.get(THRESHOLD)
        return (self.last_milestone or {}).get(THRESHOLD)

    def rows(self, spec: SweepSpec, sweep_id: str) -> dict[str, list[Row]]:
        """Its rows of every table, as the store writes them."""
        return {
            "trials": [self.trial_row(spec, sweep_id)],
            "milestones": self.milestone_rows(spec, sweep_id),
            "edits": self.edit_rows(sweep_id),
            "gates": self.gate_rows(spec, sweep_id),
            "grid": self.grid_rows(sweep_id),
            "points": self.point_rows(sweep_id),
            "member_milestones": self.member_milestone_rows(sweep_id),
            "record_scores": self.record_rows(sweep_id),
        }

    def trial_row(self, spec: SweepSpec, sweep_id: str) -> TrialRow:
        return TrialRow(
            sweep_id=sweep_id,
            sweep_name=spec.name,
            trial_id=self.trial_id,
            pack_id=self.pack_id,
            optuna_trial=self.optuna_trial,
            status=self.status.value,
            layer=self.config["layer"],
            module=module_for(spec, self.config["layer"]),
            edit_lr=self.config["edit_lr"],
            n_iter=self.config["n_iter"],
            threshold=self.threshold(spec),
            **{name: self.config.get(name) for name in OTHER_EDITORS_PARAMS},
            n_edits=self.reached,
            metrics=metrics_of(self.last_milestone or {}),
            seconds=self.seconds,
            worker_pid=self.worker_pid,
            node_id=self.node_id,
            model_load_seconds=self.model_load_seconds,
            started_at=self.started_at,
            finished_at=self.finished_at,
            error=self.error,
            reuse_of=self.reuse_of,
            feasible=feasible_or_none(self.last_milestone, spec.constraints),
            members=self.members,
            stage=self.stage,
            confirms=self.confirms,
            **spec_columns(spec),
        )

    def milestone_rows(self, spec: SweepSpec, sweep_id: str) -> list[MilestoneRow]:
        return [
            MilestoneRow(
                sweep_id=sweep_id, trial_id=self.trial_id, protocol=spec.protocol, metrics=metrics_of(row), n_edits=row[N_EDITS],
                eval_seconds=row[EVAL_SECONDS], elapsed_seconds=row["elapsed_seconds"], threshold=row.get(THRESHOLD), members=row.get(MEMBER_COUNT),
            )
            for _, row in sorted(self.milestones.items())
        ]

    def member_milestone_rows(self, sweep_id: str) -> list[MemberMilestoneRow]:
        """Each repeat member's metrics per milestone (one member when unrepeated)."""
        return [
            MemberMilestoneRow(sweep_id=sweep_id, trial_id=self.trial_id, seed=member[SEED], order=member[ORDER], n_edits=n_edits, metrics=metrics_of(member))
            for n_edits, members in sorted(self.member_metrics.items())
            for member in sorted(members, key=lambda member: (member[ORDER], member[SEED]))
        ]

    def record_rows(self, sweep_id: str) -> list[RecordScoreRow]:
        """Each record's scores per member and milestone (what bootstrap intervals resample)."""
        return [
            RecordScoreRow(
                sweep_id=sweep_id, trial_id=self.trial_id, seed=record[SEED], order=record[ORDER], n_edits=n_edits, chunk=record["chunk"],
                record_id=record["record_id"], metrics=metrics_of(record),
            )
            for n_edits, records in sorted(self.records.items())
            for record in records
        ]

    def gate_rows(self, spec: SweepSpec, sweep_id: str) -> list[TrialGateRow]:
        return [
            TrialGateRow(
                sweep_id=sweep_id, trial_id=self.trial_id, n_edits=n_edits, protocol=spec.protocol, chunk=gate["chunk"], record_id=str(gate["record_id"]),
                probe=gate["probe"], gate=gate["gate"], on=gate["on"], off=gate["off"], seed=gate[SEED], order=gate[ORDER],
            )
            for n_edits, gates in sorted(self.gates.items())
            for gate in gates
        ]

    def grid_rows(self, sweep_id: str) -> list[GridRow]:
        return [
            GridRow(sweep_id=sweep_id, trial_id=self.trial_id, n_edits=n_edits, threshold=point[THRESHOLD], metrics=metrics_of(point))
            for n_edits, point in _by_threshold(self.grid)
        ]

    def point_rows(self, sweep_id: str) -> list[PointRow]:
        return [
            PointRow(sweep_id=sweep_id, trial_id=self.trial_id, n_edits=n_edits, threshold=point[THRESHOLD], metrics=metrics_of(point), feasible=point.get(FEASIBLE))
            for n_edits, point in _by_threshold(self.points)
        ]

    def edit_rows(self, sweep_id: str) -> list[EditRow]:
        return [
            EditRow(
                sweep_id=sweep_id,
                trial_id=self.trial_id,
                edit_index=edit["index"],
                chunk=edit.get("chunk", 0),
                record_id=str(edit["record_id"]),
                final_loss=edit["final_loss"],
                edit_seconds=edit["seconds"],
                success=edit["success"],
                gate=edit.get("gate"),
                success_on=edit.get("success_on"),
                success_off=edit.get("success_off"),
                seed=edit[SEED],
                order=edit[ORDER],
            )
            for _, edit in sorted(self.edits.items())
        ]


def _by_threshold(by_milestone: Mapping[int, Sequence[Mapping[str, Any]]]) -> list[tuple[int, Mapping[str, Any]]]:
    """(milestone, item) pairs, milestones ascending, each milestone's items by threshold."""
    return [(n_edits, item) for n_edits, items in sorted(by_milestone.items()) for item in sorted(items, key=lambda item: item[THRESHOLD])]
