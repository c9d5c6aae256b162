"""The report page: one self-contained HTML file with every plot embedded as base64.

One escaping rule: the page is a single Jinja2 template rendered with autoescape on, and
Python hands it plain strings only (never HTML), so every interpolated value (spec name,
trial ids, error text, YAML, captions) is escaped exactly once, in one place. The markup the
page needs (<code>, the best.yaml badge) is written in the template itself.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from dataclasses import dataclass
from typing import Any, Sequence

import jinja2

from defer_core.plan import grace_key_note
from defer_core.results import METRICS, metric_key

from ..results.rows import Status
from ..results.ranking import bounds_text, is_feasible
from ..spec.trial_config import describe_config
from ..results.candidates import threshold_mode
from ..spec import SweepSpec, editor_columns
from .data import Row, SweepData, row_key, scorings_with_data, top_trials, trial_yaml
from .importance import Importance
from .drawing import HEIGHT_PX, WIDTH_PX, Hotspot, trial_label
from .plots import SECTIONS, Plot

_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.meta { color: #555; } .meta td { padding: 1px 12px 1px 0; }
figure { margin: 12px 0 20px 0; } figure img { display: block; max-width: 100%; height: auto; border: 1px solid #eee; }
.plotbox { position: relative; display: inline-block; max-width: 100%; }
.plotbox svg { position: absolute; left: 0; top: 0; width: 100%; height: 100%; }
.plotbox circle { fill: transparent; pointer-events: all; } .plotbox circle:hover { stroke: #222; stroke-width: 2; }
figcaption { color: #555; font-size: 0.92em; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 6px 10px; margin: 6px 0; }
table.trials { border-collapse: collapse; font-size: 0.88em; width: 100%; }
table.trials th, table.trials td { border-bottom: 1px solid #e4e4e4; padding: 4px 6px; text-align: right; vertical-align: top; }
table.trials th { background: #f4f4f4; position: sticky; top: 0; }
table.trials td.text { text-align: left; } tr.best { background: #fdecec; }
.badge { display: inline-block; background: #c44e52; color: white; border-radius: 3px; padding: 0 4px; font-size: 0.85em; }
pre.yaml { text-align: left; background: #f7f7f7; padding: 6px; margin: 4px 0; font-size: 0.95em; }
"""

# The CSS goes in verbatim ({% raw %}): <style> is raw text, where an escaped quote would stay "&#34;".
_TEMPLATE = (
    """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>defer-sweep report: {{ name }}</title><style>{% raw %}"""
    + _CSS
    + """{% endraw %}</style></head>
{% macro trial_ref(t) %}{{ t.label }} <code>{{ t.trial_id }}</code>{% endmacro %}
{% macro notes(items) %}{% for n in items %}<p class="note">{{ n }}</p>{% endfor %}{% endmacro %}
<body>
<h1>defer-sweep report: {{ name }}</h1>
<p class="meta">generated {{ generated }}</p>
<table class="meta">
{% for key, value in meta %}
<tr><td><b>{{ key }}</b></td><td>{% if value is string %}{{ value }}{% else %}{{ trial_ref(value) }} {{ value.config }} — {{ value.detail }}{% endif %}</td></tr>
{% endfor %}
</table>
{{ notes(page_notes) }}
{% for s in sections %}
<h2 id="{{ s.key }}">{{ s.title }}</h2><p>{{ s.intro }}</p>
{{ notes(s.notes) }}
{% for f in s.figures %}
<figure id="fig-{{ f.name }}"><div class="plotbox"><img class="plot" id="img-{{ f.name }}" alt="{{ f.title }}" width="{{ width }}" height="{{ height }}" src="{{ f.src }}">
{%- if f.hotspots %}<svg class="hotspots" id="spots-{{ f.name }}" viewBox="0 0 {{ width }} {{ height }}" preserveAspectRatio="none">
{%- for h in f.hotspots %}<circle cx="{{ h.x }}" cy="{{ h.y }}" r="{{ hotspot_radius }}"><title>{{ h.title }}</title></circle>{% endfor -%}
</svg>{% endif %}</div><figcaption>{{ f.caption }}</figcaption></figure>
{% endfor %}
{% endfor %}
<h2 id="top">Top trials</h2>
<p>{{ top.searched_note }}{{ top.what }} ranked {{ top.ranking }}{{ top.metric }}; metrics at T={{ top.T }}. The YAML is what <code>defer-sweep export</code> writes for that {{ top.unit }}.</p>
{% if top.rows %}
<table class="trials" id="top-trials"><thead><tr>{% for h in top.head %}<th>{{ h }}</th>{% endfor %}</tr></thead><tbody>
{% for row in top.rows %}
<tr class="{{ 'trial best' if row.best else 'trial' }}" data-trial-id="{{ row.trial.trial_id }}"><td>{{ row.rank }}</td><td class="text">{{ trial_ref(row.trial) }}{% if row.best %} <span class="badge">best.yaml</span>{% endif %}</td>
{%- if top.multi_objective %}<td>{{ '★' if row.on_front else '' }}</td>{% endif %}
{%- for c in row.cells %}<td>{{ c }}</td>{% endfor -%}
<td class="text"><details{{ ' open' if row.best else '' }}><summary>YAML</summary><pre class="yaml">{{ row.yaml }}</pre></details></td></tr>
{% endfor %}
</tbody></table>
{% else %}
<p class="note" id="no-trials">No trial has completed all edits yet: there is nothing to rank or export.</p>
{% endif %}
{% if failed %}
<h2 id="failed">Failed trials</h2><ul class="failed">{% for t in failed %}<li>{{ trial_ref(t) }} {{ t.config }}: {{ t.detail }}</li>{% endfor %}</ul>
{% endif %}
</body></html>
"""
)

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
_PAGE = _ENV.from_string(_TEMPLATE)

