"""The JSON Schema of the spec YAML, generated from the models and shipped next to them.

Editors validate a spec with it; with VS Code's YAML extension, for example, by a first line
`# yaml-language-server: $schema=../orchestrator/spec/sweep-spec.schema.json`. It describes what
a user writes (keys, types, bounds, shorthands such as `model: NAME`); the checks across keys
(milestones up to T, objectives reported under the scorings, initial points in the space) are
made when the spec is read. `python -m orchestrator.spec.schema` rewrites the shipped file;
a test fails while it differs from the models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .models import SweepSpec

SCHEMA_FILE = Path(__file__).with_name("sweep-spec.schema.json")


def spec_schema() -> dict[str, Any]:
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **SweepSpec.model_json_schema()}


def schema_text() -> str:
    return json.dumps(spec_schema(), indent=2) + "\n"


def write_schema(path: Path = SCHEMA_FILE) -> Path:
    path.write_text(schema_text(), encoding="utf-8")
    return path


if __name__ == "__main__":
    write_schema()
