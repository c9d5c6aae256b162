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
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence, TextIO

from defer_core.errors import DeferInputError
from defer_core.results import METRICS, default_milestones, metric_key, milestones_ending_at

if TYPE_CHECKING:
    from defer_core.hparams import DeferHParams
    from defer_core.results import MilestoneResult, TrialResult
    from defer_core.trial import TrialPlan

    from .intervals import Interval
    from .sinks.progress import LiveOutput
    from .storage import Location
    from .sweep.confirm import ConfirmRequest
    from .sweep.driver import ConfirmOutcome, SweepOutcome


class ExitCode(IntEnum):
    OK = 0
    ALL_FAILED = 1  # a finished sweep in which every trial failed (the reasons are printed)
    BAD_INPUT = 2  # a spec, path, data file or flag the user can fix (one line on stderr)
    INTERRUPTED = 130  # Ctrl-C, or a sweep that stopped before every trial ended: resumable


TTY_REFRESH_S = 1.0  # a terminal's live block is redrawn this often
MLFLOW_UI_HOST, MLFLOW_UI_PORT = "127.0.0.1", 5000  # what the printed `mlflow ui` command serves on


def print_line(line: str) -> None:
    """The progress sink sweeps print through."""
    print(line, flush=True)


def print_lines(lines: Sequence[str]) -> None:
    """Live progress in a log (stdout not a terminal): plain lines, every --progress-every seconds."""
    if lines:
        print("\n".join(lines), flush=True)


