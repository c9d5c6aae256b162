"""Kill the driver (SIGKILL, no chance to clean up) mid-sweep, then `defer-sweep resume`:
finished trials are not run again, and Parquet, MLflow and Optuna hold each trial once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from optuna.trial import TrialState

from defer_core import load_hparams

from .orchestrator_support import children_by_trial, mlflow_runs, optuna_trials, parquet_rows, tiny_spec

ROOT = Path(__file__).resolve().parent.parent
NUM_TRIALS = 5


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", *args]


def final_rows(out: Path) -> dict[str, dict]:
    rows = parquet_rows(out, "trials") if (out / "parquet" / "trials").is_dir() else []
    return {r["trial_id"]: r for r in rows if r["status"] in ("complete", "pruned", "failed")}


def wait_for_a_finished_trial(process: subprocess.Popen, out: Path, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "the sweep ended before it could be killed"
        try:
            if final_rows(out):
                return
        except OSError:
            pass  # a file appeared between listing and reading
        time.sleep(0.5)
    raise AssertionError("no trial finished in time")


def test_resume_after_the_driver_is_killed(tmp_path: Path) -> None:
    # Slow enough (hundreds of Adam steps per edit) that the kill lands while trials run;
    # two objectives, so NSGA-II drives the study.
    spec = tiny_spec(
        tmp_path,
        name="killed",
        num_trials=NUM_TRIALS,
        search_space={
            "layer": {"low": 1, "high": 3},
            "module_template": "model.layers[{layer}].mlp.down_proj",
            "edit_lr": {"low": 1.0e-3, "high": 1.0e-1, "log": True},
            "threshold": {"low": 0.3, "high": 0.7},
            "n_iter": [150, 250],
        },
        initial_points=[{"layer": 2, "edit_lr": 5.0e-2, "n_iter": 150, "threshold": 0.5}],
        objectives=[{"metric": "rel_tf", "direction": "maximize"}, {"metric": "loc_tf", "direction": "maximize"}],
        early_stopping={"metric": "mean_tf", "grace_edits": 2, "reduction_factor": 2},
    )
    out = tmp_path / "killed"
    log = (tmp_path / "first.log").open("w")
    # Tune snapshots its state once, at its first step (before any trial ends), and not again
    # before the kill: the finished trial is one Tune will think unfinished, the case where
    # the driver's own record must stop it from running twice.
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "600"}
    first = subprocess.Popen(cli("run", str(spec)), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_a_finished_trial(first, out)
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    time.sleep(2)  # the driver's local Ray processes fate-share with it
    finished_before = final_rows(out)
    assert finished_before and len(finished_before) < NUM_TRIALS

    resumed = subprocess.run(cli("resume", str(out)), cwd=ROOT, capture_output=True, text=True, timeout=480)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming the sweep" in resumed.stdout and "best.yaml:" in resumed.stdout

    trial_lines = [line for line in resumed.stdout.splitlines() if line.startswith("[")]
    assert len(trial_lines) == NUM_TRIALS - len(finished_before)
    trials = parquet_rows(out, "trials")
    ids = [t["trial_id"] for t in trials]
    assert len(ids) == NUM_TRIALS == len(set(ids))
    assert all(t["status"] in ("complete", "pruned", "failed") for t in trials)
    for trial_id, row in finished_before.items():  # not run again: same row, same finish time
        after = next(t for t in trials if t["trial_id"] == trial_id)
        assert after["finished_at"] == row["finished_at"] and after["status"] == row["status"]
        assert not [line for line in trial_lines if trial_id in line]  # replayed from the record, silently
    milestones = parquet_rows(out, "milestones")
    assert len({(m["trial_id"], m["n_edits"]) for m in milestones}) == len(milestones)
    edits = parquet_rows(out, "edits")
    assert len({(e["trial_id"], e["edit_index"]) for e in edits}) == len(edits)

    _, children, client = mlflow_runs(out)
    runs = children_by_trial(children)
    assert set(runs) == set(ids)
    for trial in trials:
        run = runs[trial["trial_id"]]
        assert run.data.tags["status"] == trial["status"]
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "rel_tf")]
        assert steps == sorted(set(steps)) and steps[-1] == trial["n_edits"]

    studies = optuna_trials(out)
    for trial in trials:
        expected = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}[trial["status"]]
        assert studies[trial["trial_id"]].state == expected
    assert load_hparams(out / "best.yaml").model_name == "tiny-llama"

    # The multi-objective export picks a point of the Pareto front.
    exported = subprocess.run(cli("export", str(out), "--pareto-index", "0", "-o", str(tmp_path / "p0.yaml")), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert exported.returncode == 0, exported.stderr
    assert "Pareto point 0 of" in exported.stdout
    assert load_hparams(tmp_path / "p0.yaml").alg_name == "DEFER"
