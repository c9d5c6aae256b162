"""The JSON Schema shipped with the spec: generated from the models, and it accepts what we ship."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from defer_core.errors import DeferInputError
from orchestrator.spec import spec_from_dict
from orchestrator.spec.schema import SCHEMA_FILE, schema_text

from .orchestrator_support import SPECS

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_SPECS = sorted((ROOT / "search_spaces").glob("*.yaml")) + [SPECS / "tiny.yaml"]
TINY = yaml.safe_load((SPECS / "tiny.yaml").read_text())


def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_shipped_schema_is_the_one_the_models_generate() -> None:
    assert SCHEMA_FILE.read_text() == schema_text(), "regenerate it: python -m orchestrator.spec.schema"


@pytest.mark.parametrize("path", SHIPPED_SPECS, ids=lambda path: path.name)
def test_shipped_specs_validate_against_the_schema(path: Path) -> None:
    errors = [error.message for error in validator().iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == []


def test_the_schema_takes_the_yaml_shorthands() -> None:
    data = {**TINY, "model": "tiny-llama", "data": "edits.json", "scorings": "tf", "objectives": {"metric": "rel_tf"}, "early_stopping": True}
    assert [error.message for error in validator().iter_errors(data)] == []
    spec_from_dict(data)  # and so does the reader


def test_an_unknown_key_fails_schema_validation() -> None:
    data = copy.deepcopy(TINY)
    data["search_space"]["layers"] = data["search_space"].pop("layer")
    messages = [error.message for error in validator().iter_errors(data)]
    assert any("'layers' was unexpected" in message for message in messages)


@pytest.mark.parametrize(("key", "value"), [("num_trials", "4"), ("T", "6"), ("seed", "0"), ("search_space.n_iter", "5"), ("ray.max_failures", "1")])
def test_a_yaml_string_for_an_integer_key_is_refused(key: str, value: str) -> None:
    data = copy.deepcopy(TINY)
    *parents, leaf = key.split(".")
    node = data
    for parent in parents:
        node = node.setdefault(parent, {})
    node[leaf] = value
    with pytest.raises(DeferInputError) as caught:
        spec_from_dict(data, source="tiny.yaml")
    assert str(caught.value) == f"tiny.yaml: key '{key}' must be an integer, got str '{value}'"
    assert list(validator().iter_errors(data)), "the schema refuses it too"


def test_a_numeric_string_for_a_float_key_is_still_accepted() -> None:
    data = copy.deepcopy(TINY)
    data["search_space"]["edit_lr"] = {"low": "1e-3", "high": "1e-1"}  # YAML 1.1 reads 1e-3 as a string
    assert spec_from_dict(data).search_space.edit_lr == spec_from_dict(TINY).search_space.edit_lr
