"""One driver per output folder, and damaged Parquet files (issue 14, items 1 and 3).

Real `defer-sweep` processes on tiny-llama sweeps: two `run`s started together, a second
`run`/`resume` while the first is mid-sweep, a stale storage_uri lease left by a dead driver,
and one trial's Parquet file truncated to half its bytes in a finished sweep. Results are read
back from Parquet and a real MLflow SQLite store.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from defer_core.errors import DeferInputError
from orchestrator.cli import main
from orchestrator.sinks.layout import SweepLayout
from orchestrator.results.store import ResultStore
from orchestrator.spec import load_spec
from orchestrator.storage import local_location
from orchestrator.sweep.driver import execute
from orchestrator.sinks.layout import LOCK_FILE
from orchestrator.sweep.lock import LEASE_FILE, Holder, SweepBusyError, read_lease, storage_lease

from .orchestrator_support import children_by_trial, mlflow_runs, parquet_rows, tiny_spec

ROOT = Path(__file__).resolve().parent.parent
FINAL = ("complete", "pruned", "failed")
# Slow trials (hundreds of Adam steps per edit), one at a time: a sweep that is still running
# when the second driver comes.
SLOW = {
    "search_space": {
        "layer": {"low": 1, "high": 3},
        "module_template": "model.layers[{layer}].mlp.down_proj",
        "edit_lr": {"low": 1.0e-3, "high": 1.0e-1, "log": True},
        "threshold": {"low": 0.3, "high": 0.7},
        "n_iter": [150, 250],
    },
    "initial_points": [{"layer": 2, "edit_lr": 5.0e-2, "n_iter": 150, "threshold": 0.5}],
    "concurrency": 1,
    "early_stopping": False,
}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", *args]


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def error_line(stderr: str) -> str:
    """The one `defer-sweep: error:` line of a failed command (and no traceback)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("defer-sweep: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def assert_every_trial_once(out: Path, num_trials: int) -> list[dict]:
    """Parquet holds each trial once, finished; MLflow one run per trial with the same status."""
    trials = parquet_rows(out, "trials")
    ids = [t["trial_id"] for t in trials]
    assert len(ids) == num_trials == len(set(ids)), ids
    assert all(t["status"] in FINAL for t in trials), trials
    for table, key in (("milestones", "n_edits"), ("edits", "edit_index")):
        rows = parquet_rows(out, table)
        assert len({(r["trial_id"], r[key]) for r in rows}) == len(rows)
    parent, children, _ = mlflow_runs(out)
    runs = children_by_trial(children)
    assert set(runs) == set(ids)
    assert {trial_id: run.data.tags["status"] for trial_id, run in runs.items()} == {t["trial_id"]: t["status"] for t in trials}
    assert parent.info.status == "FINISHED"
    return trials


def wait_for_a_finished_trial(process: subprocess.Popen, out: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "the sweep ended before the second driver came"
        try:
            if (out / "parquet" / "trials").is_dir() and any(r["status"] in FINAL for r in parquet_rows(out, "trials")):
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError("no trial finished in time")


# -- (a) two runs started together ----------------------------------------------------------------


def test_two_runs_started_together_one_runs_the_sweep_the_other_is_refused(tmp_path: Path) -> None:
    spec = tiny_spec(tmp_path, name="together", num_trials=3)
    out = tmp_path / "together"
    drivers = [subprocess.Popen(cli("run", str(spec)), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [driver.communicate(timeout=900) for driver in drivers]
    codes = [driver.returncode for driver in drivers]
    assert sorted(codes) == [0, 2], outputs
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    line = error_line(outputs[loser][1])
    assert f"{out}: another defer-sweep driver is running this sweep (host {socket.gethostname()}, pid {drivers[winner].pid}, since " in line
    assert "best.yaml:" in outputs[winner][0]
    assert not (out / LOCK_FILE).exists()  # released with the driver

    resumed = run_cli("resume", str(out))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert not [line for line in resumed.stdout.splitlines() if line.startswith("[")]  # nothing ran again
    assert_every_trial_once(out, 3)


# -- (b) a second driver while the first is mid-sweep ---------------------------------------------


def test_a_second_run_or_resume_mid_sweep_is_refused_and_the_first_finishes(tmp_path: Path) -> None:
    spec = tiny_spec(tmp_path, name="busy", num_trials=3, **SLOW)
    out = tmp_path / "busy"
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(cli("run", str(spec)), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_a_finished_trial(first, out)
        before = {r["trial_id"]: (r["status"], r["finished_at"]) for r in parquet_rows(out, "trials") if r["status"] in FINAL}
        seconds = [subprocess.Popen(cli(*args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for args in (("run", str(spec)), ("resume", str(out)))]
        for second in seconds:
            stdout, stderr = second.communicate(timeout=180)
            assert second.returncode == 2 and stdout == "", stdout + stderr  # refused before any line of output
            assert f"{out}: another defer-sweep driver is running this sweep (host {socket.gethostname()}, pid {first.pid}, since " in error_line(stderr)
        assert first.poll() is None, "the first sweep should still be running"
        after = {r["trial_id"]: (r["status"], r["finished_at"]) for r in parquet_rows(out, "trials")}
        assert {k: v for k, v in after.items() if k in before} == before  # finished trials neither dropped nor rewritten
        assert first.wait(timeout=900) == 0, (tmp_path / "first.log").read_text()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        log.close()
    assert "best.yaml:" in (tmp_path / "first.log").read_text()
    assert_every_trial_once(out, 3)


# -- the lock file's path ------------------------------------------------------------------------


def test_a_lock_path_that_cannot_be_a_lock_file_is_one_line_and_nothing_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tiny_spec(tmp_path, name="blocked")
    out = tmp_path / "blocked"
    (out / LOCK_FILE).mkdir(parents=True)  # the lock file's path is taken by a directory
    assert main(["run", str(spec)]) == 2
    line = error_line(capsys.readouterr().err)
    assert f"{out / LOCK_FILE}: cannot open the sweep's lock file" in line
    assert [p.name for p in out.iterdir()] == [LOCK_FILE]

    # the lock itself, without the command layer's checks: an output_dir under a file
    spec_under_file = load_spec(tiny_spec(tmp_path, name="afile")).with_output_dir(str(tmp_path / "afile" / "out"))
    (tmp_path / "afile").write_text("not a directory\n")
    with pytest.raises(DeferInputError, match=f"^{tmp_path / 'afile' / 'out'}: cannot "):
        execute(spec_under_file, SweepLayout(spec_under_file.output_dir))
    assert (tmp_path / "afile").read_text() == "not a directory\n"


# -- (c) the storage_uri lease --------------------------------------------------------------------


def write_lease(storage: Path, host: str, pid: int, heartbeat: float) -> Holder:
    holder = Holder(host, pid, "2020-01-01T00:00:00+00:00", heartbeat)
    storage.mkdir(parents=True, exist_ok=True)
    (storage / LEASE_FILE).write_bytes(holder.to_json())
    return holder


def test_a_stale_lease_left_by_a_dead_driver_is_taken_over(tmp_path: Path) -> None:
    storage = tmp_path / "shared" / "sweep"
    write_lease(storage, socket.gethostname(), dead_pid(), time.time())  # fresh heartbeat, but its process is gone
    spec = tiny_spec(tmp_path, name="leased", num_trials=2, storage_uri=str(storage))
    done = run_cli("run", str(spec))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{storage / LEASE_FILE}: taking over the lease of a driver that is gone" in done.stderr
    assert not (storage / LEASE_FILE).exists()  # released at the end
    assert len(ResultStore(local_location(storage / "parquet")).pack_ids()) == 2


def test_a_live_lease_refuses_the_run_in_one_line_and_changes_nothing(tmp_path: Path) -> None:
    storage = tmp_path / "shared" / "sweep"
    write_lease(storage, "other-host", 4242, time.time())
    payload = (storage / LEASE_FILE).read_bytes()
    spec = tiny_spec(tmp_path, name="held", storage_uri=str(storage))
    refused = run_cli("run", str(spec), timeout=180)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    line = error_line(refused.stderr)
    assert f"another defer-sweep driver holds {storage / LEASE_FILE} (host other-host, pid 4242, since 2020-01-01T00:00:00+00:00" in line
    assert (storage / LEASE_FILE).read_bytes() == payload
    assert sorted(p.name for p in storage.iterdir()) == [LEASE_FILE]
    assert not (tmp_path / "held").exists()


def test_a_lease_is_taken_over_only_when_stale_and_its_heartbeat_is_renewed(tmp_path: Path) -> None:
    where = local_location(tmp_path / "prefix")
    uri = str(tmp_path / "prefix")
    write_lease(tmp_path / "prefix", "other-host", 4242, time.time() - 30)
    with pytest.raises(SweepBusyError, match="last heartbeat 30s ago"):
        with storage_lease(where, uri, timeout_s=60, settle_s=0):
            pass
    write_lease(tmp_path / "prefix", socket.gethostname(), os.getppid(), time.time())  # alive, on this host
    with pytest.raises(SweepBusyError, match=f"pid {os.getppid()}"):
        with storage_lease(where, uri, settle_s=0):
            pass
    write_lease(tmp_path / "prefix", "other-host", 4242, time.time() - 61)  # heartbeat older than the timeout
    with storage_lease(where, uri, refresh_s=0.2, timeout_s=60, settle_s=0) as me:
        held = read_lease(where)
        assert held is not None and (held.host, held.pid, held.token) == (socket.gethostname(), os.getpid(), me.token)
        time.sleep(1.0)
        renewed = read_lease(where)
        assert renewed is not None and renewed.token == me.token and renewed.heartbeat > held.heartbeat
    assert read_lease(where) is None


# -- (e) a folder that holds no sweep (issue 20) -----------------------------------------------------


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_a_run_into_someone_elses_folder_is_refused_before_any_output_and_changes_nothing(tmp_path: Path) -> None:
    """A folder with a user's best.yaml, report and notes: `run` names what is there and exits 2
    before printing anything; `--force` would put the sweep beside them, but not over their
    best.yaml and report/, so it is refused too; not one byte changes."""
    spec = tiny_spec(tmp_path, name="theirs")
    out = tmp_path / "theirs"
    (out / "report").mkdir(parents=True)
    (out / "best.yaml").write_text("alg_name: DEFER  # the user's own\n")
    (out / "report" / "report.html").write_text("<p>their report</p>\n")
    (out / "notes.txt").write_text("notes\n")
    before = folder_bytes(out)
    refused = run_cli("run", str(spec), timeout=120)
    assert refused.returncode == 2 and refused.stdout == "", refused.stdout + refused.stderr
    line = error_line(refused.stderr)
    assert f"{out}: is not empty and holds no sweep (best.yaml, notes.txt, report/)" in line and "--force" in line
    forced = run_cli("run", str(spec), "--force", timeout=120)
    assert forced.returncode == 2 and forced.stdout == "", forced.stdout + forced.stderr
    assert f"{out}: holds best.yaml, report/, which the sweep writes" in error_line(forced.stderr)
    assert folder_bytes(out) == before


def test_a_cache_folder_that_cannot_be_written_is_refused_before_any_output(tmp_path: Path) -> None:
    """Every trial keeps the unedited scores under the cache folder: one that cannot be written
    is named at once (it used to surface only when every trial had failed), nothing created."""
    spec = tiny_spec(tmp_path, name="nocache")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    env = {**os.environ, "DEFER_SWEEP_CACHE": str(blocker / "cache")}
    refused = subprocess.run(cli("run", str(spec)), cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert refused.returncode == 2 and refused.stdout == "", refused.stdout + refused.stderr
    line = error_line(refused.stderr)
    assert f"{blocker / 'cache'}: the cache folder cannot be written (" in line and "DEFER_SWEEP_CACHE" in line
    assert not (tmp_path / "nocache").exists()


# -- (d) a truncated Parquet file in a finished sweep ---------------------------------------------


def test_a_truncated_parquet_file_is_skipped_by_export_and_report_and_stops_resume(tmp_path: Path) -> None:
    spec = tiny_spec(tmp_path, name="damaged", num_trials=3, early_stopping=False)
    out = tmp_path / "damaged"
    out.mkdir()
    (out / "notes.txt").write_text("the user's notes\n")  # --force: the sweep starts beside them and leaves them be
    done = run_cli("run", str(spec), "--force")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "notes.txt").read_text() == "the user's notes\n"
    trials = parquet_rows(out, "trials")
    complete = [t for t in trials if t["status"] == "complete"]
    assert len(complete) >= 2, trials
    best = max(complete, key=lambda t: (t["rel_tf"], -t["optuna_trial"]))
    damaged = out / "parquet" / "trials" / f"{best['pack_id']}.parquet"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    parent_before, _, client = mlflow_runs(out)
    status_before = parent_before.info.status
    assert status_before == "FINISHED"
    sweep_json = (out / "sweep.json").read_bytes()
    parquet_before = {p: p.read_bytes() for p in (out / "parquet").rglob("*.parquet")}

    exported = run_cli("export", str(out), "-o", str(tmp_path / "other.yaml"), timeout=180)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert f"{damaged}: not a readable Parquet file (" in exported.stderr
    assert best["trial_id"] not in exported.stdout and "wrote " in exported.stdout

    reported = run_cli("report", str(out), timeout=300)
    assert reported.returncode == 0, reported.stdout + reported.stderr
    assert reported.stderr.count(f"{damaged}: not a readable Parquet file (") == 1, reported.stderr  # named once, not per table read (issue 20)
    page = (out / "report" / "report.html").read_text()
    assert all(t["trial_id"] in page for t in complete if t is not best) and best["trial_id"] not in page

    resumed = run_cli("resume", str(out), timeout=180)
    assert resumed.returncode == 2, resumed.stdout + resumed.stderr
    line = error_line(resumed.stderr)
    assert f"{damaged}: not a readable Parquet file (" in line and "resume needs every recorded trial" in line
    assert client.get_run(parent_before.info.run_id).info.status == status_before
    assert (out / "sweep.json").read_bytes() == sweep_json
    assert {p: p.read_bytes() for p in (out / "parquet").rglob("*.parquet")} == parquet_before
