"""What a report shows, read from the sweep's output directory: trials, milestones, the spec,
sweep.json and the best trial, plus the orderings the plots and the page share.

The best trial is results/best.py's default choice (the one `best.yaml` holds after a
run: confirmed results first), made from the same read of the tables as the rest of the page;
ranking and the Pareto front come from results/ranking.py over results.candidates (complete trials; in
curve mode the points of their curves at T), with the spec's constraints, and the YAML from
space.hparams_for and defer_core's dump_hparams, so the page and `defer-sweep export` always
agree (in curve mode with the threshold export writes, off the knife edge: best.with_margin,
from the gate rows at T). A candidate is named by `row_key` (its trial and threshold): in curve
mode one trial gives many.

Error bars come from table.row_spread, as `defer-sweep table` computes them: a Student t
interval over a trial's repeat members when it has several, else a bootstrap over the records
scored at the milestone. `spreads` holds them for every candidate at T (the Pareto plot's error
bars) and at every milestone for the `band_trials` (the edit curves with bands).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from defer_core.errors import DeferInputError
from defer_core.results import metric_key

from ..export import yaml_text
from ..intervals import T_INTERVAL, Interval
from ..protocol import N_EDITS, THRESHOLD
from ..results import query
from ..results.best import BEST_TABLES, ChosenTrial, choose_best, chosen_as_is, with_margin
from ..results.candidates import candidates, training_of
from ..results.curve import gate_rows
from ..results.ranking import pareto_front, rank_by
from ..results.rows import GATES, GRID, MILESTONES, POINTS, TRIAL_ID
from ..results.stages import load_plan, search_stage
from ..sinks.layout import SweepLayout, SweepState, load_state, read_spec
from ..spec import Objective, SweepSpec
from ..table import row_spread, stored_rows

log = logging.getLogger(__name__)

TOP_TRIALS = 10
TOP_TRAININGS = 5  # trainings whose threshold curves the report draws
BAND_TRIALS = 5  # trials whose edit curves the report draws with interval bands
SPREAD_KIND = T_INTERVAL  # t over repeat members; a trial with one member falls back to the bootstrap over records

Row = Mapping[str, Any]


def row_key(row: Row) -> tuple[str, float | None]:
    """A candidate's identity: its trial and threshold (a curve-mode trial has many points)."""
    return (str(row[TRIAL_ID]), row.get(THRESHOLD))


@dataclass
class SweepData:
    """One sweep as the report sees it; trials in `trial_order_key` order, milestones by n_edits."""

    layout: SweepLayout
    spec: SweepSpec
    state: SweepState
    trials: list[dict[str, Any]]
    milestones: dict[str, list[dict[str, Any]]]
    choice: ChosenTrial | None
    points: list[dict[str, Any]] = field(default_factory=list)  # the points table (curve mode)
    gates: list[dict[str, Any]] = field(default_factory=list)  # gate rows at T
    grid: list[dict[str, Any]] = field(default_factory=list)  # gen grid rows at T
    band_trials: list[dict[str, Any]] = field(default_factory=list)  # trials drawn with interval bands, best first
    spreads: dict[str, dict[str, dict[int, Interval]]] = field(default_factory=dict)  # trial id -> metric -> n_edits -> interval
    _gates_by_training: dict[str, tuple[Any, ...]] | None = field(default=None, repr=False)

    @property
    def completed(self) -> list[dict[str, Any]]:
        return query.complete(self.trials)

    @property
    def candidates(self) -> list[dict[str, Any]]:
        """What ranks (results.candidates): the search stage's complete trials, or in curve mode
        their points at T; confirm runs re-check these configurations and never rank beside them."""
        return candidates(self.spec, search_stage(self.completed), self.points)

    @property
    def best(self) -> dict[str, Any] | None:
        return self.choice.row if self.choice is not None else None

    @property
    def exported_best(self) -> dict[str, Any] | None:
        """The best row at the threshold best.yaml holds (in curve mode off the knife edge; the
        same metrics): where the plots star it."""
        if self.choice is None:
            return None
        return {**self.choice.row, THRESHOLD: getattr(self.choice.hparams, THRESHOLD, None)}  # DEFER's; GRACE and WISE have none

    def gates_of(self, row: Row) -> tuple[Any, ...]:
        """The gate rows at T of the training behind a candidate (a reuse's: its original's)."""
        if self._gates_by_training is None:
            grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for gate in self.gates:
                grouped[str(gate[TRIAL_ID])].append(gate)
            self._gates_by_training = {trial_id: gate_rows(found) for trial_id, found in grouped.items()}
        return self._gates_by_training.get(training_of(row), ())

    def counts(self) -> dict[str, int]:
        return query.count_by_status(self.trials)


def load_sweep(layout: SweepLayout) -> SweepData:
    """Everything the report needs, read once; a missing best trial is a warning, not an error,
    so a report of a sweep still running shows what has finished."""
    spec = read_spec(layout)
    state = load_state(layout)
    if state is None:  # require_sweep_dir checked the file exists
        raise DeferInputError(f"{layout.state}: missing")
    found = query.read(layout, (*BEST_TABLES, MILESTONES, GRID), skip_unreadable=True)  # a damaged file: that trial is left out, with a warning
    milestones = _milestones_by_trial(found.rows(MILESTONES))
    at_t = {table: found.rows(table, n_edits=spec.T) for table in (GATES, GRID)}
    data = SweepData(layout, spec, state, found.trials(), milestones, None, found.rows(POINTS), at_t[GATES], at_t[GRID])
    data.choice = _choose_best(found, layout, spec) if data.candidates else None
    if not spec.curve_mode:  # a curve-mode point's threshold is not the one its stored rows were scored at
        data.band_trials = band_trials(data)
        data.spreads = _spreads(data)
    return data


