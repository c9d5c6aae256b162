"""The Ray Tune function trainable: one DEFER continual-editing trial per call.

Workers compute, the driver persists: a trial reports its milestone metrics and the edit
outcomes since the previous milestone through `tune.report`, and never writes MLflow or
Parquet itself. The loaded model is cached at module level, so a worker process that Tune
reuses for later trials (reuse_actors) loads it once; each trial only attaches a fresh
adaptor (run_trial does that and detaches it again, also when the scheduler stops the trial).

Every milestone report carries the milestone's gate rows (any threshold's tf metrics follow
from them). In curve mode a trial is planned without an evaluation at its own threshold
(threshold_scores=False), with the generation grid, and reports its curve's points, its grid,
and at the top level its best point's metrics and threshold (search/curve_points.py). A trial
whose config names REUSE_OF trains nothing: it replays the reports the searcher copied from
the training it reuses (search/optuna_search.py), without loading a model.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Mapping

from ray import tune

from defer_core.data import EditRecord
from defer_core.models import LoadedModel, cache_dir, load_model
from defer_core.results import EditOutcome, MilestoneResult
from defer_core.trial import TrialPlan, run_trials

from ..protocol import (
    EDITS_KEY, EVAL_SECONDS, GATES_KEY, GRID_KEY, MODEL_LOAD_SECONDS, N_EDITS, NODE_ID, OPTUNA_TRIAL, POINTS_KEY, REPLAY_KEY, REUSE_OF, THRESHOLD,
    WORKER_PID, RecordedTrial, Status,
)
from ..search.curve_points import MilestoneCurve, best_point, curve_points, gate_dicts, generation_grid, grid_dicts, point_metrics, with_mean_metrics
from ..search.packing import is_pack, member_configs, pack_report
from ..search.space import hparams_for
from ..spec import SweepSpec
from .live import EditReporter

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
    key = (name, dtype, device)
    if key in _MODEL_CACHE:
        return _MODEL_CACHE[key], 0.0
    _MODEL_CACHE.clear()
    log.info("loading model %s (dtype=%s, device=%s) in worker %d", name, dtype, device or "auto", os.getpid())
    start = time.perf_counter()
    _MODEL_CACHE[key] = load_model(name, dtype=dtype, device=device)
    return _MODEL_CACHE[key], time.perf_counter() - start


def milestone_report(milestone: MilestoneResult, edits: list[EditOutcome], scorings: tuple[str, ...], load_seconds: float) -> dict[str, Any]:
    """A sampled-threshold milestone: the metrics at the trial's threshold, and the gate rows."""
    return {
        **with_mean_metrics(milestone.metrics, scorings),
        N_EDITS: int(milestone.n_edits),
        EVAL_SECONDS: float(milestone.seconds),
        EDITS_KEY: [dataclasses.asdict(e) for e in edits],
        GATES_KEY: gate_dicts(milestone.gates),
        WORKER_PID: os.getpid(),
        NODE_ID: _node_id(),
        MODEL_LOAD_SECONDS: load_seconds,
    }


def curve_report(spec: SweepSpec, milestone: MilestoneResult, edits: list[EditOutcome], load_seconds: float, earlier: list[MilestoneCurve]) -> dict[str, Any]:
    """A curve-mode milestone: its points (with their history over `earlier` milestones), its
    grid, and at the top level its best point's metrics and threshold."""
    curve = MilestoneCurve.of(milestone)
    points = curve_points(curve, spec, earlier)
    best = best_point(points, spec)
    report = milestone_report(milestone, edits, spec.scorings, load_seconds)
    report.update({GRID_KEY: grid_dicts(curve.grid), POINTS_KEY: points})
    if best is not None:
        report.update({**point_metrics(best), THRESHOLD: best[THRESHOLD]})
    return report


def training_plan(spec: SweepSpec) -> TrialPlan:
    """Curve mode reads metrics from the gate rows and the grid, not at the adaptor's own threshold."""
    if not spec.curve_mode:
        return TrialPlan(protocol=spec.protocol, milestones=spec.milestones, scorings=spec.scorings)
    return TrialPlan(protocol=spec.protocol, milestones=spec.milestones, scorings=spec.scorings, threshold_grid=generation_grid(spec), threshold_scores=False)


def _node_id() -> str | None:
    """The Ray node the trial runs on (which machine of a cluster did the work)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def _set_threads(cpus: float) -> None:
    import torch

    threads = max(1, int(cpus))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


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
    _set_threads(spec.resources_per_trial.cpu)
    loaded, load_seconds = cached_model(spec.model.name, spec.model.dtype, spec.model.device)
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
            reports.append(curve_report(spec, milestone, pending[k], load_seconds, earlier[k]))
            earlier[k].append(MilestoneCurve.of(milestone))
        else:
            reports.append(milestone_report(milestone, pending[k], spec.scorings, load_seconds))
        pending[k] = []
        if len(reports) < len(members):
            return  # run_trials calls back member by member; the pack reports once all are in
        report = reports[0] if not is_pack(config) else pack_report(spec, reports, _shared_keys(reports[0]))
        reports.clear()
        tune.report(report)

    run_trials(
        loaded,
        settings.records,
        [hparams_for(spec, member) for member in members],
        plan,
        seeds=[spec.seed] * len(members),  # each member seeded as if it ran alone: same results
        on_edit=on_edit,
        on_milestone=on_milestone,
        cache_dir=cache_dir() / "unedited",  # per node: every trial of the sweep on this machine shares it
    )


def _shared_keys(report: Mapping[str, Any]) -> dict[str, Any]:
    return {key: report[key] for key in (N_EDITS, WORKER_PID, NODE_ID, MODEL_LOAD_SECONDS) if key in report}
