"""The one store of a sweep's results: the Parquet dataset, one file per Tune trial per table
(the tables and their rows: rows.py). Only this module names the tables' folders and files.

The dataset lives on a pyarrow filesystem (storage.Location): OUT/parquet on local disk, or
<storage_uri>/parquet on shared storage such as S3. A file is named by the Tune trial id (it
holds the rows of every DEFER trial of a pack, see results/packing.py) and appears whole or not
at all, so a reader never sees half a file, a crash never leaves one, and writing a trial again
(a resumed sweep re-running an interrupted trial) replaces its rows instead of duplicating
them. A table no trial wrote yet reads empty, in its schema.

Files are read one by one, so a damaged one (truncated, not Parquet at all, or without a column
of its table) is named with what is wrong: strict readers (everything a running or resuming
sweep reads) raise UnreadableParquetError, one line; `skip_unreadable=True` (export, report)
leaves that Tune trial out of every table read and logs a warning naming the file.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from defer_core.errors import DeferInputError

from ..protocol import N_EDITS, trial_order_key
from ..storage import Location, as_location, one_line
from .rows import SCHEMAS, TABLE_OF, TABLES, TRIAL_ID, TRIALS, R, Row, Status, TrialRow, from_table, record

log = logging.getLogger(__name__)

# The order a trial's tables are written in, trials last: a trial row never claims rows not on disk yet.
WRITE_ORDER = (*(table for table in TABLES if table != "trials"), "trials")


class SweepFolder(Protocol):
    """What a reader needs of a sweep's output directory (sinks/layout.SweepLayout is one):
    the folder, and where its Parquet dataset lives (OUT/parquet, or under the storage_uri)."""

    @property
    def root(self) -> Path: ...

    @property
    def parquet(self) -> Location: ...


class ResultStore:
    """Writes one Tune trial's rows per table (a pack's file holds all its members' rows);
    each write replaces that file. Methods take the Tune trial id (`pack_id`); rows carry the
    DEFER trial's own `trial_id`."""

    def __init__(self, root: Location | str | os.PathLike[str]) -> None:
        self.root = as_location(root)

    def path(self, table: str, pack_id: str) -> str:
        return self.root.child(table, f"{pack_id}.parquet").path

    def write_trial(self, pack_id: str, rows: Mapping[str, Sequence[Row]]) -> None:
        """The Tune trial's file of each table given, in WRITE_ORDER (trials last)."""
        for table in WRITE_ORDER:
            if table in rows:
                self.write(table, pack_id, rows[table])

    def write(self, table: str, pack_id: str, rows: Sequence[Row | Mapping[str, Any]]) -> str:
        """Rows are typed rows, or records by column name (a column left out is null)."""
        fs = self.root.filesystem
        target = self.path(table, pack_id)
        records = [dict(row) if isinstance(row, Mapping) else record(row) for row in rows]
        data = pa.Table.from_pylist(records, schema=SCHEMAS[table])
        if not self.root.is_local:
            # An object store's PUT is all-or-nothing: a crash leaves the object complete (old
            # or new) or absent, never partial, so the final key is written directly.
            pq.write_table(data, target, filesystem=fs)
            return target
        directory, name = target.rsplit("/", 1)
        fs.create_dir(directory, recursive=True)
        tmp = f"{directory}/.{name}.tmp-{os.getpid()}"  # the dot hides it from readers
        pq.write_table(data, tmp, filesystem=fs)
        fs.move(tmp, target)  # a rename: atomic on a local filesystem
        return target

    def pack_ids(self) -> set[str]:
        """Tune trials with a file in any table."""
        return {path.rsplit("/", 1)[1].removesuffix(".parquet") for table in TABLES for path in list_files(self.root, table)}

    def remove_pack(self, pack_id: str) -> None:
        """Forget a Tune trial's rows before it runs again from scratch."""
        for table in TABLES:
            try:
                self.root.filesystem.delete_file(self.path(table, pack_id))
            except FileNotFoundError:
                pass

    def clear(self) -> None:
        """Drop every table file (a fresh start of the sweep in the same directory)."""
        for table in TABLES:
            for path in list_files(self.root, table):
                self.root.filesystem.delete_file(path)


def list_files(root: Location | str | os.PathLike[str], table: str) -> list[str]:
    """A table's trial files, sorted (none if the table does not exist yet)."""
    location = as_location(root).child(table)
    infos = location.filesystem.get_file_info(pafs.FileSelector(location.path, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".parquet") and not i.base_name.startswith("."))


def finished_packs(root: Location | str | os.PathLike[str]) -> dict[str, list[TrialRow]]:
    """The trial rows of every Tune trial (pack) whose rows all say how it ended, by pack id,
    members sorted by trial id: what a resumed sweep counts as recorded and never re-runs."""
    packs: dict[str, list[TrialRow]] = {}
    for row in read_rows(root, TrialRow):
        packs.setdefault(row.pack_id, []).append(row)
    return {
        pack_id: sorted(rows, key=lambda row: row.trial_id)
        for pack_id, rows in packs.items()
        if all(Status(row.status).is_final for row in rows)
    }


