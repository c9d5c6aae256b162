"""One continual-editing trial: a stream of edits with evaluations at milestones.

stream: edit records 1..T in order; at each milestone n evaluate over the n edits made so far
  (the WISE paper; EasyEdit's sequential_edit=True before commit 3c21b20).
immediate: edit records 1..T in order, scoring each record right after its own edit; at each
  milestone n report the mean over records 1..n (EasyEdit's sequential_edit=True from 3c21b20,
  2026-06-11, on: its edit loop evaluates each request straight after `edit_func`).
chunks: for each milestone T', edit T' records, evaluate them, roll back, take the next T';
  report the mean over the floor(T / T') chunks.

stream and immediate edit the same records in the same order, so one plan may ask for both:
one edit stream then serves both, each record scored after its own edit and at the milestones.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Callable, Iterator, Protocol, Sequence

from .adaptor import DeferAdaptor
from .data import EditRecord
from .editor import EDIT_PATHS, DeferEditor, EditStats
from .errors import DeferInputError
from .evaluation import RecordProbes, Scorer, UneditedLocality, build_probes, mean_metrics, score_records, unedited_cache_file
from .hparams import DeferHParams
from .models import LoadedModel
from .results import DEFAULT_SCORINGS, PROTOCOLS, SCORINGS, SHARED_STREAM, EditOutcome, MilestoneResult, RecordScores, TrialResult, metric_key
from .packed import PackedDeferAdaptor, PackedDeferEditor
from .scoring import token_accuracy
from .tokens import PromptTarget

OnEdit = Callable[[EditOutcome], None]
OnMilestone = Callable[[MilestoneResult], None]


@dataclass(frozen=True)
class TrialPlan:
    """`protocol`: one of PROTOCOLS, or ("stream", "immediate"): one edit stream scored both ways."""

    protocol: str | tuple[str, ...] = "stream"
    milestones: tuple[int, ...] = (1,)
    scorings: tuple[str, ...] = DEFAULT_SCORINGS
    edit_path: str = "fast"

    def __post_init__(self) -> None:
        protocols = self.protocols
        if not protocols or any(p not in PROTOCOLS for p in protocols) or len(set(protocols)) != len(protocols):
            raise DeferInputError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if len(protocols) > 1 and not set(protocols) <= set(SHARED_STREAM):
            raise DeferInputError(f"only {' and '.join(SHARED_STREAM)} share an edit stream; run the others on their own, got {list(protocols)}")
        if not self.milestones or list(self.milestones) != sorted(set(self.milestones)) or self.milestones[0] < 1:
            raise DeferInputError(f"milestones must be distinct positive edit counts in ascending order, got {list(self.milestones)}")
        unknown = [s for s in self.scorings if s not in SCORINGS]
        if not self.scorings or unknown:
            raise DeferInputError(f"scorings must be a non-empty subset of {', '.join(SCORINGS)}, got {list(self.scorings)}")
        if self.edit_path not in EDIT_PATHS:
            raise DeferInputError(f"edit_path must be one of {', '.join(EDIT_PATHS)}, got {self.edit_path!r}")

    @property
    def protocols(self) -> tuple[str, ...]:
        return (self.protocol,) if isinstance(self.protocol, str) else tuple(self.protocol)

    @property
    def total_records(self) -> int:
        return self.milestones[-1]


def model_dtype(loaded: LoadedModel) -> str:
    """The dtype the model's weights are in, i.e. the one a trial runs in (e.g. float32)."""
    return str(next(loaded.model.parameters()).dtype).removeprefix("torch.")


class _Editor(Protocol):
    """What the trial loop needs: K members edited together, each scored on its own."""

    size: int

    def edit(self, probe: PromptTarget) -> list[EditStats]: ...

    def reset(self) -> None: ...

    def member(self, index: int) -> contextlib.AbstractContextManager: ...


_EVALUATION_CACHE: dict[tuple[int, tuple[str, ...], str], UneditedLocality] = {}


def unedited_locality_for(loaded: LoadedModel, records: Sequence[EditRecord], cache_dir: Path | None = None) -> UneditedLocality:
    """Shared by every trial on the same loaded model in this process, and through `cache_dir`
    (a sweep's output directory) by every process of the sweep."""
    key = (id(loaded.model), tuple(r.record_id for r in records), str(cache_dir))
    if key not in _EVALUATION_CACHE:
        path = unedited_cache_file(cache_dir, loaded, records) if cache_dir is not None else None
        _EVALUATION_CACHE[key] = UneditedLocality.on_disk(path) if path else UneditedLocality()
    return _EVALUATION_CACHE[key]


