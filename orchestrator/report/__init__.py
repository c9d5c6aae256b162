"""`defer-sweep report OUT_DIR`: PNG plots and one self-contained HTML page for a sweep.

Everything is read from the sweep's output directory (see layout.py): the Parquet trials and
milestones tables (there, or at the storage_uri its sweep.json names), the spec, and the Optuna study named in sweep.json. The report goes to
OUT/report/ (report.html with every plot embedded as base64, plus the PNGs beside it) and is
logged as artifacts under `report/` of the sweep's MLflow parent run.

What the page shows:
- the Pareto front of Rel vs Loc at T for each scoring (tf, gen), completed trials only;
- Rel / Gen / Loc against the number of edits for every trial, the best one highlighted;
- hyperparameter importance from Optuna's evaluators (fANOVA and PED-ANOVA) on the study,
  or a note saying why there are too few completed trials;
- each objective against each searched hyperparameter;
- the top trials with their metrics and the EasyEdit DEFER YAML `defer-sweep export` would
  write for them.

The best trial is `export.choose`'s default choice (the one `best.yaml` holds after a run);
ranking and the Pareto front come from ranking.py, the YAML from space.hparams_for and
defer_core's dump_hparams, so the page and `defer-sweep export` always agree.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import logging
import math
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import optuna
from optuna.trial import TrialState

from defer_core.errors import DeferInputError
from defer_core.files import atomic_write_bytes, atomic_write_text
from defer_core.hparams import dump_hparams

from ..export import ChosenTrial, choose
from ..protocol import FINAL_STATUSES, Status
from ..search.ranking import pareto_front, rank_by
from ..search.space import describe_config, hparams_for
from ..sinks.layout import SweepLayout, SweepState, load_state, require_sweep_dir
from ..sinks.mlflow_sink import MlflowSink
from ..sinks.parquet_sink import read_table
from ..spec import FloatRange, Choice as ChoiceRange, Objective, SweepSpec, load_spec
from . import plots

log = logging.getLogger(__name__)

REPORT_DIR = "report"
HTML_NAME = "report.html"
MLFLOW_ARTIFACT_PATH = "report"
TOP_TRIALS = 10
# Fewer completed trials than this and importance is noise: the page says so instead.
MIN_IMPORTANCE_TRIALS = 4
# PED-ANOVA is stable with >= 5 trials in its top quantile (Optuna's documentation).
PED_ANOVA_TOP_TRIALS = 5
PED_ANOVA_MIN_TRIALS = 2 * PED_ANOVA_TOP_TRIALS


@dataclass(frozen=True)
class Plot:
    name: str  # file stem: <name>.png
    section: str
    title: str
    caption: str
    png: bytes


@dataclass
class Importance:
    """values[objective][evaluator][param], normalised to sum 1; notes explain what is missing."""

    values: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    n_complete: int = 0


@dataclass
class SweepData:
    layout: SweepLayout
    spec: SweepSpec
    state: SweepState
    trials: list[dict[str, Any]]
    milestones: dict[str, list[dict[str, Any]]]
    choice: ChosenTrial | None

    @property
    def completed(self) -> list[dict[str, Any]]:
        return [t for t in self.trials if t["status"] == Status.COMPLETE]

    @property
    def best(self) -> dict[str, Any] | None:
        return self.choice.row if self.choice is not None else None

    def counts(self) -> dict[str, int]:
        statuses = [t["status"] for t in self.trials]
        return {s: statuses.count(s) for s in (*FINAL_STATUSES, Status.RUNNING)}


# -- data ------------------------------------------------------------------------------------------


def load_sweep(layout: SweepLayout) -> SweepData:
    spec = load_spec(layout.spec)
    state = load_state(layout)
    if state is None:  # require_sweep_dir checked the file exists
        raise DeferInputError(f"{layout.state}: missing")
    trials = sorted(read_table(layout.parquet, "trials").to_pylist(), key=_trial_order)
    milestones: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in read_table(layout.parquet, "milestones").to_pylist():
        milestones[row["trial_id"]].append(row)
    for rows in milestones.values():
        rows.sort(key=lambda r: r["n_edits"])
    completed = [t for t in trials if t["status"] == Status.COMPLETE]
    choice = None
    if completed:
        try:
            choice = choose(spec, completed)
        except DeferInputError as error:  # e.g. the objective's scoring was not run
            log.warning("report: no best trial: %s", error)
    return SweepData(layout, spec, state, trials, dict(milestones), choice)


def _trial_order(row: Mapping[str, Any]) -> tuple[int, str]:
    number = row.get("optuna_trial")
    return (number if number is not None else 1 << 30, str(row["trial_id"]))


def scorings_with_data(data: SweepData) -> list[str]:
    return [s for s in data.spec.scorings if any(t.get(f"rel_{s}") is not None for t in data.trials)]


def rel_loc_front(rows: Sequence[Mapping[str, Any]], scoring: str) -> list[Mapping[str, Any]]:
    return pareto_front(rows, [Objective(f"rel_{scoring}", "maximize"), Objective(f"loc_{scoring}", "maximize")])


def top_trials(data: SweepData, limit: int = TOP_TRIALS) -> tuple[list[Mapping[str, Any]], set[str]]:
    """Completed trials best-first: the spec's Pareto front first when it has several
    objectives (front order), then the rest by the first objective. Returns (rows, front ids)."""
    objectives = data.spec.objectives
    front = pareto_front(data.completed, objectives) if data.spec.multi_objective else []
    front_ids = {r["trial_id"] for r in front}
    rest = [r for r in rank_by(data.completed, objectives[0]) if r["trial_id"] not in front_ids]
    ordered = [*front, *rest]
    return ordered[: max(limit, len(front))], front_ids


# -- hyperparameter importance ----------------------------------------------------------------------


def load_study(state: SweepState) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=state.optuna_study_name, storage=state.optuna_storage)
    except KeyError:
        return None


def _evaluators(n_complete: int, notes: list[str]) -> dict[str, Callable[[], optuna.importance.BaseImportanceEvaluator]]:
    evaluators: dict[str, Callable[[], optuna.importance.BaseImportanceEvaluator]] = {}
    try:
        import sklearn  # noqa: F401  (fANOVA's random forest)

        evaluators["fANOVA"] = lambda: optuna.importance.FanovaImportanceEvaluator(seed=0)
    except ImportError:
        notes.append("fANOVA skipped: it needs scikit-learn, which is not installed.")
    if n_complete >= PED_ANOVA_MIN_TRIALS:
        quantile = min(0.5, max(0.1, PED_ANOVA_TOP_TRIALS / n_complete))
        evaluators["PED-ANOVA"] = lambda: optuna.importance.PedAnovaImportanceEvaluator(target_quantile=quantile)
    else:
        notes.append(
            f"PED-ANOVA skipped: it compares the top quantile of trials with the rest and needs at least "
            f"{PED_ANOVA_MIN_TRIALS} completed trials ({PED_ANOVA_TOP_TRIALS} in its top quantile); this study has {n_complete}."
        )
    return evaluators


def param_importances(study: optuna.Study | None, objectives: Sequence[Objective], params: Sequence[str]) -> Importance:
    """Optuna's importance evaluators per objective, over the study's COMPLETE trials (pruned
    trials stopped before T and carry no objective value at T)."""
    result = Importance()
    if study is None:
        result.notes.append("Hyperparameter importance not computed: the Optuna study named in sweep.json was not found.")
        return result
    if not params:
        result.notes.append("Hyperparameter importance not computed: the spec searches no hyperparameter.")
        return result
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    result.n_complete = len(complete)
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        result.notes.append(
            f"Too few trials for hyperparameter importance: the study has {len(complete)} completed trial(s); "
            f"at least {MIN_IMPORTANCE_TRIALS} are needed (pruned and failed trials have no value at T). Run more trials."
        )
        return result
    evaluators = _evaluators(len(complete), result.notes)
    for index, objective in enumerate(objectives):
        values = [t.values[index] for t in complete if t.values is not None and len(t.values) > index]
        if len(set(values)) < 2:
            result.notes.append(f"No importance for {objective.metric}: every completed trial has the same value ({values[0] if values else 'none'}).")
            continue
        for name, make in evaluators.items():
            importances = _evaluate(study, make(), params, index, objective, name, result.notes)
            if importances is not None:
                result.values.setdefault(objective.metric, {})[name] = importances
    return result


def _evaluate(study: optuna.Study, evaluator: optuna.importance.BaseImportanceEvaluator, params: Sequence[str], index: int, objective: Objective, name: str, notes: list[str]) -> dict[str, float] | None:
    # PED-ANOVA ranks "lower is better": negate a maximised objective. fANOVA (variance) ignores the sign.
    sign = -1.0 if objective.direction == "maximize" else 1.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            raw = optuna.importance.get_param_importances(study, evaluator=evaluator, params=list(params), target=lambda t: sign * t.values[index], normalize=False)
        except (ValueError, RuntimeError) as error:
            notes.append(f"{name} for {objective.metric} failed: {error}")
            return None
    for warning in caught:
        text = str(warning.message)
        if issubclass(warning.category, optuna.exceptions.ExperimentalWarning) or "low `target` values" in text:
            continue  # the negation above is exactly what that warning asks for
        notes.append(f"{name} for {objective.metric}: {text}")
    total = sum(v for v in raw.values() if math.isfinite(v))
    if not total > 0:
        notes.append(f"{name} for {objective.metric}: every parameter scored 0 (the completed trials do not separate them).")
        return None
    return {param: (value / total if math.isfinite(value) else 0.0) for param, value in raw.items()}


# -- plots ------------------------------------------------------------------------------------------


def _searched_params(spec: SweepSpec) -> list[tuple[str, bool, Sequence[Any] | None]]:
    out = []
    for name, param in spec.search_space.searched().items():
        log_scale = isinstance(param, FloatRange) and param.log
        choices = tuple(param.values) if isinstance(param, ChoiceRange) else None
        out.append((name, log_scale, choices))
    return out


def build_plots(data: SweepData, importance: Importance) -> list[Plot]:
    spec, best = data.spec, data.best
    completed = data.completed
    T = spec.T
    spec_front_ids = {r["trial_id"] for r in pareto_front(completed, spec.objectives)} if spec.multi_objective else set()
    result: list[Plot] = []
    for scoring in scorings_with_data(data):
        rows = [r for r in completed if r.get(f"rel_{scoring}") is not None and r.get(f"loc_{scoring}") is not None]
        front = rel_loc_front(rows, scoring)
        figure = plots.pareto_figure(scoring, rows, front, best, T, len(data.trials) - len(completed))
        caption = (
            f"Each point is a trial that made all {T} edits, scored {plots.scoring_title(scoring)}. "
            f"Orange: the {len(front)} non-dominated trial(s) (no other trial is at least as good on both Rel and Loc and better on one). "
            "Red star: the trial in best.yaml."
        )
        result.append(Plot(f"pareto_{scoring}", "pareto", f"Pareto front: Rel vs Loc ({scoring})", caption, plots.png_bytes(figure)))
    for scoring in scorings_with_data(data):
        figure = plots.curves_figure(scoring, data.trials, data.milestones, best, spec_front_ids, spec.milestones)
        caption = (
            "One line per trial, evaluated over all edits made so far at each milestone. Dashed grey lines end where the "
            "scheduler pruned a trial; the thick red line is the trial in best.yaml"
            + ("; orange lines are the spec's Pareto front." if spec_front_ids else ".")
        )
        result.append(Plot(f"curves_{scoring}", "curves", f"Rel / Gen / Loc vs number of edits ({scoring})", caption, plots.png_bytes(figure)))
    if importance.values:
        figure = plots.importance_figure(importance.values)
        caption = f"How much of the objective's variation each hyperparameter explains, over {importance.n_complete} completed trial(s) of the Optuna study."
        result.append(Plot("importance", "importance", "Hyperparameter importance", caption, plots.png_bytes(figure)))
    params = _searched_params(spec)
    if params:
        for objective in spec.objectives:
            figure = plots.params_figure(objective.metric, objective.direction, params, data.trials, best, T)
            caption = f"{objective.metric} against each searched hyperparameter. Filled: value at T={T}; hollow grey: a pruned trial's value at the milestone where it stopped."
            result.append(Plot(f"params_{objective.metric}", "params", f"Hyperparameters vs {objective.metric}", caption, plots.png_bytes(figure)))
    return result


# -- HTML -------------------------------------------------------------------------------------------

_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.meta { color: #555; } .meta td { padding: 1px 12px 1px 0; }
figure { margin: 12px 0 20px 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.92em; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 6px 10px; margin: 6px 0; }
table.trials { border-collapse: collapse; font-size: 0.88em; width: 100%; }
table.trials th, table.trials td { border-bottom: 1px solid #e4e4e4; padding: 4px 6px; text-align: right; vertical-align: top; }
table.trials th { background: #f4f4f4; position: sticky; top: 0; }
table.trials td.text { text-align: left; } tr.best { background: #fdecec; }
.badge { display: inline-block; background: #c44e52; color: white; border-radius: 3px; padding: 0 4px; font-size: 0.85em; }
pre.yaml { text-align: left; background: #f7f7f7; padding: 6px; margin: 4px 0; font-size: 0.95em; }
"""


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _img(plot: Plot) -> str:
    encoded = base64.b64encode(plot.png).decode("ascii")
    return (
        f'<figure id="fig-{html.escape(plot.name)}"><img class="plot" id="img-{html.escape(plot.name)}" '
        f'alt="{html.escape(plot.title)}" width="{plots.WIDTH_PX}" height="{plots.HEIGHT_PX}" src="data:image/png;base64,{encoded}">'
        f"<figcaption>{html.escape(plot.caption)}</figcaption></figure>"
    )


