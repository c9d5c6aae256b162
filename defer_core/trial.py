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

The editor is DEFER, GRACE or WISE, by the type of `hparams` (defer_core.editors); the loops
here see it through a view (trial_view.EditorView). DEFER (defer_view): wherever records are
scored, each one's rel/gen/loc probes also get a gate row (gate, tf accuracy forced on and
unedited: defer_core.curve reads tf metrics at any threshold from them), and with a threshold
grid the generation scorings are scored at each grid threshold; a plan with
`threshold_scores=False` skips the scoring at the adaptor's own threshold (curve mode); K DEFER
trials can be packed into one forward pass. GRACE and WISE (lifelong_view): one trial at a time,
scored row by row at their own decision, no gate rows or grid; the order of evaluation forwards
and how it relates to EasyEdit's scoring are in lifelong_view's docstring.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TypeVar, Union

from .data import EditRecord
from .defer_view import defer_view
from .editors import editor_of
from .errors import DeferInputError
from .plan import DEFAULT_GRACE_KEY, TrialPlan
from .evaluation import RecordProbes, Scorer, UneditedLocality, build_probes, unedited_cache_file
from .grace_hparams import GraceHParams
from .hparams import DeferHParams
from .lifelong_view import check_lifelong_plan, lifelong_view
from .models import LoadedModel
from .runtime import torch_threads
from .results import (
    EditOutcome,
    GridPoint,
    MilestoneResult,
    RecordScores,
    TrialResult,
    mean_over_chunks,
)
from .trial_view import EditorView, Scored
from .wise_hparams import WiseHParams

AnyHParams = Union[DeferHParams, GraceHParams, WiseHParams]
T_ = TypeVar("T_")
OnEdit = Callable[[EditOutcome], None]
OnMilestone = Callable[[MilestoneResult], None]


def model_dtype(loaded: LoadedModel) -> str:
    """The dtype the model's weights are in, i.e. the one a trial runs in (e.g. float32)."""
    return str(next(loaded.model.parameters()).dtype).removeprefix("torch.")


_EVALUATION_CACHE: dict[tuple[int, tuple[str, ...], str], UneditedLocality] = {}


def unedited_locality_for(loaded: LoadedModel, records: Sequence[EditRecord], cache_dir: Path | None = None) -> UneditedLocality:
    """Shared by every trial on the same loaded model in this process, and through `cache_dir`
    (a sweep's output directory) by every process of the sweep."""
    key = (id(loaded.model), tuple(r.record_id for r in records), str(cache_dir))
    if key not in _EVALUATION_CACHE:
        path = unedited_cache_file(cache_dir, loaded, records) if cache_dir is not None else None
        _EVALUATION_CACHE[key] = UneditedLocality.on_disk(path) if path else UneditedLocality()
    return _EVALUATION_CACHE[key]


def run_trial(
    loaded: LoadedModel,
    records: Sequence[EditRecord],
    hparams: AnyHParams,
    plan: TrialPlan,
    *,
    seed: int = 0,
    on_edit: OnEdit | None = None,
    on_milestone: OnMilestone | None = None,
    unedited: UneditedLocality | None = None,
    cache_dir: Path | None = None,
    eval_batch_size: int = 32,
    irrelevant_path: str | os.PathLike[str] | None = None,
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
        irrelevant_path=irrelevant_path,
    )
    return result


def run_trials(
    loaded: LoadedModel,
    records: Sequence[EditRecord],
    hparams: Sequence[AnyHParams],
    plan: TrialPlan,
    *,
    seeds: Sequence[int],
    on_edit: Callable[[int, EditOutcome], None] | None = None,
    on_milestone: Callable[[int, MilestoneResult], None] | None = None,
    unedited: UneditedLocality | None = None,
    cache_dir: Path | None = None,
    eval_batch_size: int = 32,
    irrelevant_path: str | os.PathLike[str] | None = None,
) -> list[TrialResult]:
    """K trials on the same module, callbacks with the member index; each result equals that
    trial run alone. DEFER's K run in lockstep, packed into one forward pass; GRACE's and WISE's
    one after another (their editors have no packed form). Runs with torch set to
    `plan.threads` threads. `hparams` are all DeferHParams, all GraceHParams or all
    WiseHParams. `irrelevant_path`: WISE's ZsRE training file (default: the data directory's
    zsre/zsre_mend_train-1k.json); the others ignore it. `eval_batch_size`: DEFER's padded
    evaluation batches (GRACE and WISE are scored one row at a time)."""
    with torch_threads(plan.threads):
        if len(hparams) > 1 and len(seeds) == len(hparams) and {editor_of(h) for h in hparams} in ({"grace"}, {"wise"}):
            return [
                _run_trials(loaded, records, [member], plan, [seed], _as_member(on_edit, k), _as_member(on_milestone, k), unedited, cache_dir, eval_batch_size, irrelevant_path)[0]
                for k, (member, seed) in enumerate(zip(hparams, seeds))
            ]
        return _run_trials(loaded, records, hparams, plan, seeds, on_edit, on_milestone, unedited, cache_dir, eval_batch_size, irrelevant_path)


