"""Rel / Gen / Loc of an edited model over a set of records, under each scoring.

Rel scores the edit prompts, Gen the rephrased prompts, both as token accuracy against the new
target. Loc is the fraction of the locality answer's predicted tokens that are unchanged from
the unedited model. The unedited predictions do not depend on the trial, so they are computed
once per model and record set (`UneditedLocality`) and reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Sequence

from .adaptor import DeferAdaptor
from .data import EditRecord
from .files import atomic_write_text
from .models import LoadedModel
from .results import METRICS, metric_key
from .scoring import both_scorings, generation_predictions, teacher_forced_predictions, token_accuracy
from .tokens import GenerationProbe, PromptTarget, eos_token_ids, generation_probe, prompt_target


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


def build_probes(loaded: LoadedModel, record: EditRecord) -> RecordProbes:
    tok = loaded.tokenizer
    edit = prompt_target(tok, record.prompt, record.target)
    return RecordProbes(
        edit=edit,
        tf_rel=edit,
        tf_gen=prompt_target(tok, record.rephrase, record.target),
        tf_loc=prompt_target(tok, record.locality_prompt, record.locality_answer),
        gen_rel=generation_probe(tok, record.prompt, record.target),
        gen_gen=generation_probe(tok, record.rephrase, record.target),
        gen_loc=generation_probe(tok, record.locality_prompt, record.locality_answer),
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
        if scoring == "tf":
            return teacher_forced_predictions(model, adaptor, probes, self.pad_id, self.batch_size)  # type: ignore[arg-type]
        return generation_predictions(model, adaptor, probes, self.pad_id, self._eos, self.batch_size, self.reuse_prefix)  # type: ignore[arg-type]

    def predict_both(self, adaptor: DeferAdaptor | None, tf_probes: Sequence[PromptTarget], gen_probes: Sequence[GenerationProbe]) -> tuple[list[list[int]], list[list[int]]]:
        """tf and gen predictions of the same prompts, sharing the frozen layers' work."""
        return both_scorings(self.loaded.model, adaptor, tf_probes, gen_probes, self.pad_id, self._eos, self.batch_size, self.reuse_prefix)


@dataclass
class UneditedLocality:
    """The unedited model's locality predictions per scoring, keyed by record id; with a `path`
    they are read from and written to a JSON file, so every trial of a sweep shares them."""

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
        self, scorer: Scorer, adaptor: DeferAdaptor, records: Sequence[EditRecord], probes: Sequence[RecordProbes], scoring: str
    ) -> None:
        known = self.predictions.setdefault(scoring, {})
        missing = [(r, p) for r, p in zip(records, probes) if r.record_id not in known]
        if not missing:
            return
        with adaptor.bypassed():
            predicted = scorer.predict(adaptor, scoring, [getattr(p, f"{scoring}_loc") for _, p in missing])
        for (record, _), tokens in zip(missing, predicted):
            known[record.record_id] = tokens
        self.save()


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


def evaluate(
    scorer: Scorer,
    adaptor: DeferAdaptor,
    records: Sequence[EditRecord],
    probes: Sequence[RecordProbes],
    scorings: Sequence[str],
    unedited: UneditedLocality,
) -> dict[str, float]:
    """Mean Rel, Gen and Loc over `records` for each scoring, keyed `rel_tf`, `loc_gen`, ..."""
    for scoring in scorings:
        unedited.ensure(scorer, adaptor, records, probes, scoring)
    predicted: dict[tuple[str, str], list[list[int]]] = {}
    for kind in METRICS:
        if "tf" in scorings and "gen" in scorings:
            both = scorer.predict_both(adaptor, [getattr(p, f"tf_{kind}") for p in probes], [getattr(p, f"gen_{kind}") for p in probes])
            predicted[("tf", kind)], predicted[("gen", kind)] = both
        else:
            for scoring in scorings:
                predicted[(scoring, kind)] = scorer.predict(adaptor, scoring, [getattr(p, f"{scoring}_{kind}") for p in probes])
    metrics: dict[str, float] = {}
    for scoring in scorings:
        for kind in ("rel", "gen"):
            expected = [getattr(p, f"{scoring}_{kind}").target_ids for p in probes]
            metrics[metric_key(kind, scoring)] = fmean(token_accuracy(a, b) for a, b in zip(predicted[(scoring, kind)], expected))
        before = unedited.predictions[scoring]
        metrics[metric_key("loc", scoring)] = fmean(token_accuracy(a, before[r.record_id]) for a, r in zip(predicted[(scoring, "loc")], records))
    return metrics
