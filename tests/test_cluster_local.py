"""A real two-node Ray cluster on this machine, driven the way `ray submit` drives a cloud one.

`ray start --head` and a second `ray start --address` (each with a temp dir of its own, so
its own session dir, sockets and logs, and in a Unix session of its own) make two Ray nodes
with one CPU each; both run with token authentication as cluster/cluster.yaml sets it up.
The MLflow tracking server is the one cluster/mlflow_server.sh starts on a head node.
`sweep.py SPEC` then runs as `ray submit` runs it on the head: no RAY_ADDRESS (ray.init()
finds the cluster `ray start --head` recorded; RAY_TMPDIR keeps that record private to the
test), MLFLOW_TRACKING_URI pointing at the head's server.

The sweep runs two trials at a time, so trials land on both nodes; once the worker node has
finished a trial and is in the middle of another, the whole worker node is SIGKILLed (raylet,
its workers, agents: a machine lost). The sweep must still finish, the lost trial must be
retried or recorded as failed, and Parquet and MLflow must hold every trial exactly once.

Every process started here is stopped here: each node is a `ray start --block` in a session
of its own, stopped by signalling the processes of that session (never `ray stop`, which would stop
every Ray instance on the machine).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from .cluster_support import ROOT, free_port, kill_session, mlflow_env, session_members, start_mlflow, stop_mlflow, wait_session_gone
from .orchestrator_support import children_by_trial, mlflow_runs, parquet_rows, state, tiny_spec

# A real two-node cluster: the driver finds it as `ray submit` does, by looking for a running
# Ray, so no other Ray instance may run beside it (make test runs this module on its own).
pytestmark = pytest.mark.serial

BIN = Path(sys.executable).parent
NUM_TRIALS = 5
FINAL = ("complete", "pruned", "failed")


@dataclass
class RayNode:
    """One `ray start --block` and everything it spawned (the same session)."""

    name: str
    temp_dir: Path
    process: subprocess.Popen
    log: Path

    @property
    def sid(self) -> int:
        return self.process.pid  # start_new_session: the ray start process leads a new session

    def wait_started(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace") if self.log.exists() else ""
            if "Ray runtime started" in text:
                return
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name}: ray start exited with {self.process.returncode}:\n{text[-3000:]}")
            time.sleep(0.3)
        raise AssertionError(f"{self.name}: not started after {timeout_s}s:\n{self.log.read_text(errors='replace')[-3000:]}")

    def node_id(self) -> str:
        """The node id this node registered with (from its raylet's log)."""
        for raylet_log in sorted(self.temp_dir.glob("session_*/logs/raylet.out")):
            found = re.search(r"node_id=([0-9a-f]{56})", raylet_log.read_text(errors="replace"))
            if found:
                return found.group(1)
        raise AssertionError(f"{self.name}: no node id in its raylet log")

    def worker_pids(self) -> set[int]:
        """Every Ray worker process this node ever started (its logs are named by pid)."""
        pids: set[int] = set()
        for item in self.temp_dir.glob("session_*/logs/*"):
            found = re.fullmatch(r"(?:worker-[0-9a-f]+-[0-9a-f]+|python-core-worker-[0-9a-f]+)[-_](\d+)\.(?:out|err|log)", item.name)
            if found:
                pids.add(int(found.group(1)))
        return pids

    def owns(self, pid: int) -> bool:
        """A live process of this node."""
        try:
            return os.getsid(pid) == self.sid
        except ProcessLookupError:
            return False

    def stop(self) -> None:
        """SIGTERM lets `ray start --block` stop its processes; what is left is SIGKILLed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if not wait_session_gone(self.sid, 10):
            kill_session(self.sid)
            assert wait_session_gone(self.sid, 10), f"{self.name}: processes {session_members(self.sid)} survive SIGKILL"


@dataclass
class LocalCluster:
    root: Path
    env: dict[str, str]
    address: str = ""
    nodes: list[RayNode] = field(default_factory=list)
    # Unix socket paths are limited to ~107 bytes: a short directory under /tmp.
    temp_root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rc", dir="/tmp")))

    def _ports(self) -> list[str]:
        return [
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
        ]

    def _start(self, name: str, temp_dir: Path, args: list[str], resources: dict[str, float], env: dict[str, str]) -> RayNode:
        log = self.root / f"{name}.log"
        command = [
            str(BIN / "ray"), "start", *args,
            "--node-ip-address=127.0.0.1", "--num-cpus=1", f"--resources={json.dumps(resources)}",
            f"--object-store-memory={200 * 1024 * 1024}", "--disable-usage-stats", "--block", *self._ports(),
        ]
        with log.open("w") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        node = RayNode(name, temp_dir, process, log)
        self.nodes.append(node)
        node.wait_started()
        return node

    @property
    def head_tmpdir(self) -> Path:
        """RAY_TMPDIR of the head and the driver: `ray start --head` records the cluster's
        address in RAY_TMPDIR/ray/ray_current_cluster, where the driver's ray.init() finds it,
        as on a cluster's head node (/tmp/ray there); no other Ray on this machine reads it."""
        return self.temp_root / "h"

    def start_head(self) -> RayNode:
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        self.head_tmpdir.mkdir(parents=True, exist_ok=True)
        # A lost node is declared dead after ~3 s instead of the default ~30 s.
        system_config = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
        return self._start(
            "head",
            self.head_tmpdir / "ray",
            ["--head", f"--port={port}", "--include-dashboard=false", f"--dashboard-port={free_port()}",
             f"--system-config={json.dumps(system_config)}"],
            {"head_node": 1},
            {**self.env, "RAY_TMPDIR": str(self.head_tmpdir)},
        )

    def add_worker(self) -> RayNode:
        # Its own --temp-dir: a session directory, sockets and logs apart from the head's.
        temp_dir = self.temp_root / "w"
        return self._start("worker", temp_dir, [f"--address={self.address}", f"--temp-dir={temp_dir}"], {"worker_node": 1}, self.env)

    def stop(self) -> None:
        try:
            for node in reversed(self.nodes):
                node.stop()
        finally:
            shutil.rmtree(self.temp_root, ignore_errors=True)


@dataclass
class Observed:
    out: Path
    driver_rc: int
    driver_output: str
    head: RayNode
    worker: RayNode
    node_ids: dict[str, str]            # "head" / "worker" -> Ray node id
    pid_nodes: dict[int, str]           # worker process id -> "head" / "worker"
    killed_trial: str                   # the trial that was running on the worker node
    finished_on_worker_before_kill: str # a trial the worker node had completed by then
    trials_before_kill: dict[str, dict[str, Any]]
    mlflow_home: Path                   # the head's MLflow state (cluster/mlflow_server.sh)


def trial_rows(out: Path) -> dict[str, dict[str, Any]]:
    if not (out / "parquet" / "trials").is_dir():
        return {}
    try:
        return {row["trial_id"]: row for row in parquet_rows(out, "trials")}
    except OSError:
        return {}  # a file renamed into place while the directory was listed


def wait_to_kill(cluster_worker: RayNode, driver: subprocess.Popen, out: Path, timeout_s: float = 180) -> tuple[str, str, dict]:
    """Until the worker node has completed one trial and is past the first milestone of
    another: returns (running trial, completed trial, rows then)."""
    deadline = time.monotonic() + timeout_s
    done_on_worker: set[str] = set()
    while time.monotonic() < deadline:
        assert driver.poll() is None, "the sweep ended before the worker node could be killed"
        rows = trial_rows(out)
        for trial_id, row in rows.items():
            pid = row["worker_pid"]
            if pid is None or not cluster_worker.owns(pid):
                continue
            if row["status"] == "complete":
                done_on_worker.add(trial_id)
            elif row["status"] == "running" and row["n_edits"] is not None and done_on_worker:
                return trial_id, sorted(done_on_worker)[0], rows
        time.sleep(0.2)
    raise AssertionError(f"the worker node never held a second trial mid-run; trials: {trial_rows(out)}")


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    root = tmp_path_factory.mktemp("cluster")
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        # Token auth as on the cluster (RAY_AUTH_MODE=token from cluster/node_env.sh); the
        # token travels in the environment so ~/.ray/auth_token is neither read nor written.
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    env = mlflow_env(root / "mlflow", env)
    cluster = LocalCluster(root, env)
    driver: subprocess.Popen | None = None
    try:
        head = cluster.start_head()
        worker = cluster.add_worker()
        tracking_uri = start_mlflow(env)
        spec = tiny_spec(
            root,
            name="on-cluster",
            num_trials=NUM_TRIALS,
            concurrency=2,
            early_stopping=None,
            # Slow enough (many Adam steps per edit) that the worker node can be killed
            # between a trial's first milestone and its last.
            search_space={
                "layer": {"low": 1, "high": 3},
                "module_template": "model.layers[{layer}].mlp.down_proj",
                "edit_lr": {"low": 1.0e-3, "high": 1.0e-1, "log": True},
                "threshold": {"low": 0.3, "high": 0.7},
                "n_iter": [120, 160],
            },
            initial_points=[{"layer": 2, "edit_lr": 5.0e-2, "n_iter": 120, "threshold": 0.5}],
        )
        out = root / "on-cluster"
        # As `ray submit` runs it on the head: no RAY_ADDRESS, ray.init() finds the cluster
        # that `ray start --head` recorded; MLFLOW_TRACKING_URI as cluster/node_env.sh sets it.
        driver_env = {**env, "RAY_TMPDIR": str(cluster.head_tmpdir), "MLFLOW_TRACKING_URI": tracking_uri}
        driver_log = root / "driver.log"
        with driver_log.open("w") as log:
            driver = subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), str(spec)], cwd=root, env=driver_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            killed, finished, before = wait_to_kill(worker, driver, out)
        except AssertionError as error:
            raise AssertionError(f"{error}\n--- driver ---\n{driver_log.read_text()[-4000:]}") from None
        pid_nodes = {pid: "worker" for pid in worker.worker_pids()}
        kill_session(worker.sid)  # the machine is gone: raylet, workers, agents at once
        worker.process.wait(timeout=10)
        assert wait_session_gone(worker.sid, 10)
        rc = driver.wait(timeout=240)
        pid_nodes.update({pid: "head" for pid in head.worker_pids()})
        yield Observed(
            out=out, driver_rc=rc, driver_output=driver_log.read_text(), head=head, worker=worker,
            node_ids={"head": head.node_id(), "worker": worker.node_id()}, pid_nodes=pid_nodes,
            killed_trial=killed, finished_on_worker_before_kill=finished, trials_before_kill=before,
            mlflow_home=root / "mlflow",
        )
    finally:
        if driver is not None:
            if driver.poll() is None:
                kill_session(driver.pid)
                driver.wait(timeout=30)
            wait_session_gone(driver.pid, 10) or kill_session(driver.pid)
        try:
            stop_mlflow(env)
        finally:
            cluster.stop()


