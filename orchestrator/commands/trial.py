"""`defer-sweep trial`: one DEFER trial (or one per seed × edit order), its milestone table or JSON."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Sequence

from defer_core.errors import DeferInputError
from defer_core.results import METRICS, metric_key

from .args import require_orders, trial_plan, trial_seeds
from .console import ExitCode

if TYPE_CHECKING:
    from defer_core.editors import EditorHParams
    from defer_core.results import MilestoneResult, TrialResult
    from defer_core.plan import TrialPlan

    from ..intervals import Interval

TRIAL_CONFIDENCE = 0.95  # of `trial`'s error bars over seeds x orders


def trial(args: argparse.Namespace) -> ExitCode:
    """`defer-sweep trial HPARAMS --T N`: one continual-editing trial, per-edit progress on
    stderr, the milestone table (or JSON) on stdout."""
    from defer_core.runtime import EMBEDDED_MODEL, model_problem, require_device, stay_offline_by_default

    stay_offline_by_default()  # before transformers is imported: huggingface_hub reads it once
    require_device(args.device, "--device")  # device and model answered before the heavy imports
    model_name = args.model or EMBEDDED_MODEL
    if problem := model_problem(model_name):
        raise DeferInputError(f"--model: {problem}")
    from defer_core.data import load_records, resolve_data_path
    from defer_core.editors import editor_of, hparams_summary, load_editor_hparams
    from defer_core.hparams import easyedit_model_name

    hparams = load_editor_hparams(args.hparams)  # the hparams, flags and records before torch is imported
    seeds, orders = trial_seeds(args), require_orders(args.orders, "--orders")
    if args.T < 1:
        raise DeferInputError(f"--T must be >= 1, got {args.T}")
    data_path = resolve_data_path(args.data)
    records = load_records(data_path, limit=args.T, strip=args.strip)  # the plan's last milestone is T
    plan = trial_plan(args)

    from defer_core import load_model, model_dtype
    from defer_core.repeats import repeat_members, run_members
    if hparams.model_name and hparams.model_name not in (model_name, easyedit_model_name(model_name)):  # an exported YAML names the embedded model by path
        chosen = "given with --model" if args.model else "the default; choose another with --model"
        print(f"defer-sweep: warning: {args.hparams} names model_name {hparams.model_name!r}; this trial runs {model_name!r} ({chosen})", file=sys.stderr, flush=True)
    started = time.perf_counter()
    loaded = load_model(model_name, dtype=args.dtype, device=args.device)
    load_seconds = time.perf_counter() - started

    members = repeat_members(seeds, orders)

    def member(k: int) -> str:
        """"seed S order O: " before each progress line when there are several members."""
        return f"seed {members[k][0]} order {members[k][1]}: " if len(members) > 1 else ""

    def show_edit(k: int, outcome) -> None:
        print(
            f"{member(k)}edit {outcome.index:>5}  record {outcome.record_id:>6}  loss {outcome.final_loss:8.4f}  "
            f"success {outcome.success:5.2f}  {outcome.seconds:6.2f}s",
            file=sys.stderr,
            flush=True,
        )

    def show_milestone(k: int, milestone) -> None:
        scores = "  ".join(f"{key} {value:.3f}" for key, value in milestone.metrics.items())
        print(f"{member(k)}milestone T={milestone.n_edits} ({milestone.protocol}, eval {milestone.seconds:.1f}s): {scores}", file=sys.stderr, flush=True)

    print(
        f"{editor_of(hparams).upper()} trial: model {model_name} ({loaded.num_layers} layers, {model_dtype(loaded)}, loaded in {load_seconds:.1f}s), "
        f"{hparams_summary(hparams)}, "
        f"{plan.protocol} protocol, milestones {list(plan.milestones)}, {plan.threads} torch thread(s), data {data_path}{' (stripped)' if args.strip else ''}"
        + (f", {len(members)} runs: seeds {list(seeds)} x edit orders 0..{orders - 1}" if len(members) > 1 else ""),
        file=sys.stderr,
        flush=True,
    )
    results = run_members(loaded, records, hparams, plan, members, on_edit=show_edit, on_milestone=show_milestone)
    if len(members) > 1:
        return _print_repeats(args, model_name, hparams, model_dtype(loaded), plan, members, results, started)
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
        "grace_key": plan.grace_key,
        "seconds_per_edit": sum(edit_seconds) / len(edit_seconds),
        "wall_seconds": time.perf_counter() - started,
        "milestones": [asdict(m) for m in result.milestones],
        "edits": [asdict(e) for e in result.edits],
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(milestone_table(result.milestones, plan.scorings))
        print(f"seconds per edit: {summary['seconds_per_edit']:.2f}  (wall {summary['wall_seconds']:.1f}s, {plan.edit_path} edit path{_grace_key_note(plan)})")
    return ExitCode.OK


def _grace_key_note(plan: "TrialPlan") -> str:
    """Named in the output when it is not EasyEdit's."""
    from defer_core.plan import grace_key_note

    return grace_key_note(plan.grace_key, lead=", ")


