"""`defer-sweep compare`: one configuration per editor (DEFER, GRACE, WISE) under every protocol ×
scoring × dtype asked.

Published numbers disagree because of evaluation choices (docs/scoring-and-protocols.md):
when each record is scored (protocol), which tokens a generation is compared with
(scoring), and the model's dtype. This runs each editor's configuration under each combination
and gives a WISE-style table, rows = editor × protocol × scoring × dtype, columns = Rel/Gen/Loc
at each T (the mean
over the repeat members, seeds × edit orders, when several; with `error_bars` also the Student t
half-width over them), plus every record's scores as Parquet, so each cell can be traced to the
records it averages.

It runs defer_core directly (no Ray) and shares what can be shared: one model per dtype (every
editor attaches to it and detaches after); for DEFER one edit stream for stream and immediate
(the same edits, scored at different times; GRACE and WISE run them apart, since their
immediate evaluations can change later edits); every scoring read from the same edits; several
seeds in one `run_trials` call (DEFER's packed in one forward pass); each edit order
(defer_core.orders) is its own pass. Each finished pass can be kept in the output directory
and read back when the comparison runs again (compare_passes), so the cells are computed from
the per-record rows (member_cells), whether run now or read. Imports stay light at module level
(the CLI's help lists FORMATS); torch loads when a comparison runs.
"""

from __future__ import annotations

import csv
import gc
import io
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from defer_core.data import EditRecord
from defer_core.errors import DeferInputError
from defer_core.files import atomic_write_bytes, atomic_write_text, make_dirs
from defer_core.editors import EditorHParams, editor_of, hparams_summary
from defer_core.orders import ordered_records
from defer_core.plan import DEFAULT_GRACE_KEY, grace_key_note
from defer_core.results import DTYPE_SPELLINGS, METRICS, PROTOCOLS, SCORINGS, SHARED_STREAM, MilestoneResult, mean_over_chunks, metric_key
from defer_core.runtime import DEFAULT_THREADS

from .compare_passes import pass_file, pass_identity, read_pass, write_pass
from .intervals import Interval, format_interval, repeat_interval

log = logging.getLogger(__name__)

FORMATS = ("md", "latex", "csv", "json")
_EXTENSIONS = {"md": "md", "latex": "tex", "csv": "csv", "json": "json"}
TABLE_STEM = "compare"  # OUT/compare.md (.tex, .csv, .json): the table as printed
RECORDS_FILE = "records.parquet"  # OUT/records.parquet: one row per record behind every cell
METRIC_LABELS = {"rel": "Rel", "gen": "Gen", "loc": "Loc"}
CONFIDENCE = 0.95  # of the error bars over repeat members
# The rows whose numbers published runs report (docs/scoring-and-protocols.md): EasyEdit scores
# DEFER teacher-forced in float32; its sequential_edit=True loop changed in commit 3c21b20. Only
# DEFER's rows are checked equal to EasyEdit's code end to end, so only they are named.
REPRODUCES = {
    ("defer", "stream", "tf", "float32"): "EasyEdit before 3c21b20 (WISE paper)",
    ("defer", "immediate", "tf", "float32"): "EasyEdit from 3c21b20 (HEAD)",
}
KEY_COLUMNS = ("editor", "protocol", "scoring", "dtype")  # a row's identity, the table's first columns; "editor" shows the configuration's label

RowKey = tuple[str, str, str, str]  # configuration label (the editor's name unless it has several), protocol, scoring, dtype
Progress = Callable[[str], None]


def _known(values: tuple[Any, ...], allowed: tuple[Any, ...], what: str) -> None:
    unknown = [v for v in values if v not in allowed]
    if not values or unknown or len(set(values)) != len(values):
        raise DeferInputError(f"{what} must be distinct values among {', '.join(map(str, allowed))}, got {list(values)}")


