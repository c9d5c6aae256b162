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

Wherever records are scored, each one's rel/gen/loc probes also get a gate row (gate, tf
accuracy forced on and unedited: defer_core.curve reads tf metrics at any threshold from them),
and with a threshold grid the generation scorings are scored at each grid threshold. A plan
with `threshold_scores=False` skips the scoring at the adaptor's own threshold (curve mode).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Callable, Iterator, Protocol, Sequence

from .adaptor import DeferAdaptor
from .curve import accuracy_at
from .data import EditRecord
from .editor import EDIT_PATHS, DeferEditor, EditStats
from .errors import DeferInputError
from .evaluation import (
    RecordProbes,
    Scorer,
    UneditedLocality,
    build_probes,
    edit_gate,
    ensure_unedited_tf,
    gate_rows,
    mean_metrics,
    score_grid,
    score_records,
    unedited_cache_file,
)
from .hparams import DeferHParams
from .models import LoadedModel
from .runtime import DEFAULT_THREADS, torch_threads
from .results import (
    DEFAULT_SCORINGS,
    GENERATION_SCORINGS,
    PROTOCOLS,
    SCORINGS,
    SHARED_STREAM,
    TF,
    EditOutcome,
    GateRow,
    GridPoint,
    MilestoneResult,
    RecordScores,
    TrialResult,
    metric_key,
)
from .packed import PackedDeferAdaptor, PackedDeferEditor
from .scoring import token_accuracy
from .tokens import PromptTarget

OnEdit = Callable[[EditOutcome], None]
OnMilestone = Callable[[MilestoneResult], None]


