"""`defer-sweep table OUT_DIR`: chosen configurations as a paper table (WISE-style), with error bars.

Rows are configurations (their hyperparameters), columns Rel/Gen/Loc at each milestone per
scoring, cells "0.63 ± 0.02": the milestones table's mean (what Optuna, MLflow and export
saw) with a 95% interval from the stored rows (intervals.milestone_intervals):

- `t`: Student t over the trial's repeat members (member_milestones rows), how much the number
  moves when the whole run is repeated. A row with one member has no such spread; it falls
  back to the bootstrap and is marked (†), so no cell claims a spread it does not have.
- `bootstrap`: percentile bootstrap over the records scored at that milestone (record_scores
  rows, per-record mean over members), how much it moves with another draw of records.

Everything is read from the Parquet dataset alone (no torch, no model), so a table can be made
on any machine that has the sweep's folder. The report's interval bands and error bars use
`row_spread` too, so the page and the table always show the same intervals.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from defer_core.errors import DeferInputError
from defer_core.results import METRICS, metric_key

from .intervals import BOOTSTRAP, T_INTERVAL, Interval, format_interval
from .protocol import CONFIRMS, MEMBER_COUNT, N_EDITS, OPTUNA_TRIAL, ORDER, SEED, STAGE, STAGE_CONFIRM, trial_label, trial_order_key
from .results import query
from .results.best import BEST_TABLES
from .results.candidates import training_of
from .results.rows import MEMBER_MILESTONES, MILESTONES, RECORD_SCORES, TRIAL_ID

if TYPE_CHECKING:  # pyarrow and the spec's models load where the table is built, so the CLI's --help stays light
    from .sinks.layout import SweepLayout
    from .spec import SweepSpec
    from .storage import Location

FORMATS = ("md", "latex", "csv")
INTERVAL_KINDS = (T_INTERVAL, BOOTSTRAP)  # --interval choices: milestone_intervals' keys
SELECTIONS = ("best", "pareto", "confirmed")  # or comma-separated trial ids / Optuna numbers
CONFIDENCE = 0.95  # intervals.milestone_intervals' default
DIGITS = 2  # decimals of a cell, as format_interval's default
FALLBACK_MARK = "†"  # a row asked for t that has one member: its cells are bootstrap intervals
CELL_FIELDS = ("mean", "low", "high", "half_width", "n")  # a csv cell's columns, `<metric>@<n_edits>_<field>`

Row = Mapping[str, Any]


# -- the stored spread of a trial --------------------------------------------------------------------


@dataclass(frozen=True)
class StoredRows:
    """A trial's member_milestones and record_scores rows: what its intervals are computed from."""

    members: tuple[dict[str, Any], ...] = ()
    records: tuple[dict[str, Any], ...] = ()

    def member_count(self, trial: Row) -> int:
        """Repeat members: distinct (seed, order) of its member rows, else the trials table's
        count, else 1 (a sweep recorded before repeats existed)."""
        pairs = {(r[SEED], r[ORDER]) for r in self.members}
        return len(pairs) or int(trial.get(MEMBER_COUNT) or 1)

    def seeds_orders(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return tuple(sorted({int(r[SEED]) for r in self.members})), tuple(sorted({int(r[ORDER]) for r in self.members}))


def stored_rows(parquet: Location, trials: Iterable[Row], n_edits: int | None = None) -> dict[str, StoredRows]:
    """The member and record rows behind these trials (at one milestone when `n_edits` is given),
    by trial id: a replay's are its original's (candidates.training_of), so it carries the same
    interval; filtered in Arrow before they become Python objects (record_scores is large)."""
    training = {str(trial[TRIAL_ID]): training_of(trial) for trial in trials}
    tables = query.read(parquet, (MEMBER_MILESTONES, RECORD_SCORES), skip_unreadable=True)
    found: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: {"members": [], "records": []})
    for name, key in ((MEMBER_MILESTONES, "members"), (RECORD_SCORES, "records")):
        for row in tables.rows(name, trial_ids=set(training.values()), n_edits=n_edits):
            found[row[TRIAL_ID]][key].append(row)
    return {trial_id: StoredRows(tuple(found[source]["members"]), tuple(found[source]["records"])) for trial_id, source in training.items()}


