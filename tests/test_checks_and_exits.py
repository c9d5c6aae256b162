"""Checks before anything is written, honest exit codes, the trial command's model warning and
the MLflow UI hint (issue 14, items 4, 6, 7, 8), run as a user runs them: `defer-sweep` in a
subprocess, a real local Ray, a real MLflow SQLite store read back over `mlflow ui`, and
headless chromium on the printed URL.

A stand-in for the Hugging Face Hub (HF_ENDPOINT pointed at a loopback listener that records
every connection) shows whether anything tried the network.
"""

from __future__ import annotations

import html
import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
import torch
import yaml

from defer_core.errors import DeferInputError
from defer_core.models import tiny_llama
from defer_core.runtime import EMBEDDED_MODEL, HUB_OFFLINE_VARS, TINY_MODEL
from orchestrator.cli import main
from orchestrator.commands import ExitCode
from orchestrator.sinks.mlflow_sink import EXPERIMENT_KIND, TAG_EXPERIMENT_KIND, UI_WORKFLOW
from orchestrator.spec import spec_from_dict
from orchestrator.spec.schema import spec_schema
from orchestrator.sweep.preflight import check_device, joins_cluster

from .orchestrator_support import SPECS, parquet_rows, state, tiny_spec
from .report_browser import free_port, run_chromium

ROOT = Path(__file__).resolve().parent.parent
ERROR_PREFIX = "defer-sweep: error: "
QUICK_S = 10.0  # an input error is answered well within this, even on 2 busy cores
NO_GPU_INDEX = torch.cuda.device_count() if torch.cuda.is_available() else 0  # cuda:N past the last GPU


# -- helpers ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def fake_hub() -> Iterator[tuple[str, list[tuple[str, int]]]]:
    """A loopback TCP listener posing as the Hub: yields its URL (for HF_ENDPOINT) and the list
    of connections it received; each is closed at once."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    attempts: list[tuple[str, int]] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, address = server.accept()
            except OSError:  # the accept timeout
                continue
            attempts.append(address)
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", attempts
    finally:
        stop.set()
        thread.join()
        server.close()


def user_env(tmp_path: Path, hub_url: str | None = None) -> dict[str, str]:
    """The environment of a user who set none of the HF variables, with an empty HF cache of
    their own and no Ray cluster to join."""
    env = {k: v for k, v in os.environ.items() if k not in (*HUB_OFFLINE_VARS, "RAY_ADDRESS")}
    env["HF_HUB_CACHE"] = str(tmp_path / "hf-cache")
    if hub_url:
        env["HF_ENDPOINT"] = hub_url
    return env


def defer_sweep(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    return done, time.monotonic() - started


def one_error_line(done: subprocess.CompletedProcess) -> str:
    """Exit 2 and a single line on stderr: the error."""
    assert done.returncode == ExitCode.BAD_INPUT, f"rc {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), done.stderr
    return lines[0]


def hparams_file(tmp_path: Path, model_name: str) -> Path:
    config = {"alg_name": "DEFER", "model_name": model_name, "device": "cpu",
              "inner_params": ["model.layers[2].mlp.down_proj.weight"], "edit_lr": "5e-2", "n_iter": 1, "threshold": 0.5}
    path = tmp_path / f"hparams-{model_name.replace('/', '_')}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# -- item 4: the device is checked before anything is written --------------------------------------


@pytest.mark.parametrize(
    "change, key",
    [
        ({"model": {"name": TINY_MODEL, "device": f"cuda:{NO_GPU_INDEX}" if NO_GPU_INDEX else "cuda"}}, "model.device"),
        ({"resources_per_trial": {"cpu": 1, "gpu": NO_GPU_INDEX + 1}}, "resources_per_trial.gpu"),
    ],
    ids=["model.device", "resources_per_trial.gpu"],
)
def test_cuda_on_a_machine_without_it_is_refused_before_the_output_folder_exists(tmp_path: Path, change: dict[str, Any], key: str) -> None:
    spec = tiny_spec(tmp_path, "needs-cuda", **change)
    done, seconds = defer_sweep("run", str(spec), env=user_env(tmp_path))
    line = one_error_line(done)
    assert line.startswith(f"{ERROR_PREFIX}{spec}: key '{key}': ") and "CUDA" in line
    assert seconds < QUICK_S, f"took {seconds:.1f}s"
    assert not (tmp_path / "needs-cuda").exists(), "nothing may be written"


def test_gpu_is_not_a_device_the_spec_refuses_it_naming_the_forms(tmp_path: Path) -> None:
    data = yaml.safe_load((SPECS / "tiny.yaml").read_text())
    for valid in ("cpu", "cuda", "cuda:3"):
        assert spec_from_dict({**data, "model": {"name": TINY_MODEL, "device": valid}}).model.device == valid
    for invalid in ("gpu", "cuda:", "CUDA", "cuda:x"):
        with pytest.raises(DeferInputError) as caught:
            spec_from_dict({**data, "model": {"name": TINY_MODEL, "device": invalid}}, source="s.yaml")
        assert str(caught.value) == f"s.yaml: key 'model.device' must be cpu, cuda or cuda:N (N a GPU index), got {invalid!r}"
    schema = spec_schema()  # an editor flags it too
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**data, "model": {"name": TINY_MODEL, "device": "gpu"}}, schema)
    jsonschema.validate({**data, "model": {"name": TINY_MODEL, "device": "cuda:1"}}, schema)

    spec = tiny_spec(tmp_path, "gpu", model={"name": TINY_MODEL, "device": "gpu"})
    line = one_error_line(defer_sweep("run", str(spec))[0])
    assert line == f"{ERROR_PREFIX}{spec}: key 'model.device' must be cpu, cuda or cuda:N (N a GPU index), got 'gpu'"
    assert not (tmp_path / "gpu").exists()


def test_on_a_ray_cluster_the_driver_leaves_cuda_to_the_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPUs of a cluster are on its workers (cluster/cluster.yaml: a CPU head): the driver
    refuses CUDA only where ray.init starts Ray on this machine, in ray.init's own order."""
    data = yaml.safe_load((SPECS / "tiny.yaml").read_text())
    cuda = {**data, "model": {"name": TINY_MODEL, "device": "cuda" if not NO_GPU_INDEX else f"cuda:{NO_GPU_INDEX}"}}
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # no cluster recorded here yet

    def joins(ray_section: dict[str, Any]) -> bool:
        spec = spec_from_dict({**cuda, "ray": ray_section})
        try:
            check_device(spec, "s.yaml")
        except DeferInputError:
            assert not joins_cluster(spec)
            return False
        assert joins_cluster(spec)
        return True

    assert not joins({}) and not joins({"address": "local"}) and not joins({"num_cpus": 2})
    assert joins({"address": "10.0.1.23:6379"}) and joins({"address": "ray://head:10001"})
    monkeypatch.setenv("RAY_ADDRESS", "10.0.1.23:6379")
    assert joins({}) and not joins({"address": "local"})
    monkeypatch.delenv("RAY_ADDRESS")
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("10.0.1.23:6379")  # what `ray start --head` writes, as under `ray submit`
    assert joins({}) and not joins({"num_cpus": 2})


