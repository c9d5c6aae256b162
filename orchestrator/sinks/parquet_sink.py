"""The Parquet dataset: tables trials/, milestones/, edits/, one file per trial per table.

A file is named by the Tune trial id and written to a temporary name then renamed, so a
reader never sees half a file, a crash never leaves one, and writing a trial again (a resumed
sweep re-running an interrupted trial) replaces its rows instead of duplicating them. Schemas
are fixed (every metric column exists, null where a scoring was not run), so the files of
many sweeps concatenate.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from ..records import METRIC_COLUMNS

TABLES = ("trials", "milestones", "edits")
_TIME = pa.timestamp("us", tz="UTC")
_METRICS = [pa.field(name, pa.float64()) for name in METRIC_COLUMNS]

TRIALS_SCHEMA = pa.schema(
    [
        pa.field("sweep_id", pa.string()),
        pa.field("sweep_name", pa.string()),
        pa.field("trial_id", pa.string()),
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
    """Writes one trial's rows per table; each call replaces that trial's file."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, table: str, trial_id: str) -> Path:
        return self.root / table / f"{trial_id}.parquet"

    def write(self, table: str, trial_id: str, rows: Sequence[dict[str, Any]]) -> Path:
        schema = SCHEMAS[table]
        target = self.path(table, trial_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        data = pa.Table.from_pylist(list(rows), schema=schema)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        pq.write_table(data, tmp)
        os.replace(tmp, target)
        return target

    def trial_ids(self) -> set[str]:
        """Trials with a file in any table."""
        found: set[str] = set()
        for table in TABLES:
            directory = self.root / table
            if directory.is_dir():
                found.update(item.stem for item in directory.glob("*.parquet"))
        return found

    def remove_trial(self, trial_id: str) -> None:
        """Forget a trial's rows before it runs again from scratch."""
        for table in TABLES:
            self.path(table, trial_id).unlink(missing_ok=True)

    def clear(self) -> None:
        """Drop every table file (a fresh start of the sweep in the same directory)."""
        for table in TABLES:
            directory = self.root / table
            if directory.is_dir():
                for item in directory.glob("*.parquet"):
                    item.unlink()


def final_trial_ids(root: Path, final_statuses: tuple[str, ...]) -> set[str]:
    """Trials whose row already says how they ended."""
    table = read_table(root, "trials")
    return {trial_id for trial_id, status in zip(table.column("trial_id").to_pylist(), table.column("status").to_pylist()) if status in final_statuses}


def read_table(root: Path, table: str) -> pa.Table:
    """All trials' rows of one table (empty with the right schema if there are none)."""
    directory = Path(root) / table
    files = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
    if not files:
        return SCHEMAS[table].empty_table()
    return pa.concat_tables([pq.read_table(f, schema=SCHEMAS[table]) for f in files])
