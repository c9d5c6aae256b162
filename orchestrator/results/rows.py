"""The rows a sweep records, one frozen dataclass per Parquet table: the one definition of a
table's columns. The Arrow schemas (`schema`), the writers' records (`record`) and the readers'
rows (`from_record`) are derived from these classes, so a column is named once, here.

A row's `metrics` holds the metric columns it has (protocol.METRIC_COLUMNS); in the files every
metric column exists, null where a scoring was not run, so the files of many sweeps concatenate.
Nothing heavy is imported (pyarrow only): every part of the orchestrator can use the rows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import types
import typing
from enum import Enum
from typing import Any, Mapping, TypeVar, Union

import pyarrow as pa

from ..protocol import METRIC_COLUMNS

Metrics = dict[str, float]  # metric column -> value; a column the row has no value for is absent


class Status(str, Enum):
    """How a DEFER trial stands. `complete`: its last milestone reached T; `pruned`: the
    scheduler stopped it earlier; `failed`: it raised; `running` until it ends."""

    PENDING = "pending"  # on the console only: Tune has not started it yet
    RUNNING = "running"
    COMPLETE = "complete"
    PRUNED = "pruned"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # MLflow only: the driver stopped (Ctrl-C) before it ended; resume reruns it

    def __str__(self) -> str:
        return self.value

    @property
    def is_final(self) -> bool:
        """It ended and will not run again: complete, pruned or failed."""
        return self in (Status.COMPLETE, Status.PRUNED, Status.FAILED)

    @classmethod
    def final(cls) -> tuple["Status", ...]:
        return tuple(status for status in cls if status.is_final)

    @classmethod
    def after(cls, reached: int | None, total: int, errored: bool) -> "Status":
        """How a trial that stopped ended: failed if it raised, complete if it reached T."""
        if errored:
            return cls.FAILED
        return cls.COMPLETE if reached is not None and reached >= total else cls.PRUNED


@dataclasses.dataclass(frozen=True)
class RecordedTrial:
    """A Tune trial (pack) the driver had persisted as finished. Tune may still consider it
    running (the driver died between its write and Tune's next state snapshot); the worker
    replays this record instead of computing the trial again."""

    status: Status
    last_report: Mapping[str, Any] | None
    error: str | None = None


_IS_PARAM = "mlflow_param"


def _param() -> Any:
    """Marks a trial column that is also its MLflow run's param."""
    return dataclasses.field(metadata={_IS_PARAM: True})


# -- the tables ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrialRow:
    """trials/: one trial (DEFER's, GRACE's or WISE's), its config, where and how it ran, its last milestone's metrics.
    The columns marked _param() are known when it starts and are its MLflow run's params."""

    sweep_id: str
    sweep_name: str
    trial_id: str = _param()
    pack_id: str = _param()  # the Tune trial that ran it (its own id unless the sweep packs trials)
    optuna_trial: int | None = _param()
    status: str  # a Status value
    layer: int = _param()
    module: str = _param()
    edit_lr: float = _param()
    n_iter: int = _param()
    threshold: float | None = _param()  # DEFER; curve mode: the threshold of the best point at the last milestone
    editor: str = _param()  # the editor the sweep sweeps: defer, grace or wise (spec.editor)
    # The other editors' parameters (spec/search_space.EDITOR_PARAMS), null where the editor has
    # none or the spec leaves them at EasyEdit's value:
    eps: float | None = _param()  # GRACE
    val_init: str | None = _param()
    replacement: str | None = _param()
    eps_expand: str | None = _param()
    mask_ratio: float | None = _param()  # WISE
    act_ratio: float | None = _param()
    norm_constraint: float | None = _param()
    save_freq: int | None = _param()
    merge_freq: int | None = _param()
    merge_alg: str | None = _param()
    retrieve: bool | None = _param()
    model: str = _param()
    dtype: str = _param()  # the dtype the trial ran in (auto resolved)
    protocol: str = _param()
    T: int = _param()
    strip: bool = _param()  # text fields stripped of surrounding whitespace (data.strip)
    threads: int = _param()  # torch's intra-op thread count the trial ran with (resources_per_trial.cpu)
    grace_key: str | None = _param()  # GRACE: where its teacher-forced evaluation read the key (spec.grace_key); null for the other editors
    n_edits: int | None
    metrics: Metrics
    seconds: float | None
    worker_pid: int | None
    node_id: str | None
    model_load_seconds: float | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    error: str | None
    reuse_of: str | None = _param()  # the DEFER trial whose training this one replayed (null: it trained)
    feasible: bool | None  # its last milestone's metrics meet the spec's constraints (null: none)
    threshold_mode: str = _param()  # "sampled" (threshold searched) or "curve" (read at every threshold)
    members: int = _param()  # repeat members (seed x order) its metrics are the mean of; 1 unrepeated
    stage: str = _param()  # "search" (a sweep trial) or "confirm" (a re-check with more repeats)
    confirms: str | None = _param()  # a confirm run: the DEFER trial id it re-checks (null otherwise)

    def params(self) -> dict[str, Any]:
        """Its MLflow run's params: the columns known when it starts."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self) if field.metadata.get(_IS_PARAM)}


@dataclasses.dataclass(frozen=True)
class MilestoneRow:
    """milestones/: a trial's metrics at one milestone (the mean over its repeat members)."""

    sweep_id: str
    trial_id: str
    protocol: str
    metrics: Metrics
    n_edits: int
    eval_seconds: float
    elapsed_seconds: float
    threshold: float | None  # the threshold these metrics were read at (curve mode: the best point's)
    members: int  # repeat members these metrics are the mean of (1 unrepeated)


@dataclasses.dataclass(frozen=True)
class EditRow:
    """edits/: one edit of the stream, as the repeat member that made it saw it."""

    sweep_id: str
    trial_id: str
    edit_index: int
    chunk: int
    record_id: str
    final_loss: float
    edit_seconds: float
    success: float
    gate: float | None  # the edit prompt's gate, and its tf accuracy with the adaptor forced on / off
    success_on: float | None
    success_off: float | None
    seed: int  # the repeat member that made the edit: its seed and edit order
    order: int


@dataclasses.dataclass(frozen=True)
class TrialGateRow:
    """gates/: one probe's tf gate at one milestone (defer_core.results.GateRow with where it
    belongs): any threshold's tf metrics follow from these rows alone (defer_core.curve)."""

    sweep_id: str
    trial_id: str
    n_edits: int
    protocol: str
    chunk: int
    record_id: str
    probe: str  # rel, gen or loc
    gate: float  # the model-dtype gate, exactly
    on: float
    off: float
    seed: int  # the repeat member scored: its seed and edit order
    order: int


@dataclasses.dataclass(frozen=True)
class GridRow:
    """grid/: the generation scorings at one threshold of the spec's grid, at one milestone."""

    sweep_id: str
    trial_id: str
    n_edits: int
    threshold: float
    metrics: Metrics


@dataclasses.dataclass(frozen=True)
class PointRow:
    """points/: one (threshold, metrics) point of a curve-mode trial's curve at one milestone."""

    sweep_id: str
    trial_id: str
    n_edits: int
    threshold: float
    metrics: Metrics
    feasible: bool | None


@dataclasses.dataclass(frozen=True)
class MemberMilestoneRow:
    """member_milestones/: one repeat member's (seed x edit order) metrics at one milestone."""

    sweep_id: str
    trial_id: str
    seed: int
    order: int
    n_edits: int
    metrics: Metrics


@dataclasses.dataclass(frozen=True)
class RecordScoreRow:
    """record_scores/: one record's scores for one member at one milestone (what bootstrap
    intervals resample)."""

    sweep_id: str
    trial_id: str
    seed: int
    order: int
    n_edits: int
    chunk: int
    record_id: str
    metrics: Metrics


Row = Union[TrialRow, MilestoneRow, EditRow, TrialGateRow, GridRow, PointRow, MemberMilestoneRow, RecordScoreRow]
R = TypeVar("R", TrialRow, MilestoneRow, EditRow, TrialGateRow, GridRow, PointRow, MemberMilestoneRow, RecordScoreRow)

# Every table of the dataset and its row: the one list of tables.
TRIALS, MILESTONES, EDITS, GATES, GRID, POINTS = "trials", "milestones", "edits", "gates", "grid", "points"
MEMBER_MILESTONES, RECORD_SCORES = "member_milestones", "record_scores"
TABLES: dict[str, type] = {
    TRIALS: TrialRow,
    MILESTONES: MilestoneRow,
    EDITS: EditRow,
    GATES: TrialGateRow,
    GRID: GridRow,
    POINTS: PointRow,
    MEMBER_MILESTONES: MemberMilestoneRow,
    RECORD_SCORES: RecordScoreRow,
}
TRIAL_ID = "trial_id"  # every table's column: the DEFER trial a row belongs to (its field on every row)
TABLE_OF: dict[type, str] = {row_type: table for table, row_type in TABLES.items()}

# -- derived: Arrow schemas, records ----------------------------------------------------------------

_ARROW = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_(), dt.datetime: pa.timestamp("us", tz="UTC")}
_METRICS_FIELD = "metrics"


