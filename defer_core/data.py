"""Edit records from WISE's ZsRE files (MEND format) or EasyEdit's generic format.

Records are read from a data directory outside the project (default `../shared/data` beside
the checkout, or `$DEFER_SWEEP_DATA_DIR`), never copied in. Every record is checked; a bad
one fails with the file, its index and the field, so nothing is dropped silently.

Whitespace: text is kept exactly as the file has it, as EasyEdit passes it on. 15 of the first
1000 ZsRE `alt` values start with a space (" MAT-49", first at index 26); the edit is tokenized
as f"{prompt} {target}", so such a target becomes a double space, in EasyEdit and here alike.
`strip=True` strips every field of surrounding whitespace instead (inner whitespace is kept):
a different token sequence, so a trial records which it used.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DeferInputError

DATA_DIR_ENV = "DEFER_SWEEP_DATA_DIR"
DEFAULT_ZSRE_FILE = Path("zsre") / "zsre_mend_eval_one_hop.json"
DATA_HINT = (
    "the ZsRE edit set comes from the WISE / EasyEdit data release "
    "(zsre_mend_eval_one_hop.json, also called data/wise/ZsRE/zsre_mend_edit.json); "
    f"put it under a data directory and pass --data or set ${DATA_DIR_ENV}"
)

_MEND_FIELDS = {"prompt": "src", "target": "alt", "rephrase": "rephrase", "locality_prompt": "loc", "locality_answer": "loc_ans"}
_GENERIC_FIELDS = {
    "prompt": "prompt",
    "target": "target_new",
    "rephrase": "rephrase_prompt",
    "locality_prompt": "locality_prompt",
    "locality_answer": "locality_ground_truth",
}


@dataclass(frozen=True)
class EditRecord:
    """One edit request and the three probes scored for it."""

    record_id: str
    prompt: str
    target: str
    rephrase: str
    locality_prompt: str
    locality_answer: str


def default_data_dir() -> Path:
    """`$DEFER_SWEEP_DATA_DIR`, else `shared/data` beside the checkout (../shared/data)."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def resolve_data_path(path: str | os.PathLike[str] | None = None) -> Path:
    """A file is used as is; a directory gets the default ZsRE file inside it."""
    candidate = Path(path) if path is not None else default_data_dir()
    if candidate.is_dir():
        candidate = candidate / DEFAULT_ZSRE_FILE
    if not candidate.is_file():
        raise DeferInputError(f"{candidate}: data file not found; {DATA_HINT}")
    return candidate


def _text(record: dict[str, Any], key: str, path: Path, index: int, strip: bool) -> str:
    if key not in record:
        raise DeferInputError(f"{path}: record {index}: missing field '{key}'")
    value = record[key]
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]
    if not isinstance(value, str):
        raise DeferInputError(f"{path}: record {index}: field '{key}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DeferInputError(f"{path}: record {index}: field '{key}' is empty")
    return value.strip() if strip else value


def _field_map(record: dict[str, Any]) -> dict[str, str]:
    return _GENERIC_FIELDS if "target_new" in record or "prompt" in record else _MEND_FIELDS


def _generic_locality(record: dict[str, Any]) -> dict[str, Any]:
    """EasyEdit files sometimes nest locality as {"locality": {"NQ": {"prompt", "ground_truth"}}}."""
    if "locality_prompt" in record or "locality" not in record or not isinstance(record["locality"], dict):
        return record
    for probe in record["locality"].values():
        if isinstance(probe, dict) and "prompt" in probe and "ground_truth" in probe:
            return {**record, "locality_prompt": probe["prompt"], "locality_ground_truth": probe["ground_truth"]}
    return record


def parse_record(raw: Any, path: Path, index: int, strip: bool = False) -> EditRecord:
    if not isinstance(raw, dict):
        raise DeferInputError(f"{path}: record {index}: expected a JSON object, got {type(raw).__name__}")
    raw = _generic_locality(raw)
    fields = _field_map(raw)
    values = {name: _text(raw, key, path, index, strip) for name, key in fields.items()}
    record_id = str(raw.get("case_id", raw.get("id", index)))
    return EditRecord(record_id=record_id, **values)


def load_records(path: str | os.PathLike[str] | None = None, limit: int | None = None, *, strip: bool = False) -> list[EditRecord]:
    """Read the first `limit` records (all if None); a record that cannot be used is an error.
    Text is kept as written (EasyEdit's handling) unless `strip`."""
    resolved = resolve_data_path(path)
    try:
        raw = json.loads(resolved.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DeferInputError(f"{resolved}: not valid JSON (line {error.lineno}: {error.msg})") from None
    if not isinstance(raw, list):
        raise DeferInputError(f"{resolved}: expected a JSON array of edit records, got {type(raw).__name__}")
    if limit is not None:
        if limit > len(raw):
            raise DeferInputError(f"{resolved}: asked for {limit} records but the file has {len(raw)}")
        raw = raw[:limit]
    return [parse_record(item, resolved, index, strip) for index, item in enumerate(raw)]