@dataclass(frozen=True)
class ComparePlan:
    """The configurations compared (one or more per editor) and every variant each is run under.
    `labels` name them in the table: by default each editor's name, which is enough while every
    editor has one configuration; with several of one editor each needs its own label."""

    hparams: tuple[EditorHParams, ...]
    model: str
    milestones: tuple[int, ...]
    protocols: tuple[str, ...]
    scorings: tuple[str, ...]
    dtypes: tuple[str, ...]  # canonical names (results.dtype_name)
    seeds: tuple[int, ...] = (0,)
    orders: int = 1  # edit orders 0..orders-1 (defer_core.orders); each seed runs in each order
    device: str | None = None
    strip: bool = False
    data: str = ""  # where the records came from, for the record
    error_bars: bool = False  # show mean ± Student t half-width over the members (the CLI: when several)
    threads: int = DEFAULT_THREADS  # torch's intra-op thread count of every run (defer_core.runtime)
    labels: tuple[str, ...] = ()  # one per configuration; empty: the editors' names
    grace_key: str = DEFAULT_GRACE_KEY  # where GRACE's configurations key a teacher-forced evaluation (defer_core.plan.GRACE_KEYS)

    def __post_init__(self) -> None:
        if not isinstance(self.hparams, tuple):
            object.__setattr__(self, "hparams", (self.hparams,))  # one configuration
        if not self.hparams:
            raise DeferInputError("hparams: expected at least one configuration")
        if not self.labels:
            object.__setattr__(self, "labels", self.editors)
        labels = self.labels
        if len(labels) != len(self.hparams) or len(set(labels)) != len(labels) or not all(isinstance(x, str) and x for x in labels):
            raise DeferInputError(f"labels: expected one distinct name per configuration, got {list(labels)} for editors {list(self.editors)}")
        _known(self.protocols, PROTOCOLS, "protocols")
        if self.grace_key != DEFAULT_GRACE_KEY and "grace" not in self.editors:
            raise DeferInputError(f"grace_key: {self.grace_key} is where GRACE reads its key, and no configuration is GRACE's (editors {', '.join(self.editors)})")
        _known(self.scorings, SCORINGS, "scorings")
        _known(self.dtypes, tuple(sorted(set(DTYPE_SPELLINGS.values()))), "dtypes")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise DeferInputError(f"seeds must be distinct, got {list(self.seeds)}")
        if isinstance(self.orders, bool) or not isinstance(self.orders, int) or self.orders < 1:
            raise DeferInputError(f"orders must be an integer >= 1, got {self.orders!r}")
        if not self.milestones or self.milestones[0] < 1 or list(self.milestones) != sorted(set(self.milestones)):
            raise DeferInputError(f"T must be distinct positive edit counts in ascending order, got {list(self.milestones)}")

    @property
    def total_records(self) -> int:
        return self.milestones[-1]

    @property
    def member_count(self) -> int:
        """Repeat members behind each cell: every seed in every edit order."""
        return len(self.seeds) * self.orders

    @property
    def editors(self) -> tuple[str, ...]:
        return tuple(editor_of(h) for h in self.hparams)

    def configs(self) -> list[tuple[str, str, EditorHParams]]:
        """(label, editor, hparams) of each configuration, in the order given."""
        return list(zip(self.labels, self.editors, self.hparams))

    def grace_key_of(self, editor: str) -> str | None:
        """What a configuration's rows record as its GRACE key position (None: not GRACE)."""
        return self.grace_key if editor == "grace" else None

    def reproduces(self, key: RowKey) -> str:
        """The published numbers a row's protocol, scoring and dtype match (REPRODUCES), by its editor."""
        label, *variant = key
        return REPRODUCES.get((dict(zip(self.labels, self.editors))[label], *variant), "")

    def edit_streams(self, editor: str) -> list[tuple[str, ...]]:
        """The runs one editor needs per dtype: for DEFER stream and immediate share one edit
        stream; every other protocol (and GRACE's and WISE's each) has its own."""
        shared = tuple(p for p in SHARED_STREAM if p in self.protocols) if editor == "defer" else ()
        return ([shared] if shared else []) + [(p,) for p in self.protocols if p not in shared]

    def row_keys(self) -> list[RowKey]:
        return [(c, p, s, d) for c in self.labels for p in self.protocols for s in self.scorings for d in self.dtypes]


@dataclass
class Comparison:
    """The table's intervals over repeat members and the per-record rows behind them."""

    plan: ComparePlan
    intervals: dict[RowKey, dict[int, dict[str, Interval]]]  # row -> T -> rel/gen/loc over seeds x orders
    records: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    reused_passes: int = 0  # passes read from an earlier run's output (compare_passes)

    @property
    def cells(self) -> dict[RowKey, dict[int, dict[str, float]]]:
        """row -> T -> rel/gen/loc: the mean over the members."""
        return {key: {n: {m: i.mean for m, i in by_m.items()} for n, by_m in by_t.items()} for key, by_t in self.intervals.items()}


