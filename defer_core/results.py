"""What a trial produces: one outcome per edit and one metric set per milestone.

Metric keys are `{metric}_{scoring}`: metric in rel/gen/loc, scoring in tf (teacher-forced)
or gen (greedy generation), e.g. `rel_tf`, `loc_gen`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SCORINGS = ("tf", "gen")
PROTOCOLS = ("stream", "chunks")
METRICS = ("rel", "gen", "loc")
# Model dtypes a trial can run in, by every spelling accepted (models.py maps them to torch's).
DTYPE_NAMES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
DTYPE_CHOICES = ("auto", *DTYPE_NAMES)  # auto: float32 on CPU, bfloat16 on a GPU


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


@dataclass(frozen=True)
class MilestoneResult:
    """Metrics after `n_edits` edits (stream) or averaged over chunks of `n_edits` (chunks)."""

    n_edits: int
    protocol: str
    metrics: dict[str, float]
    seconds: float = 0.0


@dataclass
class TrialResult:
    edits: list[EditOutcome] = field(default_factory=list)
    milestones: list[MilestoneResult] = field(default_factory=list)
