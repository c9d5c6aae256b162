"""`pack_size: K`: one Tune trial runs K DEFER trials on one layer in a batched forward pass,
while Optuna, Parquet and MLflow each see K trials, with the results each trial gives alone."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from defer_core import TrialPlan, run_trial, tiny_llama
from orchestrator.sweep.preflight import load_spec_records
from orchestrator.sinks.mlflow_sink import TAG_PACK
from orchestrator.spec.trial_config import hparams_for
from orchestrator.spec import load_spec
from orchestrator.sweep.driver import execute
from orchestrator.sweep.preflight import prepare

from .orchestrator_support import children_by_trial, mlflow_runs, parquet_rows, state, tiny_spec

FIRST = {"layer": 2, "edit_lr": 5.0e-2, "n_iter": 5, "threshold": 0.5}
SECOND = {"layer": 3, "edit_lr": 2.0e-2, "n_iter": 2, "threshold": 0.4}
CONFIG_KEYS = ("layer", "edit_lr", "n_iter", "threshold")


@pytest.fixture(scope="module")
def packed_sweep(local_ray: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """7 DEFER trials in packs of 3 (3 + 3 + 1), one pack at a time."""
    tmp = tmp_path_factory.mktemp("packed")
    spec = load_spec(tiny_spec(tmp, name="packed", num_trials=7, pack_size=3, concurrency=1, initial_points=[FIRST, SECOND]))
    lines: list[str] = []
    outcome = execute(spec, prepare(spec), sink=lines.append)
    assert outcome.finished
    (tmp / "progress.txt").write_text("\n".join(lines))
    # a second run of the finished sweep replays the packs: nothing may be recorded twice
    assert execute(spec, prepare(spec)).finished
    return spec.output_dir


def packs_of(rows: list[dict]) -> dict[str, list[dict]]:
    packs: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: r["trial_id"]):
        packs.setdefault(row["pack_id"], []).append(row)
    return packs


def test_each_pack_shares_one_layer_and_starts_with_an_initial_point(packed_sweep: Path) -> None:
    trials = parquet_rows(packed_sweep, "trials")
    assert len(trials) == 7 and len({t["trial_id"] for t in trials}) == 7
    packs = sorted(packs_of(trials).values(), key=lambda rows: min(r["optuna_trial"] for r in rows))
    assert [len(rows) for rows in packs] == [3, 3, 1]
    for rows in packs:
        assert len({r["layer"] for r in rows}) == 1, "a pack's members must sit on one layer"
        assert len({r["status"] for r in rows}) == 1, "a pack is stopped or finished as a whole"
        assert [r["trial_id"] for r in rows] == [f"{rows[0]['pack_id']}-{k}" for k in range(len(rows))]
    firsts = [min(rows, key=lambda r: r["optuna_trial"]) for rows in packs[:2]]
    assert [{k: f[k] for k in CONFIG_KEYS} for f in firsts] == [FIRST, SECOND]
    assert len({(r["edit_lr"], r["threshold"]) for r in packs[0]}) == 3, "members must be different trials"


def test_every_member_equals_the_same_trial_run_alone(packed_sweep: Path) -> None:
    spec = load_spec(packed_sweep / "spec.yaml")
    records = load_spec_records(spec)
    plan = TrialPlan(protocol=spec.protocol, milestones=spec.milestones, scorings=spec.scorings)
    milestones = parquet_rows(packed_sweep, "milestones")
    edits = parquet_rows(packed_sweep, "edits")
    checked = 0
    for trial in parquet_rows(packed_sweep, "trials"):
        if trial["pack_id"] == trial["trial_id"] or trial["n_edits"] is None:
            continue
        alone = run_trial(tiny_llama(), records, hparams_for(spec, trial), plan, seed=spec.seed)
        mine = sorted((m for m in milestones if m["trial_id"] == trial["trial_id"]), key=lambda m: m["n_edits"])
        assert [m["n_edits"] for m in mine] == [m.n_edits for m in alone.milestones][: len(mine)]
        for row, expected in zip(mine, alone.milestones):
            assert {k: row[k] for k in expected.metrics} == expected.metrics
        my_edits = sorted((e for e in edits if e["trial_id"] == trial["trial_id"]), key=lambda e: e["edit_index"])
        assert [e["success"] for e in my_edits] == [e.success for e in alone.edits][: len(my_edits)]
        assert [e["final_loss"] for e in my_edits] == pytest.approx([e.final_loss for e in alone.edits][: len(my_edits)], rel=1e-5, abs=1e-6)
        checked += 1
    assert checked >= 3


def test_optuna_tells_each_member_its_own_outcome(packed_sweep: Path) -> None:
    info = state(packed_sweep)
    study = optuna.load_study(study_name=info["optuna_study_name"], storage=info["optuna_storage"])
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    trials = parquet_rows(packed_sweep, "trials")
    assert len(by_number) == 7 and {t["optuna_trial"] for t in trials} == set(by_number)
    for row in trials:
        optuna_trial = by_number[row["optuna_trial"]]
        assert optuna_trial.user_attrs["tune_trial_id"] == row["pack_id"]
        assert optuna_trial.params["layer"] == row["layer"] and optuna_trial.params["edit_lr"] == row["edit_lr"]
        if row["status"] == "complete":
            assert optuna_trial.state == TrialState.COMPLETE and optuna_trial.value == row["rel_tf"]
        else:
            assert row["status"] == "pruned" and optuna_trial.state == TrialState.PRUNED
        assert optuna_trial.intermediate_values[row["n_edits"]] == row["rel_tf"]


def test_mlflow_has_one_run_per_member_tagged_with_its_pack(packed_sweep: Path) -> None:
    _, children, client = mlflow_runs(packed_sweep)
    runs = children_by_trial(children)
    trials = {t["trial_id"]: t for t in parquet_rows(packed_sweep, "trials")}
    assert set(runs) == set(trials)
    for trial_id, run in runs.items():
        row = trials[trial_id]
        assert run.data.tags[TAG_PACK] == row["pack_id"] and run.data.tags["status"] == row["status"]
        assert float(run.data.params["edit_lr"]) == row["edit_lr"]
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "rel_tf")}
        assert history[row["n_edits"]] == row["rel_tf"]


def test_progress_counts_defer_trials_not_packs(packed_sweep: Path) -> None:
    lines = (packed_sweep.parent / "progress.txt").read_text().splitlines()
    trial_lines = [line for line in lines if line.startswith("[")]
    assert [line.split("/")[0] for line in trial_lines] == [f"[{i}" for i in range(1, 8)]
    assert [line for line in lines if line.startswith("  sweep:")][-1].startswith("  sweep: 7/7 done")