def run_comparison(plan: ComparePlan, records: list[EditRecord], on_progress: Progress | None = None, passes_from: Path | None = None) -> Comparison:
    """Every combination of the plan on the first T records, in each edit order; `on_progress`
    gets one line per edit (of the first seed) and per milestone. With `passes_from` (the
    output directory) each finished pass is kept there and one kept before is read instead of
    run (compare_passes)."""
    from defer_core.evaluation import UneditedLocality
    from defer_core.models import load_model
    from defer_core.plan import TrialPlan

    if len(records) < plan.total_records:
        raise DeferInputError(f"the comparison needs {plan.total_records} records, got {len(records)}")
    say = on_progress or (lambda line: None)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    reused = 0
    for dtype in plan.dtypes:
        loaded = None  # loaded for the first pass that runs: a comparison read back whole loads no model
        unedited = UneditedLocality()  # per model: the unedited predictions depend on the dtype
        for config, editor, hparams in plan.configs():
            for protocols, order in ((p, o) for p in plan.edit_streams(editor) for o in range(plan.orders)):
                label = f"{config} {dtype} {'+'.join(protocols)}" + (f" order {order}" if plan.orders > 1 else "")
                trial_plan = TrialPlan(protocol=protocols if len(protocols) > 1 else protocols[0], milestones=plan.milestones, scorings=plan.scorings,
                                       threads=plan.threads, grace_key=plan.grace_key_of(editor) or DEFAULT_GRACE_KEY)
                in_order = ordered_records(records, order, plan.total_records)
                identity = pass_identity(model=plan.model, device=plan.device, dtype=dtype, hparams=hparams, trial_plan=trial_plan, seeds=plan.seeds,
                                         order=order, records=in_order)
                kept = pass_file(passes_from, f"{editor}-{dtype}-{'+'.join(protocols)}-order{order}", identity) if passes_from else None
                pass_rows = read_pass(kept, identity, pass_schema()) if kept else None
                if pass_rows is not None:
                    say(f"{label}: read from {kept}, finished before")
                    reused += 1
                else:
                    loaded = loaded or load_model(plan.model, dtype=dtype, device=plan.device)
                    pass_rows = _run_pass(plan, hparams, dtype, protocols, trial_plan, in_order, (label, order), loaded, unedited, say)
                    if kept:
                        write_pass(kept, identity, pass_rows, pass_schema())
                rows.extend({"config": config, **row, "grace_key": plan.grace_key_of(editor)} for row in pass_rows)
        del loaded
        gc.collect()
    intervals = {key: {n: {m: repeat_interval([v[m] for v in members], CONFIDENCE) for m in METRICS} for n, members in by_t.items()}
                 for key, by_t in member_cells(plan, rows).items()}
    return Comparison(plan=plan, intervals=intervals, records=rows, seconds=time.perf_counter() - started, reused_passes=reused)


def _run_pass(plan: ComparePlan, hparams: EditorHParams, dtype: str, protocols: tuple[str, ...], trial_plan: Any, in_order: list[EditRecord],
              label_order: tuple[str, int], loaded: Any, unedited: Any, say: Progress) -> list[dict[str, Any]]:
    """One edit stream of one editor in one edit order, every seed: its per-record rows."""
    from defer_core.trial import run_trials

    label, order = label_order
    total = _edit_count(protocols, plan.milestones)
    say(f"{label}: {total} edits x {len(plan.seeds)} seed(s), scorings {','.join(plan.scorings)}")

    def show_edit(k: int, outcome: Any) -> None:
        if k == 0:
            say(f"{label}: edit {outcome.index}/{total} loss {outcome.final_loss:.4f} success {outcome.success:.2f} {outcome.seconds:.2f}s")

    def show_milestone(k: int, milestone: MilestoneResult) -> None:
        if k == len(plan.seeds) - 1:
            scores = " ".join(f"{key} {value:.3f}" for key, value in milestone.metrics.items())
            say(f"{label}: {milestone.protocol} T={milestone.n_edits} (seed {plan.seeds[k]}): {scores}")

    results = run_trials(loaded, in_order, [hparams] * len(plan.seeds), trial_plan, seeds=list(plan.seeds),
                         on_edit=show_edit, on_milestone=show_milestone, unedited=unedited)
    return [row for seed, result in zip(plan.seeds, results) for milestone in result.milestones
            for row in _record_rows(plan, hparams, dtype, (seed, order), milestone)]


