"""Export a sweep's best configuration (or a point of its Pareto front) as EasyEdit DEFER YAML.

Candidates are the trials that reached T (status complete in the Parquet trials table): a
pruned trial's metrics are from an earlier milestone and not comparable. In curve mode each
point of a complete trial's curve at T is a candidate (results.candidates), and the YAML's
threshold is the chosen point's. With constraints, feasible candidates rank first and the
Pareto front holds feasible ones only; when none is feasible nothing is exported (one line
saying how close the best came). The YAML is written
by defer_core.save_hparams, so `load_hparams` and EasyEdit's DeferHyperParams read it back; its
first line is a comment naming the dtype the trial ran in, and a trial tuned in another dtype
than EasyEdit's float32 is exported with a warning (its optimum may not carry over).

Off the knife edge: a curve-mode point's threshold is a tf breakpoint, a gate value, and a gate
can move by one rounding step between thread counts, flipping the records at it. So the YAML
gets `point_margin`'s threshold (results/curve_points.py): the middle of the interval of
thresholds with the point's metrics, (gate below, breakpoint], in the trial's dtype; comment
lines after the dtype line say so (or that the dtype leaves no margin there), and so does the
reason. The chosen row keeps the breakpoint (it names the candidate). Generation-grid points and
confirmed results keep their threshold: their metrics were measured at it.

Confirmed results come first: when the folder's confirm stage (sweep/confirm.py) has trials
that completed its T, export chooses among those configurations by their confirmed values
(the mean over the confirm run's seeds x orders) and its reason says so; `confirmed=False`
(`--no-confirmed`) ranks the search stage instead. The search stage's candidates never
include confirm trials.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from defer_core.curve import TF, SafeThreshold
from defer_core.errors import DeferInputError
from defer_core.hparams import EASYEDIT_MODEL_FAMILIES, DeferHParams, dump_hparams, easyedit_family, save_hparams
from defer_core.results import DEFAULT_DTYPE, METRICS, GateRow, metric_key

from .protocol import CONFIRMS, METRIC_COLUMNS, OPTUNA_TRIAL, THRESHOLD, trial_label
from .results import query
from .results.candidates import training_of, trial_dtype
from .results.ranking import bounds_text, closest_text, is_feasible, pareto_front, rank_by
from .results.rows import TRIAL_ID
from .results.stages import confirmed_results
from .results.curve_points import point_margin
from .spec.trial_config import hparams_for
from .sinks.layout import SweepLayout, load_state
from .sinks.mlflow_sink import MlflowSink, sweep_mlflow
from .spec import Objective, SweepSpec
from .storage import one_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChosenTrial:
    """The chosen trial, why it was chosen, and its hyperparameters."""

    row: dict[str, Any]  # in curve mode the chosen point: its threshold the breakpoint
    reason: str
    hparams: DeferHParams  # what the YAML holds: in curve mode the threshold off the knife edge
    dtype: str  # the dtype the trial ran in
    margin: SafeThreshold | None = None  # curve mode: how hparams.threshold was found (None: the row's, kept)

    @property
    def notes(self) -> list[str]:
        """The YAML's comment lines after the dtype line: why the threshold is what it is, and
        whether EasyEdit's editor can load the model it names."""
        return margin_notes(self.margin, self.row) + easyedit_notes(self.hparams)

    def yaml_text(self) -> str:
        """The exported file's text."""
        return dump_hparams(self.hparams, self.dtype, self.notes)


def candidate_rows(layout: SweepLayout, spec: SweepSpec) -> list[dict[str, Any]]:
    """The search stage's candidates (results.candidates) of the sweep's Parquet dataset; a
    damaged file: that trial is left out, with a warning."""
    return query.search_candidates(layout, spec)


def choose_for_export(layout: SweepLayout, spec: SweepSpec, objective: str | None = None, pareto_index: int | None = None, confirmed: bool = True) -> ChosenTrial:
    """Among the confirmed configurations when there are any (and `confirmed`), else among the
    search stage's candidates."""

    trials = query.trials(layout, skip_unreadable=True) if confirmed else []
    found = confirmed_results(layout, spec, trials) if confirmed else None
    if found is None:
        chosen = choose(spec, candidate_rows(layout, spec), objective, pareto_index)
        return with_margin(spec, chosen, training_gates(layout, spec, chosen.row)) if spec.curve_mode else chosen
    chosen = choose(spec, found.rows, objective, pareto_index)
    origin = next((row for row in trials if row[TRIAL_ID] == chosen.row.get(CONFIRMS)), None)
    checked = f", re-checking {trial_label(origin.get(OPTUNA_TRIAL), origin['trial_id'])} ({origin['trial_id']})" if origin else ""
    return replace(chosen, reason=f"{chosen.reason}, {found.note}{checked}")


def _unit(spec: SweepSpec) -> str:
    return "point" if spec.curve_mode else "trial"