def _as_member(callback: Callable[[int, T_], None] | None, k: int) -> Callable[[int, T_], None] | None:
    """A run of one member reports as member k of the call."""
    return None if callback is None else (lambda _, value: callback(k, value))


def _trial_editor(hparams: Sequence[AnyHParams], plan: TrialPlan) -> str:
    """The one editor every member uses, checked against the plan."""
    editors = {editor_of(h) for h in hparams}
    if len(editors) != 1:
        raise DeferInputError(f"hparams: one call runs one editor, got {', '.join(sorted(editors))}")
    (editor,) = editors
    if plan.grace_key != DEFAULT_GRACE_KEY and editor != "grace":
        raise DeferInputError(f"grace_key: {plan.grace_key} is where GRACE reads its key; {editor.upper()} has none, so leave it at sticky")
    if editor != "defer":
        if len(hparams) > 1:  # run_trials runs them one at a time
            raise DeferInputError(f"hparams: packs of {len(hparams)} trials are DEFER only; run {editor.upper()} trials one at a time")
        check_lifelong_plan(plan, editor.upper())
    return editor


def _view_for(
    loaded: LoadedModel,
    hparams: Sequence[AnyHParams],
    seeds: Sequence[int],
    plan: TrialPlan,
    scorer: Scorer,
    unedited: UneditedLocality,
    records: Sequence[EditRecord],
    probes: Sequence[RecordProbes],
    irrelevant_path: str | os.PathLike[str] | None,
) -> contextlib.AbstractContextManager[EditorView]:
    if _trial_editor(hparams, plan) == "defer":
        return defer_view(loaded, hparams, seeds, plan, scorer, unedited, records, probes, model_dtype(loaded))  # type: ignore[arg-type]
    return lifelong_view(loaded, hparams[0], seeds[0], plan, scorer, unedited, records, probes, irrelevant_path)  # type: ignore[arg-type]


def _run_trials(
    loaded: LoadedModel,
    records: Sequence[EditRecord],
    hparams: Sequence[AnyHParams],
    plan: TrialPlan,
    seeds: Sequence[int],
    on_edit: Callable[[int, EditOutcome], None] | None,
    on_milestone: Callable[[int, MilestoneResult], None] | None,
    unedited: UneditedLocality | None,
    cache_dir: Path | None,
    eval_batch_size: int,
    irrelevant_path: str | os.PathLike[str] | None,
) -> list[TrialResult]:
    if len(records) < plan.total_records:
        raise DeferInputError(f"the plan needs {plan.total_records} records, got {len(records)}")
    if len(seeds) != len(hparams) or not hparams:
        raise DeferInputError(f"need one seed per trial, got {len(seeds)} seeds for {len(hparams)} trials")
    _trial_editor(hparams, plan)  # refuse before tokenizing anything
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

    with _view_for(loaded, hparams, seeds, plan, scorer, unedited, records, probes, irrelevant_path) as view:
        run = _Run(view, plan, record_edit, record_milestone)
        if plan.protocols == ("chunks",):
            run.chunks(records, probes)
        else:
            run.stream(records, probes)
    return results


def _record_scores(records: Sequence[EditRecord], rows: Sequence[dict[str, float]], chunk: int = 0) -> tuple[RecordScores, ...]:
    return tuple(RecordScores(record_id=r.record_id, metrics=row, chunk=chunk) for r, row in zip(records, rows))


