"""The Ray Tune function trainable: one DEFER continual-editing trial per call.

Workers compute, the driver persists: a trial reports its milestone metrics and the edit
outcomes since the previous milestone through `tune.report`, and never writes MLflow or
Parquet itself. The loaded model is cached at module level, so a worker process that Tune
reuses for later trials (reuse_actors) loads it once; each trial only attaches a fresh
adaptor (run_trial does that and detaches it again, also when the scheduler stops the trial).

Every milestone report carries the milestone's gate rows (any threshold's tf metrics follow
from them). In curve mode a trial is planned without an evaluation at its own threshold
(threshold_scores=False), with the generation grid, and reports its curve's points, its grid,
and at the top level its best point's metrics and threshold (results/curve_points.py). A trial
whose config names REUSE_OF trains nothing: it replays the reports the searcher copied from
the training it reuses (search/reuse.py), without loading a model.

Every milestone report carries its per-record scores (RECORDS_KEY) and the seed and edit
order it ran with. With repeats (spec `repeats`, more than one member) a trial runs every
(seed, order) member of one config: the seeds of one order packed in one run_trials call (same
hparams, one seed each), the orders one after another, each on its own ordering of the records
(defer_core.orders). A milestone is reported once every member has reached it: its top-level
metrics are the mean over members (what the scheduler and the searcher read), REPEATS_KEY holds
each member's metrics, edits, gate rows and records, and the top-level edits and gates are empty.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass
from statistics import fmean
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ray import tune

from defer_core.data import EditRecord
from defer_core.orders import ordered_records
from defer_core.results import METRICS, EditOutcome, MilestoneResult, RecordScores, metric_key

from ..protocol import (
    EDITS_KEY, EVAL_SECONDS, GATES_KEY, GRID_KEY, MODEL_LOAD_SECONDS, N_EDITS, NODE_ID, OPTUNA_TRIAL, ORDER, POINTS_KEY, RECORDS_KEY, REPEATS_KEY, REPLAY_KEY, REUSE_OF, SEED, THRESHOLD, WORKER_PID,
)
from ..results.rows import RecordedTrial, Status
from ..results.curve_points import MilestoneCurve, best_point, curve_points, gate_dicts, generation_grid, grid_dicts, point_metrics, with_mean_metrics
from ..results.packing import is_pack, member_configs, pack_report
from ..spec.trial_config import hparams_for
from ..spec import SweepSpec
from .live import EditReporter

if TYPE_CHECKING:  # torch and transformers load in the worker, not in the driver that imports this module
    from defer_core.editors import EditorHParams
    from defer_core.models import LoadedModel
    from defer_core.plan import TrialPlan

log = logging.getLogger(__name__)


_MODEL_CACHE: dict[tuple[str, str, str | None], LoadedModel] = {}


class RecordedTrialFailure(RuntimeError):
    """Replays the failure of a trial that failed before the driver was killed."""


@dataclass(frozen=True)
class TrialSettings:
    """Everything a worker needs besides the proposed config; records travel with it, so
    workers on other nodes need no data files."""

    spec: SweepSpec
    records: tuple[EditRecord, ...]
    recorded: Mapping[str, RecordedTrial] = dataclasses.field(default_factory=dict)
    progress_board: str | None = None  # the driver's live-progress board (worker/live.py); None: off


def cached_model(name: str, dtype: str, device: str | None) -> tuple[LoadedModel, float]:
    """One model per worker process; a different spec's model replaces it. Returns the model
    and the seconds spent loading it now (0.0 when it was cached)."""
    from defer_core.models import load_model

    key = (name, dtype, device)
    if key in _MODEL_CACHE:
        return _MODEL_CACHE[key], 0.0
    _MODEL_CACHE.clear()
    log.info("loading model %s (dtype=%s, device=%s) in worker %d", name, dtype, device or "auto", os.getpid())
    start = time.perf_counter()
    _MODEL_CACHE[key] = load_model(name, dtype=dtype, device=device)
    return _MODEL_CACHE[key], time.perf_counter() - start


def record_dicts(records: Sequence[RecordScores], scorings: tuple[str, ...]) -> list[dict[str, Any]]:
    """A milestone's per-record scores as a report carries them (RECORDS_KEY), with each
    record's mean_* (their mean over records is the milestone's mean_*)."""
    return [{"record_id": str(r.record_id), "chunk": int(r.chunk), **with_mean_metrics(r.metrics, scorings)} for r in records]


def member_report(milestone: MilestoneResult, edits: list[EditOutcome], scorings: tuple[str, ...], seed: int, order: int) -> dict[str, Any]:
    """What one (seed, order) run measured at a milestone: metrics, edits, gate rows, records."""
    return {
        **with_mean_metrics(milestone.metrics, scorings),
        SEED: int(seed),
        ORDER: int(order),
        EVAL_SECONDS: float(milestone.seconds),
        EDITS_KEY: [dataclasses.asdict(e) for e in edits],
        GATES_KEY: gate_dicts(milestone.gates),
        RECORDS_KEY: record_dicts(milestone.records, scorings),
    }


def _worker_keys(load_seconds: float) -> dict[str, Any]:
    return {WORKER_PID: os.getpid(), NODE_ID: _node_id(), MODEL_LOAD_SECONDS: load_seconds}


def milestone_report(milestone: MilestoneResult, edits: list[EditOutcome], scorings: tuple[str, ...], load_seconds: float, seed: int = 0, order: int = 0) -> dict[str, Any]:
    """A sampled-threshold milestone of one run: the metrics at the trial's threshold, the
    gate rows and the records."""
    return {**member_report(milestone, edits, scorings, seed, order), N_EDITS: int(milestone.n_edits), **_worker_keys(load_seconds)}


def repeats_report(n_edits: int, members: Sequence[Mapping[str, Any]], scorings: tuple[str, ...], load_seconds: float) -> dict[str, Any]:
    """A milestone every repeat member has reached: each metric's mean over the members at the
    top level (mean_* from the mean rel/gen/loc), the members themselves under REPEATS_KEY."""
    keys = [metric_key(metric, scoring) for scoring in scorings for metric in METRICS]
    means = {key: fmean(float(member[key]) for member in members) for key in keys if all(member.get(key) is not None for member in members)}
    return {
        **with_mean_metrics(means, scorings),
        N_EDITS: int(n_edits),
        EVAL_SECONDS: math.fsum(float(member[EVAL_SECONDS]) for member in members),
        EDITS_KEY: [],
        GATES_KEY: [],
        REPEATS_KEY: [dict(member) for member in members],
        **_worker_keys(load_seconds),
    }


def curve_report(spec: SweepSpec, milestone: MilestoneResult, edits: list[EditOutcome], load_seconds: float, earlier: list[MilestoneCurve], seed: int = 0) -> dict[str, Any]:
    """A curve-mode milestone: its points (with their history over `earlier` milestones), its
    grid, and at the top level its best point's metrics and threshold."""
    curve = MilestoneCurve.of(milestone)
    points = curve_points(curve, spec, earlier)
    best = best_point(points, spec)
    report = milestone_report(milestone, edits, spec.scorings, load_seconds, seed)
    report.update({GRID_KEY: grid_dicts(curve.grid), POINTS_KEY: points})
    if best is not None:
        report.update({**point_metrics(best), THRESHOLD: best[THRESHOLD]})
    return report


