"""`defer-sweep run` and `defer-sweep resume`: a sweep started or continued, then its outcome
(trial counts, failure reasons, where the results are); `print_exported` serves confirm too."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .console import ExitCode, quiet_libraries, sweep_console

if TYPE_CHECKING:
    from ..storage import Location
    from ..sweep.driver import ConfirmOutcome, SweepOutcome

MLFLOW_UI_HOST, MLFLOW_UI_PORT = "127.0.0.1", 5000  # what the printed `mlflow ui` command serves on


def run(args: argparse.Namespace) -> ExitCode:
    """`defer-sweep run SPEC [--output-dir DIR] [--force]`: start, or continue, the sweep."""
    from defer_core.runtime import stay_offline_by_default

    from ..spec import load_spec
    from ..sweep.preflight import check_inputs, check_machine, prepare

    stay_offline_by_default()  # before transformers is imported (the driver's preflight) and for Ray's workers
    spec = load_spec(args.spec)
    if args.output_dir:
        spec = spec.with_output_dir(args.output_dir)
    # What can be refused without Ray or the model is, before the driver's heavy imports and any output.
    check_machine(spec, args.spec)
    layout = prepare(spec, force=args.force)
    check_inputs(spec)
    from ..sweep.driver import execute

    sink, live = sweep_console(args)
    quiet_libraries(args.verbose_ray)
    print(f"sweep '{spec.name}': {spec.num_trials} trials of {spec.model.name}, T={spec.T}, output {layout.root}", flush=True)
    try:
        outcome = execute(spec, layout, sink=sink, verbose_ray=args.verbose_ray, live=live)
    except KeyboardInterrupt:  # a second Ctrl-C, while Tune was still stopping after the first
        print(_resume_hint(layout.root), file=sys.stderr)
        raise
    return _print_outcome(outcome)


def resume(args: argparse.Namespace) -> ExitCode:
    """`defer-sweep resume OUT_DIR`: continue an interrupted sweep from its directory alone."""
    from defer_core.runtime import stay_offline_by_default

    stay_offline_by_default()
    from ..sinks.layout import require_sweep_dir
    from ..sweep.lock import check_not_busy

    layout = require_sweep_dir(args.output_dir)
    check_not_busy(layout.root)
    from ..sweep.driver import resume as resume_sweep

    sink, live = sweep_console(args)
    quiet_libraries(args.verbose_ray)
    print(f"resuming the sweep in {layout.root}", flush=True)
    try:
        outcome = resume_sweep(layout.root, sink=sink, verbose_ray=args.verbose_ray, live=live)
    except KeyboardInterrupt:
        print(_resume_hint(layout.root), file=sys.stderr)
        raise
    return _print_outcome(outcome)


def _resume_hint(root: Path) -> str:
    return f"sweep not finished; continue it with: defer-sweep resume {root}"


def _failure_reasons(parquet: "Location") -> list[tuple[str, int]]:
    """The distinct errors of failed trials (the trials table's short error lines), most
    frequent first, so a sweep in which every trial failed says why once, not N times."""
    from collections import Counter

    from ..results.query import trial_rows
    from ..results.rows import Status

    rows = trial_rows(parquet, skip_unreadable=False)
    reasons = Counter(row.error or "no error text recorded" for row in rows if row.status == Status.FAILED)
    return reasons.most_common()


def print_exported(outcome: "SweepOutcome | ConfirmOutcome") -> None:
    """Where best.yaml (or why none) and the report are, after a sweep or a confirm stage."""
    if outcome.best_yaml:
        print(f"best.yaml:       {outcome.best_yaml}  ({outcome.best_reason})")
    else:
        print(f"best.yaml:       not written ({outcome.best_reason or 'no trial completed all edits'})")
    if outcome.report_html:
        print(f"report:          {outcome.report_html}")


def _mlflow_ui_lines(outcome: "SweepOutcome") -> list[str]:
    """How to see the sweep's parent run: its page on a tracking server, or a command that
    works as printed (the venv's mlflow by full path) and the page to open once it runs."""
    import shlex

    from ..sinks.mlflow_sink import run_page, sweep_mlflow

    uri = outcome.state.mlflow_tracking_uri
    store = sweep_mlflow(outcome.layout, outcome.state)
    experiment_id, parent = store.experiment_id, store.find_parent()
    if uri.startswith(("http://", "https://")):
        return [f"MLflow UI:       {run_page(uri, experiment_id, parent)}"]
    mlflow = Path(sys.executable).with_name("mlflow")  # the venv's, without activating it
    command = shlex.quote(str(mlflow)) if mlflow.is_file() else f"{shlex.quote(sys.executable)} -m mlflow"
    return [
        f"open the MLflow UI: {command} ui --backend-store-uri {shlex.quote(uri)} --host {MLFLOW_UI_HOST} --port {MLFLOW_UI_PORT}",
        f"  then browse {run_page(f'http://{MLFLOW_UI_HOST}:{MLFLOW_UI_PORT}', experiment_id, parent)}",
    ]


def _print_outcome(outcome: "SweepOutcome") -> ExitCode:
    from ..results.rows import Status

    layout, state, counts = outcome.layout, outcome.state, outcome.counts
    unfinished = f", {counts[Status.RUNNING]} unfinished" if counts[Status.RUNNING] else ""
    print(f"trials: {counts[Status.COMPLETE]} complete, {counts[Status.PRUNED]} pruned, {counts[Status.FAILED]} failed{unfinished}")
    if counts[Status.FAILED]:
        print("failed trials, by error:")
        for reason, count in _failure_reasons(layout.parquet):
            print(f"  {count} x {reason}")
    if not outcome.finished:
        print(_resume_hint(layout.root), file=sys.stderr)
        return ExitCode.INTERRUPTED
    if outcome.confirm is not None:  # confirm.auto ran the confirm stage after the sweep
        confirmed = outcome.confirm
        print(f"confirm trials: {confirmed.counts[Status.COMPLETE]} complete, {confirmed.counts[Status.FAILED]} failed ({confirmed.plan.repeats_text})")
        if not confirmed.finished:
            print(_resume_hint(layout.root), file=sys.stderr)
            return ExitCode.INTERRUPTED
    elif outcome.confirm_problem:
        print(f"confirm stage:   not run ({outcome.confirm_problem})")
    print(f"MLflow store:    {state.mlflow_tracking_uri} (experiment '{state.mlflow_experiment}')")
    from ..results.rows import TABLES

    print(f"Parquet dataset: {layout.parquet}  (tables: {', '.join(f'{table}/' for table in TABLES)})")
    print_exported(outcome)
    for line in _mlflow_ui_lines(outcome):
        print(line)
    if counts[Status.FAILED] and not counts[Status.COMPLETE] and not counts[Status.PRUNED]:
        print(f"defer-sweep: every trial failed (exit status {int(ExitCode.ALL_FAILED)}); the errors are listed above", file=sys.stderr)
        return ExitCode.ALL_FAILED
    return ExitCode.OK
