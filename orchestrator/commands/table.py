"""`defer-sweep table`: chosen configurations as a paper table (md, LaTeX or csv) with 95%
intervals, from the Parquet dataset alone."""

from __future__ import annotations

import argparse

from defer_core.errors import DeferInputError

from .args import parse_choices, parse_int_list
from .console import ExitCode


def table(args: argparse.Namespace) -> ExitCode:
    """`defer-sweep table OUT_DIR... [--trials ...] [--format md|latex|csv] [--interval t|bootstrap]`:
    chosen configurations as a paper table with 95% intervals, read from the Parquet dataset
    alone (no model, no torch); several sweep folders (e.g. one per editor) make one table."""
    from defer_core.results import SCORINGS

    from ..sinks.layout import read_spec, require_sweep_dir
    from ..table import SELECTIONS, build_table, join_tables, render

    if len(args.output_dir) > 1 and args.trials is not None and args.trials not in SELECTIONS:
        raise DeferInputError(f"--trials {args.trials!r}: trial ids name trials of one sweep; with several OUT_DIR give one of {', '.join(SELECTIONS)}")
    scorings = parse_choices(args.scorings, "--scorings", SCORINGS) if args.scorings is not None else None
    milestones = parse_int_list(args.milestones, "--milestones") if args.milestones is not None else None
    if milestones is not None and not milestones:
        raise DeferInputError(f"--milestones: expected comma-separated numbers of edits, got {args.milestones!r}")
    built = []
    for output_dir in args.output_dir:
        layout = require_sweep_dir(output_dir)
        built.append(build_table(layout, read_spec(layout), args.trials, args.interval, scorings, milestones))
    print(render(join_tables(built), args.format), end="")
    return ExitCode.OK
