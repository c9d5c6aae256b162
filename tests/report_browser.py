"""Test helpers for the report: Debian's chromium (installed with apt-get when missing) run
headless against file:// URLs, and a `mlflow server` on loopback. Every process started here is
started in its own session and its process group is ended by id when the helper is done."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)


def ensure_chromium() -> Path:
    """Debian's chromium package; installed once (`apt-get install -y chromium`) if missing."""
    if CHROMIUM.exists():
        return CHROMIUM
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        pytest.fail(f"{CHROMIUM} is missing and cannot be installed here (needs apt-get as root): run `apt-get install -y chromium`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    update = subprocess.run([apt, "update"], capture_output=True, text=True, timeout=600, env=env)
    install = subprocess.run([apt, "install", "-y", "chromium"], capture_output=True, text=True, timeout=1800, env=env)
    if install.returncode != 0 or not CHROMIUM.exists():
        pytest.fail(f"apt-get install chromium failed (rc {install.returncode}):\n{update.stderr[-2000:]}\n{install.stderr[-4000:]}")
    return CHROMIUM


def _end_group(process: subprocess.Popen) -> None:
    """End the process group this helper started (the process leads it: start_new_session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # children of the group that outlived the leader
    process.wait()


def run_chromium(args: list[str], profile: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    """One headless chromium run; its whole process group is ended afterwards."""
    chromium = ensure_chromium()
    profile.mkdir(parents=True, exist_ok=True)
    command = [str(chromium), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _end_group(process)
        stdout, stderr = process.communicate()
        raise AssertionError(f"chromium timed out after {timeout}s: {stderr[-2000:]}")
    finally:
        _end_group(process)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def dump_dom(page: Path, profile: Path) -> str:
    """The DOM after the page's load event (scripts in the page have run)."""
    result = run_chromium(["--virtual-time-budget=10000", "--dump-dom", page.resolve().as_uri()], profile)
    assert result.returncode == 0 and "<html" in result.stdout, f"chromium --dump-dom failed (rc {result.returncode}): {result.stderr[-2000:]}"
    return result.stdout


def screenshot(page: Path, output: Path, profile: Path, width: int, height: int) -> Path:
    result = run_chromium([f"--window-size={width},{height}", f"--screenshot={output}", "--virtual-time-budget=10000", page.resolve().as_uri()], profile)
    assert result.returncode == 0 and output.is_file(), f"chromium --screenshot failed (rc {result.returncode}): {result.stderr[-2000:]}"
    return output


# -- mlflow server ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, workdir: Path, timeout: float = 120) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 and a free port; yields its base URL, then stops it."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    command = [
        str(mlflow_cli) if mlflow_cli.exists() else "mlflow",
        "server",
        "--backend-store-uri", backend_store_uri,
        "--default-artifact-root", (workdir / "artifacts").as_uri(),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
    ]
    log_path = workdir / "mlflow-server.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise AssertionError(f"mlflow server exited with {process.returncode}:\n{log_path.read_text(errors='replace')[-4000:]}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"mlflow server not up after {timeout}s:\n{log_path.read_text(errors='replace')[-4000:]}")
            time.sleep(0.5)
        yield base
    finally:
        _end_group(process)
