"""What the outputs read of a sweep's results: the one way in for export, the report, the table,
the `curve` and `sweep` commands and the stages' counts. No reader outside results/ opens the
Parquet tables itself (the sinks' resume replay takes typed rows from store.py: finished_packs,
read_rows); the rules these answers follow live beside it (candidates.py: which
rows rank; ranking.py: order, Pareto, constraints; best.py: the configuration export writes
and the report shows; stages.py: search and confirm stage, the confirmed results; curve.py: a
recorded trial's threshold curve).

A source is a sweep folder (anything with `.parquet`: sinks/layout.SweepLayout) or the Parquet
dataset's root itself. `skip_unreadable` is always said: the outputs (export, report, table,
curve) leave a damaged file's Tune trial out with a warning, while what a running or resuming
sweep reads is strict and stops on it (store.UnreadableParquetError).

Rows come as records (dicts by column name, metrics flattened), what the ranking functions
and the templates take; `trial_rows` hands typed TrialRow instead.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence, TypeVar, Union

from ..storage import Location
from .best import BEST_TABLES, ChosenTrial, choose_best
from .best import search_candidates as best_candidates
from .rows import MILESTONES, POINTS, TRIALS, Status, TrialRow, from_record
from .stages import confirm_stage, load_plan, search_stage
from .store import TABLES, SweepFolder, Tables, read_tables

if TYPE_CHECKING:
    from ..spec import SweepSpec

Source = Union[SweepFolder, Location, str, os.PathLike]
Record = dict[str, Any]
M = TypeVar("M", bound=Mapping[str, Any])


def parquet_of(source: Source) -> Location | str | os.PathLike[str]:
    """The Parquet dataset's root of a sweep folder (or the root itself)."""
    return source if isinstance(source, (Location, str, os.PathLike)) else source.parquet


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
    """The search stage's candidates (best.search_candidates); a damaged file's trial left out,
    with a warning."""
    return best_candidates(read(source, (TRIALS, POINTS), skip_unreadable=True), spec)


def best(source: SweepFolder, spec: SweepSpec, objective: str | None = None, pareto_index: int | None = None, confirmed: bool = True) -> ChosenTrial:
    """The sweep's best (best.choose_best) from one read of its tables; a damaged file's trial
    left out, with a warning."""
    return choose_best(read(source, BEST_TABLES, skip_unreadable=True), load_plan(source), spec, objective, pareto_index, confirmed)


def milestone(source: Source, trial_id: str, n_edits: int) -> Record | None:
    """A trial's milestones row at n_edits (None when it has none there)."""
    found = read(source, (MILESTONES,), skip_unreadable=True).rows(MILESTONES, trial_ids=(trial_id,), n_edits=n_edits)
    return found[0] if found else None