@pytest.mark.parametrize("device", ["gpu", f"cuda:{NO_GPU_INDEX}"])
def test_trial_refuses_a_device_it_cannot_use_in_one_line(tmp_path: Path, device: str) -> None:
    done, _ = defer_sweep("trial", str(hparams_file(tmp_path, TINY_MODEL)), "--T", "1", "--model", TINY_MODEL, "--device", device)
    line = one_error_line(done)
    assert line.startswith(f"{ERROR_PREFIX}--device: ")
    assert ("must be cpu, cuda or cuda:N" in line) if device == "gpu" else ("CUDA" in line)


# -- item 6: offline by default; an unknown model is answered at once ------------------------------


@pytest.mark.parametrize("command", ["run", "trial"])
def test_unknown_model_is_answered_at_once_with_the_choices_and_no_network_call(tmp_path: Path, command: str) -> None:
    with fake_hub() as (hub_url, attempts):
        if command == "run":
            spec = tiny_spec(tmp_path, "typo", model={"name": "smollm2-999m", "device": "cpu"})
            done, seconds = defer_sweep("run", str(spec), env=user_env(tmp_path, hub_url))
            where = f"{spec}: key 'model.name': "
        else:
            done, seconds = defer_sweep("trial", str(hparams_file(tmp_path, TINY_MODEL)), "--T", "1", "--model", "smollm2-999m", env=user_env(tmp_path, hub_url))
            where = "--model: "
    line = one_error_line(done)
    assert line.startswith(f"{ERROR_PREFIX}{where}unknown model 'smollm2-999m'; choose ")
    for choice in (repr(EMBEDDED_MODEL), repr(TINY_MODEL), "a local model directory", str(tmp_path / "hf-cache"), "(cached: none)", "HF_HUB_OFFLINE=0"):
        assert choice in line
    assert attempts == [], f"{len(attempts)} connection(s) to the Hub"
    assert seconds < QUICK_S, f"took {seconds:.1f}s"
    assert not (tmp_path / "typo").exists()


