"""Error bars: a mean and how far it could move, over repeats or over records.

Two sources of spread, kept apart because they answer different questions:

- `repeat_interval`: over repeat members (seeds x edit orders of one configuration), a Student t
  interval: how much the number moves if the whole run is repeated. Every metric is a
  proportion, so the interval is clipped to [0, 1]: over 2 or 3 members the t quantile is 12.7
  or 4.3 and the raw interval of an accuracy can reach far outside what any run could score.
  A clipped interval is no longer symmetric about the mean, so it is shown as `0.50 [0.00, 1.00]`
  rather than `0.50 ± 6.35`. Clipping (rather than Wilson over records or the bootstrap) keeps
  the t interval's question, spread over repeats; the bootstrap answers the other one.
- `bootstrap_interval`: over the records scored at one milestone of one run, a percentile
  bootstrap of their mean: how much the number moves with another draw of records.

numpy and scipy are imported where used, so importing this module (the CLI's help does) stays
light. The mean is `statistics.fmean` (correctly rounded), so a cell's mean equals the same
`fmean` computed anywhere else bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import fmean, stdev
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from defer_core.errors import DeferInputError

if TYPE_CHECKING:
    from defer_core.results import MilestoneResult, TrialResult

# MLflow metric names of a repeated trial's spread per milestone: `{metric}{suffix}`.
STD_SUFFIX = "_std"  # sample standard deviation over the repeat members
CI_LOW_SUFFIX = "_ci_low"  # Student t interval over the members (repeat_interval)
CI_HIGH_SUFFIX = "_ci_high"
T_INTERVAL = "t"  # milestone_intervals' keys: over repeat members, and over records
BOOTSTRAP = "bootstrap"
BOOTSTRAP_BLOCK = 256  # resamples drawn per block: bounds memory; fixed, so results never depend on it
PROPORTION = (0.0, 1.0)  # where every metric lies (an accuracy over records)


@dataclass(frozen=True)
class Interval:
    """`mean` with the interval [low, high] at the confidence asked; `half_width` is half its
    width (a bootstrap interval need not be symmetric about the mean). NaN where undefined.
    `clipped`: a t interval cut at a bound of PROPORTION (shown as [low, high])."""

    mean: float
    low: float
    high: float
    half_width: float
    n: int
    kind: str  # "t" (Student t over repeats) or "bootstrap" (over records)
    confidence: float = 0.95
    clipped: bool = False


def _checked(values: Sequence[float], confidence: float, what: str) -> list[float]:
    if not 0 < confidence < 1:
        raise DeferInputError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    checked = [float(v) for v in values]
    if not checked:
        raise DeferInputError(f"an interval needs at least one {what}, got none")
    return checked


def repeat_interval(values: Sequence[float], confidence: float = 0.95, bounds: tuple[float, float] = PROPORTION) -> Interval:
    """Student t interval of the mean over repeat members, clipped to `bounds`. With one member
    the spread is unknown, not zero: low, high and half_width are NaN."""
    from scipy import stats

    checked = _checked(values, confidence, "repeat member")
    mean, n = fmean(checked), len(checked)
    if n == 1:
        return Interval(mean, math.nan, math.nan, math.nan, 1, "t", confidence)
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * stdev(checked) / math.sqrt(n)
    low, high = max(bounds[0], mean - half), min(bounds[1], mean + half)
    if (low, high) == (mean - half, mean + half):
        return Interval(mean, low, high, half, n, "t", confidence)
    return Interval(mean, low, high, (high - low) / 2, n, "t", confidence, clipped=True)


def bootstrap_interval(record_values: Sequence[float], confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> Interval:
    """Percentile bootstrap of the mean over the records of one milestone: `resamples` draws of
    n records with replacement from numpy's PCG64 Generator seeded with `seed`, so the same
    inputs always give the same interval."""
    import numpy as np

    checked = _checked(record_values, confidence, "record value")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise DeferInputError(f"resamples must be a positive integer, got {resamples!r}")
    values = np.asarray(checked, dtype=np.float64)
    n = len(values)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, BOOTSTRAP_BLOCK):
        count = min(BOOTSTRAP_BLOCK, resamples - start)
        means[start : start + count] = values[rng.integers(0, n, size=(count, n))].mean(axis=1)
    alpha = 1 - confidence
    low, high = (float(q) for q in np.quantile(means, [alpha / 2, 1 - alpha / 2]))
    return Interval(fmean(checked), low, high, (high - low) / 2, n, "bootstrap", confidence)


def member_intervals(results: Sequence["TrialResult"], confidence: float = 0.95) -> list[tuple["MilestoneResult", dict[str, Interval]]]:
    """Each milestone (as the first member reports it) with every metric's `repeat_interval`
    over the members' results, which share the plan and so report the same milestones in the
    same order."""
    first = results[0].milestones
    return [(milestone, {key: repeat_interval([r.milestones[i].metrics[key] for r in results], confidence) for key in milestone.metrics})
            for i, milestone in enumerate(first)]


def format_interval(interval: Interval, digits: int = 2) -> str:
    """"0.63 ± 0.02"; "0.50 [0.00, 1.00]" for a clipped interval; just "0.63" where the
    half-width is undefined (a single repeat)."""
    if math.isnan(interval.half_width):
        return f"{interval.mean:.{digits}f}"
    if interval.clipped:
        return f"{interval.mean:.{digits}f} [{interval.low:.{digits}f}, {interval.high:.{digits}f}]"
    return f"{interval.mean:.{digits}f} ± {interval.half_width:.{digits}f}"


def _one_trial(rows: Sequence[Mapping[str, Any]], what: str) -> None:
    trials = {row["trial_id"] for row in rows if row.get("trial_id") is not None}
    if len(trials) > 1:
        raise DeferInputError(f"milestone_intervals takes one trial's {what}, got rows of {len(trials)} trials ({', '.join(sorted(map(str, trials))[:3])} ...)")


def _present(rows: Iterable[Mapping[str, Any]], metric: str) -> dict[int, list[Mapping[str, Any]]]:
    """Rows that have `metric` (not null, not NaN), by milestone."""
    by_milestone: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        value = row.get(metric)
        if value is not None and not math.isnan(float(value)):
            by_milestone[int(row["n_edits"])].append(row)
    return by_milestone


def milestone_intervals(
    member_rows: Sequence[Mapping[str, Any]],
    record_rows: Sequence[Mapping[str, Any]],
    metric: str,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[int, dict[str, Interval | None]]:
    """One trial's error bars on `metric` at each milestone, from its member_milestones rows
    and its record_scores rows (Parquet, or dicts with the same keys): {n_edits: {"t": the
    Student t interval over the repeat members, "bootstrap": the percentile bootstrap over
    records of each record's mean over the members}}. A milestone with no member (or no
    record) values has None there; n_edits without either is left out."""
    _one_trial(member_rows, "member_milestones rows")
    _one_trial(record_rows, "record_scores rows")
    members, records = _present(member_rows, metric), _present(record_rows, metric)
    out: dict[int, dict[str, Interval | None]] = {}
    for n_edits in sorted(set(members) | set(records)):
        per_record: dict[tuple[int, str], list[float]] = defaultdict(list)
        for row in records.get(n_edits, []):
            per_record[(int(row.get("chunk") or 0), str(row["record_id"]))].append(float(row[metric]))
        record_means = [fmean(values) for _, values in sorted(per_record.items())]
        out[n_edits] = {
            T_INTERVAL: repeat_interval([float(row[metric]) for row in members[n_edits]], confidence) if n_edits in members else None,
            BOOTSTRAP: bootstrap_interval(record_means, confidence, resamples, seed) if record_means else None,
        }
    return out
