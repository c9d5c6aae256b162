"""Export a sweep's best configuration (or a point of its Pareto front) as the editor's EasyEdit YAML.

What is chosen, and why, is results/best.py's (one read of the tables; confirmed results first,
constraints, curve-mode points off the knife edge); this module writes it. The YAML is written
by defer_core.save_editor_hparams in the editor's own layout (DEFER, GRACE or WISE), so the
editor's loader and EasyEdit's hyperparameter class read it back; its
first line is a comment naming the dtype the trial ran in, and a trial tuned in another dtype
than EasyEdit's float32 is exported with a warning (its optimum may not carry over). Comment
lines after the dtype line say how a curve-mode threshold was moved off its breakpoint, and
when EasyEdit's editor would not know the model's family from model_name.

The sweep's own export (OUT/best.yaml) also sets the MLflow parent run's best.* tags; any other
choice is a side export: its own file, an MLflow artifact under exports/, nothing else changed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from defer_core.curve import TF, SafeThreshold
from defer_core.errors import DeferInputError
from defer_core.editors import EditorHParams, dump_editor_hparams, editor_of, hparams_summary, save_editor_hparams
from defer_core.hparams import EASYEDIT_MODEL_FAMILIES, easyedit_family
from defer_core.plan import grace_key_note
from defer_core.results import DEFAULT_DTYPE, METRICS, metric_key

from .results import query
from .results.best import ChosenTrial, held_on, significant
from .results.rows import TRIAL_ID
from .sinks.layout import SweepLayout, load_state
from .sinks.mlflow_sink import MlflowSink, sweep_mlflow
from .spec import SweepSpec
from .storage import one_line

log = logging.getLogger(__name__)


def yaml_text(chosen: ChosenTrial) -> str:
    """The exported file's text."""
    return dump_editor_hparams(chosen.hparams, chosen.dtype, yaml_notes(chosen))


def yaml_notes(chosen: ChosenTrial) -> list[str]:
    """The YAML's comment lines after the dtype line: why the threshold is what it is, and
    whether EasyEdit's editor can load the model it names."""
    return margin_notes(chosen.margin, chosen.row) + grace_key_notes(chosen.row) + easyedit_notes(chosen.hparams)


def grace_key_notes(row: dict[str, Any]) -> list[str]:
    """A comment when the sweep scored GRACE keyed off EasyEdit's position: the hparams carry no
    key position, so EasyEdit's own evaluation of this file keys where it always does."""
    note = grace_key_note(row.get("grace_key"))
    if not note:
        return []
    return [f"chosen by a sweep that scored {note}; EasyEdit's evaluation keys at the last edited prompt's position (sticky), "
            "so its numbers for these hparams can differ from the sweep's."]


def easyedit_notes(hparams: EditorHParams) -> list[str]:
    """A comment when EasyEdit's editor would not know which model class to load for model_name."""
    if easyedit_family(hparams.model_name) is not None:
        return []
    return [f"model_name {hparams.model_name}: EasyEdit's editor picks the model class by a family in the name "
            f"({', '.join(EASYEDIT_MODEL_FAMILIES)}) and finds none here; give it a path to this model whose name says its family."]


def margin_notes(margin: SafeThreshold | None, row: dict[str, Any]) -> list[str]:
    """best.yaml's comment lines on its threshold (none when it was kept as the point's)."""
    if margin is None:
        return []
    if margin.breakpoint <= 0.0:
        return ["threshold 0: every row fires at 0 and no gate can lie below it, so no rounding step changes a record."]
    edge = (f"The point's own threshold {significant(margin.breakpoint)} is a breakpoint of the tf curve (a gate value, or its end 1), a knife "
            f"edge: the same training run elsewhere (another thread count) can move a gate one {margin.dtype} step across it and change a record.")
    if not margin.margin:
        return [f"threshold {significant(margin.threshold)} is the chosen point's own, with no margin: no {margin.dtype} value lies far enough "
                f"inside {held_on(margin)}, the thresholds with its metrics.", edge]
    metrics = " ".join(f"{key}={row[key]:.4f}" for key in (metric_key(m, TF) for m in METRICS) if row.get(key) is not None)
    metrics = f" ({metrics})" if metrics else ""
    return [f"threshold {significant(margin.threshold)}: the chosen point's metrics{metrics} hold for every threshold in {held_on(margin)}; "
            f"this is its middle in {margin.dtype}, so a gate moving by one rounding step changes no record.", edge]


SIDE_EXPORTS = "exports"  # the parent run's artifact folder for side exports


def best_tags(chosen: ChosenTrial) -> dict[str, Any]:
    """The sweep parent run's tags for its best: the trial, the configuration, why; DEFER's
    threshold on its own too (curve mode may have moved it off the trial's)."""
    tags: dict[str, Any] = {"best.trial_id": chosen.row[TRIAL_ID], "best.hparams": hparams_summary(chosen.hparams), "best.reason": chosen.reason}
    threshold = getattr(chosen.hparams, "threshold", None)
    if threshold is not None:
        tags["best.threshold"] = threshold
    return tags


def export_best(layout: SweepLayout, spec: SweepSpec, output: Path | None = None, objective: str | None = None, pareto_index: int | None = None,
                mlflow: MlflowSink | None = None, confirmed: bool = True) -> tuple[Path, ChosenTrial]:
    """The sweep's own export (no choice asked for, into OUT/best.yaml): best.yaml and the MLflow
    parent run's best.* tags. Any other is a side export: it needs its own file, writes only
    that, and MLflow keeps it as an artifact under exports/, so the sweep's best (best.yaml, its
    tags, the report) changes only through its own export."""
    own_choice = objective is None and pareto_index is None and confirmed
    target = output or layout.best_yaml
    if not own_choice and target == layout.best_yaml:
        raise DeferInputError(
            f"{layout.best_yaml}: is the sweep's own best; --objective, --pareto-index and --no-confirmed export another configuration: give it a file with -o FILE"
        )
    chosen = query.best(layout, spec, objective, pareto_index, confirmed)
    written = save_editor_hparams(chosen.hparams, target, dtype=chosen.dtype, notes=yaml_notes(chosen))
    if chosen.dtype != DEFAULT_DTYPE:
        log.warning("%s: trial %s was tuned in %s, but EasyEdit's %s runs %s, where these values may score differently",
                    written, chosen.row[TRIAL_ID], chosen.dtype, editor_of(chosen.hparams).upper(), DEFAULT_DTYPE)
    if mlflow is not None:
        try:
            if target == layout.best_yaml:
                mlflow.log_best(written, best_tags(chosen))
            else:
                mlflow.log_side_export(written, SIDE_EXPORTS)
        except Exception as error:  # noqa: BLE001 - the file is the export; an unreachable tracking store must not fail it
            log.warning("%s: not attached to MLflow (%s): %s", written, mlflow.tracking_uri, one_line(error))
    log.info("exported %s: trial %s, %s", written, chosen.row[TRIAL_ID], chosen.reason)
    return written, chosen


def mlflow_for(layout: SweepLayout) -> MlflowSink | None:
    state = load_state(layout)
    return None if state is None else sweep_mlflow(layout, state)
