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

from .results import METRICS, GateRow, dtype_name, metric_key

TF = "tf"


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
