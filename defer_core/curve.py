"""A trained adaptor's Rel/Gen/Loc under tf scoring at every threshold, from its gate rows.

DEFER's threshold is read only at evaluation: per row, the value head answers when the gate g
(computed once, at the row's key token) is >= threshold, else the frozen layer does, and the
whole model is then the unedited one. So a row's tf accuracy at threshold t is `on if g >= t
else off` (results.GateRow) and a metric is the mean of that over rows: a step function of t
whose steps sit at the gate values. Evaluating it at 0, at each distinct gate and at 1 gives
the exact curve on [0, 1]; no model is needed.

The model compares the gate with the threshold in its own dtype (the Python float is rounded
to it), so `fires` does the same. Means are taken as the evaluation takes them (per chunk,
then over chunks), so a value read here equals, bit for bit, a full evaluation at t.

Imports no torch: `defer-sweep curve` reads a sweep's Parquet without loading a model.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from dataclasses import dataclass
from statistics import fmean
from typing import Iterable, Sequence

from .results import METRICS, TF, GateRow, dtype_name, metric_key


def in_dtype(threshold: float, dtype: str) -> float:
    """`threshold` as a tensor of `dtype` holds it (what `gate >= threshold` compares with)."""
    name = dtype_name(dtype)
    single = struct.unpack("<f", struct.pack("<f", threshold))[0]  # torch rounds a Python float to float32 first
    if name == "float16":
        return struct.unpack("<e", struct.pack("<e", single))[0]
    if name == "float32":
        return single
    bits = struct.unpack("<I", struct.pack("<f", single))[0]  # bfloat16: round the float32 to its top 16 bits, to nearest even
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000) & 0xFFFFFFFF
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def fires(gate: float, threshold: float, dtype: str) -> bool:
    """Whether the value head answers a row with this gate at this threshold."""
    return gate >= in_dtype(threshold, dtype)


def accuracy_at(gate: float, on: float, off: float, threshold: float, dtype: str) -> float:
    return on if fires(gate, threshold, dtype) else off


def tf_metrics_at(rows: Sequence[GateRow], threshold: float, dtype: str) -> dict[str, float]:
    """`rel_tf`, `gen_tf`, `loc_tf` at `threshold`: per probe, the mean over each chunk's rows,
    then over chunks (as the chunks protocol reports; one chunk otherwise)."""
    by_probe: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_probe[row.probe][row.chunk].append(accuracy_at(row.gate, row.on, row.off, threshold, dtype))
    out = {}
    for probe in METRICS:
        chunks = by_probe.get(probe)
        if chunks:
            out[metric_key(probe, TF)] = fmean(fmean(values) for _, values in sorted(chunks.items()))
    return out


def curve_thresholds(gates: Iterable[float]) -> list[float]:
    """Where the curve can change: 0, every distinct gate value in (0, 1], and 1. The value at
    a gate g holds on (previous gate, g]; at 0 every row fires (a sigmoid is >= 0)."""
    inside = {float(g) for g in gates if 0.0 < g <= 1.0}
    return sorted({0.0, 1.0} | inside)


@dataclass(frozen=True)
class CurvePoint:
    threshold: float
    metrics: dict[str, float]


def exact_curve(rows: Sequence[GateRow], dtype: str) -> list[CurvePoint]:
    """The tf metrics at every threshold where they can change (`curve_thresholds`)."""
    return [CurvePoint(t, tf_metrics_at(rows, t, dtype)) for t in curve_thresholds(row.gate for row in rows)]


def thin(thresholds: Sequence[float], resolution: float) -> list[float]:
    """At most one threshold per `resolution` step: sorted, each kept one at least
    `resolution` above the previous kept; 0 and the largest are always kept."""
    ordered = sorted(set(thresholds))
    if resolution <= 0 or len(ordered) <= 2:
        return ordered
    kept = [ordered[0]]
    for t in ordered[1:-1]:
        if t - kept[-1] >= resolution:
            kept.append(t)
    if ordered[-1] != kept[-1]:
        kept.append(ordered[-1])
    return kept


def edit_success_at(gate: float | None, on: float | None, off: float | None, threshold: float, dtype: str) -> float | None:
    """An edit's success (tf accuracy of its prompt right after it) at another threshold."""
    if gate is None or on is None or off is None:
        return None
    return accuracy_at(gate, on, off, threshold, dtype)


