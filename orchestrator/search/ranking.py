"""Best trial and Pareto front over completed trials (values at T), shared by the progress
summary and export. Ties break by Optuna trial number, so the choice is deterministic."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..protocol import trial_order_key
from ..spec import Objective

Row = Mapping[str, Any]


def _signed(row: Row, objective: Objective) -> float:
    value = float(row[objective.metric])
    return value if objective.direction == "maximize" else -value


def usable(rows: Sequence[Row], objectives: Sequence[Objective]) -> list[Row]:
    return [r for r in rows if all(r.get(o.metric) is not None for o in objectives)]


def rank_by(rows: Sequence[Row], objective: Objective) -> list[Row]:
    """Best first."""
    candidates = usable(rows, [objective])
    return sorted(candidates, key=lambda r: (-_signed(r, objective), trial_order_key(r)))


def dominates(a: Row, b: Row, objectives: Sequence[Objective]) -> bool:
    better_or_equal = all(_signed(a, o) >= _signed(b, o) for o in objectives)
    strictly = any(_signed(a, o) > _signed(b, o) for o in objectives)
    return better_or_equal and strictly


def pareto_front(rows: Sequence[Row], objectives: Sequence[Objective]) -> list[Row]:
    """Non-dominated rows, sorted best-first by the first objective, then the next ones."""
    candidates = usable(rows, objectives)
    front = [r for r in candidates if not any(dominates(o, r, objectives) for o in candidates if o is not r)]
    return sorted(front, key=lambda r: (tuple(-_signed(r, o) for o in objectives), trial_order_key(r)))
