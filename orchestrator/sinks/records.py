"""What the driver knows about one trial, built from Tune's results; both sinks and the
progress lines read it. Its status is a protocol.Status."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..protocol import EDITS_KEY, EVAL_SECONDS, METRIC_COLUMNS, MODEL_LOAD_SECONDS, N_EDITS, NODE_ID, OPTUNA_TRIAL, WORKER_PID, Status, final_status
from ..search.space import full_config, module_for
from ..spec import SweepSpec


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


@dataclass
class TrialLog:
    """One trial as the driver sees it: config, milestone rows, edit rows, status."""

    trial_id: str
    config: dict[str, int | float]
    optuna_trial: int | None
    pack_id: str  # the Tune trial that ran it: its own id unless the sweep packs trials
    started_at: dt.datetime = field(default_factory=utcnow)
    milestones: dict[int, dict[str, Any]] = field(default_factory=dict)
    edits: dict[int, dict[str, Any]] = field(default_factory=dict)
    status: Status = Status.RUNNING
    error: str | None = None
    finished_at: dt.datetime | None = None
    seconds: float | None = None
    worker_pid: int | None = None
    node_id: str | None = None
    model_load_seconds: float | None = None

    @classmethod
    def start(cls, spec: SweepSpec, trial_id: str, config: Mapping[str, Any], pack_id: str | None = None) -> "TrialLog":
        optuna_trial = config.get(OPTUNA_TRIAL)
        return cls(
            trial_id=trial_id,
            config=full_config(spec, config),
            optuna_trial=None if optuna_trial is None else int(optuna_trial),
            pack_id=pack_id or trial_id,
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
        for edit in result.get(EDITS_KEY) or []:
            self.edits[int(edit["index"])] = dict(edit)
        row = {key: float(result[key]) for key in METRIC_COLUMNS if result.get(key) is not None}
        row.update(n_edits=n_edits, eval_seconds=float(result.get(EVAL_SECONDS, 0.0)), elapsed_seconds=float(result.get("time_total_s", 0.0)))
        self.milestones[n_edits] = row
        self.seconds = row["elapsed_seconds"]
        if result.get(WORKER_PID) is not None:
            self.worker_pid = int(result[WORKER_PID])
            self.node_id = result.get(NODE_ID)
            self.model_load_seconds = float(result.get(MODEL_LOAD_SECONDS, 0.0))
        return row

    def finish(self, spec: SweepSpec, errored: bool, error_text: str | None = None) -> None:
        self.status = final_status(self.reached, spec.T, errored)
        self.error = error_text
        self.finished_at = utcnow()

    def trial_row(self, spec: SweepSpec, sweep_id: str) -> dict[str, Any]:
        last = self.last_milestone or {}
        return {
            "sweep_id": sweep_id,
            "sweep_name": spec.name,
            "trial_id": self.trial_id,
            "pack_id": self.pack_id,
            "optuna_trial": self.optuna_trial,
            "status": self.status.value,
            "layer": self.config["layer"],
            "module": module_for(spec, self.config["layer"]),
            "edit_lr": self.config["edit_lr"],
            "n_iter": self.config["n_iter"],
            "threshold": self.config["threshold"],
            "model": spec.model.name,
            "dtype": spec.model.run_dtype,
            "protocol": spec.protocol,
            "T": spec.T,
            "strip": spec.data.strip,
            "n_edits": self.reached,
            **{key: last.get(key) for key in METRIC_COLUMNS},
            "seconds": self.seconds,
            "worker_pid": self.worker_pid,
            "node_id": self.node_id,
            "model_load_seconds": self.model_load_seconds,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error": self.error,
        }

    def milestone_rows(self, spec: SweepSpec, sweep_id: str) -> list[dict[str, Any]]:
        return [
            {"sweep_id": sweep_id, "trial_id": self.trial_id, "protocol": spec.protocol, **{k: row.get(k) for k in METRIC_COLUMNS}, **_timing(row)}
            for _, row in sorted(self.milestones.items())
        ]

    def edit_rows(self, sweep_id: str) -> list[dict[str, Any]]:
        return [
            {
                "sweep_id": sweep_id,
                "trial_id": self.trial_id,
                "edit_index": edit["index"],
                "chunk": edit.get("chunk", 0),
                "record_id": str(edit["record_id"]),
                "final_loss": edit["final_loss"],
                "edit_seconds": edit["seconds"],
                "success": edit["success"],
            }
            for _, edit in sorted(self.edits.items())
        ]


def _timing(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"n_edits": row["n_edits"], "eval_seconds": row["eval_seconds"], "elapsed_seconds": row["elapsed_seconds"]}
