"""The Parquet dataset: tables trials/, milestones/, edits/, one file per trial per table.

The dataset lives on a pyarrow filesystem (storage.Location): OUT/parquet on local disk, or
<storage_uri>/parquet on shared storage such as S3. A file is named by the Tune trial id (it holds the
rows of every DEFER trial of a pack, see packing.py) and appears whole or not at all, so a reader never sees half a file, a crash never leaves one, and
writing a trial again (a resumed sweep re-running an interrupted trial) replaces its rows
instead of duplicating them. Schemas are fixed (every metric column exists, null where a
scoring was not run), so the files of many sweeps concatenate.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..protocol import FINAL_STATUSES, METRIC_COLUMNS
from ..storage import Location, as_location

TABLES = ("trials", "milestones", "edits")
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
        pa.field("threshold", pa.float64()),
        pa.field("model", pa.string()),
        pa.field("protocol", pa.string()),
        pa.field("T", pa.int64()),
        pa.field("n_edits", pa.int64()),
        *_METRICS,
        pa.field("seconds", pa.float64()),
        pa.field("worker_pid", pa.int64()),
        pa.field("node_id", pa.string()),
        pa.field("model_load_seconds", pa.float64()),
        pa.field("started_at", _TIME),
        pa.field("finished_at", _TIME),
        pa.field("error", pa.string()),
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
    ]
)

SCHEMAS = {"trials": TRIALS_SCHEMA, "milestones": MILESTONES_SCHEMA, "edits": EDITS_SCHEMA}


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


def read_table(root: Location | str | os.PathLike[str], table: str) -> pa.Table:
    """All trials' rows of one table (empty with the right schema if there are none)."""
    location = as_location(root)
    files = list_files(location, table)
    if not files:
        return SCHEMAS[table].empty_table()
    return pads.dataset(files, schema=SCHEMAS[table], format="parquet", filesystem=location.filesystem).to_table()
