"""The driver's Tune callback that persists every trial to Parquet and MLflow.

Only the driver writes (workers just report), so a worker that dies leaves nothing
half-written. A trial that starts again after a resume (Tune re-runs interrupted trials from
scratch) first loses its old Parquet rows; its MLflow run is found by tag and reused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from .records import FAILED, FINAL_STATUSES, METRIC_COLUMNS, TrialLog, short_error, trial_error_text
from .search import N_EDITS
from .sinks.mlflow_sink import MlflowSink
from .sinks.parquet_sink import ParquetSink, final_trial_ids, read_table
from .space import describe_config, module_for
from .spec import SweepSpec
from .trainable import EDITS_KEY, EVAL_SECONDS, RecordedTrial

log = logging.getLogger(__name__)


def run_name(log_: TrialLog) -> str:
    number = f"#{log_.optuna_trial:03d} " if log_.optuna_trial is not None else ""
    return f"{number}{describe_config(log_.config)}"


def trial_params(spec: SweepSpec, log_: TrialLog) -> dict[str, Any]:
    return {
        **log_.config,
        "module": module_for(spec, log_.config["layer"]),
        "trial_id": log_.trial_id,
        "optuna_trial": log_.optuna_trial,
        "model": spec.model.name,
        "protocol": spec.protocol,
        "T": spec.T,
    }


class ResultsCallback(Callback):
    """on_trial_start / on_trial_result / on_trial_complete / on_trial_error → sinks."""

    def __init__(self, spec: SweepSpec, sweep_id: str, parquet: ParquetSink, mlflow: MlflowSink) -> None:
        self.spec = spec
        self.sweep_id = sweep_id
        self.parquet = parquet
        self.mlflow = mlflow
        self._logs: dict[str, TrialLog] = {}
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
        self._recorded = final_trial_ids(self.parquet.root, FINAL_STATUSES)
        drop_unknown_trials(self.parquet, self.mlflow, {t.trial_id for t in trials})

    def _start(self, trial: Trial) -> TrialLog:
        entry = TrialLog.start(self.spec, trial.trial_id, trial.config)
        self._logs[trial.trial_id] = entry
        self.parquet.remove_trial(trial.trial_id)
        self._write_trial(entry)
        self.mlflow.start_trial(trial.trial_id, run_name(entry), trial_params(self.spec, entry))
        return entry

    def _write_trial(self, entry: TrialLog) -> None:
        self.parquet.write("trials", entry.trial_id, [entry.trial_row(self.spec, self.sweep_id)])

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        if not self._skip(trial):
            self._start(trial)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        if self._skip(trial):
            return
        entry = self._logs.get(trial.trial_id) or self._start(trial)
        row = entry.add_result(result)
        if row is None:
            return
        self.parquet.write("milestones", entry.trial_id, entry.milestone_rows(self.spec, self.sweep_id))
        self.parquet.write("edits", entry.trial_id, entry.edit_rows(self.sweep_id))
        self._write_trial(entry)
        step = int(result[N_EDITS])
        points = [(key, row[key], step) for key in METRIC_COLUMNS if key in row]
        points.append((EVAL_SECONDS, row[EVAL_SECONDS], step))
        for edit in result.get(EDITS_KEY) or []:
            points.append(("edit_success", edit["success"], int(edit["index"])))
            points.append(("edit_final_loss", edit["final_loss"], int(edit["index"])))
        self.mlflow.log_metrics(entry.trial_id, points)

    def _finish(self, trial: Trial, errored: bool) -> None:
        if self._skip(trial):
            return
        entry = self._logs.pop(trial.trial_id, None) or self._start(trial)
        error_text = trial_error_text(trial) if errored else None
        entry.finish(self.spec, errored, short_error(error_text) if errored else None)
        if errored and not entry.error:
            entry.error = "trial failed (no error text recorded)"
        self.parquet.write("milestones", entry.trial_id, entry.milestone_rows(self.spec, self.sweep_id))
        self.parquet.write("edits", entry.trial_id, entry.edit_rows(self.sweep_id))
        self._write_trial(entry)
        self.mlflow.finish_trial(entry.trial_id, entry.status, error_text, entry.error)
        log.info("trial %s %s", entry.trial_id, entry.status)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finish(trial, errored=False)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finish(trial, errored=True)


def recorded_trials(parquet_root: Path) -> dict[str, RecordedTrial]:
    """Finished trials as persisted, with the report a replay sends: their last milestone."""
    trials = read_table(parquet_root, "trials").to_pylist()
    milestones = {(m["trial_id"], m["n_edits"]): m for m in read_table(parquet_root, "milestones").to_pylist()}
    recorded: dict[str, RecordedTrial] = {}
    for row in trials:
        if row["status"] not in FINAL_STATUSES:
            continue
        last = milestones.get((row["trial_id"], row["n_edits"]))
        report = None
        if last is not None:
            report = {key: last[key] for key in METRIC_COLUMNS if last.get(key) is not None}
            report.update({N_EDITS: last["n_edits"], EVAL_SECONDS: last["eval_seconds"]})
        recorded[row["trial_id"]] = RecordedTrial(status=row["status"], last_report=report, error=row["error"] if row["status"] == FAILED else None)
    return recorded


def drop_unknown_trials(parquet: ParquetSink, mlflow: MlflowSink, known: set[str]) -> list[str]:
    """Removes the Parquet files and MLflow runs of trials Tune does not know: trials a killed
    driver started after its last saved experiment state, which Tune will never resume."""
    dropped = sorted((parquet.trial_ids() | mlflow.trial_ids()) - known)
    for trial_id in dropped:
        log.warning("trial %s was started after the last saved Tune state of a killed driver; dropping its partial results", trial_id)
        parquet.remove_trial(trial_id)
        mlflow.delete_trial_run(trial_id)
    return dropped
