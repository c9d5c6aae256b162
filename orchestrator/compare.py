"""`defer-sweep compare`: one DEFER configuration under every protocol × scoring × dtype asked.

DEFER's published numbers disagree because of evaluation choices (README "Scoring and
protocols"): when each record is scored (protocol), which tokens a generation is compared with
(scoring), and the model's dtype. This runs one configuration under each combination and gives
a WISE-style table, rows = protocol × scoring × dtype, columns = Rel/Gen/Loc at each T (the mean
over seeds when several), plus every record's scores as Parquet, so each cell can be traced to
the records it averages.

It runs defer_core directly (no Ray) and shares what can be shared: one model per dtype; one
edit stream for stream and immediate (the same edits, scored at different times); every scoring
read from the same edits; several seeds edited in one packed forward pass (`run_trials`, whose
members equal each seed run alone). Imports stay light at module level (the CLI's help lists
FORMATS); torch loads when a comparison runs.
"""

from __future__ import annotations

import csv
import gc
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any, Callable

from defer_core.data import EditRecord
from defer_core.errors import DeferInputError
from defer_core.files import atomic_write_bytes, atomic_write_text, make_dirs
from defer_core.hparams import DeferHParams
from defer_core.results import DTYPE_SPELLINGS, METRICS, PROTOCOLS, SCORINGS, SHARED_STREAM, MilestoneResult, metric_key

log = logging.getLogger(__name__)

FORMATS = ("md", "latex", "csv", "json")
_EXTENSIONS = {"md": "md", "latex": "tex", "csv": "csv", "json": "json"}
TABLE_STEM = "compare"  # OUT/compare.md (.tex, .csv, .json): the table as printed
RECORDS_FILE = "records.parquet"  # OUT/records.parquet: one row per record behind every cell
METRIC_LABELS = {"rel": "Rel", "gen": "Gen", "loc": "Loc"}
# The rows whose numbers published runs report (README "Scoring and protocols"): EasyEdit scores
# DEFER teacher-forced in float32; its sequential_edit=True loop changed in commit 3c21b20.
REPRODUCES = {
    ("stream", "tf", "float32"): "EasyEdit before 3c21b20 (WISE paper)",
    ("immediate", "tf", "float32"): "EasyEdit from 3c21b20 (HEAD)",
}

RowKey = tuple[str, str, str]  # protocol, scoring, dtype
Progress = Callable[[str], None]


def _known(values: tuple[Any, ...], allowed: tuple[Any, ...], what: str) -> None:
    unknown = [v for v in values if v not in allowed]
    if not values or unknown or len(set(values)) != len(values):
        raise DeferInputError(f"{what} must be distinct values among {', '.join(map(str, allowed))}, got {list(values)}")


@dataclass(frozen=True)
class ComparePlan:
    """One DEFER configuration and every variant it is run under."""

    hparams: DeferHParams
    model: str
    milestones: tuple[int, ...]
    protocols: tuple[str, ...]
    scorings: tuple[str, ...]
    dtypes: tuple[str, ...]  # canonical names (results.dtype_name)
    seeds: tuple[int, ...] = (0,)
    device: str | None = None
    strip: bool = False
    data: str = ""  # where the records came from, for the record

    def __post_init__(self) -> None:
        _known(self.protocols, PROTOCOLS, "protocols")
        _known(self.scorings, SCORINGS, "scorings")
        _known(self.dtypes, tuple(sorted(set(DTYPE_SPELLINGS.values()))), "dtypes")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise DeferInputError(f"seeds must be distinct, got {list(self.seeds)}")
        if not self.milestones or self.milestones[0] < 1 or list(self.milestones) != sorted(set(self.milestones)):
            raise DeferInputError(f"T must be distinct positive edit counts in ascending order, got {list(self.milestones)}")

    @property
    def total_records(self) -> int:
        return self.milestones[-1]

    def edit_streams(self) -> list[tuple[str, ...]]:
        """The runs one dtype needs: stream and immediate share one edit stream, chunks has its own."""
        shared = tuple(p for p in SHARED_STREAM if p in self.protocols)
        return ([shared] if shared else []) + [(p,) for p in self.protocols if p not in SHARED_STREAM]

    def row_keys(self) -> list[RowKey]:
        return [(p, s, d) for p in self.protocols for s in self.scorings for d in self.dtypes]


