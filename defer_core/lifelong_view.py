"""GRACE and WISE in a trial (trial_view.EditorView): the same protocols and scorings as DEFER,
scored on the edited model as it stands (its layer in place), one row at a time.

Why one row at a time: GRACE keys on one token position per forward (`key_id`, shared by every
row of a batch, sticky from the last edit or generation) and with `val_init: cold` draws one
value per forward whatever the batch size, so only batches of one give each row EasyEdit's
answer. WISE would allow padded batches (tests/test_wise_editor.py: a padded row routes as it
does alone, equal within float tolerance, not bit for bit); it is scored the same way here so
that its numbers equal a naive loop exactly. A prediction is a plain forward of the whole model
(`model(input_ids, attention_mask)`, no cache): tf = the argmax at each target position given
the true previous tokens; gen/genctx = greedy decoding that re-runs the whole sequence at every
step (EasyEdit's `generate(use_cache=False)`), stopping at EOS or after the budget.

The order of evaluation forwards (it is part of the result: with `val_init: cold` every GRACE
forward draws from the editor's generator once keys exist, with `n_iter: 1` every GRACE
evaluation forward may update the codebook, and GRACE's key position is sticky):
  for each record, in the protocol's order; for each probe in rel, gen, loc:
    1. if a generation scoring is asked: `GraceEditor.prepare_generation()` (EasyEdit's
       `GRACE.generate` unsets key_id), then one greedy generation from the probe's prompt of
       the longest budget among the generation scorings (gen and genctx read their windows off
       it, as for DEFER: asking for genctx too can add forwards), one forward per token;
    2. if tf is asked: one forward of the probe's prompt + target.
  So tf after a generation keys on that prompt's last token (where the edit put its key), and tf
  alone keys at the last edit's last prompt position (EasyEdit's sticky key_id). With the plan's
  `grace_key: prompt` every tf forward keys at its own prompt's last token instead (an explicit
  option, not EasyEdit's behaviour).
Which evaluations last. `immediate` scores each record straight after its edit and that
evaluation is part of the stream, as in EasyEdit HEAD's edit loop (its draws move later cold
values; in WISE-Merge its first forward folds the pending shard). A `stream` milestone's
evaluation runs with the editor's state saved and put back (GRACE: generator, codebook, key
position; WISE: its memory), so the edits after milestone n are those of a run that never
evaluated, and milestone n is EasyEdit's old protocol run on the first n records (edit all, then
score). `chunks` resets after each chunk anyway. An edit's success (EditOutcome.success, the edit
prompt's tf Rel straight after it) is the rel tf score of the immediate evaluation when there is
one; otherwise one tf forward of the edit prompt, also with the state saved and put back. For the
same reason one edit stream cannot serve stream and immediate together here (refused).

WISE-Merge folds a pending shard before the first evaluation forward of any kind (wise.py, on the
decoder); EasyEdit folds in `WISE.__call__` only, i.e. before its teacher-forced scoring, and not
in `generate`, which it never uses to score WISE. So a generation scoring here sees the folded
memory EasyEdit's tf scoring sees.

Against EasyEdit (easyeditor/evaluate/evaluate.py): EasyEdit scores GRACE by generation
(`alg_name == 'GRACE'` -> `test_prediction_acc(vanilla_generation=True)`, locality too) and also
runs an F1 generation (`F1(..., vanilla_generation=True)`) after the Rel and after the Gen
generation, which is not run here: with `gen` alone our forwards are EasyEdit's minus the F1
ones (rewrite, rephrase, locality, in that order). Where an evaluation lasts (`immediate`) and
`val_init` is cold, the random stream after it therefore differs from EasyEdit's (later edits
start from other values); with `warm` nothing is drawn and it does not matter, and stream
milestones put the stream back anyway. Here the scorings are the plan's explicit choice (tf, gen, genctx) for every editor,
so the plan's defaults do not change with the editor; `gen` is EasyEdit's GRACE number.
Loc compares with the unedited model's predictions, as for DEFER (the shared UneditedLocality).

Thresholds: GRACE's decision (distance <= radius) is not a threshold read at inference: `eps`
shapes the codebook while editing (new key, split, expansion). WISE routes on a threshold,
`editing_act.min_a * act_ratio`, whose minimum is recorded while editing; `act_ratio` itself is
read only when routing (never while editing, saving or merging), so WISE's routing could be swept
at inference from one edit stream. That sweep is not built: GRACE and WISE trials report no gate
rows and no grid, and a plan asking for a threshold grid or curve mode is refused.
"""

from __future__ import annotations

import contextlib
import os
import random
from typing import Iterator, Sequence