class _SingleEditor:
    """One DeferEditor seen as a pack of one, so one loop serves single and packed trials."""

    size = 1

    def __init__(self, editor: DeferEditor) -> None:
        self.editor = editor
        self.adaptor = editor.adaptor

    def edit(self, probe: PromptTarget) -> list[EditStats]:
        return [self.editor.edit(probe)]

    def reset(self) -> None:
        self.editor.reset()

    @contextlib.contextmanager
    def member(self, index: int) -> Iterator[DeferAdaptor]:
        yield self.editor.adaptor


@contextlib.contextmanager
def _editor_for(loaded: LoadedModel, hparams: Sequence[DeferHParams], seeds: Sequence[int], edit_path: str) -> Iterator[_Editor]:
    if len(hparams) == 1:
        editor = DeferEditor(loaded, hparams[0], seed=seeds[0], edit_path=edit_path)
        wrapped: _Editor = _SingleEditor(editor)
    else:
        editor = PackedDeferEditor(loaded, hparams, seeds)
        wrapped = _PackedView(editor)
    try:
        yield wrapped
    finally:
        editor.detach()


class _PackedView:
    def __init__(self, editor: PackedDeferEditor) -> None:
        self.editor = editor
        self.size = editor.size
        self.adaptor = editor.adaptor

    def edit(self, probe: PromptTarget) -> list[EditStats]:
        return self.editor.edit(probe)

    def reset(self) -> None:
        self.editor.reset()

    @contextlib.contextmanager
    def member(self, index: int) -> Iterator[PackedDeferAdaptor]:
        with self.editor.adaptor.member(index):
            yield self.editor.adaptor


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
    cache_dir: Path | None = None,
    eval_batch_size: int = 32,
) -> TrialResult:
    """One trial: the records edited in order, metrics at every milestone."""
    (result,) = run_trials(
        loaded,
        records,
        [hparams],
        plan,
        seeds=[seed],
        on_edit=(lambda _, outcome: on_edit(outcome)) if on_edit else None,
        on_milestone=(lambda _, milestone: on_milestone(milestone)) if on_milestone else None,
        unedited=unedited,
        cache_dir=cache_dir,
        eval_batch_size=eval_batch_size,
    )
    return result


def run_trials(
    loaded: LoadedModel,
    records: Sequence[EditRecord],
    hparams: Sequence[DeferHParams],
    plan: TrialPlan,
    *,
    seeds: Sequence[int],
    on_edit: Callable[[int, EditOutcome], None] | None = None,
    on_milestone: Callable[[int, MilestoneResult], None] | None = None,
    unedited: UneditedLocality | None = None,
    cache_dir: Path | None = None,
    eval_batch_size: int = 32,
) -> list[TrialResult]:
    """K trials on the same module in lockstep (packed into one forward pass when K > 1);
    callbacks get the member index. Each result equals that trial run alone."""
    if len(records) < plan.total_records:
        raise DeferInputError(f"the plan needs {plan.total_records} records, got {len(records)}")
    if len(seeds) != len(hparams) or not hparams:
        raise DeferInputError(f"need one seed per trial, got {len(seeds)} seeds for {len(hparams)} trials")
    records = list(records[: plan.total_records])
    probes = [build_probes(loaded, record) for record in records]
    scorer = Scorer(loaded, batch_size=eval_batch_size)
    unedited = unedited or unedited_locality_for(loaded, records, cache_dir)
    results = [TrialResult() for _ in hparams]

    def record_edit(k: int, outcome: EditOutcome) -> None:
        results[k].edits.append(outcome)
        if on_edit:
            on_edit(k, outcome)

    def record_milestone(k: int, milestone: MilestoneResult) -> None:
        results[k].milestones.append(milestone)
        if on_milestone:
            on_milestone(k, milestone)

    with _editor_for(loaded, hparams, seeds, plan.edit_path) as editor:
        run = _run_chunks if plan.protocols == ("chunks",) else _run_stream
        run(editor, scorer, records, probes, plan, unedited, record_edit, record_milestone)
    return results


