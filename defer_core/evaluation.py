"""Rel / Gen / Loc of an edited model over a set of records, under each scoring.

Rel scores the edit prompts, Gen the rephrased prompts, both as token accuracy against the new
target. Loc is the fraction of the locality answer's predicted tokens that are unchanged from
the unedited model. The unedited predictions do not depend on the trial, so they are computed
once per model and record set (`UneditedLocality`) and reused.

Threshold curves (defer_core.curve): `gate_rows` gives each record's rel/gen/loc probe its gate,
its tf accuracy with the value head forced on and the unedited model's, batched as the tf
evaluation batches it; `score_grid` scores the generation scorings at several thresholds.

Scorings (results.SCORINGS): `tf` teacher-forced; `gen` and `genctx` greedy generation, which
differ only in the ids compared (tokens.py), so one generation of the longer budget serves both.
Every record's own scores are kept (`score_records`); a milestone is their mean.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .adaptor import DeferAdaptor
from .data import EditRecord
from .files import atomic_write_text
from .models import LoadedModel
from .results import GENERATION_SCORINGS, METRICS, TF, GateRow, mean_metrics, metric_key
from .scoring import (
    generated_sequences,
    generated_sequences_at,
    generation_predictions,
    teacher_forced_and_sequences,
    teacher_forced_and_sequences_gated,
    teacher_forced_predictions,
    teacher_forced_predictions_gated,
    token_accuracy,
    window,
)
from .tokens import GenerationProbe, PromptTarget, eos_token_ids, generation_probe, in_context, prompt_target

@dataclass
class RecordProbes:
    """Every token layout one record needs, tokenized once."""

    edit: PromptTarget
    tf_rel: PromptTarget
    tf_gen: PromptTarget
    tf_loc: PromptTarget
    gen_rel: GenerationProbe
    gen_gen: GenerationProbe
    gen_loc: GenerationProbe
    genctx_rel: GenerationProbe
    genctx_gen: GenerationProbe
    genctx_loc: GenerationProbe

    def probe(self, scoring: str, kind: str) -> PromptTarget | GenerationProbe:
        """The probe a scoring reads for one metric (rel, gen or loc)."""
        return getattr(self, f"{scoring}_{kind}")


def build_probes(loaded: LoadedModel, record: EditRecord) -> RecordProbes:
    tok = loaded.tokenizer
    texts = {"rel": (record.prompt, record.target), "gen": (record.rephrase, record.target), "loc": (record.locality_prompt, record.locality_answer)}
    tf = {kind: prompt_target(tok, *pair) for kind, pair in texts.items()}
    gen = {kind: generation_probe(tok, *pair) for kind, pair in texts.items()}
    return RecordProbes(
        edit=tf["rel"],
        **{f"tf_{kind}": tf[kind] for kind in texts},
        **{f"gen_{kind}": gen[kind] for kind in texts},
        **{f"genctx_{kind}": in_context(gen[kind], tf[kind]) for kind in texts},
    )


@dataclass
class Scorer:
    """Scores probes on the model as it is now (with or without a trained adaptor)."""

    loaded: LoadedModel
    batch_size: int = 32
    reuse_prefix: bool = True  # False: generation re-runs every layer per step, as the reference
    _eos: frozenset[int] = field(init=False)

    def __post_init__(self) -> None:
        model = self.loaded.model
        self._eos = eos_token_ids(model.config, getattr(model, "generation_config", None), self.loaded.tokenizer)

    @property
    def pad_id(self) -> int:
        return int(self.loaded.tokenizer.pad_token_id)

    def predict(self, adaptor: DeferAdaptor | None, scoring: str, probes: Sequence[PromptTarget | GenerationProbe]) -> list[list[int]]:
        model = self.loaded.model
        if scoring == TF:
            return teacher_forced_predictions(model, adaptor, probes, self.pad_id, self.batch_size)  # type: ignore[arg-type]
        return generation_predictions(model, adaptor, probes, self.pad_id, self._eos, self.batch_size, self.reuse_prefix)  # type: ignore[arg-type]

    def predict_scorings(self, adaptor: DeferAdaptor | None, probes: dict[str, Sequence[PromptTarget | GenerationProbe]]) -> dict[str, list[list[int]]]:
        """Predictions of the same prompts under several scorings, each equal to `predict` alone:
        the generation scorings share one generation of the longest budget (`window` reads each
        off it), and tf shares the frozen layers' pass with it."""
        generated = {scoring: rows for scoring, rows in probes.items() if scoring in GENERATION_SCORINGS}
        if not generated:
            return {scoring: self.predict(adaptor, scoring, rows) for scoring, rows in probes.items()}
        longest = _longest_budgets(generated)
        model, out = self.loaded.model, {}
        if TF in probes:
            out[TF], sequences = teacher_forced_and_sequences(
                model, adaptor, probes[TF], longest, self.pad_id, self._eos, self.batch_size, self.reuse_prefix  # type: ignore[arg-type]
            )
        else:
            sequences = generated_sequences(model, adaptor, longest, self.pad_id, self._eos, self.batch_size, self.reuse_prefix)
        for scoring, rows in generated.items():
            out[scoring] = _windows(sequences, rows)
        return {scoring: out[scoring] for scoring in probes}

    def forced_on_tf(self, adaptor: DeferAdaptor, probes: dict[str, Sequence[PromptTarget | GenerationProbe]]) -> tuple[list[list[int]], list[float]]:
        """The tf predictions of `probes["tf"]` with the value head forced on, and each row's
        gate, batched as `predict_scorings(probes)` batches its tf rows: the gates are those an
        evaluation at any threshold computes. Nothing is generated."""
        generated = {scoring: rows for scoring, rows in probes.items() if scoring in GENERATION_SCORINGS}
        model, rows = self.loaded.model, probes[TF]
        with adaptor.forced_on():
            if not generated:
                return teacher_forced_predictions_gated(model, adaptor, rows, self.pad_id, self.batch_size)  # type: ignore[arg-type]
            return teacher_forced_and_sequences_gated(
                model, adaptor, rows, _longest_budgets(generated), self.pad_id, self.batch_size, self.reuse_prefix  # type: ignore[arg-type]
            )

    def predict_generated_at(
        self, adaptor: DeferAdaptor, probes: dict[str, Sequence[GenerationProbe]], thresholds: Sequence[float]
    ) -> list[dict[str, list[list[int]]]]:
        """Per threshold, the generation scorings' predictions `predict_scorings` gives with the
        adaptor at that threshold (one generation of the longest budget per prompt and threshold)."""
        per_threshold = generated_sequences_at(
            self.loaded.model, adaptor, _longest_budgets(probes), thresholds, self.pad_id, self._eos, self.batch_size, self.reuse_prefix
        )
        return [{scoring: _windows(sequences, rows) for scoring, rows in probes.items()} for sequences in per_threshold]