import torch

from .data import EditRecord
from .editor import EditStats
from .errors import DeferInputError
from .evaluation import RecordProbes, Scorer, UneditedLocality
from .grace import GraceEditor
from .grace_hparams import GraceHParams
from .models import LoadedModel
from .plan import DEFAULT_GRACE_KEY, TrialPlan
from .results import GENERATION_SCORINGS, METRICS, TF, metric_key
from .scoring import token_accuracy, window
from .tokens import PromptTarget, eos_token_ids
from .trial_view import EditCheck, Scored
from .wise import WiseEditor
from .wise_batch import WiseRequest, read_irrelevant_prompts
from .wise_hparams import WiseHParams


LifelongEditor = GraceEditor | WiseEditor


class RowPredictor:
    """Predictions of one row at a time on the model as it stands. With `grace_key: prompt` a
    GRACE teacher-forced forward keys on the scored text's own last prompt token instead of
    EasyEdit's sticky position."""

    def __init__(self, editor: LifelongEditor, grace_key: str = DEFAULT_GRACE_KEY) -> None:
        self.editor = editor
        self.key_at_prompt = isinstance(editor, GraceEditor) and grace_key == "prompt"
        model = editor.model
        self.eos = eos_token_ids(model.config, getattr(model, "generation_config", None), editor.loaded.tokenizer)

    def _logits(self, ids: Sequence[int]) -> torch.Tensor:
        input_ids = torch.tensor([list(ids)], dtype=torch.long, device=self.editor.loaded.device)
        return self.editor.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False).logits[0]

    @torch.no_grad()
    def teacher_forced(self, probe: PromptTarget) -> list[int]:
        """The argmax at each target position given the true previous tokens (one forward)."""
        if self.key_at_prompt:
            self.editor.layer.key_id = probe.n_prompt - 1  # type: ignore[union-attr]
        return self._logits(probe.ids).argmax(dim=-1)[probe.n_prompt - 1 : len(probe.ids) - 1].tolist()

    @torch.no_grad()
    def generated(self, prompt_ids: Sequence[int], budget: int) -> list[int]:
        """The prompt and its greedy continuation: `budget` tokens, fewer after an EOS."""
        if isinstance(self.editor, GraceEditor):
            self.editor.prepare_generation()
        sequence = list(prompt_ids)
        for _ in range(budget):
            token = int(self._logits(sequence)[-1].argmax())
            sequence.append(token)
            if token in self.eos:
                break
        return sequence


class LifelongView:
    """One GraceEditor or WiseEditor, scored row by row in the order the module docstring gives."""

    size = 1

    def __init__(self, editor: LifelongEditor, plan: "TrialPlan", unedited: UneditedLocality) -> None:
        self.editor, self.plan, self.unedited = editor, plan, unedited
        self.rows = RowPredictor(editor, plan.grace_key)

    def edit(self, record: EditRecord, probe: RecordProbes) -> list[EditStats]:
        """GRACE edits the tokens of f"{prompt} {target}"; WISE gets the text, as EasyEdit's
        request carries it (its batch puts the text into context templates)."""
        if isinstance(self.editor, WiseEditor):
            return [self.editor.edit(WiseRequest(record.prompt, record.target))]
        return [self.editor.edit(probe.edit)]

    def reset(self) -> None:
        self.editor.reset()

    def evaluate(self, k: int, records: Sequence[EditRecord], probes: Sequence[RecordProbes], chunk: int = 0, after_edit: bool = False) -> Scored:
        with contextlib.nullcontext() if after_edit else kept_state(self.editor):
            return Scored(rows=[self._score(record, probe) for record, probe in zip(records, probes)])

    def _score(self, record: EditRecord, probe: RecordProbes) -> dict[str, float]:
        """One record's Rel, Gen and Loc under each scoring, keyed as score_records keys them."""
        scorings = self.plan.scorings
        generation = [s for s in scorings if s in GENERATION_SCORINGS]
        predicted: dict[tuple[str, str], list[int]] = {}
        for kind in METRICS:
            if generation:
                asked = [probe.probe(s, kind) for s in generation]
                longest = max(asked, key=lambda p: len(p.target_ids))
                sequence = self.rows.generated(longest.prompt_ids, len(longest.target_ids))  # type: ignore[union-attr]
                for scoring, one in zip(generation, asked):
                    predicted[scoring, kind] = window(sequence, len(one.prompt_ids), len(one.target_ids))  # type: ignore[union-attr]
            if TF in scorings:
                predicted[TF, kind] = self.rows.teacher_forced(probe.probe(TF, kind))  # type: ignore[arg-type]
        row: dict[str, float] = {}
        for scoring in scorings:
            for kind in ("rel", "gen"):
                row[metric_key(kind, scoring)] = token_accuracy(predicted[scoring, kind], probe.probe(scoring, kind).target_ids)
            row[metric_key("loc", scoring)] = token_accuracy(predicted[scoring, "loc"], self.unedited.of(scoring, "loc", record.record_id))
        return row

    def check_edit(self, k: int, record: EditRecord, probe: RecordProbes, immediate: Scored | None) -> EditCheck:
        if immediate is not None and TF in self.plan.scorings:
            return EditCheck(success=immediate.rows[0][metric_key("rel", TF)])
        with kept_state(self.editor):
            predicted = self.rows.teacher_forced(probe.edit)
        return EditCheck(success=token_accuracy(predicted, probe.edit.target_ids))