def _notes(notes: Sequence[str]) -> str:
    return "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)


def trial_yaml(spec: SweepSpec, row: Mapping[str, Any]) -> str:
    """The EasyEdit DEFER YAML `defer-sweep export` writes for this trial."""
    return dump_hparams(hparams_for(spec, row))


def _table(data: SweepData) -> str:
    spec = data.spec
    rows, front_ids = top_trials(data)
    scorings = scorings_with_data(data)
    metric_cols = [f"{m}_{s}" for s in scorings for m in ("rel", "gen", "loc")]
    searched = list(spec.search_space.searched()) or ["layer", "edit_lr", "n_iter", "threshold"]
    head = ["rank", "trial", *(["Pareto"] if spec.multi_objective else []), "layer", "edit_lr", "n_iter", "threshold", *metric_cols, "seconds", "EasyEdit YAML"]
    out = ['<table class="trials" id="top-trials"><thead><tr>' + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    best_id = data.best["trial_id"] if data.best else None
    for rank, row in enumerate(rows, 1):
        is_best = row["trial_id"] == best_id
        trial = f"{plots.trial_label(row)} <code>{html.escape(row['trial_id'])}</code>" + (' <span class="badge">best.yaml</span>' if is_best else "")
        cells = [f"<td>{rank}</td>", f'<td class="text">{trial}</td>']
        if spec.multi_objective:
            cells.append(f"<td>{'★' if row['trial_id'] in front_ids else ''}</td>")
        cells.append(f"<td>{row['layer']}</td><td>{row['edit_lr']:.3g}</td><td>{row['n_iter']}</td><td>{row['threshold']:.3f}</td>")
        cells.extend(f"<td>{_fmt(row.get(c))}</td>" for c in metric_cols)
        cells.append(f"<td>{_fmt(row.get('seconds'), 1)}</td>")
        yaml_text = html.escape(trial_yaml(spec, row))
        cells.append(f'<td class="text"><details{" open" if is_best else ""}><summary>YAML</summary><pre class="yaml">{yaml_text}</pre></details></td>')
        klass = "trial best" if is_best else "trial"
        out.append(f'<tr class="{klass}" data-trial-id="{html.escape(row["trial_id"])}">' + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    if not rows:
        out = ['<p class="note" id="no-trials">No trial has completed all edits yet: there is nothing to rank or export.</p>']
    searched_note = f"Searched: {', '.join(searched)}. " if spec.search_space.searched() else ""
    ranking = "the spec's Pareto front first (★), then by " if spec.multi_objective else "by "
    intro = f"<p>{searched_note}Completed trials ranked {ranking}{html.escape(spec.objectives[0].metric)}; metrics at T={spec.T}. The YAML is what <code>defer-sweep export</code> writes for that trial.</p>"
    return intro + "".join(out)


def _failed(data: SweepData) -> str:
    failed = [t for t in data.trials if t["status"] == Status.FAILED]
    if not failed:
        return ""
    items = "".join(f"<li>{plots.trial_label(t)} <code>{html.escape(t['trial_id'])}</code> {html.escape(describe_config(t))}: {html.escape(t.get('error') or 'no error text')}</li>" for t in failed)
    return f'<h2 id="failed">Failed trials</h2><ul class="failed">{items}</ul>'


def render_html(data: SweepData, plot_list: Sequence[Plot], importance: Importance, notes: Sequence[str]) -> str:
    spec, state, counts = data.spec, data.state, data.counts()
    by_section: dict[str, list[Plot]] = defaultdict(list)
    for plot in plot_list:
        by_section[plot.section].append(plot)
    best = data.choice
    if best is not None:
        best_text = f"{plots.trial_label(best.row)} <code>{html.escape(best.row['trial_id'])}</code> {html.escape(describe_config(best.row))} — {html.escape(best.reason)}"
    else:
        best_text = "none (no trial completed all edits)"
    meta = [
        ("model", f"{spec.model.name} ({spec.model.dtype}, {spec.model.device or 'auto'})"),
        ("edits", f"T={spec.T}, milestones {', '.join(map(str, spec.milestones))}, protocol {spec.protocol}, scorings {', '.join(spec.scorings)}"),
        ("objectives", ", ".join(f"{o.direction} {o.metric}" for o in spec.objectives)),
        ("trials", f"{len(data.trials)} of {spec.num_trials}: {counts[Status.COMPLETE]} complete, {counts[Status.PRUNED]} pruned, {counts[Status.FAILED]} failed" + (f", {counts[Status.RUNNING]} unfinished" if counts[Status.RUNNING] else "")),
        ("best", best_text),
        ("sweep", f"id {state.sweep_id}; MLflow {state.mlflow_tracking_uri} (experiment '{state.mlflow_experiment}'); Optuna study '{state.optuna_study_name}'"),
        ("output", str(data.layout.root)),
        ("Parquet dataset", str(data.layout.parquet)),
    ]
    meta_rows = "".join(f"<tr><td><b>{html.escape(k)}</b></td><td>{v if k == 'best' else html.escape(v)}</td></tr>" for k, v in meta)
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections = [
        ("pareto", "Pareto front: Rel vs Loc", "Completed trials at T. A point on the front cannot gain Rel without losing Loc.", []),
        ("curves", "Rel / Gen / Loc vs number of edits", "How each trial degrades (or not) as edits accumulate.", []),
        ("importance", "Hyperparameter importance", "Optuna's importance evaluators on the sweep's study.", importance.notes),
        ("params", "Hyperparameters vs objective", "Where in the search space the good trials are.", []),
    ]
    body = [f"<h1>defer-sweep report: {html.escape(spec.name)}</h1>", f'<p class="meta">generated {generated}</p>', f'<table class="meta">{meta_rows}</table>', _notes(notes)]
    for key, title, intro, section_notes in sections:
        body.append(f'<h2 id="{key}">{html.escape(title)}</h2><p>{html.escape(intro)}</p>')
        body.append(_notes(section_notes))
        body.extend(_img(p) for p in by_section.get(key, []))
        if not by_section.get(key) and not section_notes:
            body.append(_notes(["Nothing to plot yet: no trial has reported these values."]))
    body.append('<h2 id="top">Top trials</h2>')
    body.append(_table(data))
    body.append(_failed(data))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>defer-sweep report: {html.escape(spec.name)}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


# -- files and MLflow -------------------------------------------------------------------------------


def _best_yaml_notes(data: SweepData) -> list[str]:
    if data.choice is None or not data.layout.best_yaml.is_file():
        return []
    if data.layout.best_yaml.read_text(encoding="utf-8") != dump_hparams(data.choice.hparams):
        return [f"{data.layout.best_yaml} holds a different configuration than the best trial shown here (it was exported with --objective or --pareto-index)."]
    return []


def log_report_to_mlflow(state: SweepState, report_dir: Path) -> str | None:
    """Logs the report's files under `report/` of the sweep's parent run (found by the tags
    the MLflow sink gives it); returns the run id, or None when it could not be logged (the
    files on disk are the report either way)."""
    sink = MlflowSink(state.mlflow_tracking_uri, state.mlflow_experiment, state.sweep_id)
    try:
        parent = sink.find_parent()
        if parent is None:
            log.warning("report: no MLflow parent run for sweep %s in %s; not logged", state.sweep_id, state.mlflow_tracking_uri)
            return None
        sink.client.log_artifacts(parent, str(report_dir), MLFLOW_ARTIFACT_PATH)
    except Exception as error:  # an unreachable tracking server must not lose the report
        log.warning("report: could not log to MLflow (%s): %s", state.mlflow_tracking_uri, error)
        return None
    return parent


def _is_report_png(name: str) -> bool:
    return name.endswith(".png") and (name == "importance.png" or name.startswith(("pareto_", "curves_", "params_")))


@dataclass(frozen=True)
class WrittenReport:
    page: Path  # report.html
    plots: list[str]  # PNG file names beside it
    mlflow_run_id: str | None  # the parent run it was logged to, if any


def write_report(out_dir: str | os.PathLike[str], report_dir: str | os.PathLike[str] | None = None, *, log_to_mlflow: bool = True) -> Path:
    """Write OUT/report/report.html and its PNGs (atomically, file by file) and log them to
    the sweep's MLflow parent run. Returns the HTML file's path. Safe to call while a sweep is
    still running (it shows what has finished) and at the end of `defer-sweep run`."""
    return write_report_files(out_dir, report_dir, log_to_mlflow=log_to_mlflow).page


def write_report_files(out_dir: str | os.PathLike[str], report_dir: str | os.PathLike[str] | None = None, *, log_to_mlflow: bool = True) -> WrittenReport:
    layout = require_sweep_dir(out_dir)
    data = load_sweep(layout)
    target = Path(report_dir).expanduser().resolve() if report_dir is not None else layout.root / REPORT_DIR
    target.mkdir(parents=True, exist_ok=True)
    importance = param_importances(load_study(data.state), data.spec.objectives, list(data.spec.search_space.searched()))
    plot_list = build_plots(data, importance)
    written = set()
    for plot in plot_list:
        atomic_write_bytes(target / f"{plot.name}.png", plot.png)
        written.add(f"{plot.name}.png")
    for stale in target.glob("*.png"):  # a plot an earlier report had and this one has not
        if _is_report_png(stale.name) and stale.name not in written:
            stale.unlink()
    page = target / HTML_NAME
    atomic_write_text(page, render_html(data, plot_list, importance, _best_yaml_notes(data)))
    log.info("report: wrote %s (%d plots)", page, len(plot_list))
    run_id = log_report_to_mlflow(data.state, target) if log_to_mlflow else None
    if run_id:
        log.info("report: logged to MLflow run %s under %s/", run_id, MLFLOW_ARTIFACT_PATH)
    return WrittenReport(page, sorted(written), run_id)
