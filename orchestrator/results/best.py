"""Which configuration a sweep calls best, chosen from one read of its tables: the choice
`defer-sweep export` writes to best.yaml, the report shows and `table --trials best` tabulates.

Candidates are the trials that reached T (status complete): a pruned trial's metrics are from
an earlier milestone and not comparable. In curve mode each point of a complete trial's curve
at T is a candidate (candidates.py), and the threshold chosen is the point's, moved off the knife
edge (`with_margin`). With constraints, feasible candidates rank first and the Pareto front holds
feasible ones only; when none is feasible nothing is chosen (one line saying how close the best
came). Confirmed results come first: when the confirm stage has trials that completed its T,
the choice is among those configurations by their confirmed values (stages.confirmed_results)
and its reason says so; `confirmed=False` ranks the search stage instead.

Off the knife edge: a curve-mode point's threshold is a tf breakpoint, a gate value, and a gate
can move by one rounding step between thread counts, flipping the records at it. So the chosen
hparams get `point_margin`'s threshold (curve_points.py): the middle of the interval of
thresholds with the point's metrics, (gate below, breakpoint], in the trial's dtype. The chosen
row keeps the breakpoint (it names the candidate). Generation-grid points and confirmed results
keep their threshold: their metrics were measured at it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Sequence

from defer_core.curve import SafeThreshold
from defer_core.errors import DeferInputError

from ..protocol import CONFIRMS, METRIC_COLUMNS, OPTUNA_TRIAL, THRESHOLD, trial_label
from ..spec import Objective, SweepSpec
from ..spec.trial_config import hparams_for
from .candidates import candidates, training_of, trial_dtype
from .curve import gate_rows
from .curve_points import point_margin
from .ranking import bounds_text, closest_text, is_feasible, pareto_front, rank_by
from .rows import GATES, POINTS, TRIAL_ID, TRIALS, Status
from .stages import ConfirmPlan, confirmed_results, search_stage

if TYPE_CHECKING:
    from defer_core.editors import EditorHParams
    from defer_core.results import GateRow

    from .store import Tables

BEST_TABLES = (TRIALS, POINTS, GATES)  # what a choice reads: trials, curve points, the gates behind a margin


@dataclass(frozen=True)
class ChosenTrial:
    """The chosen trial, why it was chosen, and its hyperparameters."""

    row: dict[str, Any]  # in curve mode the chosen point: its threshold the breakpoint
    reason: str
    hparams: "EditorHParams"  # what the export holds: in curve mode the threshold off the knife edge
    dtype: str  # the dtype the trial ran in
    margin: SafeThreshold | None = None  # curve mode: how hparams.threshold was found (None: the row's, kept)


def search_candidates(tables: "Tables", spec: SweepSpec) -> list[dict[str, Any]]:
    """The search stage's candidates: its complete trials, in curve mode their points at T."""
    complete = [row for row in search_stage(tables.rows(TRIALS)) if row["status"] == Status.COMPLETE]
    return candidates(spec, complete, tables.rows(POINTS) if spec.curve_mode else ())


def training_gates(tables: "Tables", spec: SweepSpec, row: dict[str, Any]) -> tuple["GateRow", ...]:
    """The gate rows at T of the training behind a candidate (a reuse's: its original's)."""
    return gate_rows(tables.rows(GATES, trial_ids=(training_of(row),), n_edits=spec.T))


def choose_best(tables: "Tables", plan: ConfirmPlan | None, spec: SweepSpec, objective: str | None = None,
                pareto_index: int | None = None, confirmed: bool = True) -> ChosenTrial:
    """Among the confirmed configurations when there are any (and `confirmed`), else among the
    search stage's candidates; `tables` holds BEST_TABLES, `plan` is the folder's confirm plan."""
    trials = tables.trials()
    found = confirmed_results(plan, spec, trials) if confirmed else None
    if found is None:
        chosen = choose(spec, search_candidates(tables, spec), objective, pareto_index)
        return with_margin(spec, chosen, training_gates(tables, spec, chosen.row)) if spec.curve_mode else chosen
    chosen = choose(spec, found.rows, objective, pareto_index)
    origin = next((row for row in trials if row[TRIAL_ID] == chosen.row.get(CONFIRMS)), None)
    checked = f", re-checking {trial_label(origin.get(OPTUNA_TRIAL), origin[TRIAL_ID])} ({origin[TRIAL_ID]})" if origin else ""
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


def chosen_as_is(spec: SweepSpec, row: dict[str, Any]) -> ChosenTrial:
    """One candidate taken as the choice (the report's per-trial YAML), before any margin."""
    return ChosenTrial(dict(row), "", hparams_for(spec, row), trial_dtype(spec, row))


# -- off the knife edge ---------------------------------------------------------------------------------


def with_margin(spec: SweepSpec, chosen: ChosenTrial, gates: Sequence["GateRow"]) -> ChosenTrial:
    """The choice with its threshold off the knife edge (`point_margin`), and the reason saying so."""
    margin = point_margin(spec, chosen.row.get(THRESHOLD), gates, chosen.dtype)
    if margin is None:
        return chosen
    return replace(chosen, hparams=chosen.hparams.replace(threshold=margin.threshold), margin=margin, reason=chosen.reason + margin_reason(margin))


def significant(value: float) -> str:
    """Nine significant digits: a float32 gate told apart from its neighbours."""
    return f"{value:.9g}"


def held_on(margin: SafeThreshold) -> str:
    """`(0.300000012, 0.699999988]`: the thresholds that give the breakpoint's metrics."""
    return f"({significant(margin.below)}, {significant(margin.breakpoint)}]" if margin.below is not None else f"[0, {significant(margin.breakpoint)}]"


def margin_reason(margin: SafeThreshold) -> str:
    """What the reason line adds: the threshold written and why."""
    if margin.breakpoint <= 0.0:
        return "; threshold 0 written as is (every row fires at 0: no knife edge)"
    if not margin.margin:
        return (f"; threshold {significant(margin.breakpoint)} written as is, a gate value without margin: no {margin.dtype} value lies "
                f"far enough inside {held_on(margin)}")
    return (f"; written as threshold {significant(margin.threshold)}, the middle of {held_on(margin)} where these metrics hold "
            f"(off the knife edge at the breakpoint {significant(margin.breakpoint)})")
