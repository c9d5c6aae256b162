"""Tune's experiment and the Parquet dataset on shared storage (spec key `storage_uri`).

A real S3 server (moto, on loopback, dummy credentials) holds a bucket; a tiny sweep runs with
`storage_uri: s3://BUCKET/PREFIX?endpoint_override=…&scheme=http`. Its results are read back
from the bucket with pyarrow's own S3 client, `defer-sweep resume/export/report` find them from
the output directory alone, and nothing of Tune or Parquet is written under that directory.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest

from defer_core import load_hparams
from defer_core.errors import DeferInputError
from orchestrator.cli import main
from orchestrator.results.store import ResultStore, read_table
from orchestrator.spec import load_spec
from orchestrator.storage import Location, local_location
from orchestrator.sweep.driver import execute
from orchestrator.sweep.preflight import prepare

from .orchestrator_support import children_by_trial, mlflow_runs, parquet_rows, state, tiny_spec

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "defer-results"
PREFIX = "sweeps/tiny"
NUM_TRIALS = 3
# Dummy credentials: moto accepts any; pyarrow reads them from the environment as it would on AWS.
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def s3(endpoint: str, **options: object) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", region="us-east-1", **options)


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server on a free loopback port with one bucket; stopped at the end."""
    saved = {key: os.environ.get(key) for key in AWS_ENV}
    os.environ.update(AWS_ENV)
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, "moto server exited"
            try:
                s3(endpoint, allow_bucket_creation=True).create_dir(BUCKET)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def storage_uri(endpoint: str, prefix: str = PREFIX, bucket: str = BUCKET) -> str:
    return f"s3://{bucket}/{prefix}?endpoint_override={endpoint}&scheme=http"


@dataclass(frozen=True)
class Swept:
    out: Path
    uri: str
    endpoint: str
    reported: dict[str, str]  # trial id -> status, from the sweep's progress lines


