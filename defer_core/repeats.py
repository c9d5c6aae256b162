"""Repeats: one configuration run with every seed × edit order, one trial after another.

A repeat member is a (seed, order) pair: the adaptor's initial weights and the sequence the
same records are edited in (orders). Run one by one, each member's callbacks come in one block
and its result equals that trial run alone; all share the unedited model's locality
predictions (keyed by record id). Spreads over the members are the caller's (orchestrator's
intervals).
"""

from __future__ import annotations

from typing import Callable, Sequence

from .data import EditRecord
from .evaluation import UneditedLocality
from .editors import EditorHParams
from .models import LoadedModel
from .orders import ordered_records
from .results import EditOutcome, MilestoneResult, TrialResult
from .plan import TrialPlan
from .trial import run_trial

Member = tuple[int, int]  # (seed, order)


def repeat_members(seeds: Sequence[int], orders: int) -> list[Member]:
    """Every (seed, order), order-major: order 0 with each seed, then order 1, ..."""
    return [(seed, order) for order in range(orders) for seed in seeds]


def run_members(
    loaded: LoadedModel,
    records: Sequence[EditRecord],
    hparams: EditorHParams,
    plan: TrialPlan,
    members: Sequence[Member],
    *,
    on_edit: Callable[[int, EditOutcome], None] | None = None,
    on_milestone: Callable[[int, MilestoneResult], None] | None = None,
) -> list[TrialResult]:
    """One trial per member, in `members`' order, on the plan's first records in the member's
    edit order; callbacks get the member's index. The results in `members`' order."""
    unedited = UneditedLocality()
    results = []
    for k, (seed, order) in enumerate(members):
        in_order = ordered_records(records, order, plan.total_records)
        results.append(run_trial(
            loaded, in_order, hparams, plan, seed=seed,
            on_edit=(lambda outcome, k=k: on_edit(k, outcome)) if on_edit else None,
            on_milestone=(lambda milestone, k=k: on_milestone(k, milestone)) if on_milestone else None,
            unedited=unedited,
        ))
    return results
