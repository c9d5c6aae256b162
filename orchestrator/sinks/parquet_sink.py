"""The Parquet dataset: tables trials/, milestones/, edits/, gates/, grid/, points/,
member_milestones/, record_scores/, one file per trial per table.

The dataset lives on a pyarrow filesystem (storage.Location): OUT/parquet on local disk, or
<storage_uri>/parquet on shared storage such as S3. A file is named by the Tune trial id (it holds the
rows of every DEFER trial of a pack, see packing.py) and appears whole or not at all, so a reader never sees half a file, a crash never leaves one, and
writing a trial again (a resumed sweep re-running an interrupted trial) replaces its rows
instead of duplicating them. Schemas are fixed (every metric column exists, null where a
scoring was not run), so the files of many sweeps concatenate, and a file written before a
column existed reads with that column null (`conform`); a table an older sweep never wrote
reads empty.

gates/ holds each milestone's tf gate rows (defer_core.results.GateRow): from them alone
defer_core.curve gives the trial's exact tf metrics at any threshold (`defer-sweep curve`).
grid/ holds the generation scorings at each threshold of the spec's grid, points/ the
(threshold, metrics) points of a curve-mode trial's curve (protocol.POINTS_KEY).

Repeats (spec `repeats`): a trial runs several members (seed x edit order) of one config.
milestones/ and trials/ hold the mean over members (`members` their count); member_milestones/
each member's metrics per milestone; record_scores/ each record's scores per member and
milestone (every trial writes it, unrepeated ones as seed = spec.seed, order 0), so repeat
(t) and record (bootstrap) intervals exist everywhere (intervals.milestone_intervals). edits/
and gates/ rows name their member by `seed` and `order`. trials/ also says the `stage` a trial
ran in ("search", or "confirm" for a re-check of the DEFER trial named in `confirms`).

Files are read one by one, so a damaged one (truncated, or not Parquet at all) is named with
what is wrong: strict readers (everything a running or resuming sweep reads) raise
UnreadableParquetError, one line; `skip_unreadable=True` (export, report) leaves that Tune
trial out of every table read and logs a warning naming the file.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from defer_core.errors import DeferInputError

from ..protocol import FINAL_STATUSES, METRIC_COLUMNS
from ..storage import Location, as_location, one_line

log = logging.getLogger(__name__)

TABLES = ("trials", "milestones", "edits", "gates", "grid", "points", "member_milestones", "record_scores")
_TIME = pa.timestamp("us", tz="UTC")
_METRICS = [pa.field(name, pa.float64()) for name in METRIC_COLUMNS]

TRIALS_SCHEMA = pa.schema(
    [
        pa.field("sweep_id", pa.string()),
        pa.field("sweep_name", pa.string()),
        pa.field("trial_id", pa.string()),
        pa.field("pack_id", pa.string()),
        pa.field("optuna_trial", pa.int64()),
        pa.field("status", pa.string()),
        pa.field("layer", pa.int64()),
        pa.field("module", pa.string()),
        pa.field("edit_lr", pa.float64()),
        pa.field("n_iter", pa.int64()),
        pa.field("threshold", pa.float64()),  # curve mode: the threshold of the best point at the last milestone
        pa.field("model", pa.string()),
        pa.field("dtype", pa.string()),  # the dtype the trial ran in (auto resolved)
        pa.field("protocol", pa.string()),
        pa.field("T", pa.int64()),
        pa.field("strip", pa.bool_()),  # text fields stripped of surrounding whitespace (data.strip)
        pa.field("threads", pa.int64()),  # torch's intra-op thread count the trial ran with (resources_per_trial.cpu)
        pa.field("n_edits", pa.int64()),
        *_METRICS,
        pa.field("seconds", pa.float64()),
        pa.field("worker_pid", pa.int64()),
        pa.field("node_id", pa.string()),
        pa.field("model_load_seconds", pa.float64()),
        pa.field("started_at", _TIME),
        pa.field("finished_at", _TIME),
        pa.field("error", pa.string()),
        pa.field("reuse_of", pa.string()),  # the DEFER trial whose training this one replayed (null: it trained)
        pa.field("feasible", pa.bool_()),  # its last milestone's metrics meet the spec's constraints (null: none)
        pa.field("threshold_mode", pa.string()),  # "sampled" (threshold searched) or "curve" (read at every threshold)
        pa.field("members", pa.int64()),  # repeat members (seed x order) its metrics are the mean of; 1 unrepeated
        pa.field("stage", pa.string()),  # "search" (a sweep trial) or "confirm" (a re-check with more repeats)
        pa.field("confirms", pa.string()),  # a confirm run: the DEFER trial id it re-checks (null otherwise)
    ]
)

MILESTONES_SCHEMA = pa.schema(
    [
        pa.field("sweep_id", pa.string()),
        pa.field("trial_id", pa.string()),
        pa.field("protocol", pa.string()),
        *_METRICS,
        pa.field("n_edits", pa.int64()),
        pa.field("eval_seconds", pa.float64()),
        pa.field("elapsed_seconds", pa.float64()),
        pa.field("threshold", pa.float64()),  # the threshold these metrics were read at (curve mode: the best point's)
        pa.field("members", pa.int64()),  # repeat members these metrics are the mean of (1 unrepeated)
    ]
)

EDITS_SCHEMA = pa.schema(
    [
        pa.field("sweep_id", pa.string()),
        pa.field("trial_id", pa.string()),
        pa.field("edit_index", pa.int64()),
        pa.field("chunk", pa.int64()),
        pa.field("record_id", pa.string()),
        pa.field("final_loss", pa.float64()),
        pa.field("edit_seconds", pa.float64()),
        pa.field("success", pa.float64()),
        pa.field("gate", pa.float64()),  # the edit prompt's gate, and its tf accuracy with the adaptor forced on / off
        pa.field("success_on", pa.float64()),
        pa.field("success_off", pa.float64()),
        pa.field("seed", pa.int64()),  # the repeat member that made the edit: its seed and edit order
        pa.field("order", pa.int64()),
    ]
)

GATES_SCHEMA = pa.schema(
    [
        pa.field("sweep_id", pa.string()),
        pa.field("trial_id", pa.string()),
        pa.field("n_edits", pa.int64()),
        pa.field("protocol", pa.string()),
        pa.field("chunk", pa.int64()),
        pa.field("record_id", pa.string()),
        pa.field("probe", pa.string()),  # rel, gen or loc
        pa.field("gate", pa.float64()),  # the model-dtype gate, exactly
        pa.field("on", pa.float64()),
        pa.field("off", pa.float64()),
        pa.field("seed", pa.int64()),  # the repeat member scored: its seed and edit order
        pa.field("order", pa.int64()),
    ]
)

GRID_SCHEMA = pa.schema(
    [
        pa.field("sweep_id", pa.string()),
        pa.field("trial_id", pa.string()),
        pa.field("n_edits", pa.int64()),
        pa.field("threshold", pa.float64()),
        *_METRICS,
    ]
)

POINTS_SCHEMA = pa.schema(
    [
        pa.field("sweep_id", pa.string()),
        pa.field("trial_id", pa.string()),
        pa.field("n_edits", pa.int64()),
        pa.field("threshold", pa.float64()),
        *_METRICS,
        pa.field("feasible", pa.bool_()),
    ]
)

MEMBER_MILESTONES_SCHEMA = pa.schema(
    [
        pa.field("sweep_id", pa.string()),
        pa.field("trial_id", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("order", pa.int64()),
        pa.field("n_edits", pa.int64()),
        *_METRICS,
    ]
)

RECORD_SCORES_SCHEMA = pa.schema(
    [
        pa.field("sweep_id", pa.string()),
        pa.field("trial_id", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("order", pa.int64()),
        pa.field("n_edits", pa.int64()),
        pa.field("chunk", pa.int64()),
        pa.field("record_id", pa.string()),
        *_METRICS,
    ]
)

SCHEMAS = {
    "trials": TRIALS_SCHEMA, "milestones": MILESTONES_SCHEMA, "edits": EDITS_SCHEMA,
    "gates": GATES_SCHEMA, "grid": GRID_SCHEMA, "points": POINTS_SCHEMA,
    "member_milestones": MEMBER_MILESTONES_SCHEMA, "record_scores": RECORD_SCORES_SCHEMA,
}


class ParquetSink:
    """Writes one Tune trial's rows per table (a pack's file holds all its members' rows);
    each call replaces that file. Methods take the Tune trial id (`pack_id`); rows carry the
    DEFER trial's own `trial_id`."""

    def __init__(self, root: Location | str | os.PathLike[str]) -> None:
        self.root = as_location(root)

    def path(self, table: str, pack_id: str) -> str:
        return self.root.child(table, f"{pack_id}.parquet").path

    def write(self, table: str, pack_id: str, rows: Sequence[dict[str, Any]]) -> str:
        fs = self.root.filesystem
        target = self.path(table, pack_id)
        data = pa.Table.from_pylist(list(rows), schema=SCHEMAS[table])
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