def _edit_count(protocols: tuple[str, ...], milestones: tuple[int, ...]) -> int:
    if protocols == ("chunks",):
        return sum(milestones[-1] // size * size for size in milestones)
    return milestones[-1]


def _record_rows(plan: ComparePlan, hparams: EditorHParams, dtype: str, member: tuple[int, int], milestone: MilestoneResult) -> list[dict[str, Any]]:
    """One milestone of one member (seed, order) of one editor: its records' rows, per scoring."""
    editor = editor_of(hparams)
    seed, order = member
    return [{
        "editor": editor, "model": plan.model, "dtype": dtype, "protocol": milestone.protocol, "scoring": scoring, "seed": seed, "order": order,
        "T": milestone.n_edits, "chunk": record.chunk, "record_id": record.record_id,
        **{m: record.metrics[metric_key(m, scoring)] for m in METRICS},
        "inner_param": hparams.module_path, "edit_lr": hparams.edit_lr, "n_iter": hparams.n_iter, "threshold": getattr(hparams, "threshold", None),
        "strip": plan.strip, "threads": plan.threads,
    } for scoring in plan.scorings for record in milestone.records]


def member_cells(plan: ComparePlan, rows: list[dict[str, Any]]) -> dict[RowKey, dict[int, list[dict[str, float]]]]:
    """row -> T -> one rel/gen/loc dict per repeat member (seed, order), in the order run: each
    computed from its rows by defer_core's mean_over_chunks, as a milestone's metrics are (so
    exactly its numbers), whether the rows were run now or read."""
    grouped: dict[RowKey, dict[int, dict[tuple[int, int], dict[int, list[dict[str, Any]]]]]] = {key: {} for key in plan.row_keys()}
    for row in rows:
        member = grouped[(row["config"], row["protocol"], row["scoring"], row["dtype"])].setdefault(row["T"], {}).setdefault((row["seed"], row["order"]), {})
        member.setdefault(row["chunk"], []).append(row)
    return {key: {n: [mean_over_chunks([[{m: r[m] for m in METRICS} for r in chunk] for chunk in chunks.values()]) for chunks in members.values()]
                  for n, members in by_t.items()} for key, by_t in grouped.items()}


# -- output -------------------------------------------------------------------------------------------


def column_names(plan: ComparePlan) -> list[str]:
    """The value columns, in table order: Rel, Gen, Loc at each T (e.g. `rel@10`)."""
    return [f"{m}@{n}" for n in plan.milestones for m in METRICS]


def _intervals(comparison: Comparison, key: RowKey) -> list[Interval]:
    cells = comparison.intervals[key]
    return [cells[n][m] for n in comparison.plan.milestones for m in METRICS]


def _values(comparison: Comparison, key: RowKey) -> list[float]:
    return [interval.mean for interval in _intervals(comparison, key)]


def _shown(comparison: Comparison, key: RowKey) -> list[str]:
    """A row's cells as md/latex print them: the mean, with error bars "mean ± half-width"."""
    if not comparison.plan.error_bars:
        return [f"{v:.3f}" for v in _values(comparison, key)]
    return [format_interval(interval, 3) for interval in _intervals(comparison, key)]


def _members_note(plan: ComparePlan) -> str:
    """What each cell averages: "seed 0", "mean over seeds 0, 1", "... x edit orders 0..2", and
    with error bars the interval's kind and n."""
    seeds = ", ".join(map(str, plan.seeds))
    if plan.member_count == 1:
        note = f"seed {seeds}"
    else:
        note = f"mean over seeds {seeds}" if len(plan.seeds) > 1 else f"mean over seed {seeds}"
        note += f" x edit orders 0..{plan.orders - 1} (0: file order)" if plan.orders > 1 else ""
    if plan.error_bars and plan.member_count > 1:
        note += f" ± Student t {CONFIDENCE:.0%} half-width, n={plan.member_count}"
    return note


def _half_width(interval: Interval) -> float | None:
    """JSON has no NaN: an undefined half-width (one member) is null."""
    return None if math.isnan(interval.half_width) else interval.half_width


def render(comparison: Comparison, fmt: str) -> str:
    """The table as text in one of FORMATS; csv and json carry full precision."""
    renderers = {"md": _markdown, "latex": _latex, "csv": _csv, "json": _json}
    if fmt not in renderers:
        raise DeferInputError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return renderers[fmt](comparison)


def _markdown(comparison: Comparison) -> str:
    plan = comparison.plan
    header = [*KEY_COLUMNS, *(f"{METRIC_LABELS[m]} T={n}" for n in plan.milestones for m in METRICS), "reproduces"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(KEY_COLUMNS) + "---:|" * (len(header) - len(KEY_COLUMNS) - 1) + "---|"]
    for key in plan.row_keys():
        lines.append("| " + " | ".join([*key, *_shown(comparison, key), plan.reproduces(key)]) + " |")
    lines.append("")
    lines.append(f"{plan.model}; {'; '.join(f'{c} {hparams_summary(h)}{_key_note(plan, e)}' for c, e, h in plan.configs())}; {_members_note(plan)}; "
                 f"text {'stripped' if plan.strip else 'as written'}; {plan.threads} torch thread(s); per-record rows in {RECORDS_FILE}")
    return "\n".join(lines)


def _key_note(plan: ComparePlan, editor: str) -> str:
    """GRACE's key position, named when it is not EasyEdit's sticky one."""
    return grace_key_note(plan.grace_key_of(editor), lead=", ")


def _latex(comparison: Comparison) -> str:
    plan = comparison.plan
    spec = "l" * len(KEY_COLUMNS) + "|rrr" * len(plan.milestones)
    groups = " & ".join(f"\\multicolumn{{3}}{{c{'|' if i < len(plan.milestones) - 1 else ''}}}{{$T={n}$}}" for i, n in enumerate(plan.milestones))
    lines = [
        f"\\begin{{tabular}}{{{spec}}}",
        "\\hline",
        f"{' & ' * len(KEY_COLUMNS)}{groups} \\\\",
        " & ".join(KEY_COLUMNS) + " & " + " & ".join(METRIC_LABELS[m] for _ in plan.milestones for m in METRICS) + " \\\\",
        "\\hline",
    ]
    for key in plan.row_keys():
        lines.append(" & ".join([*key, *(cell.replace("±", "$\\pm$") for cell in _shown(comparison, key))]) + " \\\\")
    lines += ["\\hline", "\\end{tabular}"]
    return "\n".join(lines)


def _csv(comparison: Comparison) -> str:
    """One column per value (`rel@10`); with error bars each is followed by its half-width
    (`rel@10_half_width`) and the row ends with the member count `n`."""
    plan = comparison.plan
    fields = ("mean", "half_width") if plan.error_bars else ("mean",)
    count = [plan.member_count] if plan.error_bars else []
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*KEY_COLUMNS, *(column + ("" if f == "mean" else f"_{f}") for column in column_names(plan) for f in fields),
                     *(["n"] if count else [])])
    for key in plan.row_keys():
        writer.writerow([*key, *(repr(getattr(interval, f)) for interval in _intervals(comparison, key) for f in fields), *count])
    return out.getvalue().rstrip("\n")