def _print_repeats(args: argparse.Namespace, model_name: str, hparams: "EditorHParams", dtype: str, plan: "TrialPlan",
                   members: list[tuple[int, int]], results: list["TrialResult"], started: float) -> ExitCode:
    """Several seeds x orders: per milestone the mean ± Student t half-width over the runs (JSON:
    `milestones` holds means, half-widths and n; `members` every run as one run's JSON has it)."""
    from ..intervals import member_intervals

    rows = member_intervals(results, TRIAL_CONFIDENCE)
    edit_seconds = [edit.seconds for result in results for edit in result.edits]
    wall = time.perf_counter() - started
    if not args.json:
        print(interval_table(rows, plan.scorings))
        print(f"mean ± Student t {TRIAL_CONFIDENCE:.0%} half-width over {len(members)} runs "
              f"(seeds {list(dict.fromkeys(s for s, _ in members))} x edit orders 0..{max(o for _, o in members)}; order 0 is the file's)")
        print(f"seconds per edit: {sum(edit_seconds) / len(edit_seconds):.2f}  (wall {wall:.1f}s, {plan.edit_path} edit path{_grace_key_note(plan)})")
        return ExitCode.OK
    summary = {
        "model": model_name, "hparams": hparams.to_easyedit_dict(), "dtype": dtype, "strip": args.strip, "protocol": plan.protocol,
        "scorings": list(plan.scorings), "edit_path": plan.edit_path, "threads": plan.threads, "grace_key": plan.grace_key, "confidence": TRIAL_CONFIDENCE,
        "seconds_per_edit": sum(edit_seconds) / len(edit_seconds), "wall_seconds": wall,
        "milestones": [{"n_edits": m.n_edits, "protocol": m.protocol, "metrics": {k: i.mean for k, i in intervals.items()},
                        "half_width": {k: i.half_width for k, i in intervals.items()}, "n": len(members)} for m, intervals in rows],
        "members": [{"seed": seed, "order": order, "milestones": [asdict(m) for m in result.milestones], "edits": [asdict(e) for e in result.edits]}
                    for (seed, order), result in zip(members, results)],
    }
    print(json.dumps(summary, indent=2))
    return ExitCode.OK


def milestone_table(milestones: Sequence["MilestoneResult"], scorings: tuple[str, ...]) -> str:
    columns = [metric_key(metric, scoring) for scoring in scorings for metric in METRICS]
    header = f"{'T':>6}  " + "  ".join(f"{name:>7}" for name in columns)
    lines = [header, "-" * len(header)]
    for milestone in milestones:
        lines.append(f"{milestone.n_edits:>6}  " + "  ".join(f"{milestone.metrics[name]:>7.3f}" for name in columns))
    return "\n".join(lines)


def interval_table(rows: list[tuple["MilestoneResult", dict[str, "Interval"]]], scorings: tuple[str, ...]) -> str:
    """`milestone_table` with "mean ± half-width" cells."""
    from ..intervals import format_interval

    columns = [metric_key(metric, scoring) for scoring in scorings for metric in METRICS]
    header = f"{'T':>6}  " + "  ".join(f"{name:>13}" for name in columns)
    lines = [header, "-" * len(header)]
    for milestone, intervals in rows:
        lines.append(f"{milestone.n_edits:>6}  " + "  ".join(f"{format_interval(intervals[name], 3):>13}" for name in columns))
    return "\n".join(lines)
