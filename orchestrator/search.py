"""Optuna proposes the hyperparameters: TPE for one objective, NSGA-II for several.

Ray's OptunaSearch tells Optuna COMPLETE with the last reported value whenever a trial ends,
including trials the scheduler stopped at an early milestone. A value at milestone 10 is not
a value at T, so `DeferOptunaSearch` tells those trials PRUNED instead (decided by whether the
last reported `n_edits` reached T), and reports intermediate values with step = n_edits.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from .space import optuna_distributions
from .spec import SweepSpec

log = logging.getLogger(__name__)

N_EDITS = "n_edits"
OPTUNA_TRIAL = "optuna_trial"
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
    """OptunaSearch that knows T: trials ended before T are PRUNED, not COMPLETE."""

    def __init__(self, *args: Any, total_edits: int, **kwargs: Any) -> None:
        self._total_edits = total_edits
        self._reported: set[tuple[str, int]] = set()
        super().__init__(*args, **kwargs)

    def suggest(self, trial_id: str) -> dict | None:
        params = super().suggest(trial_id)
        if params is None:
            return None
        ot_trial = self._ot_trials[trial_id]
        ot_trial.set_user_attr(TUNE_TRIAL_ATTR, trial_id)
        return {**params, OPTUNA_TRIAL: ot_trial.number}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, list) or trial_id in self._completed_trials:
            return
        step = result.get(N_EDITS)
        value = result.get(self.metric)
        if step is None or value is None or (trial_id, int(step)) in self._reported:
            return  # a trial re-run after resume reports the same milestones again
        try:
            self._ot_trials[trial_id].report(float(value), int(step))
        except optuna.exceptions.UpdateFinishedTrialError:
            log.debug("optuna trial of %s already finished (replayed after resume)", trial_id)
        self._reported.add((trial_id, int(step)))

    def _values(self, result: dict) -> list[float] | None:
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        values = [result.get(m) for m in metrics]
        return None if any(v is None for v in values) else [float(v) for v in values]

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """COMPLETE with the values at T, PRUNED if the trial stopped before T, FAIL if it
        raised. A trial Optuna already knows as finished (replayed after a resume) is left
        as it is."""
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        reached = result.get(N_EDITS) if result else None
        values = self._values(result) if result else None
        if error:
            state, values = TrialState.FAIL, None
        elif reached is not None and reached >= self._total_edits and values is not None:
            state = TrialState.COMPLETE
        else:
            state, values = TrialState.PRUNED, None
            if result:
                # Tune withholds the stopping result from on_trial_result: record it as the
                # last intermediate value, which Optuna keeps as a pruned trial's value.
                self.on_trial_result(trial_id, result)
        ot_trial = self._ot_trials[trial_id]
        try:
            self._ot_study.tell(ot_trial, values, state=state, skip_if_finished=True)
        except ValueError as exc:  # e.g. a NaN objective
            log.warning("optuna: trial %s cannot be told %s (%s); marking it FAIL", trial_id, state.name, exc)
            self._ot_study.tell(ot_trial, state=TrialState.FAIL, skip_if_finished=True)
        self._completed_trials.add(trial_id)


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
