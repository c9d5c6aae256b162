"""Flag values parsed into domain values, each with the one-line error a person can fix
(DeferInputError, exit 2), and the argparse types cli.py's parser uses."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Sequence

from defer_core.errors import DeferInputError
from defer_core.results import default_milestones, milestones_ending_at

if TYPE_CHECKING:
    from defer_core.plan import TrialPlan

    from ..sweep.confirm import ConfirmRequest


def thread_count(text: str) -> int:
    """--threads: a whole number >= 1 (argparse turns the ValueError into a one-line error)."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


thread_count.__name__ = "_threads"  # argparse's error names the type: "invalid _threads value: '0'", as it always has


def parse_int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise DeferInputError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def parse_seeds(text: str, flag: str) -> tuple[int, ...]:
    seeds = parse_int_list(text, flag)
    if not seeds or len(set(seeds)) != len(seeds):
        raise DeferInputError(f"{flag}: expected distinct comma-separated integers, got {text!r}")
    return seeds


def require_orders(orders: int, flag: str) -> int:
    if orders < 1:
        raise DeferInputError(f"{flag}: expected a number of edit orders >= 1, got {orders}")
    return orders


def parse_choices(text: str, flag: str, allowed: Sequence[str]) -> tuple[str, ...]:
    """A comma-separated list of distinct names, each one of `allowed`."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in allowed]
    if not names or unknown or len(set(names)) != len(names):
        raise DeferInputError(f"{flag}: expected distinct comma-separated names among {', '.join(allowed)}, got {text!r}")
    return names


def trial_plan(args: argparse.Namespace) -> "TrialPlan":
    """`trial`'s --T, --milestones, --protocol, --scoring, --edit-path, --threads and --grace-key."""
    from defer_core.plan import TrialPlan

    milestones = parse_int_list(args.milestones, "--milestones") if args.milestones else default_milestones(args.T)
    try:
        milestones = milestones_ending_at(milestones, args.T)
    except ValueError as error:
        raise DeferInputError(f"--milestones (with --T {args.T}) {error}") from None
    scorings = tuple(part.strip() for part in args.scoring.split(",") if part.strip())
    return TrialPlan(protocol=args.protocol, milestones=milestones, scorings=scorings, edit_path=args.edit_path, threads=args.threads,
                     grace_key=args.grace_key)


def trial_seeds(args: argparse.Namespace) -> tuple[int, ...]:
    """--seeds, or the single --seed (default 0); both at once is ambiguous."""
    if args.seeds is not None and args.seed is not None:
        raise DeferInputError(f"--seed {args.seed} and --seeds {args.seeds}: give one of them")
    if args.seeds is not None:
        return parse_seeds(args.seeds, "--seeds")
    return (0 if args.seed is None else args.seed,)


def confirm_request(args: argparse.Namespace) -> "ConfirmRequest":
    """`confirm`'s options as given (None where not: the recorded plan's, or the defaults),
    checked before the confirm module (and MLflow with it) is imported."""
    from defer_core.results import PROTOCOLS

    if args.top is not None and args.top < 1:
        raise DeferInputError(f"--top: expected a number of configurations >= 1, got {args.top}")
    if args.T is not None and args.T < 1:
        raise DeferInputError(f"--T: expected a number of edits >= 1, got {args.T}")
    trials = tuple(part.strip() for part in args.trials.split(",") if part.strip()) if args.trials is not None else None
    if trials is not None and not trials:
        raise DeferInputError(f"--trials: expected comma-separated trial ids or Optuna numbers, got {args.trials!r}")
    seeds = parse_seeds(args.seeds, "--seeds") if args.seeds is not None else None
    orders = require_orders(args.orders, "--orders") if args.orders is not None else None
    protocols = parse_choices(args.protocols, "--protocols", PROTOCOLS) if args.protocols is not None else None
    from ..sweep.confirm import ConfirmRequest

    return ConfirmRequest(top=args.top, pareto=args.pareto, trials=trials, seeds=seeds, orders=orders, T=args.T, protocols=protocols)
