"""What the outputs read of a sweep's results: the one way in for export, the report, the table,
the `curve` and `sweep` commands and the stages' counts. No reader outside results/ opens the
Parquet tables itself (the sinks' resume replay takes typed rows from store.py: finished_packs,
read_rows); the rules these answers follow live beside it (candidates.py: which
rows rank; ranking.py: best, Pareto, constraints; stages.py: search and confirm stage, the
confirmed results; curve.py: a recorded trial's threshold curve).

A source is a sweep folder (anything with `.parquet`: sinks/layout.SweepLayout) or the Parquet
dataset's root itself. `skip_unreadable` is always said: the outputs (export, report, table,
curve) leave a damaged file's Tune trial out with a warning, while what a running or resuming
sweep reads is strict and stops on it (store.UnreadableParquetError).

Rows come as records (dicts by column name, metrics flattened), what the ranking functions
and the templates take; `trial_rows` hands typed TrialRow instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence, TypeVar, Union

from ..protocol import N_EDITS, trial_order_key
from ..storage import Location
from .candidates import candidates
from .curve import gate_rows
from .rows import GATES, MILESTONES, POINTS, TRIAL_ID, TRIALS, Status, TrialRow, from_record
from .stages import confirm_stage, search_stage
from .store import TABLES, SweepFolder, read_tables

if TYPE_CHECKING:
    import pyarrow as pa
    from defer_core.results import GateRow

    from ..spec import SweepSpec

Source = Union[SweepFolder, Location, str, os.PathLike]
Record = dict[str, Any]
M = TypeVar("M", bound=Mapping[str, Any])



def parquet_of(source: Source) -> Location | str | os.PathLike[str]:
    """The Parquet dataset's root of a sweep folder (or the root itself)."""
    return source if isinstance(source, (Location, str, os.PathLike)) else source.parquet


@dataclass(frozen=True)
class Tables:
    """One consistent read of several tables: a Tune trial left out of one (a damaged file,
    skip_unreadable) is left out of all of them."""

    data: dict[str, "pa.Table"]

    def rows(self, table: str, *, trial_ids: Iterable[str] | None = None, n_edits: int | None = None) -> list[Record]:
        """A table's records in file order, only these trials' / this milestone's when given
        (filtered in Arrow before they become Python objects: record_scores is large)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        data = self.data[table]
        mask = None
        if trial_ids is not None:
            mask = pc.is_in(data[TRIAL_ID], value_set=pa.array(sorted(set(trial_ids)), pa.string()))
        if n_edits is not None:
            at = pc.equal(data[N_EDITS], n_edits)
            mask = at if mask is None else pc.and_(mask, at)
        return (data if mask is None else data.filter(mask)).to_pylist()

    def trials(self) -> list[Record]:
        """The trials table's records in `trial_order_key` order."""
        return sorted(self.rows(TRIALS), key=trial_order_key)


def read(source: Source, tables: Sequence[str], *, skip_unreadable: bool) -> Tables:
    """Several tables at once (see Tables)."""
    return Tables(read_tables(parquet_of(source), tables, skip_unreadable=skip_unreadable))


def require_readable(source: Source) -> None:
    """Every file of every table reads: raises store.UnreadableParquetError naming the first
    damaged one (what a resume needs before it changes anything)."""
    read_tables(parquet_of(source), tuple(TABLES))


# -- trials ------------------------------------------------------------------------------------------


def trials(source: Source, *, skip_unreadable: bool) -> list[Record]:
    """Every DEFER trial's trials row, both stages, in `trial_order_key` order."""
    return read(source, (TRIALS,), skip_unreadable=skip_unreadable).trials()


def trial_rows(source: Source, *, skip_unreadable: bool) -> list[TrialRow]:
    """`trials`, typed."""
    return [from_record(TrialRow, row) for row in trials(source, skip_unreadable=skip_unreadable)]


def search_trials(source: Source, *, skip_unreadable: bool) -> list[Record]:
    """The search stage's trials rows (confirm runs left out)."""
    return search_stage(trials(source, skip_unreadable=skip_unreadable))


def stage_trials(source: Source, *, confirm: bool, protocol: str | None = None, skip_unreadable: bool) -> list[Record]:
    """The search stage's trials rows, or the confirm stage's (of one protocol, or of all)."""
    rows = trials(source, skip_unreadable=skip_unreadable)
    return confirm_stage(rows, protocol) if confirm else search_stage(rows)


def complete(rows: Iterable[M]) -> list[M]:
    """The rows of trials that completed all their edits (the same row objects)."""
    return [row for row in rows if row["status"] == Status.COMPLETE]


def count_by_status(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Trials rows per status: each final one (complete, pruned, failed) and running, zeros
    included."""
    statuses = [row["status"] for row in rows]
    return {status: statuses.count(status) for status in (*Status.final(), Status.RUNNING)}


# -- what ranks --------------------------------------------------------------------------------------


def search_candidates(source: Source, spec: SweepSpec) -> list[Record]:
    """The search stage's candidates (candidates.candidates): its complete trials, in curve
    mode their points at T; a damaged file's trial left out, with a warning."""
    found = read(source, (TRIALS, POINTS), skip_unreadable=True)
    return candidates(spec, complete(search_stage(found.rows(TRIALS))), found.rows(POINTS) if spec.curve_mode else ())


def training_gates(source: Source, training: str, n_edits: int) -> tuple[GateRow, ...]:
    """A training's gate rows at one milestone (candidates.training_of names a candidate's)."""
    found = read(source, (GATES,), skip_unreadable=True)
    return gate_rows(found.rows(GATES, trial_ids=(training,), n_edits=n_edits))


def milestone(source: Source, trial_id: str, n_edits: int) -> Record | None:
    """A trial's milestones row at n_edits (None when it has none there)."""
    found = read(source, (MILESTONES,), skip_unreadable=True).rows(MILESTONES, trial_ids=(trial_id,), n_edits=n_edits)
    return found[0] if found else None