@dataclass
class Comparison:
    """The table's cells and the per-record rows behind them."""

    plan: ComparePlan
    cells: dict[RowKey, dict[int, dict[str, float]]]  # row -> T -> rel/gen/loc, mean over seeds
    records: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def run_comparison(plan: ComparePlan, records: list[EditRecord], on_progress: Progress | None = None) -> Comparison:
    """Every combination of the plan on the first T records; `on_progress` gets one line per
    edit (of the first seed) and per milestone."""
    from defer_core.evaluation import UneditedLocality
    from defer_core.models import load_model
    from defer_core.trial import TrialPlan, run_trials

    if len(records) < plan.total_records:
        raise DeferInputError(f"the comparison needs {plan.total_records} records, got {len(records)}")
    say = on_progress or (lambda line: None)
    started = time.perf_counter()
    per_seed: dict[RowKey, dict[int, list[dict[str, float]]]] = {key: {} for key in plan.row_keys()}
    rows: list[dict[str, Any]] = []
    for dtype in plan.dtypes:
        loaded = load_model(plan.model, dtype=dtype, device=plan.device)
        unedited = UneditedLocality()  # per model: the unedited predictions depend on the dtype
        for protocols in plan.edit_streams():
            label = f"{dtype} {'+'.join(protocols)}"
            total = _edit_count(protocols, plan.milestones)
            say(f"{label}: {total} edits x {len(plan.seeds)} seed(s), scorings {','.join(plan.scorings)}")
            trial_plan = TrialPlan(protocol=protocols if len(protocols) > 1 else protocols[0], milestones=plan.milestones, scorings=plan.scorings)

            def show_edit(k: int, outcome: Any, label: str = label, total: int = total) -> None:
                if k == 0:
                    say(f"{label}: edit {outcome.index}/{total} loss {outcome.final_loss:.4f} success {outcome.success:.2f} {outcome.seconds:.2f}s")

            def show_milestone(k: int, milestone: MilestoneResult, label: str = label) -> None:
                if k == len(plan.seeds) - 1:
                    scores = " ".join(f"{key} {value:.3f}" for key, value in milestone.metrics.items())
                    say(f"{label}: {milestone.protocol} T={milestone.n_edits} (seed {plan.seeds[k]}): {scores}")

            results = run_trials(loaded, records, [plan.hparams] * len(plan.seeds), trial_plan, seeds=list(plan.seeds),
                                 on_edit=show_edit, on_milestone=show_milestone, unedited=unedited)
            for seed, result in zip(plan.seeds, results):
                for milestone in result.milestones:
                    _collect(plan, dtype, seed, milestone, per_seed, rows)
        del loaded
        gc.collect()
    cells = {key: {n: {m: fmean(s[m] for s in seeds) for m in METRICS} for n, seeds in by_t.items()} for key, by_t in per_seed.items()}
    return Comparison(plan=plan, cells=cells, records=rows, seconds=time.perf_counter() - started)


