"""Early stopping over edit milestones: ASHA with the number of edits as its clock.

A trial reports after milestones such as 1, 10, 100, 1000 edits. At each rung
(grace_edits * reduction_factor**k) a trial whose objective lies below the (1 - 1/rf)
quantile of the trials already recorded there is stopped; the searcher then marks it pruned.

Ray Tune checkpoints searcher and callback state but not scheduler state, so after a resume
ASHA would forget every rung. `RungStateCallback` carries the scheduler's state (its rung
records included) through Tune's callback checkpoint, written and read with the scheduler's
own public `save`/`restore`; it holds the same scheduler object as the TuneConfig (both are
pickled together in Tune's tuner.pkl, which keeps the shared reference), and restores it in
place. tests/test_ray_internals.py checks that this round trip keeps ASHA's decisions.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from ..protocol import N_EDITS
from ..spec import SweepSpec



class MilestoneASHA(AsyncHyperBandScheduler):
    """ASHA whose state, rung records included, goes to and from bytes through the public
    `TrialScheduler.save`/`restore` (no reads of ASHA's private brackets or rungs)."""

    def state_bytes(self) -> bytes:
        with tempfile.TemporaryDirectory(prefix="defer-asha-") as tmp:
            path = Path(tmp) / "scheduler.pkl"
            self.save(str(path))
            return path.read_bytes()

    def load_state_bytes(self, data: bytes) -> None:
        """In place, so the TuneConfig's reference to this scheduler sees the restored rungs."""
        with tempfile.TemporaryDirectory(prefix="defer-asha-") as tmp:
            path = Path(tmp) / "scheduler.pkl"
            path.write_bytes(data)
            self.restore(str(path))


class RungStateCallback(Callback):
    """Saves and restores MilestoneASHA's rungs with Tune's experiment checkpoint."""

    def __init__(self, scheduler: MilestoneASHA) -> None:
        self.scheduler = scheduler

    def get_state(self) -> dict[str, Any] | None:
        return {"scheduler": self.scheduler.state_bytes()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_bytes(state["scheduler"])


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
