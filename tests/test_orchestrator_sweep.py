"""End-to-end sweeps of the tiny Llama on a real local Ray (2 CPUs), a real Optuna RDB
storage and a real MLflow SQLite store; results are read back from all three and Parquet."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState
from transformers import LlamaConfig

from defer_core import load_hparams
from orchestrator.cli import main
from orchestrator.sinks.layout import SweepLayout
from orchestrator.sinks.mlflow_sink import MlflowSink
from orchestrator.results.store import ResultStore
from orchestrator.spec import load_spec
from orchestrator.sweep.driver import execute
from orchestrator.sweep.preflight import prepare

from .orchestrator_support import children_by_trial, mlflow_runs, optuna_trials, parquet_rows, state, tiny_spec

GOOD = {"layer": 2, "edit_lr": 5.0e-2, "n_iter": 5, "threshold": 0.5}
BAD = {"layer": 2, "edit_lr": 1.0e-3, "n_iter": 2, "threshold": 0.7}  # learns nothing in 2 edits: rel_tf 0 at 2


@pytest.fixture(scope="module")
def finished_sweep(local_ray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 trials one at a time: GOOD runs first, so BAD falls below GOOD's value at the first
    rung (2 edits) and ASHA stops it there."""
    tmp = tmp_path_factory.mktemp("sweep")
    spec = load_spec(tiny_spec(tmp, concurrency=1, initial_points=[GOOD, BAD]))
    lines: list[str] = []
    outcome = execute(spec, prepare(spec), sink=lines.append)
    assert outcome.finished
    (tmp / "progress.txt").write_text("\n".join(lines))
    return spec.output_dir


def by_id(rows: list[dict]) -> dict[str, dict]:
    return {row["trial_id"]: row for row in rows}


def test_parquet_has_each_trial_once_with_its_milestones_and_edits(finished_sweep: Path) -> None:
    trials = parquet_rows(finished_sweep, "trials")
    assert len(trials) == 4 and len({t["trial_id"] for t in trials}) == 4
    assert {t["status"] for t in trials} <= {"complete", "pruned"}
    milestones = parquet_rows(finished_sweep, "milestones")
    edits = parquet_rows(finished_sweep, "edits")
    for trial in trials:
        reached = [m["n_edits"] for m in milestones if m["trial_id"] == trial["trial_id"]]
        assert reached == [2, 4, 6][: len(reached)] and reached[-1] == trial["n_edits"]
        indices = [e["edit_index"] for e in edits if e["trial_id"] == trial["trial_id"]]
        assert indices == list(range(1, trial["n_edits"] + 1))
        assert trial["status"] == ("complete" if trial["n_edits"] == 6 else "pruned")
        last = next(m for m in milestones if m["trial_id"] == trial["trial_id"] and m["n_edits"] == trial["n_edits"])
        assert trial["rel_tf"] == last["rel_tf"] and 0.0 <= trial["loc_tf"] <= 1.0
        assert trial["rel_gen"] is None  # scorings: [tf] only
        assert trial["mean_tf"] == pytest.approx((trial["rel_tf"] + trial["gen_tf"] + trial["loc_tf"]) / 3)


def test_one_worker_loads_the_model_once_and_reuses_it(finished_sweep: Path) -> None:
    """concurrency 1 and reuse_actors: every trial runs in the same worker process, and only
    the first one pays for loading the model."""
    trials = sorted(parquet_rows(finished_sweep, "trials"), key=lambda t: t["started_at"])
    assert len({t["worker_pid"] for t in trials}) == 1
    assert trials[0]["model_load_seconds"] > 0
    assert [t["model_load_seconds"] for t in trials[1:]] == [0.0, 0.0, 0.0]


