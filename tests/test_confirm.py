"""The confirm stage on the tiny Llama with a real local Ray, Optuna, MLflow and Parquet: the
top configurations run again at a full T without early stopping, with seeds x orders, recorded
as stage=confirm in the same stores; a killed confirm resumes and records each run once;
export prefers the confirmed numbers and says so."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from defer_core import load_hparams
from orchestrator.cli import main
from orchestrator.results.query import search_candidates as candidate_rows
from orchestrator.results.ranking import rank_by
from orchestrator.sinks.layout import SweepLayout, load_state, read_spec, require_sweep_dir
from orchestrator.sinks.mlflow_sink import sweep_mlflow
from orchestrator.results.store import read_table
from orchestrator.spec import load_spec
from orchestrator.sweep.driver import execute
from orchestrator.sweep.preflight import prepare

from .orchestrator_support import children_by_trial, mlflow_runs, parquet_rows, tiny_spec

ROOT = Path(__file__).resolve().parent.parent
GOOD = {"layer": 2, "edit_lr": 5.0e-2, "n_iter": 5, "threshold": 0.5}
BAD = {"layer": 2, "edit_lr": 1.0e-3, "n_iter": 2, "threshold": 0.7}  # learns nothing: pruned at the first rung


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", *args]


def confirm_rows(out: Path) -> list[dict]:
    return [row for row in parquet_rows(out, "trials") if row["stage"] == "confirm"]


def search_ranking(out: Path) -> list[str]:
    """The search stage's complete trials by rel_tf, best first (what --top picks)."""
    layout = require_sweep_dir(out)
    spec = read_spec(layout)
    return [row["trial_id"] for row in rank_by(candidate_rows(layout, spec), spec.objectives[0])]


# -- killed during confirm, then resumed (first: it starts its own Ray in subprocesses) -------------


