"""Best trial and Pareto front over completed trials (values at T), shared by the progress
summary, export, the report, the table and the confirm stage. Ties break by Optuna trial
number, so the choice is deterministic.

With constraints (spec `constraints: [{metric: loc_tf, min: 0.9}]`) a row is feasible when
every constrained metric lies within its bounds; feasible rows rank before infeasible ones,
and the Pareto front holds feasible rows only. `violations` are also the constraint values
Optuna's samplers read (<= 0 means satisfied): search/optuna_search.py stores them on each
trial (`constraint_values` through Trial.set_constraint / create_trial(constraints=...)), so
both read one rule. `bounds_text` and `closest_text` say the constraints and how close the
rows came, as a person reads them.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Protocol, Sequence

from ..protocol import trial_order_key
from ..spec import Objective

Row = Mapping[str, Any]


class Bound(Protocol):
    """A constraint on one metric (spec.Constraint): min and/or max, inclusive."""

    metric: str
    min: float | None
    max: float | None


def violations(row: Row, constraints: Sequence[Bound]) -> list[float]:
    """One number per bound, <= 0 when satisfied (Optuna's constraints convention); a metric
    the row lacks (or NaN) violates by 1."""
    out: list[float] = []
    for bound in constraints:
        value = row.get(bound.metric)
        missing = value is None or math.isnan(float(value))
        if bound.min is not None:
            out.append(1.0 if missing else float(bound.min) - float(value))
        if bound.max is not None:
            out.append(1.0 if missing else float(value) - float(bound.max))
    return out


def is_feasible(row: Row, constraints: Sequence[Bound]) -> bool:
    return all(v <= 0 for v in violations(row, constraints))


def feasible_or_none(row: Row | None, constraints: Sequence[Bound]) -> bool | None:
    """Whether a row meets the constraints; None without constraints (or without a row)."""
    if not constraints or row is None:
        return None
    return is_feasible(row, constraints)


def bounds_text(constraints: Sequence[Bound]) -> str:
    """`loc_tf >= 0.9, rel_tf <= 0.95`: the constraints as a person reads them."""
    parts = []
    for bound in constraints:
        if bound.min is not None:
            parts.append(f"{bound.metric} >= {bound.min:g}")
        if bound.max is not None:
            parts.append(f"{bound.metric} <= {bound.max:g}")
    return ", ".join(parts)


def closest_text(rows: Sequence[Row], constraints: Sequence[Bound]) -> str:
    """`best loc_tf 0.83`: per constrained metric, the value nearest its bound among `rows`
    (why nothing is feasible)."""
    parts = []
    for bound in constraints:
        values = [float(row[bound.metric]) for row in rows if row.get(bound.metric) is not None]
        if not values:
            parts.append(f"no {bound.metric} recorded")
        else:
            parts.append(f"best {bound.metric} {(max(values) if bound.min is not None else min(values)):.4g}")
    return "; ".join(parts)


def _signed(row: Row, objective: Objective) -> float:
    value = float(row[objective.metric])
    return value if objective.direction == "maximize" else -value


def usable(rows: Sequence[Row], objectives: Sequence[Objective]) -> list[Row]:
    return [r for r in rows if all(r.get(o.metric) is not None for o in objectives)]


def rank_by(rows: Sequence[Row], objective: Objective, constraints: Sequence[Bound] = ()) -> list[Row]:
    """Best first; feasible rows before infeasible ones."""
    candidates = usable(rows, [objective])
    return sorted(candidates, key=lambda r: (not is_feasible(r, constraints), -_signed(r, objective), trial_order_key(r)))


def dominates(a: Row, b: Row, objectives: Sequence[Objective]) -> bool:
    better_or_equal = all(_signed(a, o) >= _signed(b, o) for o in objectives)
    strictly = any(_signed(a, o) > _signed(b, o) for o in objectives)
    return better_or_equal and strictly


def pareto_front(rows: Sequence[Row], objectives: Sequence[Objective], constraints: Sequence[Bound] = ()) -> list[Row]:
    """Non-dominated feasible rows, sorted best-first by the first objective, then the next
    ones (empty when constraints leave no row feasible)."""
    candidates = [r for r in usable(rows, objectives) if is_feasible(r, constraints)]
    front = [r for r in candidates if not any(dominates(o, r, objectives) for o in candidates if o is not r)]
    return sorted(front, key=lambda r: (tuple(-_signed(r, o) for o in objectives), trial_order_key(r)))
