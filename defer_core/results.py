"""What a trial produces: one outcome per edit and one metric set per milestone.

Metric keys are `{metric}_{scoring}`: metric in rel/gen/loc, scoring in tf (teacher-forced)
or gen (greedy generation), e.g. `rel_tf`, `loc_gen`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SCORINGS = ("tf", "gen")
PROTOCOLS = ("stream", "chunks")
METRICS = ("rel", "gen", "loc")


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
    stopped_early: bool = False
