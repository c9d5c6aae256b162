"""dtype and text handling are part of a trial: `auto` is EasyEdit's float32; a sweep records
the dtype, the stripping, the protocol and every scoring in Parquet and MLflow; the exported
YAML keeps EasyEdit's DeferHyperParams keys, says its dtype in a comment line and warns when
it was not float32. The sweep is real: local Ray, MLflow SQLite, Parquet read back."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import List

import pytest
import torch
import yaml

from defer_core import load_hparams, load_model, model_dtype, save_hparams
from defer_core.hparams import EASYEDIT_MODEL_FAMILIES, dump_hparams, easyedit_family
from defer_core.models import resolve_dtype
from defer_core.results import dtype_name
from orchestrator.cli import main
from orchestrator.spec import load_spec
from orchestrator.spec.trial_config import hparams_for
from orchestrator.sweep.driver import execute
from orchestrator.sweep.preflight import prepare

from .conftest import tiny_hparams
from .orchestrator_support import children_by_trial, mlflow_runs, parquet_rows, tiny_spec


@dataclasses.dataclass
class EasyEditDeferHyperParams:
    """EasyEdit's easyeditor/models/defer/defer_hparams.py field set, restated: its loader
    calls cls(**config), so an extra key is a TypeError there."""

    edit_lr: int
    n_iter: int
    threshold: float
    inner_params: List[str]
    device: int
    alg_name: str
    model_name: str
    batch_size: int = 1
    max_length: int = 30
    model_parallel: bool = False


EASYEDIT_KEYS = {f.name for f in dataclasses.fields(EasyEditDeferHyperParams)}

# EasyEdit's BaseEditor.__init__ (easyeditor/editors/editor.py, HEAD 14cea82), restated: the model
# and tokenizer classes come from the first of these in model_name.lower(), else NotImplementedError;
# the model then goes to normalize_device(hparams.device), where an int N is cuda:N (before June
# 2026: f"cuda:{hparams.device}", an int only).
EASYEDIT_EDITOR_BRANCHES = ("t5", "chatglm-api", "gpt-3.5", "gpt", "llama", "baichuan", "chatglm", "internlm", "qwen2", "qwen3", "qwen", "mistral")


def easyedit_branch(model_name: str) -> str:
    found = next((branch for branch in EASYEDIT_EDITOR_BRANCHES if branch in model_name.lower()), None)
    if found is None:
        raise NotImplementedError(model_name)
    return found


def test_the_exported_model_name_and_device_are_what_easyedits_editor_takes(tmp_path: Path) -> None:
    """(issue 20) device a GPU index, never `cpu`; model_name one EasyEdit's editor dispatches on
    (the embedded model by its Hugging Face copy's path: tests/test_embedded_model.py)."""
    spec = load_spec(tiny_spec(tmp_path, name="ee", model={"name": "tiny-llama", "device": "cpu"}))
    config = yaml.safe_load(dump_hparams(hparams_for(spec, {"layer": 1, "edit_lr": 0.01, "n_iter": 3, "threshold": 0.5})))
    assert set(config) == EASYEDIT_KEYS and type(config["device"]) is int and config["device"] == 0
    assert easyedit_branch(config["model_name"]) == easyedit_family(config["model_name"]) == "llama"
    on_gpu = spec.model_copy(update={"model": spec.model.model_copy(update={"device": "cuda:3"})})
    assert hparams_for(on_gpu, {"layer": 1, "edit_lr": 0.01, "n_iter": 3, "threshold": 0.5}).device == 3
    assert EASYEDIT_MODEL_FAMILIES == EASYEDIT_EDITOR_BRANCHES
    for name in ("meta-llama/Llama-2-7b-hf", "Qwen/Qwen2.5-7B", "HuggingFaceTB/SmolLM2-135M", "./hugging_cache/mistral-7b"):
        expected = None
        try:
            expected = easyedit_branch(name)
        except NotImplementedError:
            pass
        assert easyedit_family(name) == expected, name


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_auto_is_float32_on_every_device(device):
    """EasyEdit's DEFER always runs float32; bfloat16 only when asked for by name."""
    assert resolve_dtype("auto", device) == torch.float32
    assert resolve_dtype("bf16", device) == torch.bfloat16 and dtype_name("bf16") == "bfloat16"


def test_the_test_model_runs_in_the_dtype_asked_for():
    assert model_dtype(load_model("tiny-llama", dtype="bfloat16")) == "bfloat16"
    assert model_dtype(load_model("tiny-llama")) == "float32"


def test_saved_yaml_has_easyedits_keys_and_a_dtype_comment(tmp_path):
    path = save_hparams(tiny_hparams(), tmp_path / "best.yaml", dtype="bfloat16")
    text = path.read_text()
    assert text.splitlines()[0].startswith("# dtype: bfloat16 ")
    config = yaml.safe_load(text)
    assert set(config) == EASYEDIT_KEYS
    EasyEditDeferHyperParams(**config)
    assert load_hparams(path) == tiny_hparams()


GOOD = {"layer": 2, "edit_lr": 5.0e-2, "n_iter": 5, "threshold": 0.5}
OTHER = {"layer": 1, "edit_lr": 2.0e-2, "n_iter": 2, "threshold": 0.4}


@pytest.fixture(scope="module")
def bf16_sweep(local_ray: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two trials, bfloat16, stripped text, the immediate protocol, tf and genctx scorings."""
    tmp = tmp_path_factory.mktemp("bf16")
    path = tiny_spec(
        tmp, name="bf16", model={"name": "tiny-llama", "device": "cpu", "dtype": "bfloat16"}, data={"strip": True},
        T=2, milestones=[1, 2], protocol="immediate", scorings=["tf", "genctx"], early_stopping=False,
        num_trials=2, concurrency=1, initial_points=[GOOD, OTHER], objectives=[{"metric": "rel_genctx", "direction": "maximize"}],
    )
    spec = load_spec(path)
    assert execute(spec, prepare(spec), sink=lambda line: None).finished
    return spec.output_dir


def test_parquet_and_mlflow_record_dtype_strip_protocol_and_genctx(bf16_sweep: Path) -> None:
    trials = parquet_rows(bf16_sweep, "trials")
    assert len(trials) == 2
    for row in trials:
        assert (row["dtype"], row["strip"], row["protocol"], row["status"]) == ("bfloat16", True, "immediate", "complete")
        assert row["rel_genctx"] is not None and row["mean_genctx"] is not None and row["rel_gen"] is None
    milestones = parquet_rows(bf16_sweep, "milestones")
    assert {m["protocol"] for m in milestones} == {"immediate"} and all(m["loc_genctx"] is not None for m in milestones)
    _, children, client = mlflow_runs(bf16_sweep)
    for trial_id, run in children_by_trial(children).items():
        assert (run.data.params["dtype"], run.data.params["strip"], run.data.params["protocol"]) == ("bfloat16", "True", "immediate")
        assert [m.step for m in client.get_metric_history(run.info.run_id, "gen_genctx")] == [1, 2]


def test_export_writes_the_dtype_comment_and_warns_when_not_float32(bf16_sweep: Path, tmp_path: Path, caplog, capsys) -> None:
    best = (bf16_sweep / "best.yaml").read_text()
    assert best.splitlines()[0].startswith("# dtype: bfloat16 ")
    target = tmp_path / "exported.yaml"
    with caplog.at_level(logging.WARNING):
        assert main(["export", str(bf16_sweep), "-o", str(target)]) == 0
    assert any("tuned in bfloat16" in r.getMessage() and "EasyEdit's DEFER runs float32" in r.getMessage() for r in caplog.records)
    text = target.read_text()
    assert text.splitlines()[0].startswith("# dtype: bfloat16 ")
    config = yaml.safe_load(text)
    assert set(config) == EASYEDIT_KEYS
    EasyEditDeferHyperParams(**config)
    assert "wrote" in capsys.readouterr().out