def finished_packs(root: Location | str | os.PathLike[str]) -> dict[str, list[dict[str, Any]]]:
    """The trial rows of every Tune trial (pack) whose rows all say how it ended, by pack id,
    members sorted by trial id: what a resumed sweep counts as recorded and never re-runs."""
    packs: dict[str, list[dict[str, Any]]] = {}
    for row in read_table(root, "trials").to_pylist():
        packs.setdefault(row["pack_id"], []).append(row)
    return {
        pack_id: sorted(rows, key=lambda row: row["trial_id"])
        for pack_id, rows in packs.items()
        if all(row["status"] in FINAL_STATUSES for row in rows)
    }


# Reading: pyarrow raises these for a truncated, empty or foreign file, or a column of another type.
_READ_ERRORS = (pa.ArrowException, OSError, ValueError)
_READ_THREADS = 8  # files are read concurrently: on an object store each is a round trip


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
            return pack_id, conform(file.read(), SCHEMAS[table])
    except _READ_ERRORS as error:
        return pack_id, UnreadableFile(str(Location(location.filesystem, path)), pack_id, one_line(error))


def conform(data: pa.Table, schema: pa.Schema) -> pa.Table:
    """A file's rows in the table's schema: a column the file lacks (written before that
    metric existed) is null, one it has beyond the schema is dropped, types are cast."""
    columns = [data.column(field.name).cast(field.type) if field.name in data.column_names else pa.nulls(data.num_rows, field.type) for field in schema]
    return pa.Table.from_arrays(columns, schema=schema)
