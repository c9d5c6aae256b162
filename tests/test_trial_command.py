"""`defer-sweep trial` as a user runs it: a real subprocess on the tiny model."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _hparams_file(tmp_path: Path, **changes) -> Path:
    config = {"alg_name": "DEFER", "model_name": "tiny-llama", "device": "cpu",
              "inner_params": ["model.layers[2].mlp.down_proj.weight"], "edit_lr": "5e-2", "n_iter": 4, "threshold": 0.5}
    config.update(changes)
    path = tmp_path / "hparams.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _trial(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "trial", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_json_output_has_milestones_and_edits(tmp_path):
    done = _trial(str(_hparams_file(tmp_path)), "--T", "3", "--milestones", "1,3", "--model", "tiny-llama", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [m["n_edits"] for m in result["milestones"]] == [1, 3]
    assert len(result["edits"]) == 3 and result["hparams"]["edit_lr"] == 0.05
    assert "edit     3" in done.stderr, "progress is shown per edit"


def test_table_output_for_chunks_with_one_scoring(tmp_path):
    done = _trial(str(_hparams_file(tmp_path)), "--T", "4", "--milestones", "2", "--protocol", "chunks", "--scoring", "tf", "--model", "tiny-llama")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["T", "rel_tf", "gen_tf", "loc_tf"]
    assert [line.split()[0] for line in lines[2:4]] == ["2", "4"]


def test_out_of_range_layer_is_one_clear_line(tmp_path):
    done = _trial(str(_hparams_file(tmp_path, inner_params=["model.layers[40].mlp.down_proj.weight"])), "--T", "1", "--model", "tiny-llama")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("defer-sweep: error: module path")
    assert "valid 0..3" in done.stderr


def test_missing_data_file_names_the_release(tmp_path):
    done = _trial(str(_hparams_file(tmp_path)), "--T", "1", "--model", "tiny-llama", "--data", str(tmp_path / "nope.json"))
    assert done.returncode == 2 and "WISE / EasyEdit data release" in done.stderr


def test_a_grace_or_wise_file_runs_its_editor(tmp_path):
    """EasyEdit's own GRACE and WISE files (alg_name picks the editor), pointed at the tiny model."""
    for name in ("GRACE", "WISE"):
        config = yaml.safe_load((ROOT / "hparams" / name / "llama-7b.yaml").read_text())
        config.update(inner_params=["model.layers[2].mlp.down_proj.weight"], n_iter=2, **({"save_freq": 1, "merge_freq": 2} if name == "WISE" else {}))
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        done = _trial(str(path), "--T", "2", "--model", "tiny-llama", "--scoring", "tf", "--json")
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["hparams"]["alg_name"] == name and result["hparams"]["n_iter"] == 2
        assert [m["n_edits"] for m in result["milestones"]] == [1, 2] and len(result["edits"]) == 2
        assert f"{name} trial: model tiny-llama" in done.stderr


def test_grace_key_is_recorded_and_refused_for_defer(tmp_path):
    """--grace-key prompt: the JSON and the table's footer name it; a DEFER file refuses it in one line."""
    config = yaml.safe_load((ROOT / "hparams" / "GRACE" / "llama-7b.yaml").read_text())
    config.update(inner_params=["model.layers[2].mlp.down_proj.weight"], n_iter=2)
    grace = tmp_path / "GRACE.yaml"
    grace.write_text(yaml.safe_dump(config))
    done = _trial(str(grace), "--T", "2", "--model", "tiny-llama", "--scoring", "tf", "--grace-key", "prompt", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["grace_key"] == "prompt"
    table = _trial(str(grace), "--T", "2", "--model", "tiny-llama", "--scoring", "tf", "--grace-key", "prompt")
    assert table.returncode == 0 and "GRACE keyed at each scored prompt (grace_key prompt)" in table.stdout, table.stderr
    refused = _trial(str(_hparams_file(tmp_path)), "--T", "1", "--model", "tiny-llama", "--grace-key", "prompt")
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and lines[-1] == "defer-sweep: error: grace_key: prompt is where GRACE reads its key; DEFER has none, so leave it at sticky"