def test_the_driver_joins_the_running_cluster_and_finishes(swept: Observed) -> None:
    """sweep.py without RAY_ADDRESS joins the cluster started on its machine (the head)."""
    assert swept.driver_rc == 0, swept.driver_output[-4000:]
    assert "best.yaml:" in swept.driver_output
    info = state(swept.out)
    assert info["mlflow_tracking_uri"].startswith("http://"), "the driver must log to the head node's MLflow server"
    # It used the running cluster: its trials ran in these nodes' worker processes (a local
    # Ray instance of its own would have had workers of its own).
    pids = {row["worker_pid"] for row in parquet_rows(swept.out, "trials") if row["worker_pid"] is not None}
    assert pids and pids <= set(swept.pid_nodes), (pids, swept.pid_nodes)


def test_trials_ran_on_both_nodes(swept: Observed) -> None:
    rows = parquet_rows(swept.out, "trials")
    nodes = {swept.pid_nodes[row["worker_pid"]] for row in rows if row["worker_pid"] is not None}
    assert nodes == {"head", "worker"}
    assert swept.node_ids["head"] != swept.node_ids["worker"]
    # The node id each trial reports names the node whose worker process ran it.
    by_name = {v: k for k, v in swept.node_ids.items()}
    reported = {by_name.get(row["node_id"]) for row in rows if row["worker_pid"] is not None}
    assert reported == {"head", "worker"}
    for row in rows:
        if row["worker_pid"] is not None:
            assert by_name.get(row["node_id"]) == swept.pid_nodes[row["worker_pid"]], row


