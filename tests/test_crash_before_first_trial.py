"""A sweep whose first Tune start fails before any trial ran (issue 18 item 4).

The reported case: Ray could not pickle what Tuner() saves in tune/tuner.pkl ("TypeError:
cannot pickle '_thread.lock' object"). Tuner() opens that file before pickling into it, so the
folder was left with spec.yaml, sweep.json, optuna.db, an EMPTY tune/tuner.pkl and the MLflow
parent run RUNNING; `run` and `resume` then died with EOFError (Tuner.can_restore saw the file,
Tuner.restore unpickled nothing). Now the parent run ends FAILED, `resume` refuses in one line,
and `run` starts the sweep over and finishes it. Real local Ray, MLflow SQLite store and
Optuna RDB storage throughout; one objective (TPE), T=2, two trials per sweep.
"""

from __future__ import annotations

import threading
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from ray.tune import Callback

from orchestrator.cli import main
from orchestrator.search.optuna_search import make_searcher
from orchestrator.sinks.layout import SweepLayout, save_state
from orchestrator.sinks.mlflow_sink import TAG_ERROR, sweep_mlflow
from orchestrator.spec import load_spec, spec_to_yaml
from orchestrator.storage import local_location
from orchestrator.sweep import driver
from orchestrator.sweep.driver import new_state
from orchestrator.sweep.tune_state import TuneSaved, tune_saved

from .orchestrator_support import children_by_trial, mlflow_runs, optuna_trials, parquet_rows, state, tiny_spec

NUM_TRIALS = 2
# Two edits, milestones 1 and 2, no early stopping: seconds per trial. The tiny spec's two
# initial points are the two trials.
SMALL = {"T": 2, "milestones": [1, 2], "num_trials": NUM_TRIALS, "concurrency": 1, "early_stopping": None}


def refusal(out: Path) -> str:
    return (
        f"defer-sweep: error: {out}: the sweep never saved its Tune state (it stopped before its first trial), so there is "
        f"nothing to resume; start it again with `defer-sweep run {out / 'spec.yaml'}`\n"
    )