def row_spread(trial: Row, stored: StoredRows, metric: str, asked: str) -> dict[int, Interval]:
    """Per milestone, the `asked` interval of one metric: t over members; with one member the
    bootstrap instead (Interval.kind says which). A milestone without the rows for it is absent."""
    from .intervals import milestone_intervals

    kind = T_INTERVAL if asked == T_INTERVAL and stored.member_count(trial) > 1 else BOOTSTRAP
    found = milestone_intervals(stored.members, stored.records, metric)
    return {int(n): by_kind[kind] for n, by_kind in found.items() if by_kind.get(kind) is not None and not _undefined(by_kind[kind])}


def _undefined(interval: Interval) -> bool:
    return math.isnan(interval.half_width)


# -- choosing rows ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """The trials-table rows to show, in order, and how a caption names them."""

    trials: list[dict[str, Any]]
    what: str


def require_sampled(spec: SweepSpec) -> None:
    if spec.curve_mode:
        raise DeferInputError(
            f"sweep '{spec.name}' reads each training at every threshold (search_space.threshold: curve): a table row needs one "
            "threshold per trial; use `defer-sweep curve OUT TRIAL` for a training's metrics at any threshold"
        )


def select(layout: SweepLayout, spec: SweepSpec, tables: query.Tables, choice: str | None) -> Selection:
    """--trials: best, pareto, confirmed, or comma-separated ids / Optuna numbers; by default
    the confirm-stage trials if any ran, else the Pareto front. `tables` holds best.BEST_TABLES."""
    trials = tables.trials()
    confirmed = [t for t in trials if t.get(STAGE) == STAGE_CONFIRM]
    if choice is None:
        choice = "confirmed" if confirmed else "pareto"
    if choice == "confirmed":
        done = query.complete(confirmed)
        if not done:
            state = f"{len(confirmed)} confirm trial(s), none complete" if confirmed else "no confirm stage has run (defer-sweep confirm OUT)"
            raise DeferInputError(f"--trials confirmed: sweep '{spec.name}' has {state}")
        return Selection(sorted(done, key=trial_order_key), f"the {len(done)} confirm-stage trial(s)")
    if choice in ("best", "pareto"):
        return _ranked(layout, spec, tables, trials, choice)
    return _named(spec, trials, choice)


def _ranked(layout: SweepLayout, spec: SweepSpec, tables: query.Tables, trials: Sequence[dict[str, Any]], choice: str) -> Selection:
    """best: the trial `defer-sweep export` writes to best.yaml (confirmed results first);
    pareto: the search stage's feasible Pareto front, as export ranks it (constraints included)."""
    from .results.best import choose_best, search_candidates
    from .results.ranking import bounds_text, pareto_front
    from .results.stages import load_plan

    by_id = {t[TRIAL_ID]: t for t in trials}
    if choice == "best":
        chosen = choose_best(tables, load_plan(layout), spec)  # one line when nothing completed or nothing is feasible
        return Selection([by_id[chosen.row[TRIAL_ID]]], f"the best trial, as exported ({chosen.reason})")
    rows = search_candidates(tables, spec)
    front = pareto_front(rows, spec.objectives, spec.constraints)
    if not front:
        why = f" satisfies constraints {bounds_text(spec.constraints)}" if rows and spec.constraints else " has completed all edits"
        raise DeferInputError(f"--trials pareto: no trial of sweep '{spec.name}'{why}; nothing to tabulate")
    objectives = ", ".join(o.metric for o in spec.objectives)
    feasible = f", feasible under {bounds_text(spec.constraints)}" if spec.constraints else ""
    return Selection([by_id[r[TRIAL_ID]] for r in front], f"the Pareto front on {objectives} at T={spec.T} ({len(front)} trial(s){feasible})")


def _named(spec: SweepSpec, trials: Sequence[dict[str, Any]], text: str) -> Selection:
    from .results.curve import find_trial

    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise DeferInputError(f"--trials: expected best, pareto, confirmed or comma-separated trial ids / Optuna numbers, got {text!r}")
    chosen: dict[str, dict[str, Any]] = {}
    for name in names:
        row = find_trial(spec, trials, name)
        chosen.setdefault(row[TRIAL_ID], row)
    return Selection(list(chosen.values()), f"trial(s) {', '.join(names)}")


# -- the table -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """A metric at a milestone: the milestones table's mean, its interval (None: none stored)."""

    mean: float
    interval: Interval | None


