"""`defer-sweep report OUT_DIR`: PNG plots and one self-contained HTML page for a sweep.

Everything is read from the sweep's output directory (see layout.py): the Parquet trials,
milestones, points, gates and grid tables (there, or at the storage_uri its sweep.json
names), the spec, and the Optuna study named in sweep.json. The report goes to OUT/report/ (report.html with every plot
embedded as base64, plus the PNGs beside it) and is logged as artifacts under `report/` of the
sweep's MLflow parent run.

What the page shows:
- the Pareto front of Rel vs Loc at T for each scoring (tf, gen), completed trials only (in
  curve mode every (training, threshold) point of their curves; with constraints, the front
  holds feasible points only and the constraints are drawn);
- in curve mode, Rel / Gen / Loc against the threshold for the top trainings (tf exact from
  the gates table, generation on the spec's grid) and each training's Rel-Loc trade-off;
- Rel / Gen / Loc against the number of edits for every trial, the best one highlighted;
- hyperparameter importance from Optuna's evaluators (fANOVA and PED-ANOVA) on the study,
  or a note saying why there are too few completed trials;
- each objective against each searched hyperparameter;
- the top trials (curve mode: points) with their metrics and the editor's EasyEdit YAML
  `defer-sweep export` would write for them.

The parts: data.py loads the sweep, importance.py asks Optuna, plots.py picks the figures
(figures.py draws them, drawing.py holds what they share), html.py writes
the page; this module puts the files on disk and hands them to the MLflow sink.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from defer_core.files import atomic_write_bytes, atomic_write_text, make_dirs

from ..sinks.layout import REPORT_DIR, SweepLayout, SweepState, require_sweep_dir
from ..sinks.mlflow_sink import sweep_mlflow
from .data import TOP_TRIALS, best_yaml_notes, load_sweep
from .html import render_html
from .importance import MIN_IMPORTANCE_TRIALS, load_study, param_importances
from .plots import Plot, build_plots, is_report_png

__all__ = [
    "HTML_NAME",
    "MIN_IMPORTANCE_TRIALS",
    "MLFLOW_ARTIFACT_PATH",
    "REPORT_DIR",
    "TOP_TRIALS",
    "WrittenReport",
    "param_importances",
    "write_report",
    "write_report_files",
]

log = logging.getLogger(__name__)

HTML_NAME = "report.html"
MLFLOW_ARTIFACT_PATH = "report"


@dataclass(frozen=True)
class WrittenReport:
    page: Path  # report.html
    plots: list[str]  # PNG file names beside it
    mlflow_run_id: str | None  # the parent run it was logged to, if any


def write_report(out_dir: str | os.PathLike[str], report_dir: str | os.PathLike[str] | None = None, *, log_to_mlflow: bool = True) -> Path:
    """Write OUT/report/report.html and its PNGs (atomically, file by file) and log them to
    the sweep's MLflow parent run. Returns the HTML file's path. Safe to call while a sweep is
    still running (it shows what has finished) and at the end of `defer-sweep run`."""
    return write_report_files(out_dir, report_dir, log_to_mlflow=log_to_mlflow).page


def write_report_files(out_dir: str | os.PathLike[str], report_dir: str | os.PathLike[str] | None = None, *, log_to_mlflow: bool = True) -> WrittenReport:
    """write_report, also saying which PNGs it wrote and which MLflow run holds them."""
    layout = require_sweep_dir(out_dir)
    data = load_sweep(layout)
    target = Path(report_dir).expanduser().resolve() if report_dir is not None else layout.report_dir
    make_dirs(target, "the report folder")
    importance = param_importances(load_study(data.state), data.spec.objectives, list(data.spec.search_space.searched()))
    plot_list = build_plots(data, importance)
    written = _write_pngs(target, plot_list)
    page = target / HTML_NAME
    atomic_write_text(page, render_html(data, plot_list, importance, best_yaml_notes(data)))
    log.info("report: wrote %s (%d plots)", page, len(plot_list))
    run_id = log_report_to_mlflow(layout, data.state, target) if log_to_mlflow else None
    if run_id:
        log.info("report: logged to MLflow run %s under %s/", run_id, MLFLOW_ARTIFACT_PATH)
    return WrittenReport(page, written, run_id)


def _write_pngs(target: Path, plot_list: list[Plot]) -> list[str]:
    """Writes each plot's PNG and deletes the ones an earlier report had and this one has not;
    returns the file names written, sorted."""
    written = set()
    for plot in plot_list:
        atomic_write_bytes(target / f"{plot.name}.png", plot.png)
        written.add(f"{plot.name}.png")
    for stale in target.glob("*.png"):
        if is_report_png(stale.name) and stale.name not in written:
            stale.unlink()
    return sorted(written)


def log_report_to_mlflow(layout: SweepLayout, state: SweepState, report_dir: Path) -> str | None:
    """Logs the report's files under `report/` of the sweep's parent run (found by the tags
    the MLflow sink gives it); returns the run id, or None when it could not be logged (the
    sink says why; the files on disk are the report either way)."""
    try:
        return sweep_mlflow(layout, state).log_report(report_dir, MLFLOW_ARTIFACT_PATH)
    except Exception as error:  # an unreachable tracking server must not lose the report
        log.warning("report: could not log to MLflow (%s): %s", state.mlflow_tracking_uri, error)
        return None
