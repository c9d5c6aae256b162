"""`defer-sweep --help`, `defer-sweep export` and `defer-sweep curve` must not import torch or
transformers.

Each check runs in a fresh interpreter (this test process has torch loaded by conftest), with
the repository root as the working directory so `defer_core` and `orchestrator` import from it.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).parents[1]

HEAVY = ("torch", "transformers")

EXPORT_MODULES = (
    "orchestrator.commands",
    "orchestrator.commands.export",
    "orchestrator.commands.curve",
    "orchestrator.commands.table",
    "orchestrator.export",
    "orchestrator.spec",
    "orchestrator.sinks.layout",
    "orchestrator.results.store",
    "orchestrator.sinks.mlflow_sink",
    "orchestrator.search.space",
    "orchestrator.results.ranking",
    "orchestrator.results.candidates",
    "orchestrator.sinks.records",
    "orchestrator.results.curve",
    "orchestrator.table",
    "defer_core.curve",
)


def run_fresh(code: str) -> subprocess.CompletedProcess[str]:
    """Run `code`, then print which heavy modules it imported (one line: HEAVY=[...])."""
    check = f"\nimport sys\nprint('HEAVY=' + repr(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code) + check], cwd=ROOT, capture_output=True, text=True, timeout=300)


def heavy_imported(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("HEAVY="))
    return ast.literal_eval(line.removeprefix("HEAVY="))


def test_help_does_not_import_torch() -> None:
    result = run_fresh(
        """
        from orchestrator.cli import main
        try:
            main(["--help"])
        except SystemExit as stop:
            assert stop.code == 0, stop.code
        """
    )
    assert heavy_imported(result) == []
    assert "usage: defer-sweep" in result.stdout


def test_export_modules_do_not_import_torch() -> None:
    result = run_fresh("".join(f"import {module}\n" for module in EXPORT_MODULES))
    assert heavy_imported(result) == []


def test_export_command_does_not_import_torch(tmp_path: Path) -> None:
    """The whole `defer-sweep export OUT` on a minimal sweep directory: spec, state, MLflow
    parent run and one completed trial row."""
    from orchestrator.protocol import METRIC_COLUMNS
    from orchestrator.results.rows import Status
    from orchestrator.sinks.layout import SweepLayout, SweepState, save_state
    from orchestrator.sinks.mlflow_sink import MlflowSink
    from orchestrator.results.store import ResultStore

    layout = SweepLayout(tmp_path / "sweep")
    layout.root.mkdir()
    shutil.copy(ROOT / "tests" / "specs" / "tiny.yaml", layout.spec)
    state = SweepState(sweep_id="light", mlflow_tracking_uri=layout.default_stores["mlflow_tracking_uri"], mlflow_experiment="tiny",
                       optuna_storage="", optuna_study_name="tiny")
    save_state(layout, state)
    sink = MlflowSink(state.mlflow_tracking_uri, state.mlflow_experiment, state.sweep_id, artifact_location=layout.mlflow_artifacts.as_uri())
    sink.open_sweep("tiny", {}, layout.spec)
    row = {"sweep_id": "light", "sweep_name": "tiny", "trial_id": "t0", "pack_id": "p0", "optuna_trial": 0, "status": Status.COMPLETE.value,
           "layer": 2, "module": "model.layers[2].mlp.down_proj", "edit_lr": 0.05, "n_iter": 5, "threshold": 0.5, "model": "tiny-llama",
           "protocol": "stream", "T": 6, "n_edits": 6, **{metric: 0.5 for metric in METRIC_COLUMNS}}
    ResultStore(layout.parquet).write("trials", "p0", [row])
    target = tmp_path / "best.yaml"

    result = run_fresh(
        f"""
        from orchestrator.cli import main
        assert main(["export", {str(layout.root)!r}, "-o", {str(target)!r}]) == 0
        """
    )
    assert heavy_imported(result) == []
    assert "model.layers[2].mlp.down_proj.weight" in target.read_text(encoding="utf-8")


def test_curve_command_does_not_import_torch(tmp_path: Path) -> None:
    """`defer-sweep curve OUT #000` on a minimal sweep directory: spec, state, one trial row and
    its gate rows; it reads Parquet only."""
    from orchestrator.sinks.layout import SweepLayout, SweepState, save_state
    from orchestrator.results.store import ResultStore

    layout = SweepLayout(tmp_path / "sweep")
    layout.root.mkdir()
    shutil.copy(ROOT / "tests" / "specs" / "tiny.yaml", layout.spec)
    save_state(layout, SweepState(sweep_id="light", mlflow_tracking_uri=layout.default_stores["mlflow_tracking_uri"], mlflow_experiment="tiny",
                                  optuna_storage="", optuna_study_name="tiny"))
    sink = ResultStore(layout.parquet)
    sink.write("trials", "p0", [{"sweep_id": "light", "trial_id": "t0", "pack_id": "p0", "optuna_trial": 0, "status": "complete", "n_edits": 6, "dtype": "float32"}])
    sink.write("gates", "p0", [{"sweep_id": "light", "trial_id": "t0", "n_edits": 6, "protocol": "stream", "chunk": 0, "record_id": "r0", "probe": probe,
                                "gate": 0.25, "on": 1.0, "off": 1.0 if probe == "loc" else 0.0} for probe in ("rel", "gen", "loc")])

    result = run_fresh(
        f"""
        from orchestrator.cli import main
        assert main(["curve", {str(layout.root)!r}, "#000", "--format", "csv"]) == 0
        """
    )
    assert heavy_imported(result) == []
    assert "curve,0.25,1.0,1.0,1.0" in result.stdout and "curve,1.0,0.0,0.0,1.0" in result.stdout


def test_the_sweep_driver_does_not_import_torch_or_transformers() -> None:
    """The driver only schedules: the trial actors load torch and the model (about 5 s of every
    `run`, `resume` and `confirm` start otherwise); it still hands Tune the real trainable."""
    result = run_fresh(
        """
        import orchestrator.sweep.driver
        from orchestrator.sweep.stage import defer_trainable
        assert defer_trainable.__module__ == "orchestrator.worker.trainable"
        """
    )
    assert heavy_imported(result) == []


def test_trial_and_compare_refuse_a_bad_record_before_importing_torch(tmp_path: Path) -> None:
    """Issue 20: a data file that cannot be used is refused before the model (and torch) loads."""
    bad = tmp_path / "bad.json"
    bad.write_text('[{"src": "", "alt": "x", "rephrase": "y", "loc": "nq question: a", "loc_ans": "b", "answers": ["c"]}]')
    hparams = str(ROOT / "hparams" / "DEFER" / "llama-7b.yaml")
    for command in ("trial", "compare"):
        result = run_fresh(
            f"""
            from orchestrator.cli import main
            assert main([{command!r}, {hparams!r}, "--T", "1", "--data", {str(bad)!r}]) == 2
            """
        )
        assert heavy_imported(result) == [], command
        assert result.stderr.strip() == f"defer-sweep: error: {bad}: record 0: field 'src' is empty", result.stderr