_SECTION_TEXT = {  # section key -> (title, intro); keys and order are plots.SECTIONS
    "pareto": ("Pareto front: Rel vs Loc", "Completed trials at T (in curve mode, each at every threshold of its curve). A point on the front cannot gain Rel without losing Loc."),
    "thresholds": ("Rel / Gen / Loc vs threshold", "DEFER reads its threshold only at evaluation, so one training gives a whole curve: the top trainings' metrics at every threshold, and the Rel–Loc trade-off each one offers."),
    "curves": ("Rel / Gen / Loc vs number of edits", "How each trial degrades (or not) as edits accumulate."),
    "importance": ("Hyperparameter importance", "Optuna's importance evaluators on the sweep's study."),
    "params": ("Hyperparameters vs objective", "Where in the search space the good trials are."),
}
_NOTHING_YET = "Nothing to plot yet: no trial has reported these values."
HOTSPOT_RADIUS_PX = 7  # a plot point's hover area, in image pixels


@dataclass(frozen=True)
class TrialRef:
    """A trial as the page names it: '#3 <code>id</code> L2 lr=... — detail'."""

    label: str
    trial_id: str
    config: str
    detail: str = ""


@dataclass(frozen=True)
class Figure:
    name: str
    title: str
    caption: str
    src: str  # data: URI
    hotspots: Sequence[Hotspot]  # drawn as transparent SVG circles with a <title> over the image


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    intro: str
    notes: list[str]
    figures: list[Figure]


@dataclass(frozen=True)
class TopRow:
    rank: int
    trial: TrialRef
    best: bool
    on_front: bool
    cells: list[str]  # hyperparameters, metrics, seconds: already formatted
    yaml: str


@dataclass(frozen=True)
class TopTable:
    searched_note: str
    what: str  # what the rows are: completed trials, or (training, threshold) points
    unit: str
    ranking: str
    metric: str
    T: int
    multi_objective: bool
    head: list[str]
    rows: list[TopRow]


def render_html(data: SweepData, plot_list: Sequence[Plot], importance: Importance, notes: Sequence[str]) -> str:
    """The whole page; `notes` go under the sweep's summary (e.g. best.yaml differs)."""
    return _PAGE.render(
        name=data.spec.name,
        generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        meta=_meta(data),
        page_notes=list(notes),
        sections=_sections(plot_list, importance, data.spec.curve_mode),
        width=WIDTH_PX,
        height=HEIGHT_PX,
        hotspot_radius=HOTSPOT_RADIUS_PX,
        top=_top_table(data),
        failed=_failed(data),
    )


