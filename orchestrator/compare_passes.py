"""`compare`'s finished passes, kept so that a comparison can be stopped and run again.

A pass is one edit stream: one editor × dtype × protocol group × edit order, every seed in it.
A comparison at T=100 runs passes of an hour or more on a CPU, and its table needs several edit
orders, more than one session holds. So each finished pass is written at once to
OUT/passes/<editor>-<dtype>-<protocols>-order<k>-<digest>.parquet: its per-record rows (the
columns of records.parquet) and, in the file's metadata, everything that decides its numbers
(the pass's identity). Run the same `compare` with the same --output again and every pass
whose identity matches a file is read instead of run; a pass of other settings (another
edit_lr, T, scoring, thread count, dtype, torch ...) has another digest and runs. The table's
cells are computed from the rows either way (compare.member_cells), so a resumed comparison
gives the same table and records.parquet as an uninterrupted one. A pass stopped midway
leaves no file (each is written through a temporary name) and runs again in full.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from typing import Any, Sequence

from defer_core.data import EditRecord
from defer_core.errors import DeferInputError
from defer_core.files import atomic_write_bytes
from defer_core.plan import DEFAULT_GRACE_KEY

PASSES_DIR = "passes"  # OUT/passes/: one Parquet file per finished pass
PASS_FORMAT = 1  # raised whenever a pass file's shape or identity changes
_IDENTITY_KEY = b"defer_sweep.compare_pass"
# Trial plan fields added after PASS_FORMAT 1, each with the default that every pass kept before
# it ran with: left out of the identity at that default, so those passes are still read.
_ADDED_AT_DEFAULT = {"grace_key": DEFAULT_GRACE_KEY}


def pass_identity(*, model: str, device: str | None, dtype: str, hparams: Any, trial_plan: Any, seeds: Sequence[int], order: int,
                  records: Sequence[EditRecord]) -> dict[str, Any]:
    """Everything a pass's numbers depend on: the model, device and dtype, the editor's full
    hparams, the trial plan (protocols, T, scorings, edit path, threads), the seeds, the edit
    order and the records edited in it (their text, so --strip and the data file count), and
    the torch and transformers versions."""
    return {
        "format": PASS_FORMAT,
        "model": model, "device": device, "dtype": dtype,
        "hparams": {"class": type(hparams).__name__, **asdict(hparams)},
        "trial_plan": {k: v for k, v in asdict(trial_plan).items() if k not in _ADDED_AT_DEFAULT or v != _ADDED_AT_DEFAULT[k]},
        "seeds": list(seeds), "order": order,
        "records": hashlib.sha256(json.dumps([asdict(r) for r in records], sort_keys=True).encode()).hexdigest(),
        "torch": version("torch"), "transformers": version("transformers"),
    }


def _canonical(identity: dict[str, Any]) -> str:
    return json.dumps(identity, sort_keys=True, default=str)


def pass_file(directory: Path, name: str, identity: dict[str, Any]) -> Path:
    """OUT/passes/<name>-<digest>.parquet: the name for a reader, the digest for the identity."""
    digest = hashlib.sha256(_canonical(identity).encode()).hexdigest()[:12]
    return directory / PASSES_DIR / f"{name}-{digest}.parquet"


def read_pass(path: Path, identity: dict[str, Any], schema: Any) -> list[dict[str, Any]] | None:
    """The rows of a pass finished before, or None when there is no file for it. A file that
    cannot be read, or holds other settings or columns, is refused naming it."""
    import pyarrow.parquet as pq

    if not path.is_file():
        return None
    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several kinds for a damaged file
        raise DeferInputError(f"{path}: cannot read this finished pass ({error}); remove it to run the pass again") from error
    stored = (table.schema.metadata or {}).get(_IDENTITY_KEY)
    if stored is None or stored.decode() != _canonical(identity):
        raise DeferInputError(f"{path}: holds a pass of other settings than its name says; remove it to run the pass again")
    if not table.schema.remove_metadata().equals(schema):
        raise DeferInputError(f"{path}: expected the columns of records.parquet, got {', '.join(table.schema.names)}; remove it to run the pass again")
    return table.to_pylist()


def write_pass(path: Path, identity: dict[str, Any], rows: list[dict[str, Any]], schema: Any) -> Path:
    """One finished pass, written whole or not at all."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=schema).replace_schema_metadata({_IDENTITY_KEY: _canonical(identity).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return atomic_write_bytes(path, sink.getvalue().to_pybytes())
