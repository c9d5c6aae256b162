"""Early stopping over edit milestones: ASHA with the number of edits as its clock.

A trial reports after milestones such as 1, 10, 100, 1000 edits. At each rung
(grace_edits * reduction_factor**k) a trial whose objective lies below the (1 - 1/rf)
quantile of the trials already recorded there is stopped; the searcher then marks it pruned.

Ray Tune checkpoints searcher and callback state but not scheduler state, so after a resume
ASHA would forget every rung. `RungStateCallback` carries the rung records through Tune's
callback checkpoint; it holds the same scheduler object as the TuneConfig (both are pickled
together in Tune's tuner.pkl, which keeps the shared reference).
"""

from __future__ import annotations

from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from ..protocol import N_EDITS
from ..spec import SweepSpec


class MilestoneASHA(AsyncHyperBandScheduler):
    """ASHA whose rung records can be saved and restored."""

    def rung_state(self) -> list[list[dict[str, float]]]:
        return [[dict(recorded) for _, recorded in bracket._rungs] for bracket in self._brackets]

    def load_rung_state(self, state: list[list[dict[str, float]]]) -> None:
        for bracket, rungs in zip(self._brackets, state):
            for (_, recorded), saved in zip(bracket._rungs, rungs):
                recorded.clear()
                recorded.update(saved)


class RungStateCallback(Callback):
    """Saves and restores MilestoneASHA's rungs with Tune's experiment checkpoint."""

    def __init__(self, scheduler: MilestoneASHA) -> None:
        self.scheduler = scheduler

    def get_state(self) -> dict[str, Any] | None:
        return {"rungs": self.scheduler.rung_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.scheduler.load_rung_state(state["rungs"])


def make_scheduler(spec: SweepSpec) -> tuple[TrialScheduler, list[Callback]]:
    """ASHA when the spec asks for early stopping, else run every trial to T."""
    stop = spec.early_stopping
    if stop is None:
        return FIFOScheduler(), []
    scheduler = MilestoneASHA(
        time_attr=N_EDITS,
        metric=stop.metric,
        mode="max" if stop.direction == "maximize" else "min",
        max_t=spec.T,
        grace_period=stop.grace_edits,
        reduction_factor=stop.reduction_factor,
        brackets=1,
    )
    return scheduler, [RungStateCallback(scheduler)]
