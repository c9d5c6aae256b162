"""`defer-sweep trial`: one DEFER continual-editing trial with per-edit progress and a milestone table."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict

from defer_core import (
    EMBEDDED_MODEL,
    EditOutcome,
    MilestoneResult,
    TrialPlan,
    default_milestones,
    load_hparams,
    load_model,
    load_records,
    resolve_data_path,
    run_trial,
)
from defer_core.errors import DeferInputError


def parse_int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise DeferInputError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def parse_plan(args: argparse.Namespace) -> TrialPlan:
    if args.T < 1:
        raise DeferInputError(f"--T must be >= 1, got {args.T}")
    milestones = parse_int_list(args.milestones, "--milestones") if args.milestones else default_milestones(args.T)
    if milestones and milestones[-1] > args.T:
        raise DeferInputError(f"--milestones: {milestones[-1]} is beyond --T {args.T}")
    if milestones and milestones[-1] != args.T:
        milestones = (*milestones, args.T)
    scorings = tuple(part.strip() for part in args.scoring.split(",") if part.strip())
    return TrialPlan(protocol=args.protocol, milestones=milestones, scorings=scorings, edit_path=args.edit_path)


def format_milestone_table(milestones: list[MilestoneResult], scorings: tuple[str, ...]) -> str:
    columns = [f"{metric}_{scoring}" for scoring in scorings for metric in ("rel", "gen", "loc")]
    header = f"{'T':>6}  " + "  ".join(f"{name:>7}" for name in columns)
    lines = [header, "-" * len(header)]
    for milestone in milestones:
        lines.append(f"{milestone.n_edits:>6}  " + "  ".join(f"{milestone.metrics[name]:>7.3f}" for name in columns))
    return "\n".join(lines)


def run_trial_command(args: argparse.Namespace) -> int:
    hparams = load_hparams(args.hparams)
    plan = parse_plan(args)
    data_path = resolve_data_path(args.data)
    records = load_records(data_path, limit=plan.total_records)
    model_name = args.model or EMBEDDED_MODEL
    started = time.perf_counter()
    loaded = load_model(model_name, dtype=args.dtype, device=args.device)
    load_seconds = time.perf_counter() - started
    progress = sys.stderr

    def show_edit(outcome: EditOutcome) -> None:
        print(
            f"edit {outcome.index:>5}  record {outcome.record_id:>6}  loss {outcome.final_loss:8.4f}  "
            f"success {outcome.success:5.2f}  {outcome.seconds:6.2f}s",
            file=progress,
            flush=True,
        )

    def show_milestone(milestone: MilestoneResult) -> None:
        scores = "  ".join(f"{key} {value:.3f}" for key, value in milestone.metrics.items())
        print(f"milestone T={milestone.n_edits} ({milestone.protocol}, eval {milestone.seconds:.1f}s): {scores}", file=progress, flush=True)

    print(
        f"DEFER trial: model {model_name} ({loaded.num_layers} layers, loaded in {load_seconds:.1f}s), "
        f"{hparams.module_path}, edit_lr {hparams.edit_lr:g}, n_iter {hparams.n_iter}, threshold {hparams.threshold:g}, "
        f"{plan.protocol} protocol, milestones {list(plan.milestones)}, data {data_path}",
        file=progress,
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
        print(format_milestone_table(result.milestones, plan.scorings))
        print(f"seconds per edit: {summary['seconds_per_edit']:.2f}  (wall {summary['wall_seconds']:.1f}s, {plan.edit_path} edit path)")
    return 0
