"""`defer-sweep report`: a sweep's PNG plots and HTML page, and where they are."""

from __future__ import annotations

import argparse

from .console import ExitCode


def report(args: argparse.Namespace) -> ExitCode:
    """`defer-sweep report OUT_DIR`: writes OUT_DIR/report/ and prints where it is."""
    from ..report import MLFLOW_ARTIFACT_PATH, write_report_files

    written = write_report_files(args.output_dir)
    print(f"report: {written.page}")
    print(f"  plots: {', '.join(written.plots) or 'none (no trial reported a metric to plot)'}")
    if written.mlflow_run_id:
        print(f"  logged to MLflow run {written.mlflow_run_id} under {MLFLOW_ARTIFACT_PATH}/")
    else:
        print("  not logged to MLflow (see the warning above)")
    return ExitCode.OK