@dataclass(frozen=True)
class TableRow:
    trial: dict[str, Any]
    sweep: str  # the sweep's name (its spec's `name`): a column when the table joins several sweeps
    label: str
    members: int
    seeds: tuple[int, ...]
    orders: tuple[int, ...]
    fallback: bool  # t asked, one member: bootstrap intervals
    cells: dict[tuple[str, int], Cell]  # (metric key, n_edits) -> cell; absent where the trial has no value


@dataclass(frozen=True)
class Column:
    scoring: str
    n_edits: int
    metric: str  # rel, gen or loc

    @property
    def key(self) -> str:
        return metric_key(self.metric, self.scoring)

    @property
    def name(self) -> str:
        """`rel_tf@100`: the md header and the csv column prefix."""
        return f"{self.key}@{self.n_edits}"


@dataclass(frozen=True)
class SweepTable:
    specs: tuple[SweepSpec, ...]  # one per sweep shown (join_tables: several, e.g. one per editor)
    selection: Selection
    interval: str  # asked: t or bootstrap
    rows: list[TableRow]
    columns: list[Column]
    protocols: tuple[str, ...]  # the rows' protocols (a column when more than one)
    modules: tuple[str, ...]  # the rows' edited modules

    @property
    def spec(self) -> SweepSpec:
        return self.specs[0]

    @property
    def joined(self) -> bool:
        return len(self.specs) > 1


def build_table(layout: SweepLayout, spec: SweepSpec, choice: str | None = None, interval: str = T_INTERVAL, scorings: Sequence[str] | None = None,
                milestones: Sequence[int] | None = None) -> SweepTable:
    """Read the Parquet dataset and assemble the table (no formatting)."""
    if interval not in INTERVAL_KINDS:
        raise DeferInputError(f"--interval: expected one of {', '.join(INTERVAL_KINDS)}, got {interval!r}")

    require_sampled(spec)
    tables = query.read(layout, (*BEST_TABLES, MILESTONES), skip_unreadable=True)
    trials = tables.trials()
    selection = select(layout, spec, tables, choice)
    chosen_ids = [t[TRIAL_ID] for t in selection.trials]
    means: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for row in tables.rows(MILESTONES, trial_ids=chosen_ids):
        means[row[TRIAL_ID]][int(row[N_EDITS])] = row
    shown = _scorings(spec, scorings, [m for trial_id in chosen_ids for m in means[trial_id].values()])
    columns = _columns(shown, sorted({n for trial_id in chosen_ids for n in means[trial_id]}), milestones)
    stored = stored_rows(layout.parquet, selection.trials)
    rows = [_table_row(spec, trial, means[trial[TRIAL_ID]], stored[trial[TRIAL_ID]], columns, interval, trials) for trial in selection.trials]
    protocols = tuple(dict.fromkeys(str(t.get("protocol") or spec.protocol) for t in selection.trials))
    modules = tuple(dict.fromkeys(str(t.get("module")) for t in selection.trials))
    return SweepTable((spec,), selection, interval, rows, columns, protocols, modules)


def join_tables(tables: Sequence[SweepTable]) -> SweepTable:
    """Several sweeps' tables as one (e.g. a sweep per editor): their rows in the order given, the
    union of their columns (a cell a sweep did not record shows –), a sweep column in front."""
    if len(tables) == 1:
        return tables[0]
    names = [t.spec.name for t in tables]
    if len(set(names)) != len(names):
        raise DeferInputError(f"OUT_DIR: the sweep column tells sweeps apart by their spec name, and a name came twice: {', '.join(names)}")
    scorings = list(dict.fromkeys(c.scoring for t in tables for c in t.columns))
    counts = sorted({c.n_edits for t in tables for c in t.columns})
    present = {(c.scoring, c.n_edits) for t in tables for c in t.columns}
    columns = [Column(scoring, n, metric) for scoring in scorings for n in counts if (scoring, n) in present for metric in METRICS]
    return SweepTable(
        specs=tuple(t.spec for t in tables),
        selection=Selection([trial for t in tables for trial in t.selection.trials], "; ".join(f"'{t.spec.name}': {t.selection.what}" for t in tables)),
        interval=tables[0].interval,
        rows=[row for t in tables for row in t.rows],
        columns=columns,
        protocols=tuple(dict.fromkeys(p for t in tables for p in t.protocols)),
        modules=tuple(dict.fromkeys(m for t in tables for m in t.modules)),
    )


