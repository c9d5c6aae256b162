"""Helpers shared by the orchestrator tests: tiny specs on disk and readers of a sweep's
three stores (Parquet, MLflow, Optuna) so each test can check them against each other."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
import yaml
from mlflow import MlflowClient

from orchestrator.sinks.layout import SweepLayout, load_state, require_sweep_dir
from orchestrator.sinks.mlflow_sink import TAG_ROLE, TAG_SWEEP, TAG_TRIAL
from orchestrator.results.store import read_table

SPECS = Path(__file__).parent / "specs"


def tiny_spec(tmp_path: Path, name: str = "tiny", **changes: Any) -> Path:
    """tests/specs/tiny.yaml with top-level keys replaced, written under tmp_path."""
    data = yaml.safe_load((SPECS / "tiny.yaml").read_text())
    data.update(name=name, output_dir=str(tmp_path / name))
    data.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def state(out: Path) -> dict[str, str]:
    """sweep.json as the commands read it: the default stores (null there) are OUT's files."""
    return asdict(load_state(require_sweep_dir(out)))


def parquet_rows(out: Path, table: str) -> list[dict[str, Any]]:
    """One table's rows, wherever the sweep keeps its dataset (OUT/parquet or its storage_uri)."""
    layout = require_sweep_dir(out) if (out / "sweep.json").is_file() else SweepLayout(out)
    return read_table(layout.parquet, table).to_pylist()


def mlflow_runs(out: Path) -> tuple[Any, list[Any], MlflowClient]:
    """(parent run, active child runs nested under it, client)."""
    info = state(out)
    client = MlflowClient(tracking_uri=info["mlflow_tracking_uri"])
    experiment = client.get_experiment_by_name(info["mlflow_experiment"])
    parents = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{TAG_SWEEP}` = '{info['sweep_id']}' and tags.`{TAG_ROLE}` = 'sweep'")
    assert len(parents) == 1, f"expected one parent run, found {len(parents)}"
    parent = parents[0]
    children = client.search_runs([experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=1000)
    return parent, list(children), client


def children_by_trial(children: list[Any]) -> dict[str, Any]:
    by_trial: dict[str, Any] = {}
    for run in children:
        trial_id = run.data.tags[TAG_TRIAL]
        assert trial_id not in by_trial, f"two MLflow runs for trial {trial_id}"
        by_trial[trial_id] = run
    return by_trial


def optuna_trials(out: Path) -> dict[str, optuna.trial.FrozenTrial]:
    """Optuna trials keyed by the Tune trial id the searcher stored on them."""
    info = state(out)
    study = optuna.load_study(study_name=info["optuna_study_name"], storage=info["optuna_storage"])
    return {t.user_attrs["tune_trial_id"]: t for t in study.get_trials(deepcopy=False) if "tune_trial_id" in t.user_attrs}