def test_enqueued_points_run_first_and_the_bad_one_is_pruned_everywhere(finished_sweep: Path) -> None:
    """A trial the scheduler stops is PRUNED in Optuna (OptunaSearch alone says COMPLETE),
    KILLED with status=pruned in MLflow and pruned in Parquet."""
    trials = by_id(parquet_rows(finished_sweep, "trials"))
    studies = optuna_trials(finished_sweep)
    first = next(t for t in trials.values() if t["optuna_trial"] == 0)
    second = next(t for t in trials.values() if t["optuna_trial"] == 1)
    assert (first["layer"], first["edit_lr"], first["n_iter"], first["threshold"]) == tuple(GOOD.values())
    assert (second["layer"], second["edit_lr"], second["n_iter"], second["threshold"]) == tuple(BAD.values())
    assert first["status"] == "complete"
    assert second["status"] == "pruned" and second["n_edits"] == 2 and second["rel_tf"] < first["rel_tf"]

    assert studies[second["trial_id"]].state == TrialState.PRUNED
    assert studies[first["trial_id"]].state == TrialState.COMPLETE
    assert studies[first["trial_id"]].value == pytest.approx(first["rel_tf"])
    for trial_id, row in trials.items():
        expected = TrialState.COMPLETE if row["status"] == "complete" else TrialState.PRUNED
        assert studies[trial_id].state == expected

    _, children, _ = mlflow_runs(finished_sweep)
    runs = children_by_trial(children)
    assert runs[second["trial_id"]].data.tags["status"] == "pruned"
    assert runs[second["trial_id"]].info.status == "KILLED"
    assert runs[first["trial_id"]].info.status == "FINISHED"


def test_mlflow_nests_one_run_per_trial_with_metrics_per_milestone(finished_sweep: Path) -> None:
    parent, children, client = mlflow_runs(finished_sweep)
    trials = by_id(parquet_rows(finished_sweep, "trials"))
    runs = children_by_trial(children)
    assert set(runs) == set(trials)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["T"] == "6" and parent.data.params["model"] == "tiny-llama"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"spec.yaml", "best.yaml"} <= artifacts
    for trial_id, run in runs.items():
        row = trials[trial_id]
        assert run.data.tags["status"] == row["status"]
        assert run.data.params["layer"] == str(row["layer"]) and run.data.params["n_iter"] == str(row["n_iter"])
        assert run.info.run_name.startswith(f"#{row['optuna_trial']:03d} L{row['layer']} ")
        history = client.get_metric_history(run.info.run_id, "rel_tf")
        assert [m.step for m in history] == [2, 4, 6][: len(history)]
        assert history[-1].value == pytest.approx(row["rel_tf"])
        successes = client.get_metric_history(run.info.run_id, "edit_success")
        assert sorted(m.step for m in successes) == list(range(1, row["n_edits"] + 1))


def test_best_yaml_is_the_best_complete_trial_and_loads(finished_sweep: Path) -> None:
    trials = [t for t in parquet_rows(finished_sweep, "trials") if t["status"] == "complete"]
    best = max(trials, key=lambda t: (t["rel_tf"], -t["optuna_trial"]))
    hparams = load_hparams(finished_sweep / "best.yaml")
    assert hparams.inner_params == (f"model.layers[{best['layer']}].mlp.down_proj.weight",)
    assert (hparams.edit_lr, hparams.n_iter, hparams.threshold) == (best["edit_lr"], best["n_iter"], best["threshold"])
    assert hparams.model_name == "tiny-llama" and hparams.alg_name == "DEFER"