class Terminal:
    """Trial lines scroll; the live block stays under them, redrawn in place (ANSI: cursor up,
    clear to the end), each line cut to the terminal's width so the count of lines to move up
    holds. No progress-bar library: the block is a few text lines that change every second,
    which rich or tqdm would only wrap, and both would be one more dependency."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._block: list[str] = []

    def line(self, text: str) -> None:
        self._clear()
        self.stream.write(text + "\n")
        self._draw(self._block)

    def status(self, lines: Sequence[str]) -> None:
        self._clear()
        self._draw(list(lines))

    def _draw(self, lines: list[str]) -> None:
        width = max(20, shutil.get_terminal_size().columns - 1)
        self._block = [line[:width] for line in lines]
        self.stream.write("".join(f"{line}\n" for line in self._block))
        self.stream.flush()

    def _clear(self) -> None:
        if self._block:
            self.stream.write(f"\x1b[{len(self._block)}F\x1b[J")


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
    return TrialPlan(protocol=args.protocol, milestones=milestones, scorings=scorings, edit_path=args.edit_path, threads=args.threads)


def parse_seeds(text: str, flag: str) -> tuple[int, ...]:
    seeds = parse_int_list(text, flag)
    if not seeds or len(set(seeds)) != len(seeds):
        raise DeferInputError(f"{flag}: expected distinct comma-separated integers, got {text!r}")
    return seeds


def require_orders(orders: int, flag: str) -> int:
    if orders < 1:
        raise DeferInputError(f"{flag}: expected a number of edit orders >= 1, got {orders}")
    return orders


def trial_seeds(args: argparse.Namespace) -> tuple[int, ...]:
    """--seeds, or the single --seed (default 0); both at once is ambiguous."""
    if args.seeds is not None and args.seed is not None:
        raise DeferInputError(f"--seed {args.seed} and --seeds {args.seeds}: give one of them")
    if args.seeds is not None:
        return parse_seeds(args.seeds, "--seeds")
    return (0 if args.seed is None else args.seed,)


def milestone_table(milestones: list["MilestoneResult"], scorings: tuple[str, ...]) -> str:
    columns = [metric_key(metric, scoring) for scoring in scorings for metric in METRICS]
    header = f"{'T':>6}  " + "  ".join(f"{name:>7}" for name in columns)
    lines = [header, "-" * len(header)]
    for milestone in milestones:
        lines.append(f"{milestone.n_edits:>6}  " + "  ".join(f"{milestone.metrics[name]:>7.3f}" for name in columns))
    return "\n".join(lines)


def milestone_intervals(results: Sequence["TrialResult"], confidence: float) -> list[tuple["MilestoneResult", dict[str, "Interval"]]]:
    """Each milestone (as the first member reports it) with every metric's Student t interval
    over the members, which share the plan and so report the same milestones in the same order."""
    from .intervals import repeat_interval

    first = results[0].milestones
    return [(milestone, {key: repeat_interval([r.milestones[i].metrics[key] for r in results], confidence) for key in milestone.metrics})
            for i, milestone in enumerate(first)]


def interval_table(rows: list[tuple["MilestoneResult", dict[str, "Interval"]]], scorings: tuple[str, ...]) -> str:
    """`milestone_table` with "mean ± half-width" cells."""
    from .intervals import format_interval

    columns = [metric_key(metric, scoring) for scoring in scorings for metric in METRICS]
    header = f"{'T':>6}  " + "  ".join(f"{name:>13}" for name in columns)
    lines = [header, "-" * len(header)]
    for milestone, intervals in rows:
        lines.append(f"{milestone.n_edits:>6}  " + "  ".join(f"{format_interval(intervals[name], 3):>13}" for name in columns))
    return "\n".join(lines)


def trial(args: argparse.Namespace) -> ExitCode:
    """`defer-sweep trial HPARAMS --T N`: one continual-editing trial, per-edit progress on
    stderr, the milestone table (or JSON) on stdout."""
    from defer_core.runtime import EMBEDDED_MODEL, model_problem, require_device, stay_offline_by_default

    stay_offline_by_default()  # before transformers is imported: huggingface_hub reads it once
    require_device(args.device, "--device")  # device and model answered before the heavy imports
    model_name = args.model or EMBEDDED_MODEL
    if problem := model_problem(model_name):
        raise DeferInputError(f"--model: {problem}")
    from defer_core import load_hparams, load_model, load_records, model_dtype, resolve_data_path, run_trial

    hparams = load_hparams(args.hparams)
    plan = trial_plan(args)
    seeds, orders = trial_seeds(args), require_orders(args.orders, "--orders")
    data_path = resolve_data_path(args.data)
    records = load_records(data_path, limit=plan.total_records, strip=args.strip)
    if hparams.model_name and hparams.model_name != model_name:
        chosen = "given with --model" if args.model else "the default; choose another with --model"
        print(f"defer-sweep: warning: {args.hparams} names model_name {hparams.model_name!r}; this trial runs {model_name!r} ({chosen})", file=sys.stderr, flush=True)
    started = time.perf_counter()
    loaded = load_model(model_name, dtype=args.dtype, device=args.device)
    load_seconds = time.perf_counter() - started

    members = [(seed, order) for order in range(orders) for seed in seeds]
    member = ""  # "seed S order O: " before each progress line when there are several members

    def show_edit(outcome) -> None:
        print(
            f"{member}edit {outcome.index:>5}  record {outcome.record_id:>6}  loss {outcome.final_loss:8.4f}  "
            f"success {outcome.success:5.2f}  {outcome.seconds:6.2f}s",
            file=sys.stderr,
            flush=True,
        )

    def show_milestone(milestone) -> None:
        scores = "  ".join(f"{key} {value:.3f}" for key, value in milestone.metrics.items())
        print(f"{member}milestone T={milestone.n_edits} ({milestone.protocol}, eval {milestone.seconds:.1f}s): {scores}", file=sys.stderr, flush=True)

    print(
        f"DEFER trial: model {model_name} ({loaded.num_layers} layers, {model_dtype(loaded)}, loaded in {load_seconds:.1f}s), "
        f"{hparams.module_path}, edit_lr {hparams.edit_lr:g}, n_iter {hparams.n_iter}, threshold {hparams.threshold:g}, "
        f"{plan.protocol} protocol, milestones {list(plan.milestones)}, {plan.threads} torch thread(s), data {data_path}{' (stripped)' if args.strip else ''}"
        + (f", {len(members)} runs: seeds {list(seeds)} x edit orders 0..{orders - 1}" if len(members) > 1 else ""),
        file=sys.stderr,
        flush=True,
    )
    from defer_core.evaluation import UneditedLocality
    from defer_core.orders import ordered_records

    unedited = UneditedLocality()  # keyed by record id: shared by every seed and order
    results = []
    for seed, order in members:
        member = f"seed {seed} order {order}: " if len(members) > 1 else ""
        in_order = ordered_records(records, order, plan.total_records)
        results.append(run_trial(loaded, in_order, hparams, plan, seed=seed, on_edit=show_edit, on_milestone=show_milestone, unedited=unedited))
    if len(members) > 1:
        return _print_trial_repeats(args, model_name, hparams, model_dtype(loaded), plan, members, results, started)
    (result,) = results
    edit_seconds = [edit.seconds for edit in result.edits]
    summary = {
        "model": model_name,
        "hparams": hparams.to_easyedit_dict(),
        "dtype": model_dtype(loaded),
        "strip": args.strip,
        "protocol": plan.protocol,
        "scorings": list(plan.scorings),
        "edit_path": plan.edit_path,
        "threads": plan.threads,
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


TRIAL_CONFIDENCE = 0.95  # of `trial`'s error bars over seeds x orders


def _print_trial_repeats(args: argparse.Namespace, model_name: str, hparams: "DeferHParams", dtype: str, plan: "TrialPlan",
                         members: list[tuple[int, int]], results: list["TrialResult"], started: float) -> ExitCode:
    """Several seeds x orders: per milestone the mean ± Student t half-width over the runs (JSON:
    `milestones` holds means, half-widths and n; `members` every run as one run's JSON has it)."""
    rows = milestone_intervals(results, TRIAL_CONFIDENCE)
    edit_seconds = [edit.seconds for result in results for edit in result.edits]
    wall = time.perf_counter() - started
    if not args.json:
        print(interval_table(rows, plan.scorings))
        print(f"mean ± Student t {TRIAL_CONFIDENCE:.0%} half-width over {len(members)} runs "
              f"(seeds {list(dict.fromkeys(s for s, _ in members))} x edit orders 0..{max(o for _, o in members)}; order 0 is the file's)")
        print(f"seconds per edit: {sum(edit_seconds) / len(edit_seconds):.2f}  (wall {wall:.1f}s, {plan.edit_path} edit path)")
        return ExitCode.OK
    summary = {
        "model": model_name, "hparams": hparams.to_easyedit_dict(), "dtype": dtype, "strip": args.strip, "protocol": plan.protocol,
        "scorings": list(plan.scorings), "edit_path": plan.edit_path, "threads": plan.threads, "confidence": TRIAL_CONFIDENCE,
        "seconds_per_edit": sum(edit_seconds) / len(edit_seconds), "wall_seconds": wall,
        "milestones": [{"n_edits": m.n_edits, "protocol": m.protocol, "metrics": {k: i.mean for k, i in intervals.items()},
                        "half_width": {k: i.half_width for k, i in intervals.items()}, "n": len(members)} for m, intervals in rows],
        "members": [{"seed": seed, "order": order, "milestones": [asdict(m) for m in result.milestones], "edits": [asdict(e) for e in result.edits]}
                    for (seed, order), result in zip(members, results)],
    }
    print(json.dumps(summary, indent=2))
    return ExitCode.OK


# -- compare ----------------------------------------------------------------------------------------


def parse_choices(text: str, flag: str, allowed: Sequence[str]) -> tuple[str, ...]:
    """A comma-separated list of distinct names, each one of `allowed`."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in allowed]
    if not names or unknown or len(set(names)) != len(names):
        raise DeferInputError(f"{flag}: expected distinct comma-separated names among {', '.join(allowed)}, got {text!r}")
    return names


def compare(args: argparse.Namespace) -> ExitCode:
    """`defer-sweep compare HPARAMS --T 1,10,100 ...`: the configuration under every protocol ×
    scoring × dtype asked; progress on stderr, the table on stdout, the table and the
    per-record Parquet in --output."""
    from defer_core.runtime import require_device, stay_offline_by_default

    stay_offline_by_default()  # before transformers is imported
    from defer_core import EMBEDDED_MODEL, load_hparams, load_records, resolve_data_path
    from defer_core.files import require_writable_dir
    from defer_core.results import DTYPE_CHOICES, PROTOCOLS, SCORINGS, dtype_name

    from .compare import ComparePlan, render, run_comparison, write_outputs

    require_device(args.device, "--device")
    milestones = parse_int_list(args.T, "--T")
    if not milestones or milestones[0] < 1 or list(milestones) != sorted(set(milestones)):
        raise DeferInputError(f"--T: expected distinct positive edit counts in ascending order, got {args.T!r}")
    seeds, orders = parse_seeds(args.seeds, "--seeds"), require_orders(args.orders, "--orders")
    dtypes = tuple(dict.fromkeys(dtype_name(d) for d in parse_choices(args.dtypes, "--dtypes", DTYPE_CHOICES)))
    hparams = load_hparams(args.hparams)
    data_path = resolve_data_path(args.data)
    plan = ComparePlan(
        hparams=hparams, model=args.model or EMBEDDED_MODEL, milestones=milestones,
        protocols=parse_choices(args.protocols, "--protocols", PROTOCOLS), scorings=parse_choices(args.scorings, "--scorings", SCORINGS),
        dtypes=dtypes, seeds=seeds, orders=orders, device=args.device, strip=args.strip, data=str(data_path), threads=args.threads,
        error_bars=len(seeds) * orders > 1,
    )
    records = load_records(data_path, limit=plan.total_records, strip=args.strip)
    output = Path(args.output or f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}").expanduser().resolve()
    require_writable_dir(output, "the comparison's output directory")  # before hours of editing, not after
    print(f"compare: {plan.model}, {hparams.module_path}, T {list(milestones)}, protocols {','.join(plan.protocols)}, "
          f"scorings {','.join(plan.scorings)}, dtypes {','.join(dtypes)}, seeds {list(seeds)}"
          + (f", edit orders 0..{orders - 1}" if orders > 1 else "") + f", {plan.threads} torch thread(s), data {data_path}", file=sys.stderr, flush=True)
    comparison = run_comparison(plan, records, on_progress=lambda line: print(line, file=sys.stderr, flush=True))
    table, per_record = write_outputs(comparison, args.format, output)
    print(render(comparison, args.format))
    print(f"wrote {table} and {per_record} (wall {comparison.seconds:.0f}s)", file=sys.stderr, flush=True)
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


def _console(args: argparse.Namespace) -> tuple[Callable[[str], None], "LiveOutput | None"]:
    """Where a sweep's lines go and whether (and how) live edit counts show: none with --quiet,
    a block redrawn in place on a terminal, plain lines every --progress-every seconds in a log."""
    from .sinks.progress import LiveOutput

    if args.progress_every <= 0:
        raise DeferInputError(f"--progress-every: expected seconds > 0, got {args.progress_every:g}")
    if args.quiet:
        return print_line, None
    if sys.stdout.isatty():
        terminal = Terminal(sys.stdout)
        return terminal.line, LiveOutput(terminal.status, TTY_REFRESH_S)
    return print_line, LiveOutput(print_lines, args.progress_every)


def _resume_hint(root: Path) -> str:
    return f"sweep not finished; continue it with: defer-sweep resume {root}"


def _failure_reasons(parquet: "Location") -> list[tuple[str, int]]:
    """The distinct errors of failed trials (the trials table's short error lines), most
    frequent first, so a sweep in which every trial failed says why once, not N times."""
    from collections import Counter

    from .protocol import Status
    from .sinks.parquet_sink import read_table

    rows = read_table(parquet, "trials").select(["status", "error"]).to_pylist()
    reasons = Counter(row["error"] or "no error text recorded" for row in rows if row["status"] == Status.FAILED)
    return reasons.most_common()


def _print_exported(outcome: "SweepOutcome | ConfirmOutcome") -> None:
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

    from .sinks.mlflow_sink import run_page, sweep_mlflow

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
    from .protocol import Status

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
    from .sinks.parquet_sink import TABLES

    print(f"Parquet dataset: {layout.parquet}  (tables: {', '.join(f'{table}/' for table in TABLES)})")
    _print_exported(outcome)
    for line in _mlflow_ui_lines(outcome):
        print(line)
    if counts[Status.FAILED] and not counts[Status.COMPLETE] and not counts[Status.PRUNED]:
        print(f"defer-sweep: every trial failed (exit status {int(ExitCode.ALL_FAILED)}); the errors are listed above", file=sys.stderr)
        return ExitCode.ALL_FAILED
    return ExitCode.OK


def run(args: argparse.Namespace) -> ExitCode:
    """`defer-sweep run SPEC [--output-dir DIR]`: start, or continue, the sweep."""
    from defer_core.runtime import stay_offline_by_default

    from .spec import load_spec
    from .sweep.preflight import check_machine

    stay_offline_by_default()  # before transformers is imported (the driver's preflight) and for Ray's workers
    spec = load_spec(args.spec)
    check_machine(spec, args.spec)  # device and model name, answered before the driver's heavy imports
    from .sweep.driver import execute, prepare

    if args.output_dir:
        spec = spec.with_output_dir(args.output_dir)
    layout = prepare(spec)
    sink, live = _console(args)
    _quiet_libraries(args.verbose_ray)
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
    from .sinks.layout import require_sweep_dir
    from .sweep.driver import resume as resume_sweep

    sink, live = _console(args)
    _quiet_libraries(args.verbose_ray)
    layout = require_sweep_dir(args.output_dir)
    print(f"resuming the sweep in {layout.root}", flush=True)
    try:
        outcome = resume_sweep(layout.root, sink=sink, verbose_ray=args.verbose_ray, live=live)
    except KeyboardInterrupt:
        print(_resume_hint(layout.root), file=sys.stderr)
        raise
    return _print_outcome(outcome)


# -- export / report ---------------------------------------------------------------------------------


def export(args: argparse.Namespace) -> ExitCode:
    """`defer-sweep export OUT_DIR [--objective NAME | --pareto-index K] [-o FILE]`."""
    from .export import export_best, mlflow_for
    from .protocol import trial_named
    from .sinks.layout import read_spec, require_sweep_dir

    layout = require_sweep_dir(args.output_dir)
    spec = read_spec(layout)
    output = Path(args.output).expanduser().resolve() if args.output else None
    target, chosen = export_best(layout, spec, output, args.objective, args.pareto_index, mlflow_for(layout), confirmed=args.confirmed)
    hparams = chosen.hparams
    print(f"wrote {target}: trial {trial_named(chosen.row)}: {chosen.reason}")
    print(f"  {hparams.module_path}  edit_lr={hparams.edit_lr:g}  n_iter={hparams.n_iter}  threshold={hparams.threshold:g}")
    return ExitCode.OK


# -- confirm ----------------------------------------------------------------------------------------


def confirm_request(args: argparse.Namespace) -> "ConfirmRequest":
    """The options as given (None where not: the recorded plan's, or the defaults)."""
    from defer_core.results import PROTOCOLS

    from .sweep.confirm import ConfirmRequest

    if args.top is not None and args.top < 1:
        raise DeferInputError(f"--top: expected a number of configurations >= 1, got {args.top}")
    if args.T is not None and args.T < 1:
        raise DeferInputError(f"--T: expected a number of edits >= 1, got {args.T}")
    trials = tuple(part.strip() for part in args.trials.split(",") if part.strip()) if args.trials is not None else None
    if trials is not None and not trials:
        raise DeferInputError(f"--trials: expected comma-separated trial ids or Optuna numbers, got {args.trials!r}")
    return ConfirmRequest(
        top=args.top, pareto=args.pareto, trials=trials,
        seeds=parse_seeds(args.seeds, "--seeds") if args.seeds is not None else None,
        orders=require_orders(args.orders, "--orders") if args.orders is not None else None,
        T=args.T,
        protocols=parse_choices(args.protocols, "--protocols", PROTOCOLS) if args.protocols is not None else None,
    )


def confirm(args: argparse.Namespace) -> ExitCode:
    """`defer-sweep confirm OUT_DIR [--top K | --pareto | --trials IDS] [--seeds] [--orders] [--T] [--protocols]`."""
    from defer_core.runtime import stay_offline_by_default

    stay_offline_by_default()
    from .sinks.layout import require_sweep_dir
    from .sweep.driver import confirm as run_confirm

    request = confirm_request(args)
    sink, live = _console(args)
    _quiet_libraries(args.verbose_ray)
    layout = require_sweep_dir(args.output_dir)
    print(f"confirm stage of the sweep in {layout.root}", flush=True)
    try:
        outcome = run_confirm(layout.root, request, sink=sink, verbose_ray=args.verbose_ray, live=live)
    except KeyboardInterrupt:
        print(_confirm_hint(layout.root), file=sys.stderr)
        raise
    return _print_confirm(outcome)


def _confirm_hint(root: Path) -> str:
    return f"confirm stage not finished; continue it with: defer-sweep confirm {root}"


def _print_confirm(outcome: "ConfirmOutcome") -> ExitCode:
    from .protocol import Status

    plan, counts = outcome.plan, outcome.counts
    print(f"confirm: {', '.join(f'{p.label} ({p.confirms})' for p in plan.picks)} with {plan.repeats_text}, protocols {', '.join(plan.protocols)}")
    print(f"confirm trials: {counts[Status.COMPLETE]} complete, {counts[Status.PRUNED]} pruned, {counts[Status.FAILED]} failed")
    if not outcome.finished:
        print(_confirm_hint(outcome.layout.root), file=sys.stderr)
        return ExitCode.INTERRUPTED
    _print_exported(outcome)
    if counts[Status.FAILED] and not counts[Status.COMPLETE]:
        print(f"defer-sweep: every confirm trial failed (exit status {int(ExitCode.ALL_FAILED)})", file=sys.stderr)
        return ExitCode.ALL_FAILED
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


# -- curve ------------------------------------------------------------------------------------------

if TYPE_CHECKING:
    from defer_core.curve import SafeThreshold

    from .sinks.layout import SweepLayout
    from .sinks.trial_curve import Reading, TrialCurve
    from .spec import SweepSpec

CURVE_FORMATS = ("md", "csv", "json")
_TF_COLUMNS = tuple(metric_key(metric, "tf") for metric in METRICS)


def curve(args: argparse.Namespace) -> ExitCode:
    """`defer-sweep curve OUT_DIR TRIAL [--n-edits N] [--threshold T] [--format md|csv|json]`:
    a recorded trial's exact tf curve, its gen grid, in curve mode its chosen point (its best at
    that milestone, at the threshold export writes: off the knife edge), and with --threshold
    its metrics there; read from the Parquet dataset alone (no model, no torch)."""
    from .sinks.layout import read_spec, require_sweep_dir
    from .sinks.trial_curve import load_trial_curve, read_at

    layout = require_sweep_dir(args.output_dir)
    spec = read_spec(layout)
    found = load_trial_curve(layout, spec, args.trial, args.n_edits)
    reading = read_at(found, args.threshold) if args.threshold is not None else None
    chosen = chosen_point(layout, spec, found)
    print({"md": _curve_md, "csv": _curve_csv, "json": _curve_json}[args.format](found, reading, chosen), end="")
    return ExitCode.OK


def chosen_point(layout: "SweepLayout", spec: "SweepSpec", found: "TrialCurve") -> "ChosenPoint | None":
    """Curve mode: the point the trial reported as its best at the curve's milestone (the
    milestones table's threshold), read at the threshold `defer-sweep export` would write for it
    (search/curve_points.point_margin: a tf breakpoint moved to the middle of the thresholds with
    its metrics). None outside curve mode or when the milestone recorded no threshold."""
    import pyarrow.compute as pc

    from .protocol import N_EDITS, THRESHOLD
    from .search.curve_points import kept_text, point_margin
    from .sinks.parquet_sink import read_tables
    from .sinks.trial_curve import read_at

    if not spec.curve_mode:
        return None
    table = read_tables(layout.parquet, ("milestones",), skip_unreadable=True)["milestones"]
    rows = table.filter(pc.and_(pc.equal(table["trial_id"], found.trial["trial_id"]), pc.equal(table[N_EDITS], found.n_edits))).to_pylist()
    point = rows[0].get(THRESHOLD) if rows else None
    if point is None:
        return None
    margin = point_margin(spec, point, found.gates, found.dtype)
    return ChosenPoint(read_at(found, point if margin is None else margin.threshold), point, margin, kept_text(spec, point) if margin is None else None)


@dataclass(frozen=True)
class ChosenPoint:
    """A trial's chosen point at one milestone, read at the threshold handed on."""

    reading: "Reading"  # at `reading.threshold`: the threshold export writes
    point: float  # the point's own threshold (a tf breakpoint, or a grid threshold)
    margin: "SafeThreshold | None"  # how `reading.threshold` was found; None: `point` kept (`kept` says why)
    kept: str | None

    def describe(self) -> str:
        """Where the threshold comes from, in words."""
        from .export import held_on

        margin, threshold = self.margin, self.reading.threshold
        if margin is None:
            return f"threshold {_threshold_text(threshold)}, {self.kept}"
        if margin.breakpoint <= 0.0:
            return "threshold 0: every row fires at 0 and no gate lies below it (no knife edge)"
        if not margin.margin:
            return (f"threshold {_threshold_text(threshold)}, the breakpoint itself, without margin: no {margin.dtype} value lies far enough "
                    f"inside {held_on(margin)}, the thresholds with its metrics (a gate one {margin.dtype} step lower elsewhere changes a record)")
        return (f"threshold {_threshold_text(threshold)}, the middle of {held_on(margin)}, where the metrics of the point's own threshold "
                f"{_threshold_text(margin.breakpoint)} hold (a breakpoint: a gate value or the curve's end, a knife edge); what defer-sweep export writes for this point")


def _curve_rows(found: "TrialCurve", reading: "Reading | None", chosen: "ChosenPoint | None" = None) -> tuple[list[str], list[dict[str, object]]]:
    """(columns, rows) of the curve's one table: `section` curve (exact tf breakpoints), grid
    (the generation scorings at the spec's grid thresholds), chosen (curve mode: the trial's
    best point at the threshold export writes) or at (the --threshold reading)."""
    from .protocol import THRESHOLD

    columns = ["section", THRESHOLD, *_TF_COLUMNS, *found.grid_columns]
    rows: list[dict[str, object]] = [{"section": "curve", THRESHOLD: p.threshold, **p.metrics} for p in found.tf]
    rows += [{"section": "grid", **point} for point in found.grid]
    if reading is not None or chosen is not None:
        columns.append("edit_success")
    if chosen is not None:
        at = chosen.reading
        rows.append({"section": "chosen", THRESHOLD: at.threshold, **at.tf, **(at.grid or {}), "edit_success": at.edit_success})
    if reading is not None:
        rows.append({"section": "at", THRESHOLD: reading.threshold, **reading.tf, **(reading.grid or {}), "edit_success": reading.edit_success})
    return columns, rows


def _curve_csv(found: "TrialCurve", reading: "Reading | None", chosen: "ChosenPoint | None" = None) -> str:
    import csv
    import io

    columns, rows = _curve_rows(found, reading, chosen)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _curve_json(found: "TrialCurve", reading: "Reading | None", chosen: "ChosenPoint | None" = None) -> str:
    from .protocol import THRESHOLD

    data: dict[str, object] = {
        "trial_id": found.trial["trial_id"], "optuna_trial": found.trial.get("optuna_trial"), "n_edits": found.n_edits,
        "milestones": list(found.milestones), "dtype": found.dtype, "protocol": found.trial.get("protocol"),
        "curve": [{THRESHOLD: p.threshold, **p.metrics} for p in found.tf],
        "grid": [dict(point) for point in found.grid],
    }
    if chosen is not None:
        at, margin = chosen.reading, chosen.margin
        data["chosen"] = {THRESHOLD: at.threshold, "point_threshold": chosen.point, "below": None if margin is None else margin.below,
                          "margin": None if margin is None else margin.margin, "note": chosen.describe(),
                          **at.tf, "on_grid": at.grid is not None, **(at.grid or {}), "edit_success": at.edit_success}
    if reading is not None:
        data["at"] = {THRESHOLD: reading.threshold, **reading.tf, "on_grid": reading.grid is not None, **(reading.grid or {}), "edit_success": reading.edit_success}
    return json.dumps(data, indent=2) + "\n"


def _md_table(columns: Sequence[str], rows: Sequence[dict[str, object]]) -> list[str]:
    def cell(value: object) -> str:
        return "–" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    return [f"| {' | '.join(columns)} |", f"|{'---|' * len(columns)}", *(f"| {' | '.join(cell(row.get(c)) for c in columns)} |" for row in rows)]


def _curve_md(found: "TrialCurve", reading: "Reading | None", chosen: "ChosenPoint | None" = None) -> str:
    from .protocol import THRESHOLD

    trial = found.trial
    lines = [
        f"trial {found.label} ({trial['trial_id']}) at {found.n_edits} edits (milestones with gate rows: {', '.join(map(str, found.milestones))}); "
        f"{trial.get('protocol')} protocol, gates in {found.dtype}",
        "",
        "exact tf curve: each row holds for thresholds above the previous row's, up to its own",
        "",
        *_md_table([THRESHOLD, *_TF_COLUMNS], [{THRESHOLD: _threshold_text(p.threshold), **p.metrics} for p in found.tf]),
    ]
    if chosen is not None:
        at = chosen.reading
        tf = " ".join(f"{key}={value:.4f}" for key, value in at.tf.items())
        gen = "".join(f" {key}={value:.4f}" for key, value in (at.grid or {}).items())
        lines += ["", f"chosen point (the trial's best at {found.n_edits} edits): {tf} (tf, exact){gen}; {chosen.describe()}"]
    if found.grid:
        lines += ["", "generation scorings on the threshold grid", "",
                  *_md_table([THRESHOLD, *found.grid_columns], [{**point, THRESHOLD: _threshold_text(point[THRESHOLD])} for point in found.grid])]
    if reading is not None:
        tf = " ".join(f"{key}={value:.4f}" for key, value in reading.tf.items())
        if reading.grid is not None:
            gen = " ".join(f"{key}={value:.4f}" for key, value in reading.grid.items())
        elif found.grid:
            gen = f"generation scorings: {reading.threshold:g} is not on the grid ({', '.join(f'{p[THRESHOLD]:g}' for p in found.grid)})"
        else:
            gen = "no generation scorings recorded"
        success = "edit success: not recorded" if reading.edit_success is None else f"edit success={reading.edit_success:.4f} (mean over {len(found.edits)} edits)"
        lines += ["", f"at threshold {_threshold_text(reading.threshold)}: {tf} (tf, exact); {gen}; {success}"]
    return "\n".join(lines) + "\n"


def _threshold_text(threshold: float) -> str:
    """Nine significant digits: enough to tell float32 gates apart (0.99999994 is not 1)."""
    return f"{threshold:.9g}"


# -- table ------------------------------------------------------------------------------------------


def table(args: argparse.Namespace) -> ExitCode:
    """`defer-sweep table OUT_DIR [--trials ...] [--format md|latex|csv] [--interval t|bootstrap]`:
    chosen configurations as a paper table with 95% intervals, read from the Parquet dataset
    alone (no model, no torch)."""
    from defer_core.results import SCORINGS

    from .sinks.layout import read_spec, require_sweep_dir
    from .table import build_table, render

    layout = require_sweep_dir(args.output_dir)
    spec = read_spec(layout)
    scorings = parse_choices(args.scorings, "--scorings", SCORINGS) if args.scorings is not None else None
    milestones = parse_int_list(args.milestones, "--milestones") if args.milestones is not None else None
    if milestones is not None and not milestones:
        raise DeferInputError(f"--milestones: expected comma-separated numbers of edits, got {args.milestones!r}")
    built = build_table(layout, spec, args.trials, args.interval, scorings, milestones)
    print(render(built, args.format), end="")
    return ExitCode.OK
