"""A sweep's output folder can be copied or moved (`ray rsync-down` off a cluster) and `export`
and `report` still work on it, reading and writing only inside it; `resume` of a moved folder
is refused in one line. Output paths that cannot be written are one-line errors, exit 2, and
leave nothing behind.

One real tiny sweep (a `defer-sweep run` process: local Ray, Optuna and MLflow on SQLite) is
copied with shutil.copytree; the commands run through `orchestrator.cli.main`. "Untouched" is
checked by a snapshot of every file's and folder's size and mtime.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from defer_core import load_hparams
from orchestrator.cli import main
from orchestrator.sinks.layout import SWEEP_FORMAT

from .orchestrator_support import mlflow_runs, state, tiny_spec

ROOT = Path(__file__).parents[1]
Snapshot = dict[str, tuple[int, int]]


def snapshot(root: Path) -> Snapshot:
    """Every path under root (root included) with its size and mtime."""
    return {str(path.relative_to(root)): (path.lstat().st_size, path.lstat().st_mtime_ns) for path in (root, *root.rglob("*"))}


def report_pngs(out: Path) -> set[str]:
    return {path.name for path in (out / "report").glob("*.png")}


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("defer-sweep: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 trials, none stopped early, so every one completes and the report has importance."""
    tmp = tmp_path_factory.mktemp("made-here")
    spec = tiny_spec(tmp, name="origin", num_trials=4, early_stopping=False)
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(spec)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp / "origin"
    assert "importance.png" in report_pngs(out), "the fixture needs enough completed trials for the importance plot"
    return out


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nothing can be created in, even by root (whom mode bits do not stop): a
    read-only tmpfs mounted on it, else the immutable attribute, else (not root) mode 0555."""
    path = tmp_path / "read-only"
    path.mkdir()
    ways = [
        (["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], ["umount", str(path)]),
        (["chattr", "+i", str(path)], ["chattr", "-i", str(path)]),
    ]
    if os.geteuid() != 0:
        ways.append((["chmod", "0555", str(path)], ["chmod", "0755", str(path)]))
    for protect, release in ways:
        if shutil.which(protect[0]) and subprocess.run(protect, capture_output=True).returncode == 0:
            try:
                assert not os.access(path, os.W_OK)
                yield path
            finally:
                subprocess.run(release, check=True)
            return
    pytest.skip("no way to make a read-only directory here: running as root without `mount -t tmpfs -o ro` or `chattr +i`")


# -- copied and moved folders -----------------------------------------------------------------------


def test_sweep_json_names_the_default_stores_relative_to_the_folder(swept: Path) -> None:
    text = (swept / "sweep.json").read_text()
    assert str(swept) not in text
    recorded = json.loads(text)
    assert recorded["mlflow_tracking_uri"] is None and recorded["optuna_storage"] is None  # null: OUT/mlflow.db, OUT/optuna.db
    assert state(swept)["mlflow_tracking_uri"] == f"sqlite:///{swept / 'mlflow.db'}"
    assert state(swept)["optuna_storage"] == f"sqlite:///{swept / 'optuna.db'}"


def test_export_and_report_on_a_copy_write_only_inside_it(swept: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(swept, copy)
    before = snapshot(swept)

    assert main(["export", str(copy), "--objective", "mean_tf", "-o", str(copy / "chosen.yaml")]) == 0
    assert main(["report", str(copy)]) == 0

    assert snapshot(swept) == before, "export/report on the copy changed the original folder"
    assert load_hparams(copy / "chosen.yaml").model_name == "tiny-llama"
    assert f"report: {copy / 'report' / 'report.html'}" in capsys.readouterr().out
    assert report_pngs(copy) == report_pngs(swept)  # importance included
    assert "MLflow artifacts not logged" in caplog.text  # the copy's runs name the original's artifact folder
    assert state(copy)["mlflow_tracking_uri"] == f"sqlite:///{copy / 'mlflow.db'}"
    parent, _, client = mlflow_runs(copy)  # the copy's own mlflow.db holds the sweep's parent run
    assert parent.data.tags["best.reason"].startswith("best rel_tf")  # a side export leaves the sweep's best alone (issue 20)
    client.set_tag(parent.info.run_id, "best.reason", "stale")
    assert main(["export", str(copy)]) == 0  # the sweep's own export: its tags go to the copy's own store
    assert mlflow_runs(copy)[0].data.tags["best.reason"].startswith("best rel_tf")
    assert snapshot(swept) == before, "the copy's own export changed the original folder"
    original_parent, _, _ = mlflow_runs(swept)
    assert original_parent.data.tags["best.reason"].startswith("best rel_tf")


def test_with_the_original_moved_away_the_copy_still_exports_and_reports(swept: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing re-creates the old place; resume of the moved folder is refused in one line and
    changes nothing."""
    moved = tmp_path / "moved"
    shutil.copytree(swept, moved)
    (moved / "best.yaml").unlink()
    shutil.rmtree(moved / "report")
    away = swept.with_name(f"{swept.name}-away")
    swept.rename(away)
    try:
        assert main(["export", str(moved)]) == 0
        assert main(["report", str(moved)]) == 0
        assert not swept.exists(), "export/report re-created the old folder"
        assert (moved / "best.yaml").is_file()
        assert "importance.png" in report_pngs(moved), "the Optuna study in the moved folder was not found"
        parent, children, _ = mlflow_runs(moved)
        assert parent.data.tags["best.trial_id"] and len(children) == 4
        capsys.readouterr()

        before = snapshot(moved)
        assert main(["resume", str(moved)]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"{moved}: this sweep was created in {swept}; resume it there" in line
        assert snapshot(moved) == before
        assert not swept.exists()
    finally:
        if swept.exists():  # a stray folder the old place got re-created as: keep the fixture intact
            shutil.rmtree(swept)
        away.rename(swept)


def test_run_or_resume_into_a_copied_folder_is_refused_in_one_line(swept: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Ray Tune's saved experiment points at the original: continuing the copy would write there."""
    copy = tmp_path / "copy"
    shutil.copytree(swept, copy)
    before, before_copy = snapshot(swept), snapshot(copy)
    for argv in (["run", str(copy / "spec.yaml"), "--output-dir", str(copy)], ["resume", str(copy)]):
        assert main(argv) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"{copy}: this sweep was created in {swept}; resume it there" in line, line
    assert snapshot(swept) == before and snapshot(copy) == before_copy


@pytest.mark.parametrize("written", ["before formats", "a later format"])
def test_a_folder_of_another_format_is_refused_in_one_line_by_every_command(swept: Path, tmp_path: Path, written: str,
                                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """sweep.json as earlier versions wrote it (no format, absolute paths into the folder it was
    made in), or with a format this version does not know: refused, naming who wrote it."""
    other = tmp_path / "other"
    shutil.copytree(swept, other)
    recorded = json.loads((other / "sweep.json").read_text())
    assert recorded["format"] == SWEEP_FORMAT and recorded["written_by"].startswith("defer-sweep ")
    if written == "before formats":
        del recorded["format"], recorded["written_by"]
        recorded.update(mlflow_tracking_uri=f"sqlite:///{swept / 'mlflow.db'}", optuna_storage=f"sqlite:///{swept / 'optuna.db'}")
        expected = f"{other}: a sweep folder of format none, written by a defer-sweep from before sweep folders carried a format; "
    else:
        recorded.update(format=SWEEP_FORMAT + 1, written_by="defer-sweep 9.0")
        expected = f"{other}: a sweep folder of format {SWEEP_FORMAT + 1}, written by defer-sweep 9.0; "
    (other / "sweep.json").write_text(json.dumps(recorded, indent=2))
    before, before_swept = snapshot(other), snapshot(swept)

    for argv in (["export", str(other), "-o", str(tmp_path / "chosen.yaml")], ["report", str(other)], ["resume", str(other)],
                 ["table", str(other)], ["confirm", str(other)]):
        assert main(argv) == 2, argv
        line = one_error_line(capsys.readouterr().err)
        assert expected in line and f"reads format {SWEEP_FORMAT} only" in line, line
    assert snapshot(other) == before and snapshot(swept) == before_swept
    assert not (tmp_path / "chosen.yaml").exists()


# -- output paths that cannot be written ---------------------------------------------------------------


@pytest.mark.parametrize("case", ["a file", "under a file", "in a read-only folder"])
def test_run_with_an_unusable_output_dir_is_one_line_and_leaves_nothing(case: str, tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]) -> None:
    taken = tmp_path / "taken"
    taken.write_text("not a folder\n")
    out, reason = {
        "a file": (taken, "it is a file"),
        "under a file": (taken / "out", f"{taken} is a file, not a directory"),
        "in a read-only folder": (None, None),
    }[case]
    if out is None:
        read_only = request.getfixturevalue("read_only_dir")
        out, reason = read_only / "out", f"{read_only} is "  # on a read-only file system / not writable
    spec = tiny_spec(tmp_path, output_dir=str(out))
    before = snapshot(tmp_path)

    assert main(["run", str(spec)]) == 2

    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"defer-sweep: error: {out}: cannot be the output directory: {reason}"), line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", ["an existing directory", "under a file", "in a read-only folder"])
def test_export_to_an_unusable_path_is_one_line_and_leaves_nothing(case: str, swept: Path, tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]) -> None:
    taken = tmp_path / "taken"
    taken.write_text("not a folder\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    target, expected = {
        "an existing directory": (folder, f"{folder}: is a directory; expected the name of a file to write"),
        "under a file": (taken / "best.yaml", f"{taken / 'best.yaml'}: cannot write it: {taken} is a file, not a directory"),
        "in a read-only folder": (None, None),
    }[case]
    if target is None:
        read_only = request.getfixturevalue("read_only_dir")
        target, expected = read_only / "best.yaml", f"{read_only / 'best.yaml'}: cannot write it: {read_only} is "
    before, before_sweep = snapshot(tmp_path), snapshot(swept)

    assert main(["export", str(swept), "-o", str(target)]) == 2

    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"defer-sweep: error: {expected}"), line
    assert snapshot(tmp_path) == before, "a temporary file or folder was left behind"
    assert snapshot(swept) == before_sweep