def _plain(annotation: Any) -> Any:
    """`int | None` -> int: the column's value type."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        kept = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return kept[0]
    return annotation


def _fields(row_type: type) -> list[tuple[str, Any]]:
    hints = typing.get_type_hints(row_type)
    return [(field.name, _plain(hints[field.name])) for field in dataclasses.fields(row_type)]


def _schema(row_type: type) -> pa.Schema:
    columns: list[pa.Field] = []
    for name, kind in _fields(row_type):
        if name == _METRICS_FIELD:
            columns += [pa.field(metric, pa.float64()) for metric in METRIC_COLUMNS]
        else:
            columns.append(pa.field(name, _ARROW[kind]))
    return pa.schema(columns)


SCHEMAS: dict[str, pa.Schema] = {table: _schema(row_type) for table, row_type in TABLES.items()}


def record(row: Row) -> dict[str, Any]:
    """A row as its file's record: every column, metrics flattened (null where absent)."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(row):
        value = getattr(row, field.name)
        if field.name == _METRICS_FIELD:
            out.update({metric: value.get(metric) for metric in METRIC_COLUMNS})
        else:
            out[field.name] = value
    return out


def metrics_of(values: Mapping[str, Any]) -> Metrics:
    """The metric columns a record (or a report) has a value for, as floats."""
    return {key: float(values[key]) for key in METRIC_COLUMNS if values.get(key) is not None}


def from_record(row_type: type[R], values: Mapping[str, Any]) -> R:
    """A file's record (or any mapping with the row's column names) as its typed row."""
    kwargs = {}
    for field in dataclasses.fields(row_type):
        kwargs[field.name] = metrics_of(values) if field.name == _METRICS_FIELD else values.get(field.name)
    return row_type(**kwargs)


def from_table(row_type: type[R], data: pa.Table) -> list[R]:
    return [from_record(row_type, values) for values in data.to_pylist()]
