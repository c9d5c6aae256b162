"""The driver's Tune callback that persists every trial to Parquet and MLflow.

Only the driver writes (workers just report), so a worker that dies leaves nothing
half-written. A trial that starts again after a resume (Tune re-runs interrupted trials from
scratch) first loses its old Parquet rows; its MLflow run is found by tag and reused.

Each milestone's gate rows, gen grid and curve points go to their own Parquet tables; a
curve-mode trial's run also gets its chosen threshold as a metric per milestone and, when it
ends, the points of its last milestone as curve.csv. With constraints a run is tagged
`feasible` true/false.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import defaultdict
from statistics import fmean, stdev
from typing import Any, Mapping, Sequence

from ray.tune import Callback
from ray.tune.experiment import Trial

from ..intervals import CI_HIGH_SUFFIX, CI_LOW_SUFFIX, STD_SUFFIX, repeat_interval
from ..protocol import (
    CONFIRMS, EDITS_KEY, EVAL_SECONDS, FEASIBLE, METRIC_COLUMNS, N_EDITS, POINTS_KEY, REPEATS_KEY, STAGE, STAGE_CONFIRM, THRESHOLD, THRESHOLD_CURVE, trial_label,
)
from ..results.rows import MilestoneRow, PointRow, RecordedTrial, Row, Status
from ..results.packing import member_configs, member_results, member_trial_id, pack_report
from ..spec import SweepSpec
from .mlflow_sink import MlflowSink
from ..results.store import ResultStore, finished_packs, read_rows
from ..results.ranking import feasible_or_none
from ..results.stages import other_experiments_packs
from .records import TrialLog, config_text, short_error, trial_error_text
from ..storage import Location

log = logging.getLogger(__name__)


CURVE_ARTIFACT = "curve.csv"  # a curve-mode trial run's points at its last milestone
TAG_FEASIBLE = FEASIBLE  # a trial run's tag: its metrics meet the spec's constraints (only with constraints)


def run_name(spec: SweepSpec, log_: TrialLog) -> str:
    """`#007 L27 lr=...`: the trial's label as the console and the report print it (in curve
    mode without th=: a training is read at every threshold)."""
    return f"{trial_label(log_.optuna_trial, log_.trial_id)} {config_text(spec, log_.config)}"


def trial_params(spec: SweepSpec, log_: TrialLog, sweep_id: str) -> dict[str, Any]:
    """The run's MLflow params: its trial row's start columns, and the repeat plan. In curve
    mode `threshold` is `curve`: the chosen threshold differs per milestone and is logged as a
    metric (an MLflow param cannot change). A column without a value (`reuse_of` of a trial
    that trained, `confirms` of a search trial) is no param, not the string 'None'."""
    params = {
        **log_.trial_row(spec, sweep_id).params(),
        **({THRESHOLD: THRESHOLD_CURVE} if spec.curve_mode else {}),
        "repeat_seeds": ",".join(str(seed) for seed in spec.repeats.seeds),
        "repeat_orders": spec.repeats.orders,
    }
    return {key: value for key, value in params.items() if value is not None}


class ResultsCallback(Callback):
    """on_trial_start / on_trial_result / on_trial_complete / on_trial_error → sinks. A Tune
    trial runs one DEFER trial, or a pack of them (packing.py): each gets its own TrialLog,
    Parquet rows (in the Tune trial's files) and MLflow run."""

    confirm_protocol: str | None = None  # the Tune experiment it records: the search's (None), or this protocol's confirm experiment

    def __init__(self, spec: SweepSpec, sweep_id: str, parquet: ResultStore, mlflow: MlflowSink) -> None:
        self.spec = spec
        self.sweep_id = sweep_id
        self.parquet = parquet
        self.mlflow = mlflow
        self._logs: dict[str, list[TrialLog]] = {}
        self._recorded: set[str] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_logs": {}, "_recorded": None}

    def _skip(self, trial: Trial) -> bool:
        """Trials persisted as finished before this driver started are replayed, not rewritten."""
        return bool(self._recorded) and trial.trial_id in self._recorded

    def on_step_begin(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        """Once per driver: note the trials already recorded as finished, and drop results of
        trials Tune does not know, i.e. trials a killed driver started after its last saved
        experiment state (Tune will not resume them)."""
        if self._recorded is not None:
            return
        self._recorded = set(finished_packs(self.parquet.root))
        drop_unknown_trials(self.parquet, self.mlflow, {t.trial_id for t in trials} | self.other_experiments_packs())

    def other_experiments_packs(self) -> set[str]:
        """Tune trials another Tune experiment of this folder recorded (for the search the
        confirm stage's), which this one never knows and must not drop as leftovers."""
        return other_experiments_packs(self.parquet.root, self.confirm_protocol)

    def _start(self, trial: Trial) -> list[TrialLog]:
        entries = [
            TrialLog.start(self.spec, member_trial_id(trial.trial_id, k, self.spec.pack_size), config, pack_id=trial.trial_id)
            for k, config in enumerate(member_configs(trial.config))
        ]
        self._logs[trial.trial_id] = entries
        self.parquet.remove_pack(trial.trial_id)
        self._write(trial.trial_id, entries, tables=("trials",))
        for entry in entries:
            self.mlflow.start_trial(entry.trial_id, run_name(self.spec, entry), trial_params(self.spec, entry, self.sweep_id), pack_id=trial.trial_id)
        return entries

    def _write(self, pack_id: str, entries: list[TrialLog], tables: tuple[str, ...] | None = None) -> None:
        """The Tune trial's file per table (all tables unless named), with the rows of all its
        DEFER trials; the store writes trials last, so a trial row never claims milestones that
        are not on disk yet."""
        rows: dict[str, list[Row]] = {}
        for entry in entries:
            for table, entry_rows in entry.rows(self.spec, self.sweep_id).items():
                if tables is None or table in tables:
                    rows.setdefault(table, []).extend(entry_rows)
        self.parquet.write_trial(pack_id, rows)

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        if not self._skip(trial):
            self._start(trial)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        if self._skip(trial):
            return
        entries = self._logs.get(trial.trial_id) or self._start(trial)
        members = member_results(result)
        rows = [entry.add_result(member) for entry, member in zip(entries, members)]
        if all(row is None for row in rows):
            return
        self._write(trial.trial_id, entries)
        for entry, member, row in zip(entries, members, rows):
            if row is not None:
                step = int(row[N_EDITS])
                points = metric_points(row, member, curve=self.spec.curve_mode) + interval_points(entry.member_metrics.get(step, []), step)
                self.mlflow.log_metrics(entry.trial_id, points)

    def _finish(self, trial: Trial, errored: bool) -> None:
        if self._skip(trial):
            return
        entries = self._logs.pop(trial.trial_id, None) or self._start(trial)
        error_text = trial_error_text(trial) if errored else None
        for entry in entries:
            entry.finish(self.spec, errored, short_error(error_text) if errored else None)
            if errored and not entry.error:
                entry.error = "trial failed (no error text recorded)"
        # MLflow first: the final Parquet row is what marks the trial recorded for a resume, so a
        # driver killed between the two re-runs the trial rather than leaving its run 'running'.
        for entry in entries:
            self.mlflow.finish_trial(entry.trial_id, entry.status, error_text, entry.error, tags=self._finish_tags(entry), texts=self._finish_texts(entry))
        self._write(trial.trial_id, entries)
        for entry in entries:
            log.info("trial %s %s", entry.trial_id, entry.status)

    def _finish_tags(self, entry: TrialLog) -> dict[str, str]:
        feasible = feasible_or_none(entry.last_milestone, self.spec.constraints)
        return {} if feasible is None else {TAG_FEASIBLE: str(feasible).lower()}

    def _finish_texts(self, entry: TrialLog) -> dict[str, str]:
        """In curve mode, the points of the trial's last milestone as a CSV artifact."""
        if not self.spec.curve_mode or entry.reached is None or not entry.points.get(entry.reached):
            return {}
        return {CURVE_ARTIFACT: points_csv(entry.points[entry.reached])}

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finish(trial, errored=False)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finish(trial, errored=True)


class ConfirmResultsCallback(ResultsCallback):
    """The ResultsCallback of one protocol's confirm experiment. That Tune experiment knows only
    its own trials, so the search's and the other protocols' recorded trials are no killed
    driver's leftovers; its runs are tagged with their stage and the trial they confirm (MLflow
    tags `stage` confirm, `confirms` <trial id>). Tune pickles it into the confirm experiment's
    tuner.pkl: sweep/driver.py keeps the name importable where experiments saved before it
    moved here look for it."""

    def __init__(self, spec: SweepSpec, sweep_id: str, parquet: ResultStore, mlflow: MlflowSink) -> None:
        super().__init__(spec, sweep_id, parquet, mlflow)
        self._confirms: dict[str, str] = {}  # Tune trial id -> the DEFER trial it confirms

    @property
    def confirm_protocol(self) -> str | None:
        return self.spec.protocol

    def _start(self, trial: Trial) -> list[TrialLog]:
        self._confirms[trial.trial_id] = str(trial.config.get(CONFIRMS))
        return super()._start(trial)

    def _finish_tags(self, entry: TrialLog) -> dict[str, str]:
        return {**super()._finish_tags(entry), STAGE: STAGE_CONFIRM, CONFIRMS: self._confirms.get(entry.pack_id, "")}


def metric_points(row: dict[str, Any], result: dict[str, Any], curve: bool = False) -> list[tuple[str, float, int]]:
    """MLflow (key, value, step) points of one milestone: metrics at step n_edits (in curve
    mode those of the milestone's chosen threshold, and that threshold), each edit's success
    and final loss at step = edit index (with repeats, their mean over the members' edit at
    that index)."""
    step = int(row[N_EDITS])
    points = [(key, row[key], step) for key in METRIC_COLUMNS if key in row]
    if curve and row.get(THRESHOLD) is not None:
        points.append((THRESHOLD, row[THRESHOLD], step))
    points.append((EVAL_SECONDS, row[EVAL_SECONDS], step))
    by_index: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for member in result.get(REPEATS_KEY) or [result]:
        for edit in member.get(EDITS_KEY) or []:
            by_index[int(edit["index"])].append(edit)
    for index, edits in sorted(by_index.items()):
        points.append(("edit_success", fmean(float(edit["success"]) for edit in edits), index))
        points.append(("edit_final_loss", fmean(float(edit["final_loss"]) for edit in edits), index))
    return points


def interval_points(members: Sequence[Mapping[str, Any]], step: int) -> list[tuple[str, float, int]]:
    """With more than one repeat member: each metric's spread over them at this milestone,
    `{metric}_std` (sample standard deviation) and the Student t interval `{metric}_ci_low` /
    `{metric}_ci_high` (intervals.repeat_interval); nothing for a single member."""
    if len(members) < 2:
        return []
    points = []
    for key in METRIC_COLUMNS:
        values = [float(member[key]) for member in members if member.get(key) is not None]
        if len(values) != len(members):
            continue
        interval = repeat_interval(values)
        points += [(f"{key}{STD_SUFFIX}", stdev(values), step), (f"{key}{CI_LOW_SUFFIX}", interval.low, step), (f"{key}{CI_HIGH_SUFFIX}", interval.high, step)]
    return points


def points_csv(points: list[dict[str, Any]]) -> str:
    """Curve points as CSV: threshold, the metric columns some point has, feasible."""
    columns = [THRESHOLD, *(key for key in METRIC_COLUMNS if any(p.get(key) is not None for p in points)), FEASIBLE]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(points, key=lambda p: p[THRESHOLD]))
    return buffer.getvalue()


def recorded_trials(parquet_root: Location, spec: SweepSpec) -> dict[str, RecordedTrial]:
    """Finished Tune trials as persisted, keyed by Tune trial id, with the report a replay
    sends: their last milestone (a pack's, with every member's; in curve mode with its points)."""
    milestones = {(m.trial_id, m.n_edits): m for m in read_rows(parquet_root, MilestoneRow)}
    points: dict[tuple[str, int], list[PointRow]] = {}
    for point in read_rows(parquet_root, PointRow):
        points.setdefault((point.trial_id, point.n_edits), []).append(point)
    recorded: dict[str, RecordedTrial] = {}
    for pack_id, rows in finished_packs(parquet_root).items():
        reports = [_last_report(milestones.get((row.trial_id, row.n_edits)), points.get((row.trial_id, row.n_edits), []), spec.curve_mode) for row in rows]
        if spec.pack_size == 1:
            report = reports[0]
        elif any(member is None for member in reports):
            report = None  # a member that never reached a milestone: nothing to replay
        else:
            report = pack_report(spec, reports, {N_EDITS: reports[0][N_EDITS]})
        failed = next((row for row in rows if row.status == Status.FAILED), None)
        status = Status.FAILED if failed else Status(rows[0].status)
        recorded[pack_id] = RecordedTrial(status=status, last_report=report, error=failed.error if failed else None)
    return recorded


def _last_report(last: MilestoneRow | None, points: list[PointRow], curve: bool) -> dict[str, Any] | None:
    """A recorded milestone as the worker reported it; in curve mode with its threshold and points."""
    if last is None:
        return None
    report: dict[str, Any] = {**last.metrics, N_EDITS: last.n_edits, EVAL_SECONDS: last.eval_seconds}
    if curve and last.threshold is not None:
        report[THRESHOLD] = last.threshold
    if points:
        report[POINTS_KEY] = [_point_report(point) for point in sorted(points, key=lambda p: p.threshold)]
    return report


def _point_report(row: PointRow) -> dict[str, Any]:
    """A points-table row as the worker reported the point (metrics it has, threshold, feasible)."""
    point: dict[str, Any] = {**row.metrics, THRESHOLD: row.threshold}
    if row.feasible is not None:
        point[FEASIBLE] = row.feasible
    return point


def drop_unknown_trials(parquet: ResultStore, mlflow: MlflowSink, known: set[str]) -> list[str]:
    """Removes the Parquet files and MLflow runs of Tune trials Tune does not know: trials a
    killed driver started after its last saved experiment state, which Tune will never resume."""
    dropped = sorted((parquet.pack_ids() | mlflow.pack_ids()) - known)
    for pack_id in dropped:
        log.warning("trial %s was started after the last saved Tune state of a killed driver; dropping its partial results", pack_id)
        parquet.remove_pack(pack_id)
        mlflow.delete_pack_runs(pack_id)
    return dropped