@contextlib.contextmanager
def kept_state(editor: LifelongEditor) -> Iterator[None]:
    """Whatever forwards run inside leave the editor as they found it."""
    with _kept_grace(editor) if isinstance(editor, GraceEditor) else _kept_wise(editor):
        yield


@contextlib.contextmanager
def _kept_grace(editor: GraceEditor) -> Iterator[None]:
    """The generator, the key position and the codebook (an evaluation forward with n_iter 1 may
    add a key, split radii or move a key in place)."""
    layer = editor.layer
    generator = editor.generator.get_state()
    saved = {name: getattr(layer, name) for name in ("key_id", "chosen_key", "values", "iteration", "edit_label")}
    keys = None if layer.keys is None else layer.keys.clone()
    epsilons = None if layer.epsilons is None else layer.epsilons.clone()
    labels = list(layer.key_labels)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(layer, name, value)
        layer.keys, layer.epsilons, layer.key_labels = keys, epsilons, labels
        editor.generator.set_state(generator)


@contextlib.contextmanager
def _kept_wise(editor: WiseEditor) -> Iterator[None]:
    """The side memory's fields (folding and merging replace tensors and edit only the lists)."""
    memory = editor.memory
    saved = {name: getattr(memory, name) for name in ("new_weight", "merged", "editing_act", "edit_count", "merge_count", "weight_mask", "last_choice")}
    lists = list(memory.memory), list(memory.memory_acts)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(memory, name, value)
        memory.memory, memory.memory_acts = lists


def check_lifelong_plan(plan: "TrialPlan", editor: str) -> None:
    """GRACE and WISE trials score at their own decision only (no threshold read at inference),
    and run one protocol: their evaluations can change later edits (GRACE's cold draws and n_iter
    1 codebook updates, WISE-Merge's folding), so the immediate evaluations of a shared edit
    stream would change the stream protocol's numbers."""
    if len(plan.protocols) > 1:
        raise DeferInputError(f"protocol: {editor}'s evaluations can change later edits, so {' and '.join(plan.protocols)} cannot share one edit stream; run each on its own")
    if plan.threshold_grid:
        raise DeferInputError(f"threshold_grid: {editor} has no threshold read at inference to grid (only DEFER's gate is); drop the grid")
    if not plan.threshold_scores:
        raise DeferInputError(f"threshold_scores: false (curve mode) needs DEFER's gate; {editor} is scored at its own decision only")


@contextlib.contextmanager
def lifelong_view(
    loaded: LoadedModel,
    hparams: GraceHParams | WiseHParams,
    seed: int,
    plan: "TrialPlan",
    scorer: Scorer,
    unedited: UneditedLocality,
    records: Sequence[EditRecord],
    probes: Sequence[RecordProbes],
    irrelevant_path: str | os.PathLike[str] | None = None,
) -> Iterator[LifelongView]:
    """The unedited model's locality predictions known (before the editor is attached), the
    editor attached, detached after. WISE reads its irrelevant prompts first: the first T of the
    ZsRE train split (T = the plan's last milestone: the most edits between two resets; a file
    with fewer records is repeated and shuffled as EasyEdit does, here with random.Random(seed))."""
    for scoring in plan.scorings:
        unedited.ensure(scorer, None, records, probes, scoring)
    if isinstance(hparams, GraceHParams):
        editor: LifelongEditor = GraceEditor(loaded, hparams, seed=seed, edit_path=plan.edit_path)
    else:
        irrelevant = read_irrelevant_prompts(plan.total_records, irrelevant_path, rng=random.Random(seed))
        editor = WiseEditor(loaded, hparams, seed=seed, edit_path=plan.edit_path, irrelevant=irrelevant)
    try:
        yield LifelongView(editor, plan, unedited)
    finally:
        editor.detach()