def _scorings(spec: SweepSpec, asked: Sequence[str] | None, rows: Sequence[Row]) -> tuple[str, ...]:
    """--scorings (each must have values in the chosen rows), default the spec's scorings that do."""
    with_data = [s for s in spec.scorings if any(r.get(metric_key("rel", s)) is not None for r in rows)]
    if asked is None:
        return tuple(with_data)
    missing = [s for s in asked if s not in with_data]
    if missing:
        raise DeferInputError(f"--scorings: {', '.join(missing)} has no values in the chosen trials (scorings with values: {', '.join(with_data) or 'none'})")
    return tuple(asked)


def _columns(scorings: Sequence[str], recorded: Sequence[int], asked: Sequence[int] | None) -> list[Column]:
    if asked is not None:
        missing = [n for n in asked if n not in recorded]
        if missing:
            raise DeferInputError(f"--milestones: {', '.join(map(str, missing))} not recorded for the chosen trials (milestones: {', '.join(map(str, recorded))})")
        recorded = list(asked)
    return [Column(scoring, n, metric) for scoring in scorings for n in recorded for metric in METRICS]


def _table_row(spec: SweepSpec, trial: dict[str, Any], means: Mapping[int, Row], stored: StoredRows, columns: Sequence[Column], asked: str,
               trials: Sequence[Row]) -> TableRow:
    members = stored.member_count(trial)
    spreads = {key: row_spread(trial, stored, key, asked) for key in {c.key for c in columns}}
    cells: dict[tuple[str, int], Cell] = {}
    for column in columns:
        value = means.get(column.n_edits, {}).get(column.key)
        if value is not None:
            found = spreads[column.key].get(column.n_edits)
            cells[(column.key, column.n_edits)] = Cell(float(value), None if found is None else replace(found, mean=float(value)))
    seeds, orders = stored.seeds_orders()
    return TableRow(trial, spec.name, row_label(trial, trials), members, seeds, orders, asked == T_INTERVAL and members == 1, cells)


def row_label(trial: Row, trials: Sequence[Row]) -> str:
    """`#007`; a confirm trial by the trial it re-checks, `#007 confirm`."""
    own = trial_label(trial.get(OPTUNA_TRIAL), str(trial[TRIAL_ID]))
    if trial.get(STAGE) != STAGE_CONFIRM:
        return own
    original = next((t for t in trials if t[TRIAL_ID] == trial.get(CONFIRMS)), None)
    if original is None:
        return f"{own} confirm"
    return f"{trial_label(original.get(OPTUNA_TRIAL), str(original['trial_id']))} confirm"


# -- text ------------------------------------------------------------------------------------------


SWEEP_COLUMN = "sweep"  # a joined table's first column: the row's sweep name


def hparam_columns(table: SweepTable) -> list[str]:
    """The configuration's columns: the sweep (joined tables), the editors' parameters, protocol
    and members only where the rows differ in them."""
    extra = ["protocol"] if len(table.protocols) > 1 else []
    if len({r.members for r in table.rows}) > 1:
        extra.append(MEMBER_COUNT)
    return [*([SWEEP_COLUMN] if table.joined else []), *editor_columns_of(table), *extra]


def hparam_text(row: TableRow, column: str) -> str:
    if column == MEMBER_COUNT:
        return str(row.members)
    if column == SWEEP_COLUMN:
        return row.sweep
    value = row.trial.get(column)
    if value is None:
        return "–"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _grace_key_text(table: SweepTable) -> str:
    """GRACE's key position where a sweep shown set it off EasyEdit's (spec.grace_key)."""
    from defer_core.plan import grace_key_note

    keyed = [spec for spec in table.specs if grace_key_note(spec.grace_key)]
    if not keyed:
        return ""
    where = "" if not table.joined else " in " + ", ".join(f"'{spec.name}'" for spec in keyed)
    return "".join(dict.fromkeys(grace_key_note(spec.grace_key, lead=", ") for spec in keyed)) + where