def test_the_lost_trial_is_retried_or_recorded_failed(swept: Observed) -> None:
    rows = {row["trial_id"]: row for row in parquet_rows(swept.out, "trials")}
    lost = rows[swept.killed_trial]
    if lost["status"] == "failed":
        assert lost["error"], lost
    else:  # retried (Tune FailureConfig.max_failures > 0) and finished on the head node
        assert lost["status"] in ("complete", "pruned"), lost
        assert swept.pid_nodes.get(lost["worker_pid"]) == "head", lost
    # What had finished on the worker node before it died is kept as it was.
    finished = swept.trials_before_kill[swept.finished_on_worker_before_kill]
    assert rows[finished["trial_id"]]["status"] == "complete"
    assert rows[finished["trial_id"]]["finished_at"] == finished["finished_at"]


def test_parquet_and_mlflow_hold_every_trial_once(swept: Observed) -> None:
    trials = parquet_rows(swept.out, "trials")
    ids = [t["trial_id"] for t in trials]
    assert len(ids) == NUM_TRIALS == len(set(ids))
    assert all(t["status"] in FINAL for t in trials), [(t["trial_id"], t["status"]) for t in trials]
    milestones = parquet_rows(swept.out, "milestones")
    assert len({(m["trial_id"], m["n_edits"]) for m in milestones}) == len(milestones)
    edits = parquet_rows(swept.out, "edits")
    assert len({(e["trial_id"], e["edit_index"]) for e in edits}) == len(edits)
    for trial in trials:
        if trial["status"] == "complete":
            assert [m["n_edits"] for m in milestones if m["trial_id"] == trial["trial_id"]] == [2, 4, 6]

    parent, children, client = mlflow_runs(swept.out)
    assert parent.info.status == "FINISHED"
    runs = children_by_trial(children)
    assert set(runs) == set(ids)
    for trial in trials:
        run = runs[trial["trial_id"]]
        assert run.data.tags["status"] == trial["status"]
        if trial["n_edits"]:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "rel_tf")]
            assert steps == sorted(set(steps)) and steps[-1] == trial["n_edits"]


def test_artifacts_go_through_the_head_nodes_mlflow_server(swept: Observed) -> None:
    """The driver uploads to the server (--serve-artifacts), which stores them on the head."""
    parent, children, client = mlflow_runs(swept.out)
    assert {"spec.yaml", "best.yaml"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    stored = {p.name for p in (swept.mlflow_home / "artifacts").rglob("*") if p.is_file()}
    assert {"spec.yaml", "best.yaml"} <= stored
    lost = children_by_trial(children)[swept.killed_trial]
    if lost.data.tags["status"] == "failed":
        assert "error.txt" in {a.path for a in client.list_artifacts(lost.info.run_id)}


def test_every_process_of_the_cluster_is_gone(swept: Observed) -> None:
    """The fixture's own teardown runs after the last test; here: the killed worker node left
    nothing behind (no orphaned Ray worker of that node survives its raylet)."""
    assert not session_members(swept.worker.sid)