# -- off the knife edge -------------------------------------------------------------------------------
#
# A breakpoint of the tf curve is a gate value g_k: the rows whose gate equals it fire there, and
# the same training run with another thread count (another summation order) can give that gate
# one rounding step less, so a threshold written as g_k itself may lose those rows elsewhere.
# The metrics at g_k hold for every threshold in (g_below, g_k], g_below the largest gate under
# g_k (all rows: every probe, every chunk), or [0, g_k] when none is. Its middle is the threshold
# to hand on: the same metrics, a margin on both sides. (Not the interval above g_k: from g_k
# upward the rows at g_k stop firing and the metrics change.)

_BITS = {"float32": ("<f", "<I", 0x8000_0000, 0), "bfloat16": ("<f", "<I", 0x8000_0000, 16), "float16": ("<e", "<H", 0x8000, 0)}


def adjacent(value: float, dtype: str, steps: int = 1) -> float:
    """The value `steps` representable values above `value` in `dtype` (below when negative);
    `value` is first rounded to the dtype (`in_dtype`). One step is what a gate can move by
    when the same computation runs in another order."""
    float_format, int_format, sign, shift = _BITS[dtype_name(dtype)]
    bits = struct.unpack(int_format, struct.pack(float_format, in_dtype(value, dtype)))[0] >> shift
    sign >>= shift
    ordered = -(bits & ~sign) if bits & sign else bits  # -0.0 and 0.0 are both 0
    ordered += steps
    bits = (sign | -ordered) if ordered < 0 else ordered
    return struct.unpack(float_format, struct.pack(int_format, bits << shift))[0]


def shortest_text(value: float, dtype: str) -> float:
    """The decimal with the fewest digits that is `value` in `dtype` (0.5, not 0.5000000119...):
    what a YAML file shows; EasyEdit's model rounds it back to exactly `value`."""
    exact = in_dtype(value, dtype)
    for digits in range(1, 18):
        candidate = float(f"{exact:.{digits}g}")
        if in_dtype(candidate, dtype) == exact:
            return candidate
    return exact


@dataclass(frozen=True)
class SafeThreshold:
    """A chosen tf breakpoint moved off its knife edge (`threshold_margin`)."""

    threshold: float  # what to write: `breakpoint`'s metrics with a margin on both sides, or `breakpoint` itself (no margin)
    breakpoint: float  # the chosen threshold: a gate value, or the curve's end 0 or 1
    below: float | None  # the largest gate under it (None: none; the metrics then hold on [0, breakpoint])
    margin: bool  # False: no dtype value lies far enough inside the interval; `threshold` is `breakpoint`
    dtype: str


def threshold_margin(chosen: float, gates: Iterable[float], dtype: str) -> SafeThreshold:
    """`chosen` (a breakpoint of the tf curve of these gates) moved to the middle of the
    interval of thresholds that give its metrics, (g_below, chosen], computed in the model's
    `dtype` and written with the fewest digits. The result m has a one-step margin on both
    sides: a gate under `chosen` one dtype step higher still stays under m, and a gate at or
    over `chosen` one step lower still reaches m. Where the dtype has no such value (fewer than
    two values strictly between g_below and `chosen`) the result is `chosen` itself, with
    `margin` False. At 0 every row fires and no gate can lie lower: 0 is kept, with margin."""
    name = dtype_name(dtype)
    top = in_dtype(chosen, name)
    if top <= 0.0:
        return SafeThreshold(chosen, chosen, None, True, name)
    below = max((float(g) for g in gates if g < top), default=None)
    lowest = adjacent(below, name, 2) if below is not None else adjacent(0.0, name, 1)  # > a gate under `chosen` moved one step up
    highest = adjacent(top, name, -1)  # <= a gate at `chosen` moved one step down
    if lowest > highest:
        return SafeThreshold(chosen, chosen, below, False, name)
    middle = min(max(in_dtype(((below or 0.0) + top) / 2, name), lowest), highest)
    return SafeThreshold(shortest_text(middle, name), chosen, below, True, name)


def safe_threshold(chosen: float, gates: Iterable[float], dtype: str) -> float:
    """The threshold to hand on for the tf breakpoint `chosen`: the middle of (g_below, chosen],
    where the metrics are `chosen`'s, with a one dtype step margin on both sides, so a gate moving
    by a rounding step elsewhere changes no record; `chosen` itself where no such value exists
    (`threshold_margin` says which)."""
    return threshold_margin(chosen, gates, dtype).threshold
