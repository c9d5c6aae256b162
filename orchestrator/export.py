"""Export a sweep's best configuration (or a point of its Pareto front) as EasyEdit DEFER YAML.

Candidates are the trials that reached T (status complete in the Parquet trials table): a
pruned trial's metrics are from an earlier milestone and not comparable. The YAML is written
by defer_core.save_hparams, so `load_hparams` and EasyEdit's DeferHyperParams read it back; its
first line is a comment naming the dtype the trial ran in, and a trial tuned in another dtype
than EasyEdit's float32 is exported with a warning (its optimum may not carry over).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from defer_core.errors import DeferInputError
from defer_core.hparams import DeferHParams, save_hparams
from defer_core.results import DEFAULT_DTYPE

from .protocol import METRIC_COLUMNS, Status
from .search.ranking import pareto_front, rank_by
from .search.space import hparams_for
from .sinks.layout import SweepLayout, load_state
from .sinks.mlflow_sink import MlflowSink, sweep_mlflow
from .sinks.parquet_sink import read_table
from .spec import Objective, SweepSpec
from .storage import one_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChosenTrial:
    """The chosen trial, why it was chosen, and its hyperparameters."""

    row: dict[str, Any]
    reason: str
    hparams: DeferHParams
    dtype: str  # the dtype the trial ran in


def trial_dtype(spec: SweepSpec, row: dict[str, Any]) -> str:
    """The dtype a trial ran in: its row's, or the spec's for rows written before it was recorded."""
    return row.get("dtype") or spec.model.run_dtype


def completed_rows(layout: SweepLayout) -> list[dict[str, Any]]:
    table = read_table(layout.parquet, "trials", skip_unreadable=True)  # a damaged file: that trial is left out, with a warning
    return [row for row in table.to_pylist() if row["status"] == Status.COMPLETE]


def _objective(spec: SweepSpec, name: str | None) -> Objective:
    if name is None:
        return spec.objectives[0]
    for objective in spec.objectives:
        if objective.metric == name:
            return objective
    if name in METRIC_COLUMNS:
        return Objective(name, "maximize")  # every reported metric is an accuracy: higher is better
    raise DeferInputError(f"--objective {name!r}: not a metric of this sweep (objectives: {', '.join(o.metric for o in spec.objectives)}; any of {', '.join(METRIC_COLUMNS)})")


def choose(spec: SweepSpec, rows: list[dict[str, Any]], objective: str | None = None, pareto_index: int | None = None) -> ChosenTrial:
    """Best by one objective (default: the spec's first) or the K-th Pareto point (0-based,
    sorted best-first by the first objective)."""
    if not rows:
        raise DeferInputError(f"sweep '{spec.name}': no trial has completed all {spec.T} edits yet; nothing to export")
    if pareto_index is not None:
        front = pareto_front(rows, spec.objectives)
        if not 0 <= pareto_index < len(front):
            raise DeferInputError(f"--pareto-index {pareto_index}: the Pareto front has {len(front)} trial(s) (valid 0..{len(front) - 1})")
        row = front[pareto_index]
        values = ", ".join(f"{o.metric}={row[o.metric]:.4f}" for o in spec.objectives)
        reason = f"Pareto point {pareto_index} of {len(front)} ({values})"
    else:
        chosen = _objective(spec, objective)
        ranked = rank_by(rows, chosen)
        if not ranked:
            raise DeferInputError(f"--objective {chosen.metric}: no completed trial reported it (scorings: {', '.join(spec.scorings)})")
        row = ranked[0]
        reason = f"best {chosen.metric}={row[chosen.metric]:.4f} ({chosen.direction})"
    return ChosenTrial(row=row, reason=reason, hparams=hparams_for(spec, row), dtype=trial_dtype(spec, row))


def export_best(layout: SweepLayout, spec: SweepSpec, output: Path | None = None, objective: str | None = None, pareto_index: int | None = None, mlflow: MlflowSink | None = None) -> tuple[Path, ChosenTrial]:
    """Write the YAML (default OUT/best.yaml) and attach it to the MLflow parent run."""
    chosen = choose(spec, completed_rows(layout), objective, pareto_index)
    target = save_hparams(chosen.hparams, output or layout.best_yaml, dtype=chosen.dtype)
    if chosen.dtype != DEFAULT_DTYPE:
        log.warning("%s: trial %s was tuned in %s, but EasyEdit's DEFER runs %s, where these values may score differently",
                    target, chosen.row["trial_id"], chosen.dtype, DEFAULT_DTYPE)
    if mlflow is not None:
        try:
            mlflow.log_best(target, {"best.trial_id": chosen.row["trial_id"], "best.reason": chosen.reason})
        except Exception as error:  # noqa: BLE001 - the file is the export; an unreachable tracking store must not fail it
            log.warning("%s: not attached to MLflow (%s): %s", target, mlflow.tracking_uri, one_line(error))
    log.info("exported %s: trial %s, %s", target, chosen.row["trial_id"], chosen.reason)
    return target, chosen


def mlflow_for(layout: SweepLayout) -> MlflowSink | None:
    state = load_state(layout)
    return None if state is None else sweep_mlflow(layout, state)