def test_a_model_in_the_local_hf_cache_loads_offline_without_a_network_call(tmp_path: Path) -> None:
    """The offline default still finds what the Hugging Face cache holds (its real layout)."""
    snapshot = tmp_path / "hf-cache" / "models--local--tiny" / "snapshots" / ("0" * 40)
    tiny = tiny_llama()
    tiny.model.save_pretrained(snapshot)
    tiny.tokenizer.save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    with fake_hub() as (hub_url, attempts):
        done, _ = defer_sweep("trial", str(hparams_file(tmp_path, "local/tiny")), "--T", "1", "--scoring", "tf", "--model", "local/tiny",
                              "--device", "cpu", "--json", env=user_env(tmp_path, hub_url))
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["model"] == "local/tiny"
    assert attempts == [], f"{len(attempts)} connection(s) to the Hub"


_WORKER_ENV = """
import json, os, sys, ray, yaml
from orchestrator.spec import spec_from_dict
from orchestrator.sweep.driver import ray_session
data = yaml.safe_load(open(sys.argv[1]))
data["ray"] = {"num_cpus": 1}

@ray.remote
def hub_variables(names):
    return {name: os.environ.get(name) for name in names}

with ray_session(spec_from_dict(data), False):
    print(json.dumps(ray.get(hub_variables.remote(sys.argv[2:]))))
"""


