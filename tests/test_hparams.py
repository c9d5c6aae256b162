"""EasyEdit DEFER hparams YAML in and out."""

from pathlib import Path

import pytest
import yaml

from defer_core import DeferInputError, dump_hparams, load_hparams, save_hparams

EASYEDIT_FILE = Path(__file__).parent / "fixtures" / "easyedit_defer_llama-7b.yaml"  # EasyEdit hparams/DEFER/llama-7b.yaml, unchanged


def test_easyedit_file_loads_unchanged_with_float_lr():
    hparams = load_hparams(EASYEDIT_FILE)
    assert hparams.edit_lr == pytest.approx(7e-5) and isinstance(hparams.edit_lr, float)
    assert hparams.module_path == "model.layers[27].mlp.down_proj.weight"
    assert (hparams.n_iter, hparams.threshold, hparams.device) == (100, 0.5, 0)
    assert hparams.model_name == "meta-llama/Llama-2-7b-hf"


def test_round_trip_keeps_every_value_and_easyedit_keys(tmp_path):
    original = load_hparams(EASYEDIT_FILE)
    written = save_hparams(original.replace(edit_lr=3e-4, threshold=0.7), tmp_path / "out.yaml")
    again = load_hparams(written)
    assert again == original.replace(edit_lr=3e-4, threshold=0.7)
    raw = yaml.safe_load(written.read_text())
    easyedit_fields = {"edit_lr", "n_iter", "threshold", "inner_params", "device", "alg_name", "model_name", "batch_size", "max_length", "model_parallel"}
    assert set(raw) == easyedit_fields
    assert isinstance(raw["edit_lr"], float)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"alg_name": "GRACE"}, "alg_name"),
        ({"surprise": 1}, "unknown key(s) surprise"),
        ({"edit_lr": "fast"}, "edit_lr"),
        ({"n_iter": 2.5}, "n_iter"),
        ({"threshold": 1.5}, "threshold"),
        ({"inner_params": []}, "inner_params"),
    ],
)
def test_bad_values_name_the_file_and_key(tmp_path, change, message):
    config = yaml.safe_load(EASYEDIT_FILE.read_text())
    config.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(DeferInputError) as error:
        load_hparams(path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_missing_key_is_named(tmp_path):
    config = yaml.safe_load(EASYEDIT_FILE.read_text())
    del config["n_iter"]
    path = tmp_path / "missing.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(DeferInputError, match="missing key.*n_iter"):
        load_hparams(path)


def test_dump_is_plain_yaml_text():
    text = dump_hparams(load_hparams(EASYEDIT_FILE))
    assert text.startswith("alg_name: DEFER\n")