def test_a_confirm_killed_mid_run_resumes_and_records_each_confirm_trial_once(tmp_path: Path) -> None:
    # Slow confirm trials (hundreds of Adam steps per edit, T=8, one at a time) so the kill lands
    # between the first one ending and the last one ending.
    spec = tiny_spec(
        tmp_path, name="killconf", T=2, milestones=[2], num_trials=3, concurrency=1, early_stopping=False,
        search_space={"layer": 2, "module_template": "model.layers[{layer}].mlp.down_proj", "edit_lr": {"low": 1.0e-3, "high": 1.0e-1}, "threshold": 0.5, "n_iter": 200},
        initial_points=[{"edit_lr": 5.0e-2}],
    )
    out = tmp_path / "killconf"
    searched = subprocess.run(cli("run", str(spec), "--quiet"), cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert searched.returncode == 0, searched.stdout + searched.stderr
    assert "Token authentication" not in searched.stderr, "the local Ray's token notice is dropped (issue 20, noise)"
    search_ids = {row["trial_id"] for row in parquet_rows(out, "trials")}

    log = (tmp_path / "confirm.log").open("w")
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "600"}  # Tune's state stays the one of its first step
    first = subprocess.Popen(cli("confirm", str(out), "--top", "3", "--seeds", "0,1", "--orders", "1", "--T", "8", "--quiet"), cwd=ROOT, env=env,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            assert first.poll() is None, (tmp_path / "confirm.log").read_text()
            if any(row["status"] == "complete" for row in _safe_confirm_rows(out)):
                break
            time.sleep(0.3)
        else:
            raise AssertionError("no confirm trial finished in time")
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    time.sleep(2)
    done_before = {row["trial_id"]: row for row in confirm_rows(out) if row["status"] == "complete"}
    assert 1 <= len(done_before) < 3

    resumed = subprocess.run(cli("confirm", str(out), "--quiet"), cwd=ROOT, capture_output=True, text=True, timeout=400)  # no options: the recorded plan
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "confirmed with 2 seeds x 1 order at T=8" in resumed.stdout

    rows = confirm_rows(out)
    assert sorted(row["confirms"] for row in rows) == sorted(search_ids)  # each of the 3 configurations once
    assert len({row["trial_id"] for row in rows}) == 3 and all(row["status"] == "complete" and row["n_edits"] == 8 for row in rows)
    for trial_id, row in done_before.items():  # not run again
        assert next(r for r in rows if r["trial_id"] == trial_id)["finished_at"] == row["finished_at"]
    assert {row["trial_id"] for row in parquet_rows(out, "trials") if row["stage"] == "search"} == search_ids  # the search is untouched
    members = parquet_rows(out, "member_milestones")
    confirm_ids = {row["trial_id"] for row in rows}
    keys = [(m["trial_id"], m["seed"], m["order"], m["n_edits"]) for m in members if m["trial_id"] in confirm_ids]
    assert len(keys) == len(set(keys)) and {(s, o) for _, s, o, n in keys if n == 8} == {(0, 0), (1, 0)}
    _, children, _ = mlflow_runs(out)
    runs = children_by_trial(children)  # one run per trial, confirm runs included
    assert confirm_ids <= set(runs) and all(runs[t].data.tags["status"] == "complete" for t in confirm_ids)


def _safe_confirm_rows(out: Path) -> list[dict]:
    try:
        return confirm_rows(out) if (out / "parquet" / "trials").is_dir() else []
    except OSError:
        return []  # a file appeared between listing and reading


# -- a finished sweep, confirmed in process ---------------------------------------------------------


@pytest.fixture(scope="module")
def sweep(local_ray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 trials at T=3, each completes (BAD last by rel_tf)."""
    tmp = tmp_path_factory.mktemp("confirm")
    spec = load_spec(tiny_spec(tmp, name="conf", T=3, milestones=[1, 3], num_trials=3, concurrency=1, initial_points=[GOOD, BAD],
                               early_stopping=False))
    assert execute(spec, prepare(spec)).finished
    return spec.output_dir


@pytest.fixture(scope="module")
def confirmed(sweep: Path) -> tuple[Path, str]:
    """The top 2, with seeds 0,1 x 2 orders, at T=4 (beyond the search's T=3)."""
    ranking_before = search_ranking(sweep)
    assert len(ranking_before) >= 2
    assert main(["confirm", str(sweep), "--top", "2", "--seeds", "0,1", "--orders", "2", "--T", "4", "--quiet"]) == 0
    return sweep, ",".join(ranking_before[:2])


def _folder_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_a_refused_confirm_leaves_every_file_and_run_status_as_it_was(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """More edits than the data file has records (issue 20): refused in one line before the plan
    is written or the parent run reopened; every byte of the folder, MLflow's store included,
    stays as it was, and a confirm with sound options still runs after it (the `confirmed`
    fixture, next). Placed before every test that uses `confirmed`: no plan is recorded yet."""
    mlflow = sweep_mlflow(SweepLayout(sweep), load_state(SweepLayout(sweep)))
    status_before = mlflow.client.get_run(mlflow.find_parent()).info.status
    before = _folder_bytes(sweep)
    assert main(["confirm", str(sweep), "--T", "100000", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "asked for 100000 records but the file has" in err[0], err
    assert _folder_bytes(sweep) == before
    assert mlflow.client.get_run(mlflow.find_parent()).info.status == status_before == "FINISHED"


def _refusals(sweep: Path) -> list[list[str]]:
    """One refused call per command, each against this finished sweep (or writing into it)."""
    other = tiny_spec(sweep.parent, name="another")  # another sweep's spec, pointed at this folder
    best = str(sweep / "best.yaml")
    return [
        ["run", str(other), "--output-dir", str(sweep)],
        ["resume", str(sweep / "parquet")],
        ["export", str(sweep), "--objective", "loc_tf"],
        ["report", str(sweep / "parquet")],
        ["table", str(sweep), "--trials", "#999"],
        ["curve", str(sweep), "#999"],
        ["trial", best, "--T", "100000", "--model", "tiny-llama"],
        ["compare", best, "--T", "100000", "--model", "tiny-llama", "--output", str(sweep / "compared")],
    ]


def test_a_refused_call_of_every_command_leaves_every_file_and_run_status_as_it_was(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 20: each command checks its input before it writes anything or reopens a run."""
    mlflow = sweep_mlflow(SweepLayout(sweep), load_state(SweepLayout(sweep)))
    before = _folder_bytes(sweep)
    for argv in _refusals(sweep):
        assert main([*argv, *(["--quiet"] if argv[0] in ("run", "resume") else [])]) == 2, argv
        err = [line for line in capsys.readouterr().err.strip().splitlines() if line]
        assert len(err) == 1 and err[0].startswith("defer-sweep: error: "), (argv, err)
        assert _folder_bytes(sweep) == before, argv
        assert mlflow.client.get_run(mlflow.find_parent()).info.status == "FINISHED", argv


def test_confirm_runs_the_top_k_at_full_T_with_every_seed_and_order(confirmed: tuple[Path, str]) -> None:
    out, top = confirmed
    rows = confirm_rows(out)
    assert sorted(row["confirms"] for row in rows) == sorted(top.split(","))
    search = {row["trial_id"]: row for row in parquet_rows(out, "trials") if row["stage"] == "search"}
    for row in rows:
        original = search[row["confirms"]]
        assert (row["layer"], row["edit_lr"], row["n_iter"], row["threshold"]) == (original["layer"], original["edit_lr"], original["n_iter"], original["threshold"])
        assert row["status"] == "complete" and row["T"] == 4 and row["n_edits"] == 4 and row["members"] == 4
        assert row["optuna_trial"] is None and row["protocol"] == "stream"
    milestones = [m for m in parquet_rows(out, "milestones") if m["trial_id"] in {r["trial_id"] for r in rows}]
    assert sorted((m["trial_id"], m["n_edits"]) for m in milestones) == sorted((r["trial_id"], n) for r in rows for n in (1, 3, 4))  # every milestone: none stopped early
    members = [m for m in parquet_rows(out, "member_milestones") if m["trial_id"] in {r["trial_id"] for r in rows} and m["n_edits"] == 4]
    for row in rows:
        mine = [m for m in members if m["trial_id"] == row["trial_id"]]
        assert sorted((m["seed"], m["order"]) for m in mine) == [(0, 0), (0, 1), (1, 0), (1, 1)]
        assert row["rel_tf"] == pytest.approx(sum(m["rel_tf"] for m in mine) / 4)
    _, children, _ = mlflow_runs(out)
    runs = children_by_trial(children)
    for row in rows:
        tags = runs[row["trial_id"]].data.tags
        assert tags["stage"] == "confirm" and tags["confirms"] == row["confirms"] and tags["status"] == "complete"


def test_the_search_ranking_leaves_confirm_trials_out(confirmed: tuple[Path, str]) -> None:
    out, top = confirmed
    assert search_ranking(out)[:2] == top.split(",")
    assert not {row["trial_id"] for row in confirm_rows(out)} & set(search_ranking(out))


def test_running_confirm_again_adds_nothing(confirmed: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = confirmed
    before = {row["trial_id"]: row["finished_at"] for row in confirm_rows(out)}
    assert main(["confirm", str(out), "--quiet"]) == 0  # the recorded plan: already done
    assert main(["confirm", str(out), "--top", "2", "--seeds", "0,1", "--orders", "2", "--T", "4", "--quiet"]) == 0  # the same options
    assert {row["trial_id"]: row["finished_at"] for row in confirm_rows(out)} == before
    assert "confirm trials: 2 complete, 0 pruned, 0 failed" in capsys.readouterr().out


def test_export_prefers_the_confirmed_results_and_says_so(confirmed: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = confirmed
    rows = confirm_rows(out)
    best = max(rows, key=lambda row: row["rel_tf"])
    searched = {row["trial_id"]: row["optuna_trial"] for row in read_table(require_sweep_dir(out).parquet, "trials").to_pylist() if row["optuna_trial"] is not None}
    assert main(["export", str(out), "-o", str(tmp_path / "c.yaml")]) == 0
    printed = capsys.readouterr().out
    assert f"trial {best['trial_id']}" in printed
    assert "confirmed with 2 seeds x 2 orders at T=4 (stream; 2 of 2 configurations)" in printed and f"re-checking #{searched[best['confirms']]:03d} ({best['confirms']})" in printed
    hparams = load_hparams(tmp_path / "c.yaml")
    assert (hparams.edit_lr, hparams.n_iter, hparams.threshold) == (best["edit_lr"], best["n_iter"], best["threshold"])

    assert main(["export", str(out), "--no-confirmed", "-o", str(tmp_path / "s.yaml")]) == 0
    printed = capsys.readouterr().out
    assert "confirmed" not in printed and f"trial {search_ranking(out)[0]}" in printed
    assert "re-checking" not in printed
    # best.yaml, rewritten when the confirm stage finished, is the confirmed choice too
    assert load_hparams(out / "best.yaml").edit_lr == best["edit_lr"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--top", "0"], "--top: expected a number of configurations >= 1, got 0"),
        (["--seeds", "1,1"], "--seeds: expected distinct comma-separated integers"),
        (["--orders", "0"], "--orders: expected a number of edit orders >= 1, got 0"),
        (["--T", "0"], "--T: expected a number of edits >= 1, got 0"),
        (["--protocols", "stream,bogus"], "--protocols: expected distinct comma-separated names among"),
        (["--trials", "#099"], "--trials:"),
        (["--top", "1"], "already holds a confirm stage of"),
    ],
)
def test_bad_confirm_options_are_one_line_and_exit_2(confirmed: tuple[Path, str], args: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = confirmed
    before = sorted(row["trial_id"] for row in confirm_rows(out))
    assert main(["confirm", str(out), *args, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("defer-sweep: error: ") and expected in err[0], err
    assert sorted(row["trial_id"] for row in confirm_rows(out)) == before


def test_confirm_needs_a_sweep_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["confirm", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a sweep output directory" in err[0]


def test_confirm_auto_runs_the_stage_right_after_the_sweep(local_ray, tmp_path: Path) -> None:
    spec = load_spec(tiny_spec(tmp_path, name="auto", T=2, milestones=[2], num_trials=2, concurrency=1, initial_points=[GOOD, BAD], early_stopping=False,
                               confirm={"auto": True, "top": 1, "seeds": [3, 4], "orders": 1}))
    outcome = execute(spec, prepare(spec))
    assert outcome.finished and outcome.confirm is not None and outcome.confirm.finished
    rows = confirm_rows(spec.output_dir)
    assert [row["confirms"] for row in rows] == search_ranking(spec.output_dir)[:1] and rows[0]["members"] == 2
    assert {(m["seed"], m["order"]) for m in parquet_rows(spec.output_dir, "member_milestones") if m["trial_id"] == rows[0]["trial_id"]} == {(3, 0), (4, 0)}
    assert outcome.best_reason is not None and "confirmed with 2 seeds x 1 order at T=2" in outcome.best_reason
    assert sum(outcome.counts.values()) == 2  # the sweep's own counts leave the confirm trial out