def caption(table: SweepTable) -> str:
    """What the table shows and how its intervals were made: kind, confidence and n."""
    rows = table.rows
    protocol = f"protocol {table.protocols[0]}" if len(table.protocols) == 1 else "protocols in the protocol column"
    templates = list(dict.fromkeys(spec.search_space.module_template for spec in table.specs))
    module = table.modules[0] if len(table.modules) == 1 else " / ".join(templates)
    models = ", ".join(dict.fromkeys(spec.model.name for spec in table.specs))
    sweeps = f"'{table.spec.name}'" if not table.joined else "sweeps " + ", ".join(f"'{spec.name}'" for spec in table.specs)
    missing = "; – where a sweep did not record that column" if table.joined and any((c.key, c.n_edits) not in r.cells for r in rows for c in table.columns) else ""
    parts = [
        f"defer-sweep {sweeps}: {table.selection.what}; {models}, edited module {module}, {protocol}{_grace_key_text(table)}, "
        f"{DEFER_METRICS} at each number of edits, mean over repeat members{missing}."
    ]
    t_rows = [r for r in rows if table.interval == T_INTERVAL and not r.fallback]
    boot_rows = [r for r in rows if table.interval == BOOTSTRAP or r.fallback]
    confidence = f"{CONFIDENCE:.0%}"
    if t_rows:
        parts.append(f"± is the half-width of a {confidence} Student t interval over {_member_text(t_rows)}.")
    if boot_rows:
        records = _record_counts(boot_rows, table.columns)
        what = f"a {confidence} percentile bootstrap interval over the records scored at each milestone ({records})"
        if t_rows:
            parts.append(f"{FALLBACK_MARK}: one repeat member, so ± is instead the half-width of {what}.")
        elif table.interval == T_INTERVAL:
            parts.append(f"{FALLBACK_MARK}: one repeat member per configuration, so ± is the half-width of {what} (no spread over repeats exists).")
        else:
            parts.append(f"± is the half-width of {what}, of the per-record mean over repeat members.")
    if any(cell.interval is not None and cell.interval.clipped for r in rows for cell in r.cells.values()):
        parts.append("A cell shown as mean [low, high] is a Student t interval clipped to [0, 1], where an accuracy lies.")
    if any(cell.interval is None for r in rows for cell in r.cells.values()):
        parts.append("A bare mean has no stored rows to compute its interval from.")
    return " ".join(parts)


DEFER_METRICS = "Rel (edit prompts), Gen (rephrasings) and Loc (unrelated prompts)"


def _member_text(rows: Sequence[TableRow]) -> str:
    counts = sorted({r.members for r in rows})
    if len(counts) > 1:
        return f"n = {counts[0]}–{counts[-1]} repeat members (the members column)"
    seeds, orders = {r.seeds for r in rows}, {r.orders for r in rows}
    how = ""
    if len(seeds) == 1 and len(orders) == 1:
        (seed_list,), (order_list,) = seeds, orders
        how = f": seeds {', '.join(map(str, seed_list))} × edit orders {', '.join(map(str, order_list))}"
    return f"n = {counts[0]} repeat members{how}"


def _record_counts(rows: Sequence[TableRow], columns: Sequence[Column]) -> str:
    """`n = 2, 4, 6 records at 2, 4, 6 edits`, from the bootstrap cells' n."""
    by_milestone: dict[int, set[int]] = defaultdict(set)
    for row in rows:
        for (_, n_edits), cell in row.cells.items():
            if cell.interval is not None:
                by_milestone[n_edits].add(cell.interval.n)
    if not by_milestone:
        return "none stored"
    milestones = sorted(by_milestone)
    counts = ["/".join(map(str, sorted(by_milestone[m]))) for m in milestones]
    return f"n = {', '.join(counts)} records at {', '.join(map(str, milestones))} edits"


def cell_text(cell: Cell | None, missing: str = "–") -> str:
    if cell is None:
        return missing
    return format_interval(cell.interval, DIGITS) if cell.interval is not None else f"{cell.mean:.{DIGITS}f}"


def render(table: SweepTable, fmt: str) -> str:
    if fmt not in FORMATS:
        raise DeferInputError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    return {"md": render_md, "latex": render_latex, "csv": render_csv}[fmt](table)


def render_md(table: SweepTable) -> str:
    """A pipe table, then a pandoc caption line (`Table: ...`)."""
    hparams = hparam_columns(table)
    head = ["trial", *hparams, *(c.name for c in table.columns)]
    lines = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    for row in table.rows:
        label = row.label + (f" {FALLBACK_MARK}" if row.fallback else "")
        cells = [cell_text(row.cells.get((c.key, c.n_edits))) for c in table.columns]
        lines.append(f"| {' | '.join([label, *(hparam_text(row, h) for h in hparams), *cells])} |")
    return "\n".join([*lines, "", f"Table: {caption(table)}", ""])


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "–": "--", "×": r"$\times$", "±": r"$\pm$", FALLBACK_MARK: r"\textsuperscript{\dag}"}


