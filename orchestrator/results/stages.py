"""Which stage a trial row belongs to, and the confirm stage's recorded plan and results.

A sweep's Parquet dataset holds two stages: the search (Optuna's trials) and, after `defer-sweep
confirm`, the confirm stage (trials.stage = "confirm"; see sweep/confirm.py). The confirm plan
is written to OUT/confirm.json when the stage starts; export reads the seeds, orders and T the
confirmed results were made with from it. Light (no Ray, no torch): export and the report read it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from defer_core.errors import DeferInputError
from defer_core.files import atomic_write_text

from ..protocol import CONFIRMS, STAGE, STAGE_CONFIRM, STAGE_SEARCH
from ..storage import Location
from .rows import Status
from .store import SweepFolder, read_table

if TYPE_CHECKING:
    from ..spec import SweepSpec

CONFIRM_FILE = "confirm.json"  # in OUT: the plan of the folder's confirm stage


def stage_of(row: Mapping[str, Any]) -> str:
    """A trials row's stage; rows written before stages existed are the search's."""
    return row.get(STAGE) or STAGE_SEARCH


def search_stage(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [dict(row) for row in rows if stage_of(row) != STAGE_CONFIRM]


def confirm_stage(rows: Sequence[Mapping[str, Any]], protocol: str | None = None) -> list[dict[str, Any]]:
    return [dict(row) for row in rows if stage_of(row) == STAGE_CONFIRM and (protocol is None or row.get("protocol") == protocol)]


def other_experiments_packs(parquet: Location, protocol: str | None) -> set[str]:
    """The Tune trials (pack ids) that the folder's other Tune experiments recorded, which one
    experiment never knows and must not drop as a killed driver's leftovers: for the search's
    experiment (protocol None) the confirm stage's; for one protocol's confirm experiment every
    other trial."""
    rows = read_table(parquet, "trials").select(["pack_id", STAGE, "protocol"]).to_pylist()
    mine = search_stage(rows) if protocol is None else confirm_stage(rows, protocol)
    return {str(row["pack_id"]) for row in rows} - {str(row["pack_id"]) for row in mine}


@dataclass(frozen=True)
class Pick:
    """A configuration to confirm: the DEFER trial it came from and its full config."""

    confirms: str  # the search trial's DEFER trial id
    label: str  # `#007`, as the console names that trial
    config: dict[str, int | float]  # layer, edit_lr, n_iter, threshold


@dataclass(frozen=True)
class ConfirmPlan:
    picks: tuple[Pick, ...]
    seeds: tuple[int, ...]
    orders: int
    T: int
    protocols: tuple[str, ...]

    @property
    def repeats_text(self) -> str:
        """`5 seeds x 2 orders at T=100`: what a confirmed number is the mean of."""
        return f"{len(self.seeds)} seed{'s' if len(self.seeds) != 1 else ''} x {self.orders} order{'s' if self.orders != 1 else ''} at T={self.T}"

    def configs(self) -> list[dict[str, Any]]:
        """The confirm trials' Tune configs: each pick's config and the trial it confirms."""
        return [{**pick.config, CONFIRMS: pick.confirms} for pick in self.picks]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "ConfirmPlan":
        data = json.loads(text)
        picks = tuple(Pick(str(p["confirms"]), str(p["label"]), dict(p["config"])) for p in data["picks"])
        return cls(picks, tuple(int(s) for s in data["seeds"]), int(data["orders"]), int(data["T"]), tuple(str(p) for p in data["protocols"]))


def load_plan(layout: SweepFolder) -> ConfirmPlan | None:
    path = layout.root / CONFIRM_FILE
    if not path.is_file():
        return None
    try:
        return ConfirmPlan.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DeferInputError(f"{path}: unreadable confirm plan ({error})") from None


def save_plan(layout: SweepFolder, plan: ConfirmPlan) -> None:
    atomic_write_text(layout.root / CONFIRM_FILE, plan.to_json())


@dataclass(frozen=True)
class Confirmed:
    """The confirmed results export ranks: confirm rows that completed the plan's T under one
    protocol (the spec's own when it was confirmed), with the plan they followed."""

    rows: list[dict[str, Any]]
    plan: ConfirmPlan
    protocol: str

    @property
    def note(self) -> str:
        return f"confirmed with {self.plan.repeats_text} ({self.protocol}; {len(self.rows)} of {len(self.plan.picks)} configurations)"


def confirmed_results(plan: ConfirmPlan | None, spec: SweepSpec, trials: Sequence[Mapping[str, Any]]) -> Confirmed | None:
    """None when the folder has no confirm plan (load_plan) or no confirm trial completed its T."""
    if plan is None:
        return None
    done = [row for row in confirm_stage(trials) if row["status"] == Status.COMPLETE and row.get("n_edits") == plan.T and row.get("T") == plan.T]
    for protocol in sorted(plan.protocols, key=lambda p: p != spec.protocol):
        rows = [row for row in done if row.get("protocol") == protocol]
        if rows:
            return Confirmed(rows, plan, protocol)
    return None