def _json(comparison: Comparison) -> str:
    plan = comparison.plan
    return json.dumps({
        "model": plan.model,
        "hparams": {config: h.to_easyedit_dict() for config, _, h in plan.configs()},
        "data": plan.data,
        "strip": plan.strip,
        "threads": plan.threads,
        **({"grace_key": plan.grace_key} if "grace" in plan.editors else {}),
        "seeds": list(plan.seeds),
        **({"orders": plan.orders} if plan.orders > 1 else {}),
        "T": list(plan.milestones),
        "rows": [_json_row(comparison, key) for key in plan.row_keys()],
        "records": RECORDS_FILE,
        "seconds": comparison.seconds,
    }, indent=2)


def _json_row(comparison: Comparison, key: RowKey) -> dict[str, Any]:
    """One row: `cells` the means; with error bars also `half_width` (same shape) and `n`."""
    plan = comparison.plan
    row: dict[str, Any] = {**dict(zip(KEY_COLUMNS, key)), "reproduces": plan.reproduces(key) or None,
                           "cells": {str(n): comparison.cells[key][n] for n in plan.milestones}}
    if plan.error_bars:
        row["half_width"] = {str(n): {m: _half_width(i) for m, i in comparison.intervals[key][n].items()} for n in plan.milestones}
        row["n"] = plan.member_count
    return row


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
    """Columns of records.parquet: one row per configuration (`config`, its label in the table),
    record, seed, edit order, protocol, scoring, dtype and T (built on demand, so importing this
    module stays light); threshold is DEFER's and grace_key GRACE's (null for the others)."""
    import pyarrow as pa

    return pa.schema([pa.field("config", pa.string()), *pass_schema(), pa.field("grace_key", pa.string())])


def pass_schema() -> Any:
    """A kept pass's columns (compare_passes): records.parquet's without `config`, so a pass is
    read back whatever the configuration is called."""
    import pyarrow as pa

    return pa.schema([
        pa.field("editor", pa.string()), pa.field("model", pa.string()), pa.field("dtype", pa.string()), pa.field("protocol", pa.string()),
        pa.field("scoring", pa.string()), pa.field("seed", pa.int64()), pa.field("order", pa.int64()),
        pa.field("T", pa.int64()),
        pa.field("chunk", pa.int64()), pa.field("record_id", pa.string()),
        *(pa.field(m, pa.float64()) for m in METRICS),
        pa.field("inner_param", pa.string()), pa.field("edit_lr", pa.float64()), pa.field("n_iter", pa.int64()),
        pa.field("threshold", pa.float64()), pa.field("strip", pa.bool_()), pa.field("threads", pa.int64()),
    ])
