"""The command layer: one typed function per `defer-sweep` subcommand.

Each takes the parsed arguments, calls the domain code (which returns values and logs) and
prints what a person reads. Nothing below this module prints. Heavy imports (torch, Ray,
MLflow) happen inside the function that needs them, so `defer-sweep --help` stays light.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING

from defer_core.errors import DeferInputError
from defer_core.results import METRICS, default_milestones, metric_key, milestones_ending_at

if TYPE_CHECKING:
    from defer_core.results import MilestoneResult
    from defer_core.trial import TrialPlan

    from .sweep.driver import SweepOutcome


class ExitCode(IntEnum):
    OK = 0
    BAD_INPUT = 2  # a spec, path, data file or flag the user can fix (one line on stderr)
    INTERRUPTED = 130  # Ctrl-C, or a sweep that stopped before every trial ended: resumable


def print_line(line: str) -> None:
    """The progress sink sweeps print through (a module-level function, so Tune can pickle it)."""
    print(line, flush=True)


# -- trial ------------------------------------------------------------------------------------------


def parse_int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise DeferInputError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def trial_plan(args: argparse.Namespace) -> "TrialPlan":
    from defer_core.trial import TrialPlan

    if args.T < 1:
        raise DeferInputError(f"--T must be >= 1, got {args.T}")
    milestones = parse_int_list(args.milestones, "--milestones") if args.milestones else default_milestones(args.T)
    try:
        milestones = milestones_ending_at(milestones, args.T)
    except ValueError as error:
        raise DeferInputError(f"--milestones (with --T {args.T}) {error}") from None
    scorings = tuple(part.strip() for part in args.scoring.split(",") if part.strip())
    return TrialPlan(protocol=args.protocol, milestones=milestones, scorings=scorings, edit_path=args.edit_path)


def milestone_table(milestones: list["MilestoneResult"], scorings: tuple[str, ...]) -> str:
    columns = [metric_key(metric, scoring) for scoring in scorings for metric in METRICS]
    header = f"{'T':>6}  " + "  ".join(f"{name:>7}" for name in columns)
    lines = [header, "-" * len(header)]
    for milestone in milestones:
        lines.append(f"{milestone.n_edits:>6}  " + "  ".join(f"{milestone.metrics[name]:>7.3f}" for name in columns))
    return "\n".join(lines)


def trial(args: argparse.Namespace) -> ExitCode:
    """`defer-sweep trial HPARAMS --T N`: one continual-editing trial, per-edit progress on
    stderr, the milestone table (or JSON) on stdout."""
    from defer_core import EMBEDDED_MODEL, load_hparams, load_model, load_records, resolve_data_path, run_trial

    hparams = load_hparams(args.hparams)
    plan = trial_plan(args)
    data_path = resolve_data_path(args.data)
    records = load_records(data_path, limit=plan.total_records)
    model_name = args.model or EMBEDDED_MODEL
    started = time.perf_counter()
    loaded = load_model(model_name, dtype=args.dtype, device=args.device)
    load_seconds = time.perf_counter() - started

    def show_edit(outcome) -> None:
        print(
            f"edit {outcome.index:>5}  record {outcome.record_id:>6}  loss {outcome.final_loss:8.4f}  "
            f"success {outcome.success:5.2f}  {outcome.seconds:6.2f}s",
            file=sys.stderr,
            flush=True,
        )

    def show_milestone(milestone) -> None:
        scores = "  ".join(f"{key} {value:.3f}" for key, value in milestone.metrics.items())
        print(f"milestone T={milestone.n_edits} ({milestone.protocol}, eval {milestone.seconds:.1f}s): {scores}", file=sys.stderr, flush=True)

    print(
        f"DEFER trial: model {model_name} ({loaded.num_layers} layers, loaded in {load_seconds:.1f}s), "
        f"{hparams.module_path}, edit_lr {hparams.edit_lr:g}, n_iter {hparams.n_iter}, threshold {hparams.threshold:g}, "
        f"{plan.protocol} protocol, milestones {list(plan.milestones)}, data {data_path}",
        file=sys.stderr,
        flush=True,
    )
    result = run_trial(loaded, records, hparams, plan, seed=args.seed, on_edit=show_edit, on_milestone=show_milestone)
    edit_seconds = [edit.seconds for edit in result.edits]
    summary = {
        "model": model_name,
        "hparams": hparams.to_easyedit_dict(),
        "protocol": plan.protocol,
        "scorings": list(plan.scorings),
        "edit_path": plan.edit_path,
        "seconds_per_edit": sum(edit_seconds) / len(edit_seconds),
        "wall_seconds": time.perf_counter() - started,
        "milestones": [asdict(m) for m in result.milestones],
        "edits": [asdict(e) for e in result.edits],
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(milestone_table(result.milestones, plan.scorings))
        print(f"seconds per edit: {summary['seconds_per_edit']:.2f}  (wall {summary['wall_seconds']:.1f}s, {plan.edit_path} edit path)")
    return ExitCode.OK


# -- run / resume -------------------------------------------------------------------------------------


def _quiet_libraries(verbose_ray: bool) -> None:
    import optuna

    # with an http tracking URI MLflow prints "View run ... at ..." for every run it ends
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if not verbose_ray:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        # on resume, Tune warns about trials that had not written results yet: expected here
        logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


def _print_outcome(outcome: "SweepOutcome") -> ExitCode:
    from .protocol import Status

    layout, state, counts = outcome.layout, outcome.state, outcome.counts
    unfinished = f", {counts[Status.RUNNING]} unfinished" if counts[Status.RUNNING] else ""
    print(f"trials: {counts[Status.COMPLETE]} complete, {counts[Status.PRUNED]} pruned, {counts[Status.FAILED]} failed{unfinished}")
    if not outcome.finished:
        print(f"sweep not finished; continue it with: defer-sweep resume {layout.root}", file=sys.stderr)
        return ExitCode.INTERRUPTED
    print(f"MLflow store:    {state.mlflow_tracking_uri} (experiment '{state.mlflow_experiment}')")
    print(f"Parquet dataset: {layout.parquet}  (tables: trials/, milestones/, edits/)")
    if outcome.best_yaml:
        print(f"best.yaml:       {outcome.best_yaml}  ({outcome.best_reason})")
    else:
        print("best.yaml:       not written (no trial completed all edits)")
    if outcome.report_html:
        print(f"report:          {outcome.report_html}")
    print(f"open the MLflow UI: mlflow ui --backend-store-uri {state.mlflow_tracking_uri}")
    return ExitCode.OK


def run(args: argparse.Namespace) -> ExitCode:
    """`defer-sweep run SPEC [--output-dir DIR]`: start, or continue, the sweep."""
    from .spec import load_spec
    from .sweep.driver import execute, prepare

    spec = load_spec(args.spec)
    if args.output_dir:
        spec = spec.with_output_dir(args.output_dir)
    layout = prepare(spec)
    _quiet_libraries(args.verbose_ray)
    print(f"sweep '{spec.name}': {spec.num_trials} trials of {spec.model.name}, T={spec.T}, output {layout.root}", flush=True)
    return _print_outcome(execute(spec, layout, sink=print_line, verbose_ray=args.verbose_ray))


def resume(args: argparse.Namespace) -> ExitCode:
    """`defer-sweep resume OUT_DIR`: continue an interrupted sweep from its directory alone."""
    from .sinks.layout import require_sweep_dir
    from .sweep.driver import resume as resume_sweep

    _quiet_libraries(args.verbose_ray)
    layout = require_sweep_dir(args.output_dir)
    print(f"resuming the sweep in {layout.root}", flush=True)
    return _print_outcome(resume_sweep(layout.root, sink=print_line, verbose_ray=args.verbose_ray))


# -- export / report ---------------------------------------------------------------------------------


def export(args: argparse.Namespace) -> ExitCode:
    """`defer-sweep export OUT_DIR [--objective NAME | --pareto-index K] [-o FILE]`."""
    from .export import export_best, mlflow_for
    from .sinks.layout import require_sweep_dir
    from .spec import load_spec

    layout = require_sweep_dir(args.output_dir)
    spec = load_spec(layout.spec)
    output = Path(args.output).expanduser().resolve() if args.output else None
    target, chosen = export_best(layout, spec, output, args.objective, args.pareto_index, mlflow_for(layout))
    hparams = chosen.hparams
    print(f"wrote {target}: trial {chosen.row['trial_id']} ({chosen.reason})")
    print(f"  {hparams.module_path}  edit_lr={hparams.edit_lr:g}  n_iter={hparams.n_iter}  threshold={hparams.threshold:g}")
    return ExitCode.OK


def report(args: argparse.Namespace) -> ExitCode:
    """`defer-sweep report OUT_DIR`: writes OUT_DIR/report/ and prints where it is."""
    from .report import MLFLOW_ARTIFACT_PATH, write_report_files

    written = write_report_files(args.output_dir)
    print(f"report: {written.page}")
    print(f"  plots: {', '.join(written.plots)}")
    if written.mlflow_run_id:
        print(f"  logged to MLflow run {written.mlflow_run_id} under {MLFLOW_ARTIFACT_PATH}/")
    else:
        print("  not logged to MLflow (see the warning above)")
    return ExitCode.OK
