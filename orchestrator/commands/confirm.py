"""`defer-sweep confirm`: the sweep's best configurations run again at full T with more repeats."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .args import confirm_request
from .console import ExitCode, quiet_libraries, sweep_console
from .sweep import print_exported

if TYPE_CHECKING:
    from ..sweep.driver import ConfirmOutcome


def confirm(args: argparse.Namespace) -> ExitCode:
    """`defer-sweep confirm OUT_DIR [--top K | --pareto | --trials IDS] [--seeds] [--orders] [--T] [--protocols]`."""
    from defer_core.runtime import stay_offline_by_default

    stay_offline_by_default()
    from ..sinks.layout import require_sweep_dir
    from ..sweep.lock import check_not_busy

    # Flags, the folder and its lock are checked before the driver's heavy imports and any output.
    request = confirm_request(args)
    layout = require_sweep_dir(args.output_dir)
    check_not_busy(layout.root)
    from ..sweep.driver import confirm as run_confirm

    sink, live = sweep_console(args)
    quiet_libraries(args.verbose_ray)
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
    from ..results.rows import Status

    plan, counts = outcome.plan, outcome.counts
    print(f"confirm: {', '.join(f'{p.label} ({p.confirms})' for p in plan.picks)} with {plan.repeats_text}, protocols {', '.join(plan.protocols)}")
    print(f"confirm trials: {counts[Status.COMPLETE]} complete, {counts[Status.PRUNED]} pruned, {counts[Status.FAILED]} failed")
    if not outcome.finished:
        print(_confirm_hint(outcome.layout.root), file=sys.stderr)
        return ExitCode.INTERRUPTED
    print_exported(outcome)
    if counts[Status.FAILED] and not counts[Status.COMPLETE]:
        print(f"defer-sweep: every confirm trial failed (exit status {int(ExitCode.ALL_FAILED)})", file=sys.stderr)
        return ExitCode.ALL_FAILED
    return ExitCode.OK