def training_plan(spec: SweepSpec) -> TrialPlan:
    """Curve mode reads metrics from the gate rows and the grid, not at the adaptor's own
    threshold (DEFER's only, so no GRACE key there). The thread count is the spec's
    (resources_per_trial.threads), set by run_trials."""
    from defer_core.plan import TrialPlan

    threads = spec.resources_per_trial.threads
    if not spec.curve_mode:
        return TrialPlan(protocol=spec.protocol, milestones=spec.milestones, scorings=spec.scorings, threads=threads, grace_key=spec.grace_key)
    return TrialPlan(protocol=spec.protocol, milestones=spec.milestones, scorings=spec.scorings, threshold_grid=generation_grid(spec), threshold_scores=False,
                     threads=threads)


def _node_id() -> str | None:
    """The Ray node the trial runs on (which machine of a cluster did the work)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def replay(recorded: RecordedTrial) -> None:
    """Tell Tune the recorded outcome: the last milestone again (so the scheduler and the
    searcher see where it ended), or the recorded failure."""
    if recorded.last_report is not None:
        tune.report({**recorded.last_report, EDITS_KEY: []})
    if recorded.status == Status.FAILED:
        raise RecordedTrialFailure(recorded.error or "failed before the sweep was resumed")


def replay_reuse(config: Mapping[str, Any]) -> None:
    """A reuse trial: the reports of the training it reuses, each milestone again (the
    scheduler may stop it where it stopped the original, or earlier), from this worker, with
    no edits, gate rows or load time of its own."""
    for report in config[REPLAY_KEY]:
        own = {EDITS_KEY: [], GATES_KEY: [], REUSE_OF: config[REUSE_OF], EVAL_SECONDS: 0.0, WORKER_PID: os.getpid(), NODE_ID: _node_id(), MODEL_LOAD_SECONDS: 0.0}
        tune.report({**report, **own})


def total_edits(plan: TrialPlan) -> int:
    """Edits a trial makes: T for stream; for chunks, every whole chunk of every size."""
    if plan.protocol == "chunks":
        return sum(plan.total_records // size * size for size in plan.milestones)
    return plan.total_records


def run_on_worker(
    loaded: LoadedModel,
    records: Sequence[EditRecord],
    hparams: Sequence[EditorHParams],
    plan: TrialPlan,
    seeds: Sequence[int],
    on_edit: Callable[[int, EditOutcome], None],
    on_milestone: Callable[[int, MilestoneResult], None],
) -> None:
    """defer_core's run_trials with the unedited-scores cache kept per node, so every trial of
    the sweep on this machine shares it; imported here so the driver never loads torch."""
    from defer_core.runtime import cache_dir
    from defer_core.trial import run_trials

    run_trials(loaded, records, hparams, plan, seeds=seeds, on_edit=on_edit, on_milestone=on_milestone, cache_dir=cache_dir() / "unedited")


def _seeds_by_order(members: Sequence[tuple[int, int]]) -> list[tuple[int, list[int]]]:
    """The repeat members grouped by edit order (each group runs packed), orders ascending."""
    grouped: dict[int, list[int]] = {}
    for seed, order in members:
        grouped.setdefault(order, []).append(seed)
    return sorted(grouped.items())


def defer_trainable(config: dict[str, Any], settings: TrialSettings) -> None:
    """Runs one trial, or one pack of trials; `tune.report` after each milestone is where the
    scheduler may stop it. Edit counts go to the driver's board, never through tune.report
    (an extra result would move the scheduler's and the searcher's clocks)."""
    trial_id = tune.get_context().get_trial_id()
    recorded = settings.recorded.get(trial_id)
    if recorded is not None:
        replay(recorded)
        return
    if config.get(REUSE_OF) is not None:
        replay_reuse(config)
        return
    spec = settings.spec
    loaded, load_seconds = cached_model(spec.model.name, spec.model.dtype, spec.model.device)
    if len(spec.repeat_members) > 1:
        run_repeats(config, settings, trial_id, loaded, load_seconds)
        return
    ((seed, order),) = spec.repeat_members
    members = member_configs(config)
    plan = training_plan(spec)
    pending: list[list[EditOutcome]] = [[] for _ in members]
    earlier: list[list[MilestoneCurve]] = [[] for _ in members]  # curve mode: each member's milestones so far
    reports: list[dict[str, Any]] = []
    live = EditReporter(settings.progress_board, trial_id, [m.get(OPTUNA_TRIAL) for m in members], total_edits(plan))

    def on_edit(k: int, outcome: EditOutcome) -> None:
        pending[k].append(outcome)
        live.edit(k, outcome.index, outcome.seconds)

    def on_milestone(k: int, milestone: MilestoneResult) -> None:
        if spec.curve_mode:
            reports.append(curve_report(spec, milestone, pending[k], load_seconds, earlier[k], seed))
            earlier[k].append(MilestoneCurve.of(milestone))
        else:
            reports.append(milestone_report(milestone, pending[k], spec.scorings, load_seconds, seed, order))
        pending[k] = []
        if len(reports) < len(members):
            return  # run_trials calls back member by member; the pack reports once all are in
        report = reports[0] if not is_pack(config) else pack_report(spec, reports, _shared_keys(reports[0]))
        reports.clear()
        tune.report(report)

    run_on_worker(
        loaded,
        ordered_records(settings.records, order, spec.T),
        [hparams_for(spec, member) for member in members],
        plan,
        seeds=[seed] * len(members),  # each member seeded as if it ran alone: same results
        on_edit=on_edit,
        on_milestone=on_milestone,
    )


def run_repeats(config: Mapping[str, Any], settings: TrialSettings, trial_id: str, loaded: LoadedModel, load_seconds: float) -> None:
    """One config, every repeat member: per edit order one packed run_trials call over the
    seeds (the packed path feeds one record stream to all its rows, so orders cannot share a
    call), orders one after another; `tune.report` once all members reached a milestone."""
    spec = settings.spec
    plan = training_plan(spec)
    members = spec.repeat_members
    hparams = hparams_for(spec, config)
    per_order = total_edits(plan)
    live = EditReporter(settings.progress_board, trial_id, [config.get(OPTUNA_TRIAL)], per_order * spec.repeats.orders)
    reached: dict[int, dict[tuple[int, int], dict[str, Any]]] = {}  # n_edits -> member -> its report
    for position, (order, seeds) in enumerate(_seeds_by_order(members)):
        pending: list[list[EditOutcome]] = [[] for _ in seeds]

        def on_edit(k: int, outcome: EditOutcome) -> None:
            pending[k].append(outcome)
            live.edit(0, position * per_order + outcome.index, outcome.seconds)

        def on_milestone(k: int, milestone: MilestoneResult) -> None:
            at = reached.setdefault(int(milestone.n_edits), {})
            at[(seeds[k], order)] = member_report(milestone, pending[k], spec.scorings, seeds[k], order)
            pending[k] = []
            if len(at) == len(members):
                tune.report(repeats_report(milestone.n_edits, [at[member] for member in members], spec.scorings, load_seconds))
                del reached[int(milestone.n_edits)]

        run_on_worker(
            loaded,
            ordered_records(settings.records, order, spec.T),
            [hparams] * len(seeds),
            plan,
            seeds=seeds,
            on_edit=on_edit,
            on_milestone=on_milestone,
        )


def _shared_keys(report: Mapping[str, Any]) -> dict[str, Any]:
    return {key: report[key] for key in (N_EDITS, WORKER_PID, NODE_ID, MODEL_LOAD_SECONDS) if key in report}
