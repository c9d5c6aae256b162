"""Edit-level progress from running trials to the driver, outside Tune's results.

A trial reports to Tune only at milestones (the scheduler and the searcher read those), so a
Llama-2-7B trial at T=1000 would be silent for hours. Instead each worker sends small
fire-and-forget notes (trial, member, edits done, total, seconds) to a `ProgressBoard`: a
named Ray actor the driver creates in its own Ray session (so it works on every node of a
cluster) and reads without blocking (sinks/progress.py). The board keeps only the latest note
per trial member, so its memory stays bounded. Nothing here is pickled into Tune's state: the
trainable carries the board's name and looks it up, the driver passes the handle around.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import ray

log = logging.getLogger(__name__)

# A worker sends at most one note per trial member this often (and always the last edit's).
SEND_EVERY_S = 1.0


@dataclass(frozen=True)
class EditProgress:
    """One member of a running Tune trial: `done` of `total` edits made, `edit_seconds` spent
    in them (evaluation excluded), `elapsed` wall seconds since the trial started."""

    trial_id: str  # the Tune trial (a pack's id for its members)
    member: int
    optuna_trial: int | None
    done: int
    total: int
    edit_seconds: float
    elapsed: float

    @property
    def seconds_per_edit(self) -> float:
        return self.edit_seconds / self.done if self.done else 0.0

    @property
    def eta_seconds(self) -> float:
        """Remaining wall time at the trial's pace so far (edits and evaluations)."""
        return self.elapsed / self.done * (self.total - self.done) if self.done else float("nan")


@ray.remote(num_cpus=0)
class ProgressBoard:
    """The latest note of each running trial member; `snapshot` hands them to the driver."""

    def __init__(self) -> None:
        self._latest: dict[tuple[str, int], EditProgress] = {}

    def post(self, note: EditProgress) -> None:
        self._latest[(note.trial_id, note.member)] = note

    def snapshot(self, running: list[str]) -> list[EditProgress]:
        """Notes of the given Tune trials; notes of every other trial are dropped (ended)."""
        keep = set(running)
        self._latest = {key: note for key, note in self._latest.items() if key[0] in keep}
        return list(self._latest.values())


def board_name(sweep_id: str) -> str:
    return f"defer-sweep-progress-{sweep_id}"


def open_board(name: str) -> Any:
    """The driver's board (an ActorHandle), created in the current Ray session if missing."""
    return ProgressBoard.options(name=name, get_if_exists=True).remote()


class EditReporter:
    """Worker side: `edit(k, index, seconds)` after each edit of member k; sends throttled notes.

    A board that cannot be found (e.g. the driver runs with --quiet) turns it into a no-op; a
    lost note only delays the console, so nothing is awaited."""

    def __init__(self, board: str | None, trial_id: str, optuna_trials: list[int | None], total: int) -> None:
        self._board = _lookup(board) if board else None
        self._trial_id = trial_id
        self._numbers = optuna_trials
        self._total = total
        self._started = time.monotonic()
        self._edit_seconds = [0.0] * len(optuna_trials)
        self._sent_at = [float("-inf")] * len(optuna_trials)

    def edit(self, member: int, done: int, seconds: float) -> None:
        if self._board is None:
            return
        self._edit_seconds[member] += seconds
        now = time.monotonic()
        if now - self._sent_at[member] < SEND_EVERY_S and done < self._total:
            return
        self._sent_at[member] = now
        note = EditProgress(self._trial_id, member, self._numbers[member], done, self._total, self._edit_seconds[member], now - self._started)
        self._board.post.remote(note)  # fire and forget


def _lookup(name: str) -> Any:
    try:
        return ray.get_actor(name)
    except ValueError:  # no such actor: the driver shows no live progress
        log.debug("no progress board %s; live progress off for this trial", name)
        return None