@dataclass(frozen=True)
class TrialPlan:
    """`protocol`: one of PROTOCOLS, or ("stream", "immediate"): one edit stream scored both ways.
    `threshold_grid`: thresholds at which the generation scorings are also scored (GridPoint);
    `threshold_scores=False`: no scoring at the adaptor's own threshold (empty metrics and
    records), only gate rows and the grid. `threads`: torch's intra-op thread count for the
    trial (runtime.DEFAULT_THREADS, a sweep worker's default); it can move gates by an ulp."""

    protocol: str | tuple[str, ...] = "stream"
    milestones: tuple[int, ...] = (1,)
    scorings: tuple[str, ...] = DEFAULT_SCORINGS
    edit_path: str = "fast"
    threshold_grid: tuple[float, ...] = ()
    threshold_scores: bool = True
    threads: int = DEFAULT_THREADS

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
        grid = list(self.threshold_grid)
        numbers = all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and 0.0 <= t <= 1.0 for t in grid)
        if not numbers or len(set(grid)) != len(grid):
            raise DeferInputError(f"threshold_grid must be distinct numbers in [0, 1], got {grid}")
        object.__setattr__(self, "threshold_grid", tuple(float(t) for t in grid))
        if not isinstance(self.threshold_scores, bool):
            raise DeferInputError(f"threshold_scores must be true or false, got {self.threshold_scores!r}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise DeferInputError(f"threads must be a whole number >= 1, got {self.threads!r}")

    @property
    def protocols(self) -> tuple[str, ...]:
        return (self.protocol,) if isinstance(self.protocol, str) else tuple(self.protocol)

    @property
    def total_records(self) -> int:
        return self.milestones[-1]

    @property
    def grid_scorings(self) -> tuple[str, ...]:
        """The generation scorings scored at the grid thresholds (none without a grid)."""
        return tuple(s for s in self.scorings if s in GENERATION_SCORINGS) if self.threshold_grid else ()


def model_dtype(loaded: LoadedModel) -> str:
    """The dtype the model's weights are in, i.e. the one a trial runs in (e.g. float32)."""
    return str(next(loaded.model.parameters()).dtype).removeprefix("torch.")


class _Editor(Protocol):
    """What the trial loop needs: K members edited together, each scored on its own."""

    size: int
    thresholds: list[float]  # each member's own

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
        self.thresholds = [editor.hparams.threshold]

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
        self.thresholds = [h.threshold for h in editor.hparams]

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
    callbacks get the member index. Each result equals that trial run alone. Runs with torch
    set to `plan.threads` threads."""
    with torch_threads(plan.threads):
        return _run_trials(loaded, records, hparams, plan, seeds, on_edit, on_milestone, unedited, cache_dir, eval_batch_size)


def _run_trials(
    loaded: LoadedModel,
    records: Sequence[EditRecord],
    hparams: Sequence[DeferHParams],
    plan: TrialPlan,
    seeds: Sequence[int],
    on_edit: Callable[[int, EditOutcome], None] | None,
    on_milestone: Callable[[int, MilestoneResult], None] | None,
    unedited: UneditedLocality | None,
    cache_dir: Path | None,
    eval_batch_size: int,
) -> list[TrialResult]:
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
        with editor.member(0) as adaptor:  # not edited yet: the unedited model
            ensure_unedited_tf(scorer, adaptor, records, probes, unedited)
        run = _Run(editor, scorer, plan, unedited, model_dtype(loaded), record_edit, record_milestone)
        if plan.protocols == ("chunks",):
            run.chunks(records, probes)
        else:
            run.stream(records, probes)
    return results


@dataclass
class _Scored:
    """One member's evaluation of some records: each record's scores at the member's threshold
    (none when the plan skips them), gate rows, and per grid threshold each record's
    generation scores."""

    rows: list[dict[str, float]] = field(default_factory=list)
    gates: list[GateRow] = field(default_factory=list)
    grid: list[list[dict[str, float]]] = field(default_factory=list)

    def extend(self, other: "_Scored") -> None:
        self.rows += other.rows
        self.gates += other.gates
        self.grid = [mine + theirs for mine, theirs in zip(self.grid, other.grid)] if self.grid else [list(g) for g in other.grid]


def _over_chunks(per_chunk: Sequence[Sequence[dict[str, float]]]) -> dict[str, float]:
    """The mean over chunks of each chunk's mean over records (one chunk: the mean over records)."""
    if not per_chunk or not per_chunk[0]:
        return {}
    means = [mean_metrics(rows) for rows in per_chunk]
    return {key: fmean(m[key] for m in means) for key in means[0]}


def _record_scores(records: Sequence[EditRecord], rows: Sequence[dict[str, float]], chunk: int = 0) -> tuple[RecordScores, ...]:
    return tuple(RecordScores(record_id=r.record_id, metrics=row, chunk=chunk) for r, row in zip(records, rows))


@dataclass
class _Run:
    """The protocols' loops over one editor (K members in lockstep), with what every
    evaluation needs."""

    editor: _Editor
    scorer: Scorer
    plan: TrialPlan
    unedited: UneditedLocality
    dtype: str
    on_edit: Callable[[int, EditOutcome], None]
    on_milestone: Callable[[int, MilestoneResult], None]

    def evaluate(self, adaptor: DeferAdaptor, records: Sequence[EditRecord], probes: Sequence[RecordProbes], chunk: int = 0) -> _Scored:
        """Gate rows, the scores at the adaptor's threshold (unless skipped) and the grid."""
        plan = self.plan
        scored = _Scored(gates=gate_rows(self.scorer, adaptor, records, probes, plan.scorings, self.unedited, chunk))
        if plan.threshold_scores:
            scored.rows = score_records(self.scorer, adaptor, records, probes, plan.scorings, self.unedited)
        if plan.grid_scorings:
            scored.grid = score_grid(self.scorer, adaptor, records, probes, plan.grid_scorings, plan.threshold_grid, self.unedited)
        return scored

    def evaluate_all(self, records: Sequence[EditRecord], probes: Sequence[RecordProbes], chunk: int = 0) -> list[_Scored]:
        """Per member, `evaluate` on the model as it is now."""
        out = []
        for k in range(self.editor.size):
            with self.editor.member(k) as adaptor:
                out.append(self.evaluate(adaptor, records, probes, chunk))
        return out

    def edit_all(self, index: int, record: EditRecord, probe: RecordProbes, chunk: int, immediate: bool) -> tuple[list[_Scored], float]:
        """One edit of every member; when `immediate`, each member's evaluation of this record
        right after its edit (its rel row is then the edit's gate row when tf is scored) and the
        seconds it took."""
        scored, seconds = [], 0.0
        shares_rel = immediate and TF in self.plan.scorings
        for k, stats in enumerate(self.editor.edit(probe.edit)):
            with self.editor.member(k) as adaptor:
                if immediate:
                    start = time.perf_counter()
                    scored.append(self.evaluate(adaptor, [record], [probe]))
                    seconds += time.perf_counter() - start
                edit_row = scored[-1].gates[0] if shares_rel else edit_gate(self.scorer, adaptor, record, probe, self.unedited)
                if not self.plan.threshold_scores:
                    success = accuracy_at(edit_row.gate, edit_row.on, edit_row.off, self.editor.thresholds[k], self.dtype)
                elif shares_rel:
                    success = scored[-1].rows[0][metric_key("rel", TF)]
                else:
                    (predicted,) = self.scorer.predict(adaptor, TF, [probe.edit])
                    success = token_accuracy(predicted, probe.edit.target_ids)
            self.on_edit(k, EditOutcome(
                index=index,
                record_id=record.record_id,
                final_loss=stats.final_loss,
                seconds=stats.seconds,
                success=success,
                chunk=chunk,
                gate=edit_row.gate,
                success_on=edit_row.on,
                success_off=edit_row.off,
            ))
        return scored, seconds

    def milestone(self, k: int, n_edits: int, protocol: str, seconds: float, chunks: Sequence[tuple[Sequence[EditRecord], _Scored]]) -> None:
        """Member k's result from its evaluation of each chunk's records (one chunk unless the
        protocol is chunks): means per chunk, then over chunks."""
        grid = tuple(
            GridPoint(threshold=t, metrics=_over_chunks([scored.grid[i] for _, scored in chunks]))
            for i, t in enumerate(self.plan.threshold_grid)
        ) if self.plan.grid_scorings else ()
        self.on_milestone(k, MilestoneResult(
            n_edits=n_edits,
            protocol=protocol,
            metrics=_over_chunks([scored.rows for _, scored in chunks]),
            seconds=seconds,
            records=tuple(score for chunk, (records, scored) in enumerate(chunks) for score in _record_scores(records, scored.rows, chunk)),
            gates=tuple(row for _, scored in chunks for row in scored.gates),
            grid=grid,
        ))

    def stream(self, records: Sequence[EditRecord], probes: Sequence[RecordProbes]) -> None:
        """stream and/or immediate over one edit stream."""
        plan, size = self.plan, self.editor.size
        milestones = set(plan.milestones)
        immediate = "immediate" in plan.protocols
        at_edit = [_Scored() for _ in range(size)]  # immediate: each member's records, each scored right after its edit
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
            per_chunk: list[tuple[Sequence[EditRecord], list[_Scored]]] = []  # chunk -> (its records, member -> evaluation)
            seconds = 0.0
            for chunk in range(len(records) // size):
                self.editor.reset()
                span = slice(chunk * size, (chunk + 1) * size)
                for record, probe in zip(records[span], probes[span]):
                    edit_index += 1
                    self.edit_all(edit_index, record, probe, chunk, immediate=False)
                start = time.perf_counter()
                per_chunk.append((records[span], self.evaluate_all(records[span], probes[span], chunk)))
                seconds += (time.perf_counter() - start) / self.editor.size
            for k in range(self.editor.size):
                self.milestone(k, size, "chunks", seconds, [(chunk_records, members[k]) for chunk_records, members in per_chunk])
        self.editor.reset()