def at_threshold(spec: SweepSpec, row: dict[str, Any]) -> str:
    """` at threshold 0.734`: in curve mode a reason names the chosen point's threshold."""
    return f" at threshold {row[THRESHOLD]:.4g}" if spec.curve_mode and row.get(THRESHOLD) is not None else ""


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
    constraints = spec.constraints
    if constraints and not any(is_feasible(row, constraints) for row in rows):
        raise DeferInputError(
            f"sweep '{spec.name}': no completed {_unit(spec)} satisfies constraints {bounds_text(constraints)} "
            f"({closest_text(rows, constraints)}); nothing to export"
        )
    feasible = f", feasible under {bounds_text(constraints)}" if constraints else ""
    if pareto_index is not None:
        front = pareto_front(rows, spec.objectives, constraints)
        if not 0 <= pareto_index < len(front):
            raise DeferInputError(f"--pareto-index {pareto_index}: the Pareto front has {len(front)} {_unit(spec)}(s) (valid 0..{len(front) - 1})")
        row = front[pareto_index]
        values = ", ".join(f"{o.metric}={row[o.metric]:.4f}" for o in spec.objectives)
        reason = f"Pareto point {pareto_index} of {len(front)} ({values}){at_threshold(spec, row)}{feasible}"
    else:
        chosen = _objective(spec, objective)
        ranked = rank_by(rows, chosen, constraints)
        if not ranked or not is_feasible(ranked[0], constraints):
            raise DeferInputError(f"--objective {chosen.metric}: no completed {_unit(spec)}{' satisfying the constraints' if constraints else ''} reported it (scorings: {', '.join(spec.scorings)})")
        row = ranked[0]
        reason = f"best {chosen.metric}={row[chosen.metric]:.4f} ({chosen.direction}){at_threshold(spec, row)}{feasible}"
    return ChosenTrial(row=row, reason=reason, hparams=hparams_for(spec, row), dtype=trial_dtype(spec, row))


# -- off the knife edge ---------------------------------------------------------------------------------


def training_gates(layout: SweepLayout, spec: SweepSpec, row: dict[str, Any]) -> tuple[GateRow, ...]:
    """The gate rows at T of the training behind a candidate (a reuse's: its original's)."""
    return query.training_gates(layout, training_of(row), spec.T)


def with_margin(spec: SweepSpec, chosen: ChosenTrial, gates: Sequence[GateRow]) -> ChosenTrial:
    """The choice with its threshold off the knife edge (`point_margin`), and the reason saying so."""
    margin = point_margin(spec, chosen.row.get(THRESHOLD), gates, chosen.dtype)
    if margin is None:
        return chosen
    return replace(chosen, hparams=chosen.hparams.replace(threshold=margin.threshold), margin=margin, reason=chosen.reason + margin_reason(margin))


def _g(value: float) -> str:
    """Nine significant digits: a float32 gate told apart from its neighbours."""
    return f"{value:.9g}"


def held_on(margin: SafeThreshold) -> str:
    """`(0.300000012, 0.699999988]`: the thresholds that give the breakpoint's metrics."""
    return f"({_g(margin.below)}, {_g(margin.breakpoint)}]" if margin.below is not None else f"[0, {_g(margin.breakpoint)}]"


def margin_reason(margin: SafeThreshold) -> str:
    """What the reason line adds: the threshold written and why."""
    if margin.breakpoint <= 0.0:
        return "; threshold 0 written as is (every row fires at 0: no knife edge)"
    if not margin.margin:
        return (f"; threshold {_g(margin.breakpoint)} written as is, a gate value without margin: no {margin.dtype} value lies "
                f"far enough inside {held_on(margin)}")
    return (f"; written as threshold {_g(margin.threshold)}, the middle of {held_on(margin)} where these metrics hold "
            f"(off the knife edge at the breakpoint {_g(margin.breakpoint)})")


def easyedit_notes(hparams: DeferHParams) -> list[str]:
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
    edge = (f"The point's own threshold {_g(margin.breakpoint)} is a breakpoint of the tf curve (a gate value, or its end 1), a knife "
            f"edge: the same training run elsewhere (another thread count) can move a gate one {margin.dtype} step across it and change a record.")
    if not margin.margin:
        return [f"threshold {_g(margin.threshold)} is the chosen point's own, with no margin: no {margin.dtype} value lies far enough "
                f"inside {held_on(margin)}, the thresholds with its metrics.", edge]
    metrics = " ".join(f"{key}={row[key]:.4f}" for key in (metric_key(m, TF) for m in METRICS) if row.get(key) is not None)
    metrics = f" ({metrics})" if metrics else ""
    return [f"threshold {_g(margin.threshold)}: the chosen point's metrics{metrics} hold for every threshold in {held_on(margin)}; "
            f"this is its middle in {margin.dtype}, so a gate moving by one rounding step changes no record.", edge]


SIDE_EXPORTS = "exports"  # the parent run's artifact folder for side exports


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
    chosen = choose_for_export(layout, spec, objective, pareto_index, confirmed)
    written = save_hparams(chosen.hparams, target, dtype=chosen.dtype, notes=chosen.notes)
    if chosen.dtype != DEFAULT_DTYPE:
        log.warning("%s: trial %s was tuned in %s, but EasyEdit's DEFER runs %s, where these values may score differently",
                    written, chosen.row[TRIAL_ID], chosen.dtype, DEFAULT_DTYPE)
    if mlflow is not None:
        try:
            if target == layout.best_yaml:
                mlflow.log_best(written, {"best.trial_id": chosen.row[TRIAL_ID], "best.threshold": chosen.hparams.threshold, "best.reason": chosen.reason})
            else:
                mlflow.log_side_export(written, SIDE_EXPORTS)
        except Exception as error:  # noqa: BLE001 - the file is the export; an unreachable tracking store must not fail it
            log.warning("%s: not attached to MLflow (%s): %s", written, mlflow.tracking_uri, one_line(error))
    log.info("exported %s: trial %s, %s", written, chosen.row[TRIAL_ID], chosen.reason)
    return written, chosen


def mlflow_for(layout: SweepLayout) -> MlflowSink | None:
    state = load_state(layout)
    return None if state is None else sweep_mlflow(layout, state)
