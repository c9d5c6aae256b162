"""The confirm stage's plan: which configurations a finished sweep re-checks, with how many
repeats, at which T and under which protocols, and what a confirmed result is.

A search trial's number is one seed on one edit order, read wherever early stopping let it
get to; the confirm stage runs the chosen configurations again at the full T, without early
stopping, with more repeats (seeds x edit orders), so the numbers a paper reports carry error
bars. The plan is written to OUT/confirm.json when the stage starts: re-running `defer-sweep
confirm OUT` (with the same options, or none) resumes it, and export reads the seeds, orders
and T it ran with from there. Running the stage (Ray Tune) is in driver.py and stage.py; this
module stays light (no Ray, no torch), so `export` can read confirmed results.

Decisions: a curve-mode sweep's pick is a (training, threshold) point, confirmed in sampled
mode at that threshold (the confirm spec's threshold is no longer `curve`; each config carries
its own); top-K in curve mode takes each training's best point once, so K picks are K
trainings. Each protocol runs as its own confirm trial (one Tune experiment per protocol): the
trainable runs one protocol per spec, so stream and immediate do not share a stream here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from defer_core.errors import DeferInputError
from defer_core.results import milestones_ending_at

from ..protocol import OPTUNA_TRIAL, THRESHOLD, trial_label
from ..results.ranking import is_feasible, pareto_front, rank_by
from ..spec.trial_config import full_config
from ..sinks.layout import SweepLayout
from ..results.query import search_candidates, search_trials
from ..results.rows import TRIAL_ID
from ..results.candidates import training_of
from ..results.stages import ConfirmPlan, Pick, load_plan
from ..results.curve import find_trial
from ..spec import Repeats, SweepSpec
from ..spec.search_space import UNIT_RANGE
from ..spec.sections import ConfirmSpec

@dataclass(frozen=True)
class ConfirmRequest:
    """`defer-sweep confirm` options; None: not given (the recorded plan's, else the spec's
    `confirm:` section's, else that section's defaults). The command layer checks them
    (orchestrator/commands.py `confirm_request`); the spec model checks the section."""

    top: int | None = None
    pareto: bool = False
    trials: tuple[str, ...] | None = None
    seeds: tuple[int, ...] | None = None
    orders: int | None = None
    T: int | None = None
    protocols: tuple[str, ...] | None = None

    @property
    def empty(self) -> bool:
        return self == ConfirmRequest()


# -- the recorded plan ------------------------------------------------------------------------------


def resolve_plan(layout: SweepLayout, spec: SweepSpec, request: ConfirmRequest) -> ConfirmPlan:
    """The recorded plan when the request adds nothing or asks the same; a new plan when there
    is none. A different plan over a recorded one is refused: its trials would mix with it."""
    recorded = load_plan(layout)
    if recorded is not None and request.empty:
        return recorded
    plan = new_plan(layout, spec, request)
    if recorded is not None and plan != recorded:
        raise DeferInputError(
            f"{layout.root}: already holds a confirm stage of {', '.join(p.label for p in recorded.picks)} with {recorded.repeats_text} "
            f"({', '.join(recorded.protocols)}); run `defer-sweep confirm {layout.root}` without options to continue it"
        )
    return plan


def new_plan(layout: SweepLayout, spec: SweepSpec, request: ConfirmRequest) -> ConfirmPlan:
    """Options over the spec's `confirm:` section (without one, ConfirmSpec's defaults: the one
    place they are written); the picks from the search stage."""
    section = spec.confirm or ConfirmSpec()
    T = request.T if request.T is not None else (section.T or spec.T)
    orders = request.orders if request.orders is not None else section.orders
    seeds = request.seeds or section.seeds
    protocols = request.protocols or section.protocols or (spec.protocol,)
    if request.trials:
        picks = picks_by_name(layout, spec, request.trials)
    else:
        top = request.top if request.top is not None else section.top
        picks = best_picks(spec, search_candidates(layout, spec), None if request.pareto else top)
    return ConfirmPlan(tuple(picks), tuple(seeds), orders, T, tuple(protocols))


# -- which configurations ---------------------------------------------------------------------------


def pick_of(spec: SweepSpec, row: Mapping[str, Any]) -> Pick:
    """A candidate or trials row as a pick: its full config (DEFER's at the row's threshold; GRACE
    and WISE have none)."""
    if spec.editor == "defer" and row.get(THRESHOLD) is None:
        raise DeferInputError(f"trial {row['trial_id']}: has no threshold to confirm (it reported no milestone)")
    return Pick(training_of(row), trial_label(row.get(OPTUNA_TRIAL), str(row[TRIAL_ID])), full_config(spec, row))


def best_picks(spec: SweepSpec, rows: Sequence[Mapping[str, Any]], top: int | None) -> list[Pick]:
    """The top K feasible candidates by the first objective, best first (in curve mode each
    training once, at its best point), or with top None the Pareto front."""
    if not rows:
        raise DeferInputError(f"sweep '{spec.name}': no trial has completed all {spec.T} edits; nothing to confirm")
    if top is None:
        chosen = pareto_front(rows, spec.objectives, spec.constraints)
    else:
        ranked = [row for row in rank_by(rows, spec.objectives[0], spec.constraints) if is_feasible(row, spec.constraints)]
        trainings: dict[str, Mapping[str, Any]] = {}
        for row in ranked:
            trainings.setdefault(training_of(row), row)
        chosen = list(trainings.values())[:top]
    if not chosen:
        raise DeferInputError(f"sweep '{spec.name}': no completed trial satisfies the constraints; nothing to confirm")
    return [pick_of(spec, row) for row in chosen]


def picks_by_name(layout: SweepLayout, spec: SweepSpec, names: Sequence[str]) -> list[Pick]:
    """--trials: DEFER trial ids or Optuna numbers (`#007`, `7`) of the search stage, at the
    threshold their trials row records (in curve mode their best point's)."""
    trials = search_trials(layout, skip_unreadable=True)
    picks: dict[str, Pick] = {}
    for name in names:
        try:
            row = find_trial(spec, trials, name)
        except DeferInputError as error:
            raise DeferInputError(f"--trials: {error}") from None
        pick = pick_of(spec, row)
        picks.setdefault(pick.confirms, pick)
    return list(picks.values())


# -- the spec a confirm trial runs ------------------------------------------------------------------


def confirm_spec(spec: SweepSpec, plan: ConfirmPlan, protocol: str) -> SweepSpec:
    """The sweep's spec for one protocol's confirm trials: the plan's T, repeats and protocol,
    no early stopping, one trial per pick (unpacked), and a sampled threshold (each config
    carries its own; a curve-mode sweep's picks are confirmed at their point's threshold)."""
    space = spec.search_space.model_copy(update={THRESHOLD: UNIT_RANGE}) if spec.curve_mode else spec.search_space
    milestones = milestones_ending_at(tuple(m for m in spec.milestones if m < plan.T), plan.T)
    count = len(plan.picks)
    return spec.model_copy(update={
        "T": plan.T, "milestones": milestones, "protocol": protocol, "search_space": space, "initial_points": (),
        "early_stopping": None, "pack_size": 1, "num_trials": count, "concurrency": min(spec.concurrency, count),
        "repeats": Repeats(seeds=plan.seeds, orders=plan.orders), "confirm": None,
    })