def _longest_budgets(generated: dict[str, Sequence[GenerationProbe]]) -> list[GenerationProbe]:
    """Per prompt, its probe with the most tokens to generate among the generation scorings."""
    columns = list(zip(*generated.values()))  # per prompt: its probe under each generation scoring
    if any(len({probe.prompt_ids for probe in column}) != 1 for column in columns):
        raise ValueError("generation scorings of one prompt must share its prompt tokens")
    return [max(column, key=lambda probe: len(probe.target_ids)) for column in columns]


def _windows(sequences: Sequence[Sequence[int]], rows: Sequence[GenerationProbe]) -> list[list[int]]:
    return [window(sequence, len(probe.prompt_ids), len(probe.target_ids)) for sequence, probe in zip(sequences, rows)]


def unedited_key(scoring: str, kind: str) -> str:
    """Where the unedited predictions of one probe kind under one scoring are stored: loc under
    the scoring's name (as caches written before rel/gen were stored), the others `{scoring}_{kind}`."""
    return scoring if kind == "loc" else f"{scoring}_{kind}"


@dataclass
class UneditedLocality:
    """The unedited model's predictions, keyed by `unedited_key(scoring, kind)` then record id:
    locality per scoring (what Loc compares with), and the tf rel/gen predictions (a threshold
    curve's `off`). With a `path` they are read from and written to a JSON file, so every trial
    of a sweep shares them; a file that lacks a key gets it added."""

    predictions: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def on_disk(cls, path: Path) -> "UneditedLocality":
        try:
            predictions = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except (OSError, json.JSONDecodeError):
            predictions = {}  # a damaged cache is recomputed, never trusted
        return cls(predictions=predictions, path=path)

    def save(self) -> None:
        if self.path is None:
            return
        atomic_write_text(self.path, json.dumps(self.predictions))

    def ensure(
        self, scorer: Scorer, adaptor: DeferAdaptor | None, records: Sequence[EditRecord], probes: Sequence[RecordProbes], scoring: str, kind: str = "loc"
    ) -> None:
        """Compute (adaptor bypassed; None: the model as loaded, no editor attached) and store the
        records' predictions not known yet."""
        known = self.predictions.setdefault(unedited_key(scoring, kind), {})
        missing = [(r, p) for r, p in zip(records, probes) if r.record_id not in known]
        if not missing:
            return
        with adaptor.bypassed() if adaptor is not None else contextlib.nullcontext():
            predicted = scorer.predict(adaptor, scoring, [p.probe(scoring, kind) for _, p in missing])
        for (record, _), tokens in zip(missing, predicted):
            known[record.record_id] = tokens
        self.save()

    def of(self, scoring: str, kind: str, record_id: str) -> list[int]:
        return self.predictions[unedited_key(scoring, kind)][record_id]


