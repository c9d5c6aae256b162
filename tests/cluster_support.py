"""Helpers of the cluster tests: free ports, process sessions, the head node's MLflow server.

Processes are found by Unix session: whatever a test starts with start_new_session (or the
scripts start with setsid) is one session, and Ray workers, which move into process groups
of their own, stay in it. Tests stop exactly those processes, by pid.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
MLFLOW_SCRIPT = ROOT / "cluster" / "mlflow_server.sh"
NODE_ENV_SCRIPT = ROOT / "cluster" / "node_env.sh"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def private_ip() -> str | None:
    """What the cluster scripts bind to: the first address `hostname -I` lists (None when
    this machine has no non-loopback address)."""
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0] if out and not out[0].startswith("127.") else None


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes of a session."""
    members = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getsid(proc.info["pid"]) == sid:
                members.append(proc.info["pid"])
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


def kill_session(sid: int, sig: int = signal.SIGKILL) -> None:
    for pid in session_members(sid):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def wait_session_gone(sid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not session_members(sid):
            return True
        time.sleep(0.2)
    return not session_members(sid)


def mlflow_env(home: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """Settings of cluster/mlflow_server.sh for a server of the test's own."""
    env = dict(base if base is not None else os.environ)
    # mlflow (and python) of this environment first, as ~/venv/bin is on a cluster node
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        DEFER_SWEEP_MLFLOW_HOME=str(home),
        DEFER_SWEEP_MLFLOW_PORT=str(free_port()),
        DEFER_SWEEP_MLFLOW_WORKERS="1",
    )
    if private_ip() is None:  # a machine without a private network: loopback stands in
        env["DEFER_SWEEP_MLFLOW_HOST"] = "127.0.0.1"
    return env


def start_mlflow(env: dict[str, str]) -> str:
    """`cluster/mlflow_server.sh start` as the head node runs it; returns the tracking URI."""
    result = subprocess.run(["bash", str(MLFLOW_SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return (Path(env["DEFER_SWEEP_MLFLOW_HOME"]) / "tracking_uri").read_text().strip()


def mlflow_server_sid(env: dict[str, str]) -> int | None:
    pid_file = Path(env["DEFER_SWEEP_MLFLOW_HOME"]) / "server.pid"
    text = pid_file.read_text().strip() if pid_file.exists() else ""
    return int(text) if text else None


def stop_mlflow(env: dict[str, str]) -> None:
    """`cluster/mlflow_server.sh stop`, then SIGKILL whatever of its session is left."""
    sid = mlflow_server_sid(env)
    subprocess.run(["bash", str(MLFLOW_SCRIPT), "stop"], env=env, capture_output=True, timeout=60)
    if sid is not None and not wait_session_gone(sid, 10):  # the script starts it with setsid
        kill_session(sid)
        wait_session_gone(sid, 10)