@pytest.fixture(scope="module")
def swept(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Swept:
    tmp = tmp_path_factory.mktemp("s3sweep")
    uri = storage_uri(s3_endpoint)
    spec = load_spec(tiny_spec(tmp, num_trials=NUM_TRIALS, storage_uri=uri, ray={"address": "local", "num_cpus": 2}))
    lines: list[str] = []
    outcome = execute(spec, prepare(spec), sink=lines.append)
    assert outcome.finished
    reported = {line.split()[4]: line.split()[3] for line in lines if line.startswith("[")}  # "[k/N done] #007 STATUS ID ..."
    return Swept(spec.output_dir, uri, s3_endpoint, reported)


def bucket_files(endpoint: str, under: str) -> list[str]:
    infos = s3(endpoint).get_file_info(pafs.FileSelector(f"{BUCKET}/{under}", recursive=True, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File)


def test_parquet_dataset_is_in_the_bucket_and_matches_what_the_sweep_reported(swept: Swept) -> None:
    files = bucket_files(swept.endpoint, f"{PREFIX}/parquet")
    for table in ("trials", "milestones", "edits"):
        assert sorted(f.rsplit("/", 1)[1] for f in files if f.split("/")[-2] == table) == sorted(f"{t}.parquet" for t in swept.reported)
    # read straight from the bucket with pyarrow's own S3 client, not through the product
    trials = pads.dataset(f"{BUCKET}/{PREFIX}/parquet/trials", filesystem=s3(swept.endpoint), format="parquet").to_table().to_pylist()
    assert {t["trial_id"]: t["status"] for t in trials} == swept.reported
    assert len(swept.reported) == NUM_TRIALS
    assert parquet_rows(swept.out, "trials") == sorted(trials, key=lambda t: t["trial_id"])
    _, children, _ = mlflow_runs(swept.out)
    assert {trial_id: run.data.tags["status"] for trial_id, run in children_by_trial(children).items()} == swept.reported
    milestones = parquet_rows(swept.out, "milestones")
    for trial in trials:
        assert max(m["n_edits"] for m in milestones if m["trial_id"] == trial["trial_id"]) == trial["n_edits"]


def test_tune_experiment_is_in_the_bucket(swept: Swept) -> None:
    names = {f.rsplit("/", 1)[1] for f in bucket_files(swept.endpoint, f"{PREFIX}/tune")}
    assert "tuner.pkl" in names
    assert any(n.startswith("experiment_state") and n.endswith(".json") for n in names)
    assert "result.json" in names  # the trials' own Tune results (JsonLoggerCallback)


def test_nothing_of_tune_or_parquet_is_under_the_output_dir(swept: Swept) -> None:
    assert state(swept.out)["storage_uri"] == swept.uri
    assert {p.name for p in swept.out.iterdir()} <= {"spec.yaml", "sweep.json", "optuna.db", "mlflow.db", "mlartifacts", "best.yaml", "report"}
    assert not [p for p in swept.out.rglob("*") if p.suffix in (".parquet", ".pkl") or p.name.startswith(("experiment_state", "result"))]


def test_export_and_report_read_the_bucket(swept: Swept, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    complete = [t for t in parquet_rows(swept.out, "trials") if t["status"] == "complete"]
    best = max(complete, key=lambda t: (t["rel_tf"], -t["optuna_trial"]))
    target = tmp_path / "best.yaml"
    assert main(["export", str(swept.out), "-o", str(target)]) == 0
    assert f"trial {best['trial_id']}" in capsys.readouterr().out
    hparams = load_hparams(target)
    assert (hparams.edit_lr, hparams.n_iter, hparams.threshold) == (best["edit_lr"], best["n_iter"], best["threshold"])
    assert main(["report", str(swept.out)]) == 0
    page = (swept.out / "report" / "report.html").read_text()
    assert best["trial_id"] in page and f"s3://{BUCKET}/{PREFIX}/parquet" in page


def test_resume_from_the_output_dir_alone_keeps_every_trial_once(swept: Swept) -> None:
    """A fresh process restores Tune from the bucket (sweep.json names it): nothing runs again."""
    before = {t["trial_id"]: t["finished_at"] for t in parquet_rows(swept.out, "trials")}
    resumed = subprocess.run([sys.executable, "-m", "orchestrator.cli", "resume", str(swept.out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"Parquet dataset: s3://{BUCKET}/{PREFIX}/parquet" in resumed.stdout
    assert not [line for line in resumed.stdout.splitlines() if line.startswith("[")]  # no trial ran again
    after = parquet_rows(swept.out, "trials")
    assert {t["trial_id"]: t["finished_at"] for t in after} == before
    for table, key in (("milestones", "n_edits"), ("edits", "edit_index")):
        rows = parquet_rows(swept.out, table)
        assert len({(r["trial_id"], r[key]) for r in rows}) == len(rows)


def test_a_new_sweep_on_a_used_prefix_is_refused_before_anything_is_written(swept: Swept, tmp_path: Path) -> None:
    spec = load_spec(tiny_spec(tmp_path, name="other", storage_uri=swept.uri))
    with pytest.raises(DeferInputError, match=r"key 'storage_uri' = .* already holds another sweep's"):
        execute(spec, prepare(spec))
    assert not spec.output_dir.exists()


def test_a_missing_bucket_fails_in_one_line_naming_the_key(s3_endpoint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tiny_spec(tmp_path, name="nobucket", storage_uri=storage_uri(s3_endpoint, bucket="no-such-bucket"))
    assert main(["run", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert "key 'storage_uri'" in err and "bucket 'no-such-bucket' does not exist" in err and "\n" not in err
    assert not (tmp_path / "nobucket").exists()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_parquet_sink_replaces_removes_and_reads_back(where: str, s3_endpoint: str, tmp_path: Path) -> None:
    root: Location = local_location(tmp_path / "parquet") if where == "local" else Location(s3(s3_endpoint), f"{BUCKET}/sink-test")
    sink = ResultStore(root)
    row = {"sweep_id": "s", "trial_id": "t1", "edit_index": 1, "chunk": 0, "record_id": "r", "final_loss": 0.5, "edit_seconds": 1.0, "success": 1.0}
    sink.write("edits", "t1", [row])
    sink.write("edits", "t1", [row, {**row, "edit_index": 2}])  # replaces, never appends
    sink.write("edits", "t2", [{**row, "trial_id": "t2"}])
    assert sink.pack_ids() == {"t1", "t2"}
    assert [(r["trial_id"], r["edit_index"]) for r in read_table(root, "edits").to_pylist()] == [("t1", 1), ("t1", 2), ("t2", 1)]
    sink.remove_pack("t1")
    sink.remove_pack("t1")  # already gone: no error
    assert sink.pack_ids() == {"t2"}
    sink.clear()
    assert sink.pack_ids() == set() and read_table(root, "edits").num_rows == 0
    if where == "local":
        assert not list((tmp_path / "parquet").rglob(".*"))  # no temporary file left behind


@pytest.mark.parametrize("where", ["local", "s3"])
def test_tune_state_is_restorable_only_when_tuner_pkl_and_a_snapshot_read_back(where: str, s3_endpoint: str, tmp_path: Path) -> None:
    """What Tuner.restore needs, told apart on either filesystem without unpickling anything:
    a start that failed while Tune wrote tuner.pkl (empty) or before its first snapshot is
    UNSAVED (`run` starts over, `resume` refuses); a snapshot beside an unreadable tuner.pkl,
    or an unreadable newest snapshot, is DAMAGED (both refuse)."""
    import ray.cloudpickle as cloudpickle

    from orchestrator.storage import write_bytes
    from orchestrator.sweep.tune_state import TuneSaved, delete_dir, tune_saved

    at: Location = local_location(tmp_path / "tune") if where == "local" else Location(s3(s3_endpoint), f"{BUCKET}/state-test/tune")
    whole = cloudpickle.dumps({"_tune_config": list(range(100)), "name": "tune"})
    assert tune_saved(at)[0] is TuneSaved.NOTHING
    write_bytes(at, "tuner.pkl", b"")  # the reported folder
    assert tune_saved(at)[0] is TuneSaved.UNSAVED
    write_bytes(at, "tuner.pkl", whole[:-1])
    assert tune_saved(at)[0] is TuneSaved.UNSAVED
    write_bytes(at, "tuner.pkl", whole)  # Tuner() done, fit stopped before the first snapshot
    assert tune_saved(at)[0] is TuneSaved.UNSAVED
    write_bytes(at, "experiment_state-2025-01-01_00-00-00.json", b'{"trial_data": []}')
    assert tune_saved(at)[0] is TuneSaved.RESTORABLE
    write_bytes(at, "experiment_state-2025-01-02_00-00-00.json", b'{"trial_da')  # the newest, cut short
    saved, why = tune_saved(at)
    assert saved is TuneSaved.DAMAGED and "experiment_state-2025-01-02_00-00-00.json: not valid JSON" in why
    write_bytes(at, "experiment_state-2025-01-02_00-00-00.json", b'{"trial_data": []}')
    write_bytes(at, "tuner.pkl", whole[: len(whole) // 2])
    saved, why = tune_saved(at)
    assert saved is TuneSaved.DAMAGED and "tuner.pkl: not a whole pickle" in why
    assert delete_dir(at) and tune_saved(at)[0] is TuneSaved.NOTHING and not delete_dir(at)