def test_export_by_another_objective_writes_yaml_and_logs_it(finished_sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A side export (issue 20): only the file asked for is written; the sweep's best.yaml and
    its parent run's best.* tags stay the sweep's own; MLflow keeps the file under exports/."""
    parent, _, client = mlflow_runs(finished_sweep)
    tags_before = {k: v for k, v in parent.data.tags.items() if k.startswith("best.")}
    best_yaml = (finished_sweep / "best.yaml").read_bytes()
    target = tmp_path / "loc.yaml"
    assert main(["export", str(finished_sweep), "--objective", "loc_tf", "-o", str(target)]) == 0
    complete = [t for t in parquet_rows(finished_sweep, "trials") if t["status"] == "complete"]
    best = sorted(complete, key=lambda t: (-t["loc_tf"], t["optuna_trial"]))[0]
    hparams = load_hparams(target)
    assert (hparams.edit_lr, hparams.threshold) == (best["edit_lr"], best["threshold"])
    assert f"trial {best['trial_id']}" in capsys.readouterr().out
    parent, _, client = mlflow_runs(finished_sweep)
    assert {k: v for k, v in parent.data.tags.items() if k.startswith("best.")} == tags_before and tags_before
    assert (finished_sweep / "best.yaml").read_bytes() == best_yaml
    (tmp_path / "dl").mkdir()
    logged = Path(client.download_artifacts(parent.info.run_id, "exports/loc.yaml", str(tmp_path / "dl")))
    assert load_hparams(logged) == hparams

    # Another configuration into the sweep's own best.yaml is refused in one line, nothing changed.
    capsys.readouterr()  # MLflow's download progress
    assert main(["export", str(finished_sweep), "--objective", "loc_tf"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is the sweep's own best" in err[0] and "-o FILE" in err[0], err
    assert (finished_sweep / "best.yaml").read_bytes() == best_yaml


def test_export_rejects_a_pareto_index_past_the_front(finished_sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(finished_sweep), "--pareto-index", "7", "-o", str(tmp_path / "p7.yaml")]) == 2
    assert "--pareto-index 7: the Pareto front has" in capsys.readouterr().err


def test_progress_has_a_line_per_trial_and_a_running_summary(finished_sweep: Path) -> None:
    lines = (finished_sweep.parent / "progress.txt").read_text().splitlines()
    trial_lines = [line for line in lines if line.startswith("[")]
    summaries = [line for line in lines if line.startswith("  sweep: ")]
    assert len(trial_lines) == 4 and len(summaries) == 4
    assert trial_lines[-1].startswith("[4/4 done] #")
    assert "L2 lr=5.0e-02 it=5 th=0.50" in "\n".join(trial_lines)
    assert any(" pruned " in line and "@2 rel_tf=" in line for line in trial_lines)
    assert summaries[-1].startswith("  sweep: 4/4 done · 0 running · ") and "best rel_tf=" in summaries[-1]


def test_rerunning_a_finished_sweep_runs_nothing_again(finished_sweep: Path) -> None:
    before = {t["trial_id"]: t["finished_at"] for t in parquet_rows(finished_sweep, "trials")}
    spec = load_spec(finished_sweep / "spec.yaml")
    outcome = execute(spec, prepare(spec))
    assert outcome.finished
    after = {t["trial_id"]: t["finished_at"] for t in parquet_rows(finished_sweep, "trials")}
    assert after == before
    _, children, _ = mlflow_runs(finished_sweep)
    assert len(children_by_trial(children)) == 4


def test_results_of_a_trial_tune_never_saved_are_dropped_on_resume(finished_sweep: Path) -> None:
    """A driver killed right after starting a trial, before Tune saved its state, leaves that
    trial's rows and MLflow run behind; Tune will not resume it, so the next run drops them."""
    layout = SweepLayout(finished_sweep)
    info = state(finished_sweep)
    row = {**parquet_rows(finished_sweep, "trials")[0], "trial_id": "lost0001", "pack_id": "lost0001", "status": "running", "finished_at": None}
    ResultStore(layout.parquet).write("trials", "lost0001", [row])
    sink = MlflowSink(info["mlflow_tracking_uri"], info["mlflow_experiment"], info["sweep_id"])
    sink.start_trial("lost0001", "lost", {"layer": 1})
    assert "lost0001" in children_by_trial(mlflow_runs(finished_sweep)[1])

    spec = load_spec(finished_sweep / "spec.yaml")
    execute(spec, prepare(spec))
    assert "lost0001" not in {t["trial_id"] for t in parquet_rows(finished_sweep, "trials")}
    assert "lost0001" not in children_by_trial(mlflow_runs(finished_sweep)[1])


def test_a_trial_run_again_by_a_later_driver_gets_a_fresh_run_with_only_its_own_points(finished_sweep: Path) -> None:
    """A driver killed mid-trial leaves a run holding the milestones that attempt reached. The
    resumed sweep runs the trial again from its first edit, and the scheduler may stop it sooner
    this time: the trial's one run then holds that attempt's points alone (the killed attempt's
    run soft-deleted), never a milestone its record does not have."""
    from orchestrator.results.rows import Status

    info = state(finished_sweep)

    def driver() -> MlflowSink:
        return MlflowSink(info["mlflow_tracking_uri"], info["mlflow_experiment"], info["sweep_id"])

    killed = driver()
    first = killed.start_trial("again001", "again", {"layer": 1})
    killed.log_metrics("again001", [("rel_tf", 0.5, 2), ("rel_tf", 0.6, 4), ("rel_tf", 0.7, 6)])
    resumed = driver()
    second = resumed.start_trial("again001", "again", {"layer": 1})
    assert second != first and resumed.start_trial("again001", "again", {"layer": 1}) == second  # a driver keeps the run it opened
    assert resumed.log_metrics("again001", [("rel_tf", 0.5, 2), ("rel_tf", 0.6, 4)]) == 2
    resumed.finish_trial("again001", Status.PRUNED, None, None)
    _, children, client = mlflow_runs(finished_sweep)
    run = children_by_trial(children)["again001"]
    assert run.info.run_id == second and run.data.tags["status"] == "pruned"
    assert [(m.step, m.value) for m in client.get_metric_history(second, "rel_tf")] == [(2, 0.5), (4, 0.6)]
    assert client.get_run(first).info.lifecycle_stage == "deleted"
    resumed.delete_pack_runs("again001")  # leave the shared sweep as it was
    assert "again001" not in children_by_trial(mlflow_runs(finished_sweep)[1])


def test_a_different_spec_in_the_same_output_dir_is_refused(finished_sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tiny_spec(tmp_path, num_trials=9, output_dir=str(finished_sweep))
    assert main(["run", str(other)]) == 2
    assert "holds a different sweep" in capsys.readouterr().err


def test_a_trial_that_raises_is_recorded_failed_and_the_sweep_goes_on(local_ray, tmp_path: Path) -> None:
    """A model directory with a config but no weights passes the driver's shape check and
    fails on the workers: every trial fails, each is recorded with its error."""
    model_dir = tmp_path / "broken-model"
    LlamaConfig(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2).save_pretrained(model_dir)
    spec_path = tiny_spec(tmp_path, name="broken", model={"name": str(model_dir), "device": "cpu"}, num_trials=2, initial_points=[GOOD])
    spec = load_spec(spec_path)
    outcome = execute(spec, prepare(spec))
    assert outcome.finished and outcome.best_yaml is None
    trials = parquet_rows(spec.output_dir, "trials")
    assert [t["status"] for t in trials] == ["failed", "failed"]
    assert all(t["error"] and "could not be loaded" in t["error"] for t in trials)
    _, children, client = mlflow_runs(spec.output_dir)
    runs = children_by_trial(children)
    assert {r.info.status for r in runs.values()} == {"FAILED"}
    assert all("could not be loaded" in r.data.tags["error"] for r in runs.values())
    assert {a.path for a in client.list_artifacts(next(iter(runs.values())).info.run_id)} == {"error.txt"}
    assert {t.state for t in optuna_trials(spec.output_dir).values()} == {TrialState.FAIL}
    assert not SweepLayout(spec.output_dir).best_yaml.exists()


def test_layout_keeps_everything_under_the_output_dir(finished_sweep: Path) -> None:
    spec = yaml.safe_load((finished_sweep / "spec.yaml").read_text())
    assert spec["output_dir"] == str(finished_sweep)
    assert {"spec.yaml", "sweep.json", "optuna.db", "mlflow.db", "mlartifacts", "tune", "parquet", "best.yaml"} <= {p.name for p in finished_sweep.iterdir()}
