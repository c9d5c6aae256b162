"""DEFER in a trial (trial_view.EditorView): one DeferEditor, or K packed into one forward pass,
scored in padded batches with gate rows (defer_core.curve reads tf metrics at any threshold
from them) and, with a threshold grid, the generation scorings at each grid threshold."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator, Protocol, Sequence

from .adaptor import DeferAdaptor
from .curve import accuracy_at
from .data import EditRecord
from .editor import DeferEditor, EditStats
from .evaluation import (
    RecordProbes,
    Scorer,
    UneditedLocality,
    edit_gate,
    ensure_unedited_tf,
    gate_rows,
    score_grid,
    score_records,
)
from .hparams import DeferHParams
from .models import LoadedModel
from .packed import PackedDeferAdaptor, PackedDeferEditor
from .results import TF, metric_key
from .scoring import token_accuracy
from .tokens import PromptTarget
from .trial_view import EditCheck, Scored

if TYPE_CHECKING:
    from .plan import TrialPlan


class _Members(Protocol):
    """K members edited together, each scored on its own."""

    size: int
    thresholds: list[float]  # each member's own

    def edit(self, probe: PromptTarget) -> list[EditStats]: ...

    def reset(self) -> None: ...

    def member(self, index: int) -> contextlib.AbstractContextManager: ...


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


class _PackedMembers:
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


class DeferView:
    """DEFER's members with what scoring them needs."""

    def __init__(self, members: _Members, scorer: Scorer, plan: "TrialPlan", unedited: UneditedLocality, dtype: str) -> None:
        self.members, self.scorer, self.plan, self.unedited, self.dtype = members, scorer, plan, unedited, dtype
        self.size = members.size

    def edit(self, record: EditRecord, probe: RecordProbes) -> list[EditStats]:
        return self.members.edit(probe.edit)

    def reset(self) -> None:
        self.members.reset()

    def evaluate(self, k: int, records: Sequence[EditRecord], probes: Sequence[RecordProbes], chunk: int = 0, after_edit: bool = False) -> Scored:
        """Gate rows, the scores at the adaptor's threshold (unless skipped) and the grid.
        DEFER's evaluation changes nothing, so `after_edit` makes no difference."""
        plan = self.plan
        with self.members.member(k) as adaptor:
            scored = Scored(gates=gate_rows(self.scorer, adaptor, records, probes, plan.scorings, self.unedited, chunk))
            if plan.threshold_scores:
                scored.rows = score_records(self.scorer, adaptor, records, probes, plan.scorings, self.unedited)
            if plan.grid_scorings:
                scored.grid = score_grid(self.scorer, adaptor, records, probes, plan.grid_scorings, plan.threshold_grid, self.unedited)
        return scored

    def check_edit(self, k: int, record: EditRecord, probe: RecordProbes, immediate: Scored | None) -> EditCheck:
        """The edit's gate row (its rel row of `immediate` when tf is scored) and its success at
        the member's threshold (read off the gate row in curve mode)."""
        shares_rel = immediate is not None and TF in self.plan.scorings
        with self.members.member(k) as adaptor:
            edit_row = immediate.gates[0] if shares_rel and immediate is not None else edit_gate(self.scorer, adaptor, record, probe, self.unedited)
            if not self.plan.threshold_scores:
                success = accuracy_at(edit_row.gate, edit_row.on, edit_row.off, self.members.thresholds[k], self.dtype)
            elif shares_rel and immediate is not None:
                success = immediate.rows[0][metric_key("rel", TF)]
            else:
                (predicted,) = self.scorer.predict(adaptor, TF, [probe.edit])
                success = token_accuracy(predicted, probe.edit.target_ids)
        return EditCheck(success=success, gate=edit_row.gate, on=edit_row.on, off=edit_row.off)


@contextlib.contextmanager
def defer_view(
    loaded: LoadedModel,
    hparams: Sequence[DeferHParams],
    seeds: Sequence[int],
    plan: "TrialPlan",
    scorer: Scorer,
    unedited: UneditedLocality,
    records: Sequence[EditRecord],
    probes: Sequence[RecordProbes],
    dtype: str,
) -> Iterator[DeferView]:
    """The editor attached (packed when K > 1), the unedited tf predictions known, detached after."""
    if len(hparams) == 1:
        editor: DeferEditor | PackedDeferEditor = DeferEditor(loaded, hparams[0], seed=seeds[0], edit_path=plan.edit_path)
        members: _Members = _SingleEditor(editor)  # type: ignore[arg-type]
    else:
        editor = PackedDeferEditor(loaded, hparams, seeds)
        members = _PackedMembers(editor)
    try:
        with members.member(0) as adaptor:  # not edited yet: the unedited model
            ensure_unedited_tf(scorer, adaptor, records, probes, unedited)
        yield DeferView(members, scorer, plan, unedited, dtype)
    finally:
        editor.detach()