def unedited_cache_file(cache_dir: Path, loaded: LoadedModel, records: Sequence[EditRecord]) -> Path:
    """One file per model and record set: the name carries a hash of both."""
    digest = hashlib.sha256()
    digest.update(loaded.name.encode())
    digest.update(json.dumps(loaded.model.config.to_dict(), sort_keys=True, default=str).encode())
    digest.update(str(next(loaded.model.parameters()).dtype).encode())
    for record in records:
        digest.update(json.dumps(dataclasses.astuple(record)).encode())
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in loaded.name)
    return cache_dir / f"unedited-{safe_name}-{digest.hexdigest()[:16]}.json"


def score_records(
    scorer: Scorer,
    adaptor: DeferAdaptor,
    records: Sequence[EditRecord],
    probes: Sequence[RecordProbes],
    scorings: Sequence[str],
    unedited: UneditedLocality,
) -> list[dict[str, float]]:
    """Each record's Rel, Gen and Loc under each scoring, keyed `rel_tf`, `loc_gen`, ..."""
    for scoring in scorings:
        unedited.ensure(scorer, adaptor, records, probes, scoring)
    # one call for the three probes of every record: a single record (immediate) is one batch
    together = scorer.predict_scorings(adaptor, {s: [p.probe(s, kind) for kind in METRICS for p in probes] for s in scorings})
    n = len(probes)
    predicted = {kind: {s: together[s][i * n : (i + 1) * n] for s in scorings} for i, kind in enumerate(METRICS)}
    rows: list[dict[str, float]] = []
    for index, (record, probe) in enumerate(zip(records, probes)):
        row: dict[str, float] = {}
        for scoring in scorings:
            for kind in ("rel", "gen"):
                row[metric_key(kind, scoring)] = token_accuracy(predicted[kind][scoring][index], probe.probe(scoring, kind).target_ids)
            row[metric_key("loc", scoring)] = token_accuracy(predicted["loc"][scoring][index], unedited.predictions[scoring][record.record_id])
        rows.append(row)
    return rows


def evaluate(
    scorer: Scorer,
    adaptor: DeferAdaptor,
    records: Sequence[EditRecord],
    probes: Sequence[RecordProbes],
    scorings: Sequence[str],
    unedited: UneditedLocality,
) -> dict[str, float]:
    """Mean Rel, Gen and Loc over `records` for each scoring, keyed `rel_tf`, `loc_gen`, ..."""
    return mean_metrics(score_records(scorer, adaptor, records, probes, scorings, unedited))


