"""Thresholds off the knife edge (issue 18 item 6), in defer_core terms: a breakpoint of the
exact tf curve is a gate value, and a gate can move by one rounding step of the model's dtype
between thread counts. defer_core.curve.threshold_margin moves a breakpoint to the middle of
(gate below, breakpoint], where its metrics hold, with a one-step margin on both sides; where
the dtype has no such value it keeps the breakpoint and says so.

Random gate sets in float32, bfloat16 and float16 (gates rounded to the dtype as the model
holds them, some packed a few steps apart so the fallback happens too), every breakpoint, every
gate moved one step up and down."""

from __future__ import annotations

import random

import pytest
import torch
import yaml

from defer_core.curve import adjacent, curve_thresholds, in_dtype, safe_threshold, tf_metrics_at, threshold_margin
from defer_core.results import GateRow

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
OUTCOMES = {"rel": (1.0, 0.0), "gen": (1.0, 0.0), "loc": (0.0, 1.0)}  # (on, off): every firing change moves a metric


def random_rows(rng: random.Random, dtype: str, chunks: int = 2) -> tuple[GateRow, ...]:
    """Gate rows of every probe over `chunks` chunks: gates in (0, 1] in `dtype`, a few of them
    exactly equal (records firing together) and some a step or two apart (no room between)."""
    rows: list[GateRow] = []
    for chunk in range(chunks):
        for i in range(rng.randint(3, 8)):
            for probe, (on, off) in OUTCOMES.items():
                kind = rng.random()
                if rows and kind < 0.2:
                    gate = rng.choice(rows).gate  # a tie with another row
                elif rows and kind < 0.45:
                    gate = adjacent(rng.choice(rows).gate, dtype, rng.choice((-2, -1, 1, 2, 3)))  # crowded: one to three steps away
                else:
                    gate = in_dtype(rng.uniform(0.0, 1.0), dtype)
                gate = min(max(gate, adjacent(0.0, dtype, 1)), 1.0)  # a sigmoid: (0, 1]
                rows.append(GateRow(f"c{chunk}r{i}", probe, gate, on, off, chunk))
    return tuple(rows)


def moved(rows: tuple[GateRow, ...], index: int, steps: int, dtype: str) -> tuple[GateRow, ...]:
    row = rows[index]
    return (*rows[:index], GateRow(row.record_id, row.probe, adjacent(row.gate, dtype, steps), row.on, row.off, row.chunk), *rows[index + 1:])


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_adjacent_is_torch_nextafter_in_the_dtype(dtype: str) -> None:
    values = torch.tensor([0.0, 1e-3, 0.3, 0.5, 0.69921875, 0.999, 1.0], dtype=DTYPES[dtype])
    up = torch.nextafter(values, torch.full_like(values, 2.0)).tolist()
    down = torch.nextafter(values, torch.full_like(values, -2.0)).tolist()
    for value, above, below in zip(values.tolist(), up, down):
        assert (adjacent(value, dtype, 1), adjacent(value, dtype, -1)) == (above, below)
        assert adjacent(adjacent(value, dtype, 3), dtype, -3) == value


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_every_breakpoint_moves_inside_its_interval_and_no_one_step_move_of_a_gate_changes_it(dtype: str) -> None:
    rng = random.Random(f"margin-{dtype}")
    with_margin = without = 0
    for _ in range(12):
        rows = random_rows(rng, dtype)
        gates = [row.gate for row in rows]
        for breakpoint in curve_thresholds(gates):
            found = threshold_margin(breakpoint, gates, dtype)
            assert safe_threshold(breakpoint, gates, dtype) == found.threshold
            at_breakpoint = tf_metrics_at(rows, breakpoint, dtype)
            assert tf_metrics_at(rows, found.threshold, dtype) == at_breakpoint  # the breakpoint's metrics, by construction
            below = max((g for g in gates if g < breakpoint), default=None)
            assert found.below == below and found.breakpoint == breakpoint
            if breakpoint == 0.0:  # every row fires; nothing lies below 0
                assert (found.threshold, found.margin) == (0.0, True)
                continue
            if not found.margin:  # the fallback: too few dtype values between the gate below and the breakpoint
                without += 1
                assert found.threshold == breakpoint
                assert below is not None and adjacent(below, dtype, 2) > adjacent(breakpoint, dtype, -1)
                continue
            with_margin += 1
            written = in_dtype(found.threshold, dtype)
            assert (below if below is not None else 0.0) < written < breakpoint  # strictly inside, on both sides
            assert yaml.safe_load(yaml.safe_dump({"threshold": found.threshold}))["threshold"] == found.threshold
            for index in range(len(rows)):
                for steps in (1, -1):
                    assert tf_metrics_at(moved(rows, index, steps, dtype), found.threshold, dtype) == at_breakpoint, (index, steps)
    assert with_margin > 100 and without > 0  # both branches met


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_without_room_the_breakpoint_is_kept_and_said_to_have_no_margin(dtype: str) -> None:
    """A gate one or two dtype steps under the chosen one: no value is one step clear of both,
    so the breakpoint itself is handed on, margin False (and it is a knife edge: one step down
    of its gate changes the metrics)."""
    top = in_dtype(0.7, dtype)
    for gap in (1, 2):
        rows = (GateRow("a", "rel", top, 1.0, 0.0), GateRow("b", "loc", adjacent(top, dtype, -gap), 0.0, 1.0), GateRow("c", "gen", in_dtype(0.2, dtype), 1.0, 0.0))
        gates = [row.gate for row in rows]
        found = threshold_margin(top, gates, dtype)
        assert (found.threshold, found.margin, found.below) == (top, False, adjacent(top, dtype, -gap))
        assert tf_metrics_at(moved(rows, 0, -1, dtype), top, dtype) != tf_metrics_at(rows, top, dtype)  # the knife edge it stays on
    roomy = threshold_margin(top, [top, adjacent(top, dtype, -3)], dtype)  # two values between: the upper one is one step clear of both
    assert roomy.margin and in_dtype(roomy.threshold, dtype) == adjacent(top, dtype, -1)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_the_ends_of_the_curve(dtype: str) -> None:
    gates = [in_dtype(g, dtype) for g in (0.25, 0.75)]
    assert threshold_margin(0.0, gates, dtype).threshold == 0.0
    one = threshold_margin(1.0, gates, dtype)  # no gate at 1: its metrics hold on (0.75, 1]
    assert one.margin and one.below == gates[1] and one.threshold == 0.875
    first = threshold_margin(gates[0], gates, dtype)  # no gate below: [0, 0.25]
    assert first.margin and first.below is None and first.threshold == 0.125


def test_the_middle_is_written_with_the_fewest_digits_that_are_it_in_the_dtype() -> None:
    gates = [in_dtype(0.3, "float32"), in_dtype(0.7, "float32")]
    assert safe_threshold(gates[1], gates, "float32") == 0.5
    assert safe_threshold(0.7109375, [0.69921875, 0.7109375], "bfloat16") == 0.707  # 0.70703125 in bfloat16, the only value one step clear of both
