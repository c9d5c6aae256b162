"""Loaders for MEND ZsRE and EasyEdit's generic format; bad records fail loudly."""

import json

import pytest

from defer_core import DeferInputError, load_records, resolve_data_path
from defer_core.data import DATA_DIR_ENV


def test_zsre_mend_file_keeps_text_as_written_by_default_like_easyedit():
    records = load_records(None)
    raw_records = json.loads(resolve_data_path(None).read_text())
    assert [(r.prompt, r.target) for r in records] == [(raw["src"], raw["alt"]) for raw in raw_records]


def test_zsre_mend_file_maps_fields_and_strips_stray_spaces_when_asked():
    records = load_records(None, strip=True)
    assert len(records) == 1037
    first = records[0]
    raw = json.loads(resolve_data_path(None).read_text())[0]
    assert (first.prompt, first.rephrase, first.locality_prompt, first.locality_answer) == (
        raw["src"].strip(), raw["rephrase"].strip(), raw["loc"].strip(), raw["loc_ans"].strip())
    padded = [r for r in json.loads(resolve_data_path(None).read_text()) if r["alt"] != r["alt"].strip()]
    assert padded, "the data README promises alt values with stray spaces"
    by_prompt = {r.prompt: r for r in records}
    for raw_record in padded:
        assert by_prompt[raw_record["src"].strip()].target == raw_record["alt"].strip()


def test_generic_easyedit_format(tmp_path):
    path = tmp_path / "generic.json"
    path.write_text(json.dumps([{
        "prompt": "The capital of France is", "target_new": "Lyon", "rephrase_prompt": "France's capital is",
        "locality_prompt": "The sky is", "locality_ground_truth": "blue",
    }]))
    (record,) = load_records(path)
    assert (record.prompt, record.target, record.rephrase, record.locality_answer) == (
        "The capital of France is", "Lyon", "France's capital is", "blue")


def test_malformed_record_names_file_index_and_field(tmp_path):
    path = tmp_path / "bad.json"
    good = {"src": "q?", "alt": "a", "rephrase": "q2?", "loc": "l", "loc_ans": "x"}
    path.write_text(json.dumps([good, {**good, "alt": "  "}, good]))
    with pytest.raises(DeferInputError, match=r"bad\.json: record 1: field 'alt' is empty"):
        load_records(path)
    path.write_text(json.dumps([good, {k: v for k, v in good.items() if k != "rephrase"}]))
    with pytest.raises(DeferInputError, match=r"record 1: missing field 'rephrase'"):
        load_records(path)


def test_empty_target_in_train_split_is_an_error_not_a_silent_drop():
    with pytest.raises(DeferInputError, match="field 'alt' is empty"):
        load_records(resolve_data_path(None).parent / "zsre_mend_train-1k.json")


def test_missing_file_gives_the_download_hint(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(DeferInputError, match="WISE / EasyEdit data release"):
        load_records(None)


def test_limit_beyond_file_is_an_error():
    with pytest.raises(DeferInputError, match="asked for 5000 records"):
        load_records(None, limit=5000)