@pytest.mark.parametrize("user_setting, on_workers", [(None, "1"), ("0", "0")], ids=["default-offline", "user-allows-downloads"])
def test_ray_workers_get_the_offline_default_unless_the_user_set_it(tmp_path: Path, user_setting: str | None, on_workers: str) -> None:
    env = user_env(tmp_path)
    if user_setting is not None:
        env["HF_HUB_OFFLINE"] = user_setting
    done = subprocess.run([sys.executable, "-c", _WORKER_ENV, str(SPECS / "tiny.yaml"), *HUB_OFFLINE_VARS], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["HF_HUB_OFFLINE"] == on_workers
    assert seen["TRANSFORMERS_OFFLINE"] == ("1" if user_setting is None else None), "a variable the user set is left as the user set it"


# -- item 7: the trial command says which model it runs -------------------------------------------


def test_trial_warns_once_when_the_hparams_name_another_model(tmp_path: Path) -> None:
    other = hparams_file(tmp_path, "meta-llama/Llama-2-7b-hf")
    done, _ = defer_sweep("trial", str(other), "--T", "1", "--scoring", "tf", "--model", TINY_MODEL, "--device", "cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    warnings = [line for line in done.stderr.splitlines() if "warning" in line.lower()]
    assert warnings == [f"defer-sweep: warning: {other} names model_name 'meta-llama/Llama-2-7b-hf'; this trial runs 'tiny-llama' (given with --model)"]

    same = hparams_file(tmp_path, TINY_MODEL)
    done, _ = defer_sweep("trial", str(same), "--T", "1", "--scoring", "tf", "--model", TINY_MODEL, "--device", "cpu")
    assert done.returncode == 0 and "warning" not in done.stderr.lower(), done.stderr[-3000:]


# -- item 4: a sweep in which every trial failed -------------------------------------------------


@pytest.fixture(scope="module")
def all_failed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """A sweep whose every trial fails for a real reason: a local model directory whose
    config (all the driver's preflight reads) is fine but whose weights file was cut short,
    as by an interrupted copy; each worker fails loading it."""
    tmp_path = tmp_path_factory.mktemp("allfailed")
    model_dir = tmp_path / "truncated-model"
    tiny = tiny_llama()
    tiny.model.save_pretrained(model_dir)
    tiny.tokenizer.save_pretrained(model_dir)
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    spec = tiny_spec(tmp_path, "allfailed", model={"name": str(model_dir), "device": "cpu"}, num_trials=2, concurrency=1)
    done, _ = defer_sweep("run", str(spec), env=user_env(tmp_path))
    return tmp_path / "allfailed", done


def test_a_sweep_in_which_every_trial_failed_exits_1_with_the_reasons(all_failed: tuple[Path, subprocess.CompletedProcess]) -> None:
    out, done = all_failed
    assert done.returncode == ExitCode.ALL_FAILED == 1, f"rc {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    rows = parquet_rows(out, "trials")
    assert len(rows) == 2 and {row["status"] for row in rows} == {"failed"}
    errors = {row["error"] for row in rows}
    assert len(errors) == 1 and "incomplete metadata" in next(iter(errors)), errors
    lines = done.stdout.splitlines()
    assert "trials: 0 complete, 0 pruned, 2 failed" in lines
    summary = lines.index("failed trials, by error:")
    assert lines[summary + 1] == f"  2 x {next(iter(errors))}", "one line per distinct error, with its count"
    assert not lines[summary + 2].startswith("  "), "the same error is listed once"
    assert "every trial failed (exit status 1)" in done.stderr


def test_the_report_of_a_sweep_with_nothing_completed_says_so_and_lists_the_failures(all_failed: tuple[Path, subprocess.CompletedProcess]) -> None:
    """No trial completed (issue 20): `report` writes a page that says there is nothing to rank
    and shows each failure's error, exit 0, no traceback (a log-scaled axis had no values)."""
    out, _ = all_failed
    done, _ = defer_sweep("report", str(out))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    page = (out / "report" / "report.html").read_text()
    assert "No trial has completed all edits yet: there is nothing to rank or export." in page
    errors = {row["error"] for row in parquet_rows(out, "trials")}
    assert '<h2 id="failed">Failed trials</h2>' in page and all(html.escape(error, quote=True) in page for error in errors), errors


# -- item 8: the printed MLflow command and URL -----------------------------------------------------


def _printed_ui(stdout: str) -> tuple[list[str], str]:
    """The printed `mlflow ui` command (split as a shell would) and the page to open."""
    command = next(line for line in stdout.splitlines() if line.startswith("open the MLflow UI: "))
    url = next(line for line in stdout.splitlines() if line.startswith("  then browse "))
    return shlex.split(command.removeprefix("open the MLflow UI: ")), url.removeprefix("  then browse ")


@contextlib.contextmanager
def started(command: list[str], base: str, log_path: Path, timeout: float = 120) -> Iterator[None]:
    """Run the command (its own session, ended by its process group id) until /health answers."""
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, env=user_env(log_path.parent))
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert process.poll() is None, f"{command[0]} exited with {process.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}"
            with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            assert time.monotonic() < deadline, f"not up after {timeout}s:\n{log_path.read_text(errors='replace')[-3000:]}"
            time.sleep(0.5)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _dom(url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The DOM headless chromium has after the page's scripts ran (and a screenshot of it)."""
    args = ["--window-size=1400,900", "--virtual-time-budget=30000"]
    if screenshot is not None:
        shot = run_chromium([*args, f"--screenshot={screenshot}", url], profile, timeout=180)
        assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-2000:]
    done = run_chromium([*args, "--dump-dom", url], profile, timeout=180)
    assert done.returncode == 0 and "<html" in done.stdout, done.stderr[-2000:]
    return done.stdout


def test_printed_mlflow_command_works_as_printed_and_opens_on_the_sweep_run(all_failed: tuple[Path, subprocess.CompletedProcess], tmp_path: Path) -> None:
    out, done = all_failed
    command, url = _printed_ui(done.stdout)
    assert Path(command[0]).is_absolute() and os.access(command[0], os.X_OK), "the venv's mlflow, by full path"
    assert command[1:] == ["ui", "--backend-store-uri", state(out)["mlflow_tracking_uri"], "--host", "127.0.0.1", "--port", "5000"]
    port = free_port()  # 5000 may be taken on a shared machine: only the port changes
    command[-1] = str(port)
    base = f"http://127.0.0.1:{port}"
    page = urllib.parse.urlsplit(url)
    assert (page.scheme, page.netloc, page.path) == ("http", "127.0.0.1:5000", "/")
    route, _, query = page.fragment.partition("?")
    parent_id, experiment_id = route.rsplit("/", 1)[1], route.split("/")[2]
    assert route == f"/experiments/{experiment_id}/runs/{parent_id}" and query == UI_WORKFLOW

    with started(command, base, tmp_path / "mlflow-ui.log"):
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}", timeout=30) as response:
            experiment = json.loads(response.read())["experiment"]
        assert {t["key"]: t["value"] for t in experiment.get("tags", [])}.get(TAG_EXPERIMENT_KIND) == EXPERIMENT_KIND
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/runs/get?run_id={parent_id}", timeout=30) as response:
            parent = json.loads(response.read())["run"]
        assert parent["info"]["run_name"] == "allfailed" and parent["info"]["experiment_id"] == experiment_id

        shot = tmp_path / "mlflow-parent-run.png"
        run_dom = _dom(f"{base}/#{page.fragment}", tmp_path / "chromium", shot)
        assert "allfailed" in run_dom and parent_id in run_dom, "the run page shows the sweep's parent run"
        assert "Evaluation runs" not in run_dom, "in the model-training view, not the GenAI one"
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # its breadcrumb back to the experiment keeps the view: the runs table, not the traces overview
        experiment_dom = _dom(f"{base}/#/experiments/{experiment_id}?{query}", tmp_path / "chromium")
        assert "allfailed" in experiment_dom and "matching runs" in experiment_dom, "the experiment opens on its runs"
        assert "No data available" not in experiment_dom, "not the GenAI overview of traces"


# -- usage errors (issue 20, noise) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["confirm", "OUT", "--top", "2", "--pareto"], "defer-sweep confirm: error: argument --pareto: not allowed with argument --top (see defer-sweep confirm --help)"),
        (["export", "OUT", "--bogus"], "defer-sweep: error: unrecognized arguments: --bogus (see defer-sweep --help)"),
        (["run"], "defer-sweep run: error: the following arguments are required: spec (see defer-sweep run --help)"),
    ],
)
def test_a_usage_error_is_one_line_without_the_usage_block(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [expected]
