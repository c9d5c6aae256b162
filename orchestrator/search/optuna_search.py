"""Optuna proposes the hyperparameters: TPE for one objective, NSGA-II for several.

Ray's OptunaSearch tells Optuna COMPLETE with the last reported value whenever a trial ends,
including trials the scheduler stopped at an early milestone. A value at milestone 10 is not
a value at T, so `DeferOptunaSearch` tells those trials PRUNED instead (decided by whether the
last reported `n_edits` reached T), and reports intermediate values with step = n_edits.
With `pack_size` K > 1 (see packing.py) it asks Optuna for K trials per Tune trial, the later
ones with the first one's layer fixed, and tells each its own values.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from ..protocol import MEMBERS, N_EDITS, OPTUNA_TRIAL
from ..spec import SweepSpec
from .packing import is_pack, member_results
from .space import optuna_distributions

log = logging.getLogger(__name__)

TUNE_TRIAL_ATTR = "tune_trial_id"


def default_storage_url(path: str) -> str:
    return f"sqlite:///{path}"


def make_storage(url: str) -> optuna.storages.BaseStorage:
    return optuna.storages.RDBStorage(url=url)


def make_sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    """Few-trial sweeps need a short random start, or TPE never gets to model anything."""
    if spec.multi_objective:
        population = spec.optuna_population_size or max(4, min(50, spec.num_trials // 3))
        return optuna.samplers.NSGAIISampler(population_size=population, seed=spec.seed)
    startup = spec.optuna_startup_trials
    if startup is None:
        startup = max(2, min(10, spec.num_trials // 4))
    return optuna.samplers.TPESampler(n_startup_trials=startup, seed=spec.seed)


class DeferOptunaSearch(OptunaSearch):
    """OptunaSearch that knows T (trials ended before T are PRUNED, not COMPLETE) and packs:
    with pack_size K > 1 each Tune trial gets K Optuna trials on one layer."""

    def __init__(self, *args: Any, total_edits: int, pack_size: int = 1, num_trials: int = 0, **kwargs: Any) -> None:
        self._total_edits = total_edits
        self._reported: set[tuple[int, int]] = set()
        self._pack_size = pack_size
        self._num_trials = num_trials
        self._issued = 0
        self._packs: dict[str, list[optuna.trial.Trial]] = {}
        # Packed, each initial point starts a pack and is enqueued just before that pack's first
        # ask, so no queued point can land in another pack with a different layer.
        points = list(kwargs.pop("points_to_evaluate", None) or [])
        self._pack_starts = points if pack_size > 1 else []
        super().__init__(*args, points_to_evaluate=(points or None) if pack_size == 1 else None, **kwargs)

    def suggest(self, trial_id: str) -> dict | None:
        if self._pack_size > 1:
            return self._suggest_pack(trial_id)
        params = super().suggest(trial_id)
        if params is None:
            return None
        ot_trial = self._ot_trials[trial_id]
        ot_trial.set_user_attr(TUNE_TRIAL_ATTR, trial_id)
        return {**params, OPTUNA_TRIAL: ot_trial.number}

    def _suggest_pack(self, trial_id: str) -> dict | None:
        if trial_id not in self._packs:
            size = min(self._pack_size, self._num_trials - self._issued)
            if size <= 0:
                return None
            if self._pack_starts:
                self._ot_study.enqueue_trial(self._pack_starts.pop(0))
            members = [self._ot_study.ask(fixed_distributions=self._space)]
            members += self._ask_on_layer(members[0].params.get("layer"), size - 1)
            self._issued += size
            for member in members:
                member.set_user_attr(TUNE_TRIAL_ATTR, trial_id)
            self._packs[trial_id] = members
            self._ot_trials[trial_id] = members[0]
        return {MEMBERS: [{**member.params, OPTUNA_TRIAL: member.number} for member in self._packs[trial_id]]}

    def _ask_on_layer(self, layer: int | None, count: int) -> list[optuna.trial.Trial]:
        """`count` more trials whose layer is fixed to the pack's (Optuna's PartialFixedSampler)."""
        sampler = self._ot_study.sampler
        if layer is not None:
            with warnings.catch_warnings():  # "experimental" since Optuna 2.4; its interface is what we use
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._ot_study.sampler = optuna.samplers.PartialFixedSampler({"layer": layer}, sampler)
        try:
            return [self._ot_study.ask(fixed_distributions=self._space) for _ in range(count)]
        finally:
            self._ot_study.sampler = sampler

    def _members(self, trial_id: str, result: dict | None) -> list[tuple[optuna.trial.Trial, dict | None]]:
        """Each Optuna trial behind a Tune trial, with its own part of the result."""
        if trial_id in self._packs:
            reports = member_results(result) if result and is_pack(result) else [None] * len(self._packs[trial_id])
            return list(zip(self._packs[trial_id], reports))
        return [(self._ot_trials[trial_id], result)] if trial_id in self._ot_trials else []

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, list) or trial_id in self._completed_trials:
            return
        for ot_trial, member in self._members(trial_id, result):
            step = member.get(N_EDITS) if member else None
            value = member.get(self.metric) if member else None
            if step is None or value is None or (ot_trial.number, int(step)) in self._reported:
                continue  # a trial re-run after resume reports the same milestones again
            try:
                ot_trial.report(float(value), int(step))
            except optuna.exceptions.UpdateFinishedTrialError:
                log.debug("optuna trial %d of %s already finished (replayed after resume)", ot_trial.number, trial_id)
            self._reported.add((ot_trial.number, int(step)))

    def _values(self, result: dict) -> list[float] | None:
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        values = [result.get(m) for m in metrics]
        return None if any(v is None for v in values) else [float(v) for v in values]

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """COMPLETE with the values at T, PRUNED if the trial stopped before T, FAIL if it
        raised; for a pack, each member with its own values. A trial Optuna already knows as
        finished (replayed after a resume) is left as it is."""
        if trial_id in self._completed_trials:
            return
        if result and not error:
            # Tune withholds the stopping result from on_trial_result: record it as the last
            # intermediate value, which Optuna keeps as a pruned trial's value.
            self.on_trial_result(trial_id, result)
        for ot_trial, member in self._members(trial_id, result):
            self._tell(ot_trial, trial_id, member, error)
        self._completed_trials.add(trial_id)

    def _tell(self, ot_trial: optuna.trial.Trial, trial_id: str, result: dict | None, error: bool) -> None:
        reached = result.get(N_EDITS) if result else None
        values = self._values(result) if result else None
        if error:
            state, values = TrialState.FAIL, None
        elif reached is not None and reached >= self._total_edits and values is not None:
            state = TrialState.COMPLETE
        else:
            state, values = TrialState.PRUNED, None
        try:
            self._ot_study.tell(ot_trial, values, state=state, skip_if_finished=True)
        except ValueError as exc:  # e.g. a NaN objective
            log.warning("optuna: trial %d of %s cannot be told %s (%s); marking it FAIL", ot_trial.number, trial_id, state.name, exc)
            self._ot_study.tell(ot_trial, state=TrialState.FAIL, skip_if_finished=True)


def make_searcher(spec: SweepSpec, storage_url: str, study_name: str) -> DeferOptunaSearch:
    """The study lives in RDB storage; the spec's initial points are enqueued first."""
    metrics = [o.metric for o in spec.objectives]
    modes = [o.mode for o in spec.objectives]
    return DeferOptunaSearch(
        optuna_distributions(spec),
        metric=metrics if spec.multi_objective else metrics[0],
        mode=modes if spec.multi_objective else modes[0],
        points_to_evaluate=[dict(p) for p in spec.initial_points] or None,
        sampler=make_sampler(spec),
        study_name=study_name,
        storage=make_storage(storage_url),
        total_edits=spec.T,
        pack_size=spec.pack_size,
        num_trials=spec.num_trials,
    )


def fail_orphaned_trials(storage_url: str, study_name: str) -> int:
    """Trials Optuna still shows RUNNING after the sweep ended were lost with a killed driver."""
    try:
        study = optuna.load_study(study_name=study_name, storage=make_storage(storage_url))
    except KeyError:
        return 0
    orphans = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in orphans:
        study.tell(trial.number, state=TrialState.FAIL)
    return len(orphans)


def delete_study_if_exists(storage_url: str, study_name: str) -> bool:
    try:
        optuna.delete_study(study_name=study_name, storage=make_storage(storage_url))
    except KeyError:
        return False
    return True