@dataclass
class _Run:
    """The protocols' loops over one editor view (K members in lockstep)."""

    view: EditorView
    plan: TrialPlan
    on_edit: Callable[[int, EditOutcome], None]
    on_milestone: Callable[[int, MilestoneResult], None]

    def evaluate_all(self, records: Sequence[EditRecord], probes: Sequence[RecordProbes], chunk: int = 0) -> list[Scored]:
        """Per member, its evaluation on the model as it is now."""
        return [self.view.evaluate(k, records, probes, chunk) for k in range(self.view.size)]

    def edit_all(self, index: int, record: EditRecord, probe: RecordProbes, chunk: int, immediate: bool) -> tuple[list[Scored], float]:
        """One edit of every member; when `immediate`, each member's evaluation of this record
        right after its edit (then the edit's check may read it) and the seconds it took."""
        scored, seconds = [], 0.0
        for k, stats in enumerate(self.view.edit(record, probe)):
            if immediate:
                start = time.perf_counter()
                scored.append(self.view.evaluate(k, [record], [probe], after_edit=True))
                seconds += time.perf_counter() - start
            check = self.view.check_edit(k, record, probe, scored[-1] if immediate else None)
            self.on_edit(k, EditOutcome(
                index=index,
                record_id=record.record_id,
                final_loss=stats.final_loss,
                seconds=stats.seconds,
                success=check.success,
                chunk=chunk,
                gate=check.gate,
                success_on=check.on,
                success_off=check.off,
            ))
        return scored, seconds

    def milestone(self, k: int, n_edits: int, protocol: str, seconds: float, chunks: Sequence[tuple[Sequence[EditRecord], Scored]]) -> None:
        """Member k's result from its evaluation of each chunk's records (one chunk unless the
        protocol is chunks): means per chunk, then over chunks."""
        grid = tuple(
            GridPoint(threshold=t, metrics=mean_over_chunks([scored.grid[i] for _, scored in chunks]))
            for i, t in enumerate(self.plan.threshold_grid)
        ) if self.plan.grid_scorings else ()
        self.on_milestone(k, MilestoneResult(
            n_edits=n_edits,
            protocol=protocol,
            metrics=mean_over_chunks([scored.rows for _, scored in chunks]),
            seconds=seconds,
            records=tuple(score for chunk, (records, scored) in enumerate(chunks) for score in _record_scores(records, scored.rows, chunk)),
            gates=tuple(row for _, scored in chunks for row in scored.gates),
            grid=grid,
        ))

    def stream(self, records: Sequence[EditRecord], probes: Sequence[RecordProbes]) -> None:
        """stream and/or immediate over one edit stream."""
        plan, size = self.plan, self.view.size
        milestones = set(plan.milestones)
        immediate = "immediate" in plan.protocols
        at_edit = [Scored() for _ in range(size)]  # immediate: each member's records, each scored right after its edit
        immediate_seconds = 0.0
        for index, (record, probe) in enumerate(zip(records, probes), start=1):
            scored, seconds = self.edit_all(index, record, probe, 0, immediate)
            immediate_seconds += seconds
            for k, one in enumerate(scored):
                at_edit[k].extend(one)
            if index not in milestones:
                continue
            if "stream" in plan.protocols:
                start = time.perf_counter()
                per_member = self.evaluate_all(records[:index], probes[:index])
                seconds = (time.perf_counter() - start) / size
                for k, member in enumerate(per_member):
                    self.milestone(k, index, "stream", seconds, [(records[:index], member)])
            if immediate:
                for k in range(size):
                    self.milestone(k, index, "immediate", immediate_seconds / size, [(records[:index], at_edit[k])])
                immediate_seconds = 0.0

    def chunks(self, records: Sequence[EditRecord], probes: Sequence[RecordProbes]) -> None:
        edit_index = 0
        for size in self.plan.milestones:
            per_chunk: list[tuple[Sequence[EditRecord], list[Scored]]] = []  # chunk -> (its records, member -> evaluation)
            seconds = 0.0
            for chunk in range(len(records) // size):
                self.view.reset()
                span = slice(chunk * size, (chunk + 1) * size)
                for record, probe in zip(records[span], probes[span]):
                    edit_index += 1
                    self.edit_all(edit_index, record, probe, chunk, immediate=False)
                start = time.perf_counter()
                per_chunk.append((records[span], self.evaluate_all(records[span], probes[span], chunk)))
                seconds += (time.perf_counter() - start) / self.view.size
            for k in range(self.view.size):
                self.milestone(k, size, "chunks", seconds, [(chunk_records, members[k]) for chunk_records, members in per_chunk])
        self.view.reset()
