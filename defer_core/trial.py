"""One continual-editing trial: a stream of edits with evaluations at milestones.

stream: edit records 1..T in order; at each milestone n evaluate over the n edits made so far.
chunks (the WISE paper's protocol): for each milestone T', edit T' records, evaluate them,
roll back, take the next T'; report the mean over the floor(T / T') chunks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from statistics import fmean
from typing import Callable, Sequence

from .data import EditRecord
from .editor import EDIT_PATHS, attached_editor
from .errors import DeferInputError
from .evaluation import RecordProbes, Scorer, UneditedLocality, build_probes, evaluate
from .hparams import DeferHParams
from .models import LoadedModel
from .results import PROTOCOLS, SCORINGS, EditOutcome, MilestoneResult, TrialResult
from .scoring import token_accuracy

OnEdit = Callable[[EditOutcome], None]
OnMilestone = Callable[[MilestoneResult], None]


@dataclass(frozen=True)
class TrialPlan:
    protocol: str = "stream"
    milestones: tuple[int, ...] = (1,)
    scorings: tuple[str, ...] = SCORINGS
    edit_path: str = "fast"

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise DeferInputError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if not self.milestones or list(self.milestones) != sorted(set(self.milestones)) or self.milestones[0] < 1:
            raise DeferInputError(f"milestones must be distinct positive edit counts in ascending order, got {list(self.milestones)}")
        unknown = [s for s in self.scorings if s not in SCORINGS]
        if not self.scorings or unknown:
            raise DeferInputError(f"scorings must be a non-empty subset of {', '.join(SCORINGS)}, got {list(self.scorings)}")
        if self.edit_path not in EDIT_PATHS:
            raise DeferInputError(f"edit_path must be one of {', '.join(EDIT_PATHS)}, got {self.edit_path!r}")

    @property
    def total_records(self) -> int:
        return self.milestones[-1]


def default_milestones(total: int) -> tuple[int, ...]:
    """1, 10, 100, ... below T, then T."""
    points, power = [], 1
    while power < total:
        points.append(power)
        power *= 10
    return tuple(points + [total])


_EVALUATION_CACHE: dict[tuple[int, tuple[str, ...]], UneditedLocality] = {}


def unedited_locality_for(loaded: LoadedModel, records: Sequence[EditRecord]) -> UneditedLocality:
    """Shared by every trial on the same loaded model in this process."""
    key = (id(loaded.model), tuple(r.record_id for r in records))
    return _EVALUATION_CACHE.setdefault(key, UneditedLocality())


def run_trial(
    loaded: LoadedModel,
    records: Sequence[EditRecord],
    hparams: DeferHParams,
    plan: TrialPlan,
    *,
    seed: int = 0,
    on_edit: OnEdit | None = None,
    on_milestone: OnMilestone | None = None,
    unedited: UneditedLocality | None = None,
    eval_batch_size: int = 32,
) -> TrialResult:
    if len(records) < plan.total_records:
        raise DeferInputError(f"the plan needs {plan.total_records} records, got {len(records)}")
    records = list(records[: plan.total_records])
    probes = [build_probes(loaded, record) for record in records]
    scorer = Scorer(loaded, batch_size=eval_batch_size)
    unedited = unedited or unedited_locality_for(loaded, records)
    result = TrialResult()

    def record_edit(outcome: EditOutcome) -> None:
        result.edits.append(outcome)
        if on_edit:
            on_edit(outcome)

    def record_milestone(milestone: MilestoneResult) -> None:
        result.milestones.append(milestone)
        if on_milestone:
            on_milestone(milestone)

    with attached_editor(loaded, hparams, seed=seed, edit_path=plan.edit_path) as editor:
        run = _run_stream if plan.protocol == "stream" else _run_chunks
        run(editor, scorer, records, probes, plan, unedited, record_edit, record_milestone)
    return result


def _edit_one(editor, scorer: Scorer, index: int, record: EditRecord, probe: RecordProbes, chunk: int) -> EditOutcome:
    stats = editor.edit(probe.edit)
    (predicted,) = scorer.predict(editor.adaptor, "tf", [probe.edit])
    return EditOutcome(
        index=index,
        record_id=record.record_id,
        final_loss=stats.final_loss,
        seconds=stats.seconds,
        success=token_accuracy(predicted, probe.edit.target_ids),
        chunk=chunk,
    )


def _run_stream(editor, scorer, records, probes, plan, unedited, on_edit: OnEdit, on_milestone: OnMilestone) -> None:
    milestones = set(plan.milestones)
    for index, (record, probe) in enumerate(zip(records, probes), start=1):
        on_edit(_edit_one(editor, scorer, index, record, probe, chunk=0))
        if index in milestones:
            start = time.perf_counter()
            metrics = evaluate(scorer, editor.adaptor, records[:index], probes[:index], plan.scorings, unedited)
            on_milestone(MilestoneResult(n_edits=index, protocol="stream", metrics=metrics, seconds=time.perf_counter() - start))


def _run_chunks(editor, scorer, records, probes, plan, unedited, on_edit: OnEdit, on_milestone: OnMilestone) -> None:
    edit_index = 0
    for size in plan.milestones:
        per_chunk: list[dict[str, float]] = []
        seconds = 0.0
        for chunk in range(len(records) // size):
            editor.reset()
            span = slice(chunk * size, (chunk + 1) * size)
            for record, probe in zip(records[span], probes[span]):
                edit_index += 1
                on_edit(_edit_one(editor, scorer, edit_index, record, probe, chunk=chunk))
            start = time.perf_counter()
            per_chunk.append(evaluate(scorer, editor.adaptor, records[span], probes[span], plan.scorings, unedited))
            seconds += time.perf_counter() - start
        metrics = {key: fmean(m[key] for m in per_chunk) for key in per_chunk[0]}
        on_milestone(MilestoneResult(n_edits=size, protocol="chunks", metrics=metrics, seconds=seconds))
    editor.reset()
