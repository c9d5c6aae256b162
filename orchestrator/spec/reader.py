"""Reading a spec: parsed YAML in, a validated SweepSpec out, or the first problem as one line
that names the file and the full key (`tiny.yaml: key 'search_space.layer.low' must be <= high
(3 > 1)`). The checks themselves live with the models (models.py, fields.py); this module words
pydantic's first error the way the rest of the tool reports input errors (DeferInputError).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from defer_core.errors import DeferInputError
from defer_core.files import read_yaml

from .fields import MISSING, SHAPE_TAGS, SPEC_ERROR, UNKNOWN_KEY
from .models import DEFAULT_NAME, SweepSpec


def spec_from_dict(data: Any, source: str = "<spec>", default_name: str = DEFAULT_NAME) -> SweepSpec:
    """Validate a parsed spec; the first problem found raises with the file and key."""
    try:
        return SweepSpec.model_validate(data, context={"default_name": default_name})
    except ValidationError as error:
        raise DeferInputError(f"{source}: {describe(error.errors()[0])}") from None


def load_spec(path: str | os.PathLike[str]) -> SweepSpec:
    """Read and validate a spec YAML file."""
    path = Path(path)
    data = read_yaml(path, "sweep spec")
    if data is None:
        raise DeferInputError(f"{path}: the sweep spec is empty")
    return spec_from_dict(data, source=str(path), default_name=path.stem)


def spec_to_yaml(spec: SweepSpec) -> str:
    """The spec as given, with output_dir and data path made absolute (what resume reloads).
    In OUT/spec.yaml, output_dir thus records where the sweep was created: the commands read
    the folder where it is now (sinks/layout.py); only resume needs it back in that place."""
    raw = dict(spec.raw)
    raw["name"] = spec.name
    raw["output_dir"] = str(spec.output_dir)
    if spec.storage_uri is not None:
        raw["storage_uri"] = spec.storage_uri
    if spec.data.path is not None:
        raw["data"] = {"path": spec.data.path}
    return yaml.safe_dump(raw, sort_keys=False)


def describe(error: ErrorDetails) -> str:
    """One pydantic error as the rest of the line after the file name."""
    context = error.get("ctx") or {}
    key = dotted_key(error["loc"], context.get("at", ()))
    if error["type"] == MISSING:
        return f"missing required key '{key}'"
    if error["type"] == UNKNOWN_KEY:
        return f"unknown key '{key}' (allowed here: {context['allowed']})"
    subject = f"key '{key}'" if key else "the spec"
    if error["type"] == SPEC_ERROR:
        return f"{subject} {error['msg']}"
    if error["type"] == "greater_than_equal":
        return f"{subject} must be >= {context['ge']}, got {error['input']!r}"
    if error["type"] == "greater_than":
        return f"{subject} must be > {context['gt']}, got {error['input']!r}"
    return f"{subject}: {error['msg']}"  # not anticipated: pydantic's own words


def dotted_key(loc: tuple[str | int, ...], at: tuple[str | int, ...] = ()) -> str:
    """('initial_points', 0, 'layer') -> initial_points[0].layer; the union tags pydantic adds
    for a parameter's form (fixed, range, choice) are no YAML keys and are left out."""
    key = ""
    for part in (*(part for part in loc if part not in SHAPE_TAGS), *at):
        key += f"[{part}]" if isinstance(part, int) else f".{part}" if key else str(part)
    return key