def _edit_count(protocols: tuple[str, ...], milestones: tuple[int, ...]) -> int:
    if protocols == ("chunks",):
        return sum(milestones[-1] // size * size for size in milestones)
    return milestones[-1]


def _collect(plan: ComparePlan, dtype: str, seed: int, milestone: MilestoneResult, per_seed: dict, rows: list[dict[str, Any]]) -> None:
    """One milestone of one seed: its cell values per scoring, and its records' rows."""
    hparams = plan.hparams
    for scoring in plan.scorings:
        key = (milestone.protocol, scoring, dtype)
        per_seed[key].setdefault(milestone.n_edits, []).append({m: milestone.metrics[metric_key(m, scoring)] for m in METRICS})
        for record in milestone.records:
            rows.append({
                "model": plan.model, "dtype": dtype, "protocol": milestone.protocol, "scoring": scoring, "seed": seed,
                "T": milestone.n_edits, "chunk": record.chunk, "record_id": record.record_id,
                **{m: record.metrics[metric_key(m, scoring)] for m in METRICS},
                "inner_param": hparams.module_path, "edit_lr": hparams.edit_lr, "n_iter": hparams.n_iter, "threshold": hparams.threshold,
                "strip": plan.strip,
            })


# -- output -------------------------------------------------------------------------------------------


def column_names(plan: ComparePlan) -> list[str]:
    """The value columns, in table order: Rel, Gen, Loc at each T (e.g. `rel@10`)."""
    return [f"{m}@{n}" for n in plan.milestones for m in METRICS]


def _values(comparison: Comparison, key: RowKey) -> list[float]:
    cells = comparison.cells[key]
    return [cells[n][m] for n in comparison.plan.milestones for m in METRICS]


def render(comparison: Comparison, fmt: str) -> str:
    """The table as text in one of FORMATS; csv and json carry full precision."""
    renderers = {"md": _markdown, "latex": _latex, "csv": _csv, "json": _json}
    if fmt not in renderers:
        raise DeferInputError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return renderers[fmt](comparison)


def _markdown(comparison: Comparison) -> str:
    plan = comparison.plan
    header = ["protocol", "scoring", "dtype", *(f"{METRIC_LABELS[m]} T={n}" for n in plan.milestones for m in METRICS), "reproduces"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * (len(header) - 4) + "---|"]
    for key in plan.row_keys():
        values = [f"{v:.3f}" for v in _values(comparison, key)]
        lines.append("| " + " | ".join([*key, *values, REPRODUCES.get(key, "")]) + " |")
    seeds = f"mean over seeds {', '.join(map(str, plan.seeds))}" if len(plan.seeds) > 1 else f"seed {plan.seeds[0]}"
    hp = plan.hparams
    lines.append("")
    lines.append(f"{plan.model}, {hp.module_path}, edit_lr {hp.edit_lr:g}, n_iter {hp.n_iter}, threshold {hp.threshold:g}; {seeds}; "
                 f"text {'stripped' if plan.strip else 'as written'}; per-record rows in {RECORDS_FILE}")
    return "\n".join(lines)


def _latex(comparison: Comparison) -> str:
    plan = comparison.plan
    spec = "lll" + "|rrr" * len(plan.milestones)
    groups = " & ".join(f"\\multicolumn{{3}}{{c{'|' if i < len(plan.milestones) - 1 else ''}}}{{$T={n}$}}" for i, n in enumerate(plan.milestones))
    lines = [
        f"\\begin{{tabular}}{{{spec}}}",
        "\\hline",
        f" & & & {groups} \\\\",
        "protocol & scoring & dtype & " + " & ".join(METRIC_LABELS[m] for _ in plan.milestones for m in METRICS) + " \\\\",
        "\\hline",
    ]
    for key in plan.row_keys():
        lines.append(" & ".join([*key, *(f"{v:.3f}" for v in _values(comparison, key))]) + " \\\\")
    lines += ["\\hline", "\\end{tabular}"]
    return "\n".join(lines)


def _csv(comparison: Comparison) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["protocol", "scoring", "dtype", *column_names(comparison.plan)])
    for key in comparison.plan.row_keys():
        writer.writerow([*key, *(repr(v) for v in _values(comparison, key))])
    return out.getvalue().rstrip("\n")


def _json(comparison: Comparison) -> str:
    plan = comparison.plan
    return json.dumps({
        "model": plan.model,
        "hparams": plan.hparams.to_easyedit_dict(),
        "data": plan.data,
        "strip": plan.strip,
        "seeds": list(plan.seeds),
        "T": list(plan.milestones),
        "rows": [
            {"protocol": p, "scoring": s, "dtype": d, "reproduces": REPRODUCES.get((p, s, d)),
             "cells": {str(n): comparison.cells[(p, s, d)][n] for n in plan.milestones}}
            for p, s, d in plan.row_keys()
        ],
        "records": RECORDS_FILE,
        "seconds": comparison.seconds,
    }, indent=2)


def table_path(directory: Path, fmt: str) -> Path:
    return directory / f"{TABLE_STEM}.{_EXTENSIONS[fmt]}"


def write_outputs(comparison: Comparison, fmt: str, directory: Path) -> tuple[Path, Path]:
    """The table (as `render` gives it) and the per-record Parquet, each written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    make_dirs(directory, "the comparison's output directory")
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(comparison.records, schema=records_schema()), sink)
    records = atomic_write_bytes(directory / RECORDS_FILE, sink.getvalue().to_pybytes())
    table = atomic_write_text(table_path(directory, fmt), render(comparison, fmt) + "\n")
    log.info("wrote %s and %s", table, records)
    return table, records


def records_schema() -> Any:
    """Columns of records.parquet: one row per record, seed, protocol, scoring, dtype and T
    (built on demand, so importing this module stays light)."""
    import pyarrow as pa

    return pa.schema([
        pa.field("model", pa.string()), pa.field("dtype", pa.string()), pa.field("protocol", pa.string()),
        pa.field("scoring", pa.string()), pa.field("seed", pa.int64()), pa.field("T", pa.int64()),
        pa.field("chunk", pa.int64()), pa.field("record_id", pa.string()),
        *(pa.field(m, pa.float64()) for m in METRICS),
        pa.field("inner_param", pa.string()), pa.field("edit_lr", pa.float64()), pa.field("n_iter", pa.int64()),
        pa.field("threshold", pa.float64()), pa.field("strip", pa.bool_()),
    ])