def latex_escape(text: str) -> str:
    """Plain text as LaTeX source: every special character escaped (± and † as math/symbols)."""
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def render_latex(table: SweepTable) -> str:
    """A booktabs tabular in a table environment: a header row per (scoring, milestone) group
    with \\cmidrule under it, then Rel/Gen/Loc; needs booktabs and graphicx (its first line says so)."""
    hparams = hparam_columns(table)
    lead = 1 + len(hparams)
    groups = list(dict.fromkeys((c.scoring, c.n_edits) for c in table.columns))
    spec = "l" * lead + "".join(f"@{{\\hspace{{1em}}}}{'c' * len(METRICS)}" if i else "c" * len(METRICS) for i in range(len(groups)))
    group_head = " & ".join([""] * lead + [f"\\multicolumn{{{len(METRICS)}}}{{c}}{{{latex_escape(scoring)}, {n} edits}}" for scoring, n in groups])
    rules = " ".join(f"\\cmidrule(lr){{{lead + 1 + i * len(METRICS)}-{lead + (i + 1) * len(METRICS)}}}" for i in range(len(groups)))
    names = " & ".join(latex_escape(h) for h in ["trial", *hparams]) + " & " + " & ".join(m.capitalize() for _ in groups for m in METRICS)
    body = []
    for row in table.rows:
        label = latex_escape(row.label) + (latex_escape(FALLBACK_MARK) if row.fallback else "")
        cells = [latex_escape(cell_text(row.cells.get((c.key, c.n_edits)))) for c in table.columns]
        body.append(" & ".join([label, *(latex_escape(hparam_text(row, h)) for h in hparams), *cells]) + r" \\")
    label = "tab:" + "".join(ch if ch.isalnum() or ch in "-:." else "-" for ch in "+".join(spec.name for spec in table.specs))
    return "\n".join([
        r"% defer-sweep table: needs \usepackage{booktabs} and \usepackage{graphicx} (\resizebox)",
        r"\begin{table}[t]",
        r"\centering",
        f"\\caption{{{latex_escape(caption(table))}}}",
        f"\\label{{{label}}}",
        r"\resizebox{\textwidth}{!}{%",
        f"\\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        group_head + r" \\",
        rules,
        names + r" \\",
        r"\midrule",
        *body,
        r"\bottomrule",
        r"\end{tabular}}",
        r"\end{table}",
        "",
    ])


def editor_columns_of(table: SweepTable) -> tuple[str, ...]:
    """The swept editors' parameters, each once, in the sweeps' order; in a joined table only those
    some row has (spec.editor_columns; imported here: the spec's models are not loaded by the CLI's --help)."""
    from .spec import editor_columns

    columns = tuple(dict.fromkeys(column for spec in table.specs for column in editor_columns(spec.editor)))
    if not table.joined:
        return columns
    return tuple(c for c in columns if any(row.trial.get(c) is not None for row in table.rows))  # another editor's parameters only where set


def csv_columns(table: SweepTable) -> list[str]:
    return [*([SWEEP_COLUMN] if table.joined else []), "trial_id", "trial", "stage", CONFIRMS, "protocol", "members", "interval", "module", *editor_columns_of(table),
            *(f"{c.name}_{f}" for c in table.columns for f in CELL_FIELDS)]


def render_csv(table: SweepTable) -> str:
    """One row per configuration; per cell its mean, low, high, half_width and n (empty where
    there is no interval); `interval` names the row's kind (t or bootstrap)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, csv_columns(table), lineterminator="\n")
    writer.writeheader()
    for row in table.rows:
        kind = BOOTSTRAP if row.fallback or table.interval == BOOTSTRAP else T_INTERVAL
        out: dict[str, Any] = {**({SWEEP_COLUMN: row.sweep} if table.joined else {}), "trial_id": row.trial[TRIAL_ID], "trial": row.label, "stage": row.trial.get(STAGE), CONFIRMS: row.trial.get(CONFIRMS),
                               "protocol": row.trial.get("protocol"), "members": row.members, "interval": kind, "module": row.trial.get("module"),
                               **{h: row.trial.get(h) for h in editor_columns_of(table)}}
        for column in table.columns:
            cell = row.cells.get((column.key, column.n_edits))
            interval = None if cell is None else cell.interval
            out[f"{column.name}_mean"] = None if cell is None else repr(cell.mean)
            for field in CELL_FIELDS[1:]:
                value = None if interval is None else getattr(interval, field)
                out[f"{column.name}_{field}"] = None if value is None else repr(value)
        writer.writerow(out)
    return buffer.getvalue()
