"""What a trial produces: one outcome per edit and one metric set per milestone, and the
names every part shares (metrics, scorings, protocols, dtypes).

Metric keys are `{metric}_{scoring}`: metric in rel/gen/loc, scoring in tf (teacher-forced),
gen (greedy generation against EasyEdit's target tokens) or genctx (greedy generation against
the target's tokens in context), e.g. `rel_tf`, `loc_gen`, `gen_genctx`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import fmean
from typing import Sequence

from .errors import DeferInputError

TF = "tf"  # teacher-forced: the only scoring whose gates give exact threshold curves (curve.py)
GENERATION_SCORINGS = ("gen", "genctx")  # the threshold is read at every generated token
SCORINGS = (TF, *GENERATION_SCORINGS)
DEFAULT_SCORINGS = (TF, "gen")  # EasyEdit's two; genctx is asked for by name
# Which published numbers each scoring reproduces (docs/scoring-and-protocols.md).
SCORING_SOURCES = {
    TF: "teacher-forced token accuracy: EasyEdit's test_prediction_acc, what EasyEdit scores DEFER with",
    "gen": "greedy generation vs tok.encode(target, add_special_tokens=False): EasyEdit's vanilla_generation, exact",
    "genctx": "greedy generation vs the target's tokens in context (those tf scores); not an EasyEdit metric",
}
PROTOCOLS = ("stream", "chunks", "immediate")
# Which published numbers each protocol reproduces.
PROTOCOL_SOURCES = {
    "stream": "every record scored after all n edits: the WISE paper and EasyEdit sequential_edit=True before 3c21b20 (2026-06-11)",
    "chunks": "n records edited, scored, rolled back, next n; mean over the chunks (EasyEdit sequential_edit=False when n = 1)",
    "immediate": "each record scored right after its own edit, mean over the n so far: EasyEdit sequential_edit=True from 3c21b20 (PR 687) on",
}
# Protocols one edit stream can serve together: they edit the same records in the same order
# and differ only in when each record is scored.
SHARED_STREAM = ("stream", "immediate")
METRICS = ("rel", "gen", "loc")
# Model dtypes a trial can run in, by every spelling accepted, and the canonical name of each.
DTYPE_SPELLINGS = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}
DTYPE_NAMES = tuple(DTYPE_SPELLINGS)
DEFAULT_DTYPE = "float32"  # what `auto` means: EasyEdit's DEFER always runs float32 (its hparams have no fp16 key)
DTYPE_CHOICES = ("auto", *DTYPE_NAMES)


def dtype_name(choice: str) -> str:
    """The canonical dtype a choice runs in: `auto` is float32 (EasyEdit's setting) on every
    device; bfloat16 and float16 only when asked for by name."""
    if choice == "auto":
        return DEFAULT_DTYPE
    if choice not in DTYPE_SPELLINGS:
        raise DeferInputError(f"dtype {choice!r} is not one of {', '.join(DTYPE_CHOICES)}")
    return DTYPE_SPELLINGS[choice]


def default_milestones(total: int) -> tuple[int, ...]:
    """1, 10, 100, ... below T, then T."""
    points, power = [], 1
    while power < total:
        points.append(power)
        power *= 10
    return tuple(points + [total])


def milestones_ending_at(milestones: tuple[int, ...], total: int) -> tuple[int, ...]:
    """Ascending edit counts up to T, with T appended when missing: results are read at T, so
    T is always a milestone. Raises ValueError naming the first bad value."""
    if list(milestones) != sorted(set(milestones)):
        raise ValueError(f"must be distinct and ascending, got {list(milestones)}")
    if milestones and milestones[-1] > total:
        raise ValueError(f"has {milestones[-1]} > T={total}")
    return milestones if milestones and milestones[-1] == total else (*milestones, total)


def metric_key(metric: str, scoring: str) -> str:
    return f"{metric}_{scoring}"


@dataclass(frozen=True)
class EditOutcome:
    """One edit: its place in the stream, the final training loss, wall seconds, and whether
    the edited prompt is predicted right (teacher-forced token accuracy) straight after it."""

    index: int
    record_id: str
    final_loss: float
    seconds: float
    success: float
    chunk: int = 0
    # The edit prompt's tf accuracy with the adaptor forced on and off, and the gate that
    # decides between them (defer_core.curve reads `success` at any threshold from these).
    gate: float | None = None
    success_on: float | None = None
    success_off: float | None = None


@dataclass(frozen=True)
class RecordScores:
    """One record's Rel/Gen/Loc behind a milestone (keys as in `MilestoneResult.metrics`):
    a milestone's value is the mean of its records' values, so every number is traceable."""

    record_id: str
    metrics: dict[str, float]
    chunk: int = 0


@dataclass(frozen=True)
class GateRow:
    """One probe row of one record at a milestone, under tf scoring: the adaptor's gate on it
    (at its key token, in the model's dtype), its token accuracy with the adaptor forced on
    (`on`) and bypassed (`off`, the unedited model's; 1.0 for `loc` by definition). Its
    accuracy at threshold t is `on if gate >= t else off` (defer_core.curve)."""

    record_id: str
    probe: str  # one of METRICS: the rel, gen or loc prompt of the record
    gate: float
    on: float
    off: float
    chunk: int = 0


@dataclass(frozen=True)
class GridPoint:
    """Generation scorings at one threshold of the spec's grid (they depend on the threshold
    at every generated token, so no exact curve exists): `metrics` keyed like
    MilestoneResult.metrics, e.g. `rel_gen`, `loc_genctx`."""

    threshold: float
    metrics: dict[str, float]


@dataclass(frozen=True)
class MilestoneResult:
    """Metrics after `n_edits` edits (stream), averaged over chunks of `n_edits` (chunks), or
    over the first `n_edits` records each scored right after its own edit (immediate)."""

    n_edits: int
    protocol: str
    metrics: dict[str, float]
    seconds: float = 0.0
    records: tuple[RecordScores, ...] = ()
    gates: tuple[GateRow, ...] = ()  # every record's rel/gen/loc probe rows (defer_core.curve)
    grid: tuple[GridPoint, ...] = ()  # generation scorings at the plan's threshold grid


@dataclass
class TrialResult:
    edits: list[EditOutcome] = field(default_factory=list)
    milestones: list[MilestoneResult] = field(default_factory=list)

    def milestones_of(self, protocol: str) -> list[MilestoneResult]:
        """The milestones of one protocol (a shared edit stream reports several)."""
        return [m for m in self.milestones if m.protocol == protocol]


def mean_metrics(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """The mean of each metric over records (the value a milestone reports)."""
    return {key: fmean(row[key] for row in rows) for key in rows[0]}


def mean_over_chunks(per_chunk: Sequence[Sequence[dict[str, float]]]) -> dict[str, float]:
    """A milestone's metrics: the mean over chunks of each chunk's mean over records (one chunk:
    the mean over records). Light, so compare recomputes a kept pass's cells with it exactly."""
    if not per_chunk or not per_chunk[0]:
        return {}
    means = [mean_metrics(rows) for rows in per_chunk]
    return {key: fmean(m[key] for m in means) for key in means[0]}