def read_rows(root: Location | str | os.PathLike[str], row_type: type[R], *, skip_unreadable: bool = False) -> list[R]:
    """One table's rows, typed."""
    return from_table(row_type, read_table(root, TABLE_OF[row_type], skip_unreadable=skip_unreadable))


# Reading: pyarrow raises these for a truncated, empty or foreign file, or a column of another type.
_READ_ERRORS = (pa.ArrowException, OSError, ValueError)
_NAMED: set[str] = set()  # damaged files this process has warned about (skip_unreadable)
_READ_THREADS = 8  # files are read concurrently: on an object store each is a round trip


@dataclass(frozen=True)
class Tables:
    """One consistent read of several tables: a Tune trial left out of one (a damaged file,
    skip_unreadable) is left out of all of them."""

    data: dict[str, pa.Table]

    def rows(self, table: str, *, trial_ids: Iterable[str] | None = None, n_edits: int | None = None) -> list[dict[str, Any]]:
        """A table's records in file order, only these trials' / this milestone's when given
        (filtered in Arrow before they become Python objects: record_scores is large)."""
        import pyarrow.compute as pc

        data = self.data[table]
        mask = None
        if trial_ids is not None:
            mask = pc.is_in(data[TRIAL_ID], value_set=pa.array(sorted(set(trial_ids)), pa.string()))
        if n_edits is not None:
            at = pc.equal(data[N_EDITS], n_edits)
            mask = at if mask is None else pc.and_(mask, at)
        return (data if mask is None else data.filter(mask)).to_pylist()

    def trials(self) -> list[dict[str, Any]]:
        """The trials table's records in `trial_order_key` order."""
        return sorted(self.rows(TRIALS), key=trial_order_key)


@dataclass(frozen=True)
class UnreadableFile:
    """A table file that cannot be read, and what pyarrow said about it (one line)."""

    path: str  # as a person writes it: a local path, or s3://bucket/key
    pack_id: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: not a readable Parquet file ({self.problem})"


class UnreadableParquetError(DeferInputError):
    """A strict read met a damaged file; the message is one line naming it."""

    def __init__(self, file: UnreadableFile) -> None:
        super().__init__(str(file))
        self.file = file


def read_table(root: Location | str | os.PathLike[str], table: str, *, skip_unreadable: bool = False) -> pa.Table:
    """All trials' rows of one table (empty with the right schema if there are none)."""
    return read_tables(root, (table,), skip_unreadable=skip_unreadable)[table]


def read_tables(root: Location | str | os.PathLike[str], tables: Sequence[str], *, skip_unreadable: bool = False) -> dict[str, pa.Table]:
    """Several tables, each in its fixed schema. A damaged file raises UnreadableParquetError
    (the first in path order), or with skip_unreadable its Tune trial is left out of every
    table returned here, so the tables stay consistent, and a warning names the file."""
    location = as_location(root)
    read: dict[str, list[tuple[str, pa.Table | UnreadableFile]]] = {table: _read_files(location, table) for table in tables}
    bad = [part for parts in read.values() for _, part in parts if isinstance(part, UnreadableFile)]
    if bad and not skip_unreadable:
        raise UnreadableParquetError(min(bad, key=lambda file: file.path))
    for file in sorted(bad, key=lambda file: file.path):
        if file.path not in _NAMED:  # a command reads the tables several times: name each damaged file once
            _NAMED.add(file.path)
            log.warning("%s; leaving out Tune trial %s", file, file.pack_id)
    skipped = {file.pack_id for file in bad}
    return {
        table: pa.concat_tables([SCHEMAS[table].empty_table(), *(part for pack_id, part in parts if pack_id not in skipped)])
        for table, parts in read.items()
    }


def _read_files(location: Location, table: str) -> list[tuple[str, pa.Table | UnreadableFile]]:
    """(pack id, rows or what is wrong) for each of the table's files, in path order."""
    files = list_files(location, table)
    if len(files) <= 1:
        return [_read_file(location, table, path) for path in files]
    with ThreadPoolExecutor(max_workers=min(_READ_THREADS, len(files))) as pool:
        return list(pool.map(lambda path: _read_file(location, table, path), files))


def _read_file(location: Location, table: str, path: str) -> tuple[str, pa.Table | UnreadableFile]:
    pack_id = path.rsplit("/", 1)[1].removesuffix(".parquet")
    try:
        with pq.ParquetFile(path, filesystem=location.filesystem) as file:
            return pack_id, in_schema(file.read(), SCHEMAS[table])
    except _READ_ERRORS as error:
        return pack_id, UnreadableFile(str(Location(location.filesystem, path)), pack_id, one_line(error))


def in_schema(data: pa.Table, schema: pa.Schema) -> pa.Table:
    """A file's rows in its table's schema; a file without one of the table's columns was not
    written by this version (sweep.json's format guards whole folders) and is refused."""
    missing = [name for name in schema.names if name not in data.column_names]
    if missing:
        raise ValueError(f"no column {missing[0]!r}")
    return data.select(schema.names).cast(schema)
