"""Optuna proposes the hyperparameters: TPE for one objective, NSGA-II for several.

Ray's OptunaSearch tells Optuna COMPLETE with the last reported value whenever a trial ends,
including trials the scheduler stopped at an early milestone. A value at milestone 10 is not
a value at T, so `DeferOptunaSearch` (a Tune `Searcher` that drives its own Optuna study, not
a subclass of OptunaSearch, whose state is private) tells those trials PRUNED instead (decided
by whether the last reported `n_edits` reached T), and reports intermediate values with
step = n_edits.
With `pack_size` K > 1 (see packing.py) it asks Optuna for K trials per Tune trial, the later
ones with the first one's layer fixed, and tells each its own values.
"""

from __future__ import annotations

import logging
import pickle
import warnings
from typing import Any, Mapping

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from ..protocol import MEMBERS, N_EDITS, OPTUNA_TRIAL
from ..spec import SweepSpec
from .packing import is_pack, member_results
from .space import optuna_distributions

log = logging.getLogger(__name__)

TUNE_TRIAL_ATTR = "tune_trial_id"


def make_storage(url: str) -> optuna.storages.BaseStorage:
    return optuna.storages.RDBStorage(url=url)


def make_sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    """NSGA-II for several objectives, TPE for one; their sizes default in the spec (OptunaSpec)."""
    if spec.multi_objective:
        return optuna.samplers.NSGAIISampler(population_size=spec.optuna.population_for(spec.num_trials), seed=spec.seed)
    return optuna.samplers.TPESampler(n_startup_trials=spec.optuna.startup_trials_for(spec.num_trials), seed=spec.seed)