def assert_resume_refused(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["resume", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err == refusal(out), captured.err  # one line: no EOFError, no traceback


def assert_finished_once(out: Path) -> None:
    """Every trial once in Parquet, MLflow and Optuna (whose study started over: the initial
    points the failed start enqueued are not run twice), the parent run FINISHED."""
    trials = parquet_rows(out, "trials")
    assert len(trials) == NUM_TRIALS == len({t["trial_id"] for t in trials})
    assert {t["status"] for t in trials} <= {"complete", "pruned", "failed"}
    parent, children, _ = mlflow_runs(out)  # asserts the folder's sweep has exactly one parent run
    assert parent.info.status == "FINISHED" and TAG_ERROR not in parent.data.tags
    assert set(children_by_trial(children)) == {t["trial_id"] for t in trials}
    assert {r.info.status for r in children} <= {"FINISHED", "KILLED", "FAILED"}
    info = state(out)
    study = optuna.load_study(study_name=info["optuna_study_name"], storage=info["optuna_storage"])
    assert len(study.get_trials(deepcopy=False)) == NUM_TRIALS
    assert set(optuna_trials(out)) == {t["trial_id"] for t in trials}
    assert tune_saved(local_location(out / "tune"))[0] is TuneSaved.RESTORABLE


def finished_at(out: Path) -> dict[str, object]:
    return {t["trial_id"]: t["finished_at"] for t in parquet_rows(out, "trials")}


class LockHolder(Callback):
    """A Tune callback that holds a lock. Tune pickles the RunConfig's callbacks into
    tuner.pkl, and a lock does not pickle: Tuner() fails exactly as in the report (there the
    searcher held the lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()


def scheduler_with_a_lock(make_scheduler):  # noqa: ANN001, ANN201 - wraps driver.make_scheduler
    def made(spec):  # noqa: ANN001, ANN202
        scheduler, callbacks = make_scheduler(spec)
        return scheduler, [*callbacks, LockHolder()]

    return made


def test_a_first_tune_start_that_fails_closes_the_parent_run_and_run_starts_the_sweep_over(
    local_ray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    spec_path = tiny_spec(tmp_path, name="crashed", **SMALL)
    out = tmp_path / "crashed"
    monkeypatch.setattr(driver, "make_scheduler", scheduler_with_a_lock(driver.make_scheduler))
    with pytest.raises(TypeError, match=r"cannot pickle '_thread\.lock' object"):
        main(["run", str(spec_path)])
    monkeypatch.undo()

    # the reported folder: Tune's tuner.pkl empty beside the sweep's files, no snapshot
    assert {"spec.yaml", "sweep.json", "optuna.db", "tune"} <= {p.name for p in out.iterdir()}
    assert (out / "tune" / "tuner.pkl").stat().st_size == 0 and not list((out / "tune").glob("experiment_state-*"))
    left = sorted((out / "tune").iterdir())
    assert tune_saved(local_location(out / "tune"))[0] is TuneSaved.UNSAVED
    parent, children, _ = mlflow_runs(out)
    assert parent.info.status == "FAILED" and not children
    assert parent.data.tags[TAG_ERROR] == "TypeError: cannot pickle '_thread.lock' object"

    assert_resume_refused(out, capsys)
    assert sorted((out / "tune").iterdir()) == left and (out / "tune" / "tuner.pkl").stat().st_size == 0  # the refusal changed nothing

    caplog.clear()
    assert main(["run", str(out / "spec.yaml")]) == 0  # the command the refusal names
    assert f"{out}: no restorable Tune state; restarting the sweep" in caplog.text
    assert (out / "tune" / "tuner.pkl").stat().st_size > 0
    assert_finished_once(out)
    before = finished_at(out)
    assert main(["resume", str(out)]) == 0  # the new start's Tune state restores: nothing runs again
    assert finished_at(out) == before


def test_the_reported_folder_is_refused_by_resume_and_started_over_by_run(local_ray, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The folder exactly as the bug left it (written here with the sweep's own functions):
    spec.yaml, sweep.json, optuna.db holding the study with its initial points enqueued, the
    MLflow parent run RUNNING, and an empty tune/tuner.pkl."""
    spec_path = tiny_spec(tmp_path, name="reported", **SMALL)
    spec = load_spec(spec_path)
    layout = SweepLayout(spec.output_dir)
    layout.root.mkdir()
    layout.spec.write_text(spec_to_yaml(spec))
    info = new_state(spec, layout)
    save_state(layout, info)
    make_searcher(spec, info.optuna_storage, info.optuna_study_name)  # creates the study, enqueues the initial points
    sweep_mlflow(layout, info).open_sweep(spec.name, {}, layout.spec)
    (layout.root / "tune").mkdir()
    (layout.root / "tune" / "tuner.pkl").write_bytes(b"")
    assert {p.name for p in layout.root.iterdir()} >= {"spec.yaml", "sweep.json", "optuna.db", "mlflow.db", "tune"}
    assert mlflow_runs(layout.root)[0].info.status == "RUNNING"

    assert_resume_refused(layout.root, capsys)
    assert main(["run", str(spec_path)]) == 0
    assert_finished_once(layout.root)

    # the confirm stage closes the parent run too when its driver fails (here: made to fail
    # where it would start its Tune experiment)
    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the driver crashed here")

    parent_id = mlflow_runs(layout.root)[0].info.run_id
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(driver, "run_stage", crash)
        with pytest.raises(RuntimeError, match="the driver crashed here"):
            main(["confirm", str(layout.root), "--top", "1", "--seeds", "0"])
    parent = MlflowClient(tracking_uri=state(layout.root)["mlflow_tracking_uri"]).get_run(parent_id)
    assert parent.info.status == "FAILED" and parent.data.tags[TAG_ERROR] == "RuntimeError: the driver crashed here"


def test_a_driver_that_raises_leaves_no_run_running(tmp_path: Path) -> None:
    """The parent run (and any trial run still running) is closed whatever stops the driver:
    an error ends it FAILED with the error; an interrupt that escaped Tune (a second Ctrl-C)
    KILLED, as a resumable sweep; a later close without an error drops the error tag."""
    layout = SweepLayout(tmp_path / "out")
    layout.root.mkdir()
    layout.spec.write_text("name: x\n")
    sink = sweep_mlflow(layout, new_state(load_spec(tiny_spec(tmp_path)), layout))
    sink.open_sweep("x", {}, layout.spec)
    sink.start_trial("t1", "t1", {"layer": 1})
    with pytest.raises(ValueError, match="boom"):
        with driver._parent_closed_on_error(sink, lambda: {"complete": 1}):
            raise ValueError("boom\nsecond line")
    parent = sink.client.get_run(sink.parent_id)
    assert parent.info.status == "FAILED" and parent.data.tags[TAG_ERROR] == "ValueError: boom" and parent.data.tags["trials.complete"] == "1"
    trial = sink.client.get_run(sink._trial_run("t1"))
    assert trial.info.status == "KILLED" and trial.data.tags["status"] == "interrupted"

    sink.open_sweep("x", {}, layout.spec)
    with pytest.raises(KeyboardInterrupt):
        with driver._parent_closed_on_error(sink, lambda: 1 / 0):  # counts unreadable: the run still closes
            raise KeyboardInterrupt
    parent = sink.client.get_run(sink.parent_id)
    assert parent.info.status == "KILLED" and TAG_ERROR not in parent.data.tags