def band_trials(data: SweepData, limit: int = BAND_TRIALS) -> list[dict[str, Any]]:
    """The trials `defer-sweep table` shows by default: the confirm-stage trials when a confirm
    stage ran, else the top candidates (the spec's Pareto front first), best first."""
    from ..protocol import STAGE, STAGE_CONFIRM

    confirmed = [t for t in data.completed if t.get(STAGE) == STAGE_CONFIRM]
    if confirmed:
        return confirmed[:limit]
    ranked, _ = top_trials(data, limit)
    by_id = {t[TRIAL_ID]: t for t in data.trials}
    return [by_id[r[TRIAL_ID]] for r in ranked[:limit] if r[TRIAL_ID] in by_id]


def _spreads(data: SweepData) -> dict[str, dict[str, dict[int, Interval]]]:
    """Intervals of every metric: at T for the candidates, at every milestone for the band trials."""
    keys = [metric_key(m, s) for s in data.spec.scorings for m in ("rel", "gen", "loc")]
    at_t = stored_rows(data.layout.parquet, data.completed, data.spec.T)
    banded = stored_rows(data.layout.parquet, data.band_trials)
    spreads: dict[str, dict[str, dict[int, Interval]]] = {}
    for trial in data.completed:
        found = banded.get(trial[TRIAL_ID]) or at_t[trial[TRIAL_ID]]
        spreads[trial[TRIAL_ID]] = {key: row_spread(trial, found, key, SPREAD_KIND) for key in keys}
    return spreads


def _milestones_by_trial(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by_trial: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_trial[row[TRIAL_ID]].append(row)
    for trial_rows in by_trial.values():
        trial_rows.sort(key=lambda r: r[N_EDITS])
    return dict(by_trial)


def _choose_best(found: query.Tables, layout: SweepLayout, spec: SweepSpec) -> ChosenTrial | None:
    """What `defer-sweep export` writes to best.yaml (confirmed results first), from the page's read."""
    try:
        return choose_best(found, load_plan(layout), spec)
    except DeferInputError as error:  # e.g. the objective's scoring was not run, or nothing is feasible
        log.warning("report: no best trial: %s", error)
        return None


def scorings_with_data(data: SweepData) -> list[str]:
    """The spec's scorings some trial has values for (plots and columns for the others would be empty)."""
    return [s for s in data.spec.scorings if any(t.get(metric_key("rel", s)) is not None for t in data.trials)]


def rel_loc_front(rows: Sequence[Row], scoring: str, constraints: Sequence[Any] = ()) -> list[Row]:
    """Non-dominated feasible rows on (Rel, Loc) under one scoring, whatever the spec's objectives are."""
    return pareto_front(rows, [Objective(metric_key("rel", scoring), "maximize"), Objective(metric_key("loc", scoring), "maximize")], constraints)


def spec_front_ids(data: SweepData) -> set[str]:
    """Trial ids with a candidate on the spec's own Pareto front; empty for a single objective."""
    if not data.spec.multi_objective:
        return set()
    return {r[TRIAL_ID] for r in pareto_front(data.candidates, data.spec.objectives, data.spec.constraints)}


def top_trials(data: SweepData, limit: int = TOP_TRIALS) -> tuple[list[Row], set[tuple[str, float | None]]]:
    """Candidates best-first: the spec's Pareto front first when it has several objectives
    (front order), then the rest by the first objective (feasible first). Returns (rows, the
    front's row keys)."""
    objectives, constraints, rows = data.spec.objectives, data.spec.constraints, data.candidates
    front = pareto_front(rows, objectives, constraints) if data.spec.multi_objective else []
    front_keys = {row_key(r) for r in front}
    rest = [r for r in rank_by(rows, objectives[0], constraints) if row_key(r) not in front_keys]
    ordered = [*front, *rest]
    return ordered[: max(limit, len(front))], front_keys


def top_trainings(data: SweepData, limit: int = TOP_TRAININGS) -> list[Row]:
    """The trials whose candidates rank best (top_trials' order), one row per trial: its best
    candidate. What the threshold plots draw."""
    seen: dict[str, Row] = {}
    ranked, _ = top_trials(data, limit=len(data.candidates))
    for row in ranked:
        seen.setdefault(str(row[TRIAL_ID]), row)
    return list(seen.values())[:limit]


def trial_yaml(data: SweepData, row: Row) -> str:
    """The EasyEdit YAML `defer-sweep export` writes for this trial (in curve mode at the
    point's threshold off the knife edge, with the comment lines saying so)."""
    spec = data.spec
    chosen = chosen_as_is(spec, dict(row))
    return yaml_text(with_margin(spec, chosen, data.gates_of(row)) if spec.curve_mode else chosen)


def best_yaml_notes(data: SweepData) -> list[str]:
    """A note when best.yaml on disk was exported for another trial than the one the page calls best."""
    if data.choice is None or not data.layout.best_yaml.is_file():
        return []
    if data.layout.best_yaml.read_text(encoding="utf-8") != yaml_text(data.choice):
        return [f"{data.layout.best_yaml} holds a different configuration than the best trial shown here (it was exported with --objective or --pareto-index)."]
    return []