def fmt(value: Any, digits: int = 3) -> str:
    """A metric for the table: fixed digits, '–' when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _trial_ref(row: Row, detail: str = "") -> TrialRef:
    return TrialRef(trial_label(row), str(row["trial_id"]), describe_config(row), detail)


def _meta(data: SweepData) -> list[tuple[str, str | TrialRef]]:
    """The summary table under the title: (key, text or the best trial)."""
    spec, state, counts = data.spec, data.state, data.counts()
    unfinished = f", {counts[Status.RUNNING]} unfinished" if counts[Status.RUNNING] else ""
    best: str | TrialRef = "none (no trial completed all edits)"
    if data.choice is not None:
        best = _trial_ref(data.choice.row, data.choice.reason)
    return [
        ("model", f"{spec.model.name} ({spec.model.dtype}, {spec.model.device or 'auto'})"),
        ("edits", f"T={spec.T}, milestones {', '.join(map(str, spec.milestones))}, protocol {spec.protocol}, scorings {', '.join(spec.scorings)}"
                  + grace_key_note(spec.grace_key, lead=", ")),
        ("threshold", "curve: every training read at every threshold; candidates are (training, threshold) points" if spec.curve_mode
         else f"{threshold_mode(spec)}: each trial read at its own"),
        ("objectives", ", ".join(f"{o.direction} {o.metric}" for o in spec.objectives)),
        *([("constraints", f"{bounds_text(spec.constraints)} (feasible points rank first; export refuses when none is)")] if spec.constraints else []),
        ("trials", f"{len(data.trials)} of {spec.num_trials}: {counts[Status.COMPLETE]} complete, {counts[Status.PRUNED]} pruned, {counts[Status.FAILED]} failed{unfinished}"),
        ("best", best),
        ("sweep", f"id {state.sweep_id}; MLflow {state.mlflow_tracking_uri} (experiment '{state.mlflow_experiment}'); Optuna study '{state.optuna_study_name}'"),
        ("output", str(data.layout.root)),
        ("Parquet dataset", str(data.layout.parquet)),
    ]


def _sections(plot_list: Sequence[Plot], importance: Importance, curve_mode: bool) -> list[Section]:
    """The plot sections in page order; a section with neither plots nor notes says so (the
    threshold curves are a curve-mode section)."""
    sections = []
    for key in SECTIONS:
        if key == "thresholds" and not curve_mode:
            continue
        title, intro = _SECTION_TEXT[key]
        figures = [_figure(p) for p in plot_list if p.section == key]
        notes = list(importance.notes) if key == "importance" else []
        sections.append(Section(key, title, intro, notes or ([] if figures else [_NOTHING_YET]), figures))
    return sections


def _figure(plot: Plot) -> Figure:
    src = "data:image/png;base64," + base64.b64encode(plot.png).decode("ascii")
    return Figure(plot.name, plot.title, plot.caption, src, plot.hotspots)


def _top_table(data: SweepData) -> TopTable:
    """The best completed trials with their metrics and the YAML `defer-sweep export` writes."""
    spec = data.spec
    rows, front_keys = top_trials(data)
    metric_cols = [metric_key(m, s) for s in scorings_with_data(data) for m in METRICS]
    feasible_col = ["feasible"] if spec.constraints else []
    head = ["rank", "trial", *(["Pareto"] if spec.multi_objective else []), *editor_columns(spec.editor), *metric_cols, *feasible_col, "seconds", "EasyEdit YAML"]
    best_key = row_key(data.best) if data.best else None
    searched = list(spec.search_space.searched())
    return TopTable(
        searched_note=f"Searched: {', '.join(searched)}. " if searched else "",
        what="(Training, threshold) points of completed trials" if spec.curve_mode else "Completed trials",
        unit="point" if spec.curve_mode else "trial",
        ranking=_ranking_text(spec),
        metric=spec.objectives[0].metric,
        T=spec.T,
        multi_objective=spec.multi_objective,
        head=head,
        rows=[_top_row(spec, rank, row, row_key(row) == best_key, row_key(row) in front_keys, metric_cols, trial_yaml(data, row)) for rank, row in enumerate(rows, 1)],
    )


def _ranking_text(spec: SweepSpec) -> str:
    """`the spec's Pareto front first (★), then those satisfying the constraints first, then by `."""
    parts = [*(["the spec's Pareto front first (★)"] if spec.multi_objective else []), *(["those satisfying the constraints first"] if spec.constraints else [])]
    return ", then ".join(parts) + ", then by " if parts else "by "


def _top_row(spec: SweepSpec, rank: int, row: Row, is_best: bool, on_front: bool, metric_cols: Sequence[str], yaml: str) -> TopRow:
    hparams = [f"{row[name]:.3g}" if name in ("edit_lr", "eps") and row.get(name) is not None else fmt(row.get(name)) for name in editor_columns(spec.editor)]
    feasible = [("yes" if is_feasible(row, spec.constraints) else "no")] if spec.constraints else []
    cells = [*hparams, *(fmt(row.get(c)) for c in metric_cols), *feasible, fmt(row.get("seconds"), 1)]
    return TopRow(rank, _trial_ref(row), is_best, on_front, cells, yaml)


def _failed(data: SweepData) -> list[TrialRef]:
    return [_trial_ref(t, t.get("error") or "no error text") for t in data.trials if t["status"] == Status.FAILED]