class DeferOptunaSearch(Searcher):
    """Tune's searcher over an Optuna study it owns. It knows T (trials ended before T are
    PRUNED, not COMPLETE) and packs: with pack_size K > 1 each Tune trial gets K Optuna trials
    on one layer.

    It implements Tune's public `Searcher` interface (suggest, on_trial_result,
    on_trial_complete, save, restore) rather than subclassing Ray's OptunaSearch, whose study,
    trial map and completed set are private attributes that a Ray release may rename. The
    study, `_trials` (Tune trial id -> Optuna trial; a pack's first member), `_packs` and
    `_completed` are this class's own, and `save`/`restore` write all of its state to Tune's
    searcher checkpoint. The study is created as OptunaSearch created it: the given storage,
    sampler and name, `load_if_exists`, a NopPruner (ASHA stops trials, not Optuna).
    """

    def __init__(
        self,
        space: Mapping[str, optuna.distributions.BaseDistribution],
        metric: str | list[str],
        mode: str | list[str],
        points_to_evaluate: list[dict] | None = None,
        sampler: optuna.samplers.BaseSampler | None = None,
        study_name: str | None = None,
        storage: optuna.storages.BaseStorage | None = None,
        *,
        total_edits: int,
        pack_size: int = 1,
        num_trials: int = 0,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self._distributions = dict(space)
        self._total_edits = total_edits
        self._reported: set[tuple[int, int]] = set()
        self._pack_size = pack_size
        self._num_trials = num_trials
        self._issued = 0
        self._trials: dict[str, optuna.trial.Trial] = {}
        self._packs: dict[str, list[optuna.trial.Trial]] = {}
        self._completed: set[str] = set()
        points = [dict(p) for p in points_to_evaluate or []]
        for point in points:
            unknown = sorted(set(point) - set(self._distributions))
            if unknown:
                raise ValueError(f"initial point {point} sets {', '.join(unknown)}, which the search space does not search")
        self._study = optuna.create_study(
            storage=storage,
            sampler=sampler,
            pruner=optuna.pruners.NopPruner(),
            study_name=study_name or "optuna",
            load_if_exists=True,
            directions=["minimize" if m == "min" else "maximize" for m in (mode if isinstance(mode, list) else [mode])],
        )
        # Packed, each initial point starts a pack and is enqueued just before that pack's first
        # ask, so no queued point can land in another pack with a different layer.
        self._pack_starts = points if pack_size > 1 else []
        if pack_size == 1:
            for point in points:
                self._study.enqueue_trial(point)

    def suggest(self, trial_id: str) -> dict | None:
        if self._pack_size > 1:
            return self._suggest_pack(trial_id)
        if trial_id not in self._trials:
            ot_trial = self._study.ask(fixed_distributions=self._distributions)
            ot_trial.set_user_attr(TUNE_TRIAL_ATTR, trial_id)
            self._trials[trial_id] = ot_trial
        ot_trial = self._trials[trial_id]
        return {**ot_trial.params, OPTUNA_TRIAL: ot_trial.number}

    def _suggest_pack(self, trial_id: str) -> dict | None:
        if trial_id not in self._packs:
            size = min(self._pack_size, self._num_trials - self._issued)
            if size <= 0:
                return None
            if self._pack_starts:
                self._study.enqueue_trial(self._pack_starts.pop(0))
            members = [self._study.ask(fixed_distributions=self._distributions)]
            members += self._ask_on_layer(members[0].params.get("layer"), size - 1)
            self._issued += size
            for member in members:
                member.set_user_attr(TUNE_TRIAL_ATTR, trial_id)
            self._packs[trial_id] = members
            self._trials[trial_id] = members[0]
        return {MEMBERS: [{**member.params, OPTUNA_TRIAL: member.number} for member in self._packs[trial_id]]}

    def _ask_on_layer(self, layer: int | None, count: int) -> list[optuna.trial.Trial]:
        """`count` more trials whose layer is fixed to the pack's (Optuna's PartialFixedSampler)."""
        sampler = self._study.sampler
        if layer is not None:
            with warnings.catch_warnings():  # "experimental" since Optuna 2.4; its interface is what we use
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._study.sampler = optuna.samplers.PartialFixedSampler({"layer": layer}, sampler)
        try:
            return [self._study.ask(fixed_distributions=self._distributions) for _ in range(count)]
        finally:
            self._study.sampler = sampler

    def _members(self, trial_id: str, result: dict | None) -> list[tuple[optuna.trial.Trial, dict | None]]:
        """Each Optuna trial behind a Tune trial, with its own part of the result."""
        if trial_id in self._packs:
            reports = member_results(result) if result and is_pack(result) else [None] * len(self._packs[trial_id])
            return list(zip(self._packs[trial_id], reports))
        return [(self._trials[trial_id], result)] if trial_id in self._trials else []

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, list) or trial_id in self._completed:
            return  # Optuna keeps no intermediate values for several objectives
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
        if trial_id in self._completed:
            return
        if result and not error:
            # Tune withholds the stopping result from on_trial_result: record it as the last
            # intermediate value, which Optuna keeps as a pruned trial's value.
            self.on_trial_result(trial_id, result)
        for ot_trial, member in self._members(trial_id, result):
            self._tell(ot_trial, trial_id, member, error)
        self._completed.add(trial_id)

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
            self._study.tell(ot_trial, values, state=state, skip_if_finished=True)
        except ValueError as exc:  # e.g. a NaN objective
            log.warning("optuna: trial %d of %s cannot be told %s (%s); marking it FAIL", ot_trial.number, trial_id, state.name, exc)
            self._study.tell(ot_trial, state=TrialState.FAIL, skip_if_finished=True)

    # -- Tune's searcher checkpoint (Searcher.save_to_dir / restore_from_dir call these) --------

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__dict__, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__setstate__(pickle.load(file))

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Also reads state pickled while this class still subclassed Ray's OptunaSearch (its
        tuner.pkl and searcher checkpoint), so sweeps checkpointed then still resume."""
        for old, new in _LEGACY_STATE.items():
            if old in state and new not in state:
                state[new] = state.pop(old)
        self.__dict__.update(state)


# Attribute names of OptunaSearch that earlier versions of DeferOptunaSearch inherited and
# pickled -> this class's own names for the same objects.
_LEGACY_STATE = {"_ot_study": "_study", "_ot_trials": "_trials", "_completed_trials": "_completed", "_space": "_distributions"}


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