def ensure_unedited_tf(scorer: Scorer, adaptor: DeferAdaptor, records: Sequence[EditRecord], probes: Sequence[RecordProbes], unedited: UneditedLocality) -> None:
    """The unedited tf predictions of the rel and gen probes (`off` of their gate rows and of
    an edit's success); loc's are stored as the tf scoring's locality predictions."""
    for kind in ("rel", "gen"):
        unedited.ensure(scorer, adaptor, records, probes, TF, kind)


def gate_rows(
    scorer: Scorer,
    adaptor: DeferAdaptor,
    records: Sequence[EditRecord],
    probes: Sequence[RecordProbes],
    scorings: Sequence[str],
    unedited: UneditedLocality,
    chunk: int = 0,
) -> list[GateRow]:
    """Each record's rel, gen and loc tf probe as a GateRow (record by record): one forced-on
    pass batched as `score_records(..., scorings + tf)` batches its tf rows, so a row's accuracy
    at threshold t, `on if gate >= t else off`, is what that evaluation at t scores."""
    unedited.ensure(scorer, adaptor, records, probes, TF)
    ensure_unedited_tf(scorer, adaptor, records, probes, unedited)
    with_tf = (*scorings, TF) if TF not in scorings else tuple(scorings)
    predictions, gates = scorer.forced_on_tf(adaptor, {s: [p.probe(s, kind) for kind in METRICS for p in probes] for s in with_tf})
    n = len(probes)
    rows = []
    for index, (record, probe) in enumerate(zip(records, probes)):
        for offset, kind in enumerate(METRICS):
            at = offset * n + index
            unedited_tokens = unedited.of(TF, kind, record.record_id)
            if kind == "loc":
                on, off = token_accuracy(predictions[at], unedited_tokens), 1.0
            else:
                target = probe.probe(TF, kind).target_ids
                on, off = token_accuracy(predictions[at], target), token_accuracy(unedited_tokens, target)
            rows.append(GateRow(record_id=record.record_id, probe=kind, gate=gates[at], on=on, off=off, chunk=chunk))
    return rows


def edit_gate(scorer: Scorer, adaptor: DeferAdaptor, record: EditRecord, probe: RecordProbes, unedited: UneditedLocality) -> GateRow:
    """The edit prompt alone (as an edit's success is scored) as a rel GateRow."""
    ensure_unedited_tf(scorer, adaptor, [record], [probe], unedited)
    (prediction,), (gate,) = scorer.forced_on_tf(adaptor, {TF: [probe.edit]})
    target = probe.edit.target_ids
    off = token_accuracy(unedited.of(TF, "rel", record.record_id), target)
    return GateRow(record_id=record.record_id, probe="rel", gate=gate, on=token_accuracy(prediction, target), off=off)


def score_grid(
    scorer: Scorer,
    adaptor: DeferAdaptor,
    records: Sequence[EditRecord],
    probes: Sequence[RecordProbes],
    scorings: Sequence[str],
    thresholds: Sequence[float],
    unedited: UneditedLocality,
) -> list[list[dict[str, float]]]:
    """Per threshold, each record's generation scores (`score_records` of the generation
    scorings among `scorings`, with the adaptor at that threshold), from one batched pass."""
    generated = [s for s in scorings if s in GENERATION_SCORINGS]
    for scoring in generated:
        unedited.ensure(scorer, adaptor, records, probes, scoring)
    per_threshold = scorer.predict_generated_at(
        adaptor, {s: [p.probe(s, kind) for kind in METRICS for p in probes] for s in generated}, thresholds  # type: ignore[misc]
    )
    n = len(probes)
    out = []
    for together in per_threshold:
        rows = []
        for index, (record, probe) in enumerate(zip(records, probes)):
            row = {}
            for scoring in generated:
                for offset, kind in enumerate(("rel", "gen")):
                    row[metric_key(kind, scoring)] = token_accuracy(together[scoring][offset * n + index], probe.probe(scoring, kind).target_ids)
                row[metric_key("loc", scoring)] = token_accuracy(together[scoring][2 * n + index], unedited.of(scoring, "loc", record.record_id))
            rows.append(row)
        out.append(rows)
    return out