def _edit_all(
    editor: _Editor, scorer: Scorer, index: int, record: EditRecord, probe: RecordProbes, chunk: int, on_edit,
    scorings: Sequence[str] = (), unedited: UneditedLocality | None = None,
) -> tuple[list[dict[str, float]], float]:
    """One edit of every member; with `scorings`, each member's scores of this record right
    after its edit (the immediate protocol; its rel_tf is the edit's success) and the seconds
    that scoring took."""
    scored, seconds = [], 0.0
    for k, stats in enumerate(editor.edit(probe.edit)):
        with editor.member(k) as adaptor:
            if scorings:
                assert unedited is not None
                start = time.perf_counter()
                (scores,) = score_records(scorer, adaptor, [record], [probe], scorings, unedited)
                seconds += time.perf_counter() - start
                scored.append(scores)
            if "tf" in scorings:
                success = scores[metric_key("rel", "tf")]
            else:
                (predicted,) = scorer.predict(adaptor, "tf", [probe.edit])
                success = token_accuracy(predicted, probe.edit.target_ids)
        on_edit(k, EditOutcome(
            index=index,
            record_id=record.record_id,
            final_loss=stats.final_loss,
            seconds=stats.seconds,
            success=success,
            chunk=chunk,
        ))
    return scored, seconds


def _score_all(editor: _Editor, scorer: Scorer, records, probes, scorings, unedited) -> list[list[dict[str, float]]]:
    """Per member, each record's scores on the model as it is now."""
    scored = []
    for k in range(editor.size):
        with editor.member(k) as adaptor:
            scored.append(score_records(scorer, adaptor, records, probes, scorings, unedited))
    return scored


def _record_scores(records: Sequence[EditRecord], rows: Sequence[dict[str, float]], chunk: int = 0) -> tuple[RecordScores, ...]:
    return tuple(RecordScores(record_id=r.record_id, metrics=row, chunk=chunk) for r, row in zip(records, rows))


def _run_stream(editor: _Editor, scorer, records, probes, plan, unedited, on_edit, on_milestone) -> None:
    """stream and/or immediate over one edit stream."""
    milestones = set(plan.milestones)
    immediate = "immediate" in plan.protocols
    at_edit: list[list[dict[str, float]]] = [[] for _ in range(editor.size)]  # immediate: member -> scores per record
    immediate_seconds = 0.0
    for index, (record, probe) in enumerate(zip(records, probes), start=1):
        scored, seconds = _edit_all(editor, scorer, index, record, probe, 0, on_edit, plan.scorings if immediate else (), unedited)
        immediate_seconds += seconds
        for k, scores in enumerate(scored):
            at_edit[k].append(scores)
        if index not in milestones:
            continue
        if "stream" in plan.protocols:
            start = time.perf_counter()
            per_member = _score_all(editor, scorer, records[:index], probes[:index], plan.scorings, unedited)
            seconds = (time.perf_counter() - start) / editor.size
            for k, rows in enumerate(per_member):
                on_milestone(k, MilestoneResult(n_edits=index, protocol="stream", metrics=mean_metrics(rows), seconds=seconds,
                                                records=_record_scores(records[:index], rows)))
        if immediate:
            for k in range(editor.size):
                on_milestone(k, MilestoneResult(n_edits=index, protocol="immediate", metrics=mean_metrics(at_edit[k]), seconds=immediate_seconds / editor.size,
                                                records=_record_scores(records[:index], at_edit[k])))
            immediate_seconds = 0.0


def _run_chunks(editor: _Editor, scorer, records, probes, plan, unedited, on_edit, on_milestone) -> None:
    edit_index = 0
    for size in plan.milestones:
        per_chunk: list[list[list[dict[str, float]]]] = []  # chunk -> member -> record scores
        seconds = 0.0
        for chunk in range(len(records) // size):
            editor.reset()
            span = slice(chunk * size, (chunk + 1) * size)
            for record, probe in zip(records[span], probes[span]):
                edit_index += 1
                _edit_all(editor, scorer, edit_index, record, probe, chunk, on_edit)
            start = time.perf_counter()
            per_chunk.append(_score_all(editor, scorer, records[span], probes[span], plan.scorings, unedited))
            seconds += (time.perf_counter() - start) / editor.size
        for k in range(editor.size):
            chunk_means = [mean_metrics(member_rows[k]) for member_rows in per_chunk]
            metrics = {key: fmean(m[key] for m in chunk_means) for key in chunk_means[0]}
            scores = tuple(
                score for chunk, member_rows in enumerate(per_chunk)
                for score in _record_scores(records[chunk * size : (chunk + 1) * size], member_rows[k], chunk)
            )
            on_milestone(k, MilestoneResult(n_edits=size, protocol="chunks", metrics=metrics, seconds=seconds, records=scores))
    editor.reset()
