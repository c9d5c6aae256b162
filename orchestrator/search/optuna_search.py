"""Optuna proposes the hyperparameters (study.py: TPE for one objective, NSGA-II for several);
`DeferOptunaSearch` bridges Tune and Optuna: `suggest` is `study.ask`, `on_trial_result` is
`trial.report` (step = n_edits), `on_trial_complete` is `study.tell`.

Ray's OptunaSearch tells Optuna COMPLETE with the last reported value whenever a trial ends,
including trials the scheduler stopped at an early milestone. A value at milestone 10 is not
a value at T, so `DeferOptunaSearch` (a Tune `Searcher` that drives its own Optuna study, not
a subclass of OptunaSearch, whose state is private) tells those trials PRUNED instead (decided
by whether the last reported `n_edits` reached T).
With `pack_size` K > 1 (see packing.py) it asks Optuna for K trials per Tune trial, the later
ones with the first one's layer fixed, and tells each its own values.

What it calls besides: curve_trials.py (constraint values and user attrs of a told trial; in
curve mode a training's other curve points, added as trials) and reuse.py (never train twice,
pack_size 1: a proposal of a training already running or recorded replays it instead; while
the original still runs, `suggest` returns None, Tune asks again later, and the asked Optuna
trial is kept for that next call).
"""

from __future__ import annotations

import logging
import pickle
import warnings
from typing import Any, Mapping

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from ..protocol import PACK_KEY, N_EDITS, OPTUNA_TRIAL, REPLAY_KEY, REUSE_OF
from ..spec import SweepSpec
from .curve_trials import TUNE_TRIAL_ATTR, curve_trials, describe
from ..results.packing import is_pack, member_results
from .reuse import Reuse
from .space import optuna_distributions
from .study import SamplerSettings, delete_study_if_exists, fail_orphaned_trials, make_storage, sampler_settings

__all__ = ["DeferOptunaSearch", "SamplerSettings", "delete_study_if_exists", "fail_orphaned_trials", "make_searcher", "sampler_settings"]

log = logging.getLogger(__name__)


class DeferOptunaSearch(Searcher):
    """Tune's searcher over an Optuna study it owns. It knows T (trials ended before T are
    PRUNED, not COMPLETE) and packs: with pack_size K > 1 each Tune trial gets K Optuna trials
    on one layer.

    It implements Tune's public `Searcher` interface (suggest, on_trial_result,
    on_trial_complete, save, restore) rather than subclassing Ray's OptunaSearch, whose study,
    trial map and completed set are private attributes that a Ray release may rename. The
    study, `_trials` (Tune trial id -> Optuna trial; a pack's first member), `_packs` and
    `_completed` are this class's own. The study is created as OptunaSearch created it: the
    storage URL, sampler and name, `load_if_exists`, a NopPruner (ASHA stops trials, not Optuna).

    Pickling (Tune's tuner.pkl and searcher checkpoint) keeps plain data only (`__getstate__`):
    the storage URL, study name, SamplerSettings, Optuna trial numbers and the reuse records
    (reuse.Reuse, under the keys `_trainings`, `_originals`, `_reports`, `_gates`, `_reuse_of`).
    Unpickling rebuilds the storage, the study, the sampler and the trial handles from them, so
    no live Optuna object crosses a pickle, and a checkpoint does not depend on what an Optuna
    release keeps inside its samplers. `_waiting` is an asked Optuna trial whose original still
    runs (reuse.py), saved by number.
    """

    def __init__(
        self,
        space: Mapping[str, optuna.distributions.BaseDistribution],
        metric: str | list[str],
        mode: str | list[str],
        points_to_evaluate: list[dict] | None = None,
        *,
        sampler: SamplerSettings,
        storage_url: str,
        study_name: str = "optuna",
        total_edits: int,
        pack_size: int = 1,
        num_trials: int = 0,
        spec: SweepSpec,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self._spec = spec
        self._reuse = Reuse(spec)  # never train twice (reuse.py)
        self._waiting: optuna.trial.Trial | None = None
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
        self._sampler = sampler
        self._storage_url = storage_url
        self._study_name = study_name
        self._storage = make_storage(storage_url)
        self._study = optuna.create_study(
            storage=self._storage,
            sampler=sampler.build(),
            pruner=optuna.pruners.NopPruner(),
            study_name=study_name,
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
            ot_trial = self._waiting or self._ask()
            self._waiting = None
            original = self._reuse.original_for(ot_trial.params, self._completed, self._params_of)
            if original is not None and original not in self._completed:
                self._waiting = ot_trial  # its training still runs: Tune asks again, with another trial id
                return None
            self._trials[trial_id] = ot_trial
            ot_trial.set_user_attr(TUNE_TRIAL_ATTR, trial_id)
            if original is not None:
                ot_trial.set_user_attr(REUSE_OF, original)
            self._reuse.start(trial_id, ot_trial.params, original)
        ot_trial = self._trials[trial_id]
        config = {**ot_trial.params, OPTUNA_TRIAL: ot_trial.number}
        original = self._reuse.reuse_of.get(trial_id)
        if original is None:
            return config
        return {**config, REUSE_OF: original, REPLAY_KEY: self._reuse.replay(original, ot_trial.params, self._params_of(original))}

    def _params_of(self, trial_id: str) -> Mapping[str, Any]:
        return self._trials[trial_id].params

    def _suggest_pack(self, trial_id: str) -> dict | None:
        if trial_id not in self._packs:
            size = min(self._pack_size, self._num_trials - self._issued)
            if size <= 0:
                return None
            if self._pack_starts:
                self._study.enqueue_trial(self._pack_starts.pop(0))
            members = [self._ask()]
            layer = members[0].params.get("layer")
            members += [self._ask({"layer": layer} if layer is not None else None) for _ in range(size - 1)]
            self._issued += size
            for member in members:
                member.set_user_attr(TUNE_TRIAL_ATTR, trial_id)
            self._packs[trial_id] = members
            self._trials[trial_id] = members[0]
        return {PACK_KEY: [{**member.params, OPTUNA_TRIAL: member.number} for member in self._packs[trial_id]]}

    def _ask(self, fixed: Mapping[str, Any] | None = None) -> optuna.trial.Trial:
        """Ask with a sampler built for this point of the study (SamplerSettings.build); with
        `fixed` (a pack's layer) wrapped in Optuna's PartialFixedSampler."""
        sampler = self._sampler.build(len(self._study.get_trials(deepcopy=False)))
        self._study.sampler = sampler  # what the study keeps (curve_trials.ga_generation_attrs reads it)
        if not fixed:
            return self._study.ask(fixed_distributions=self._distributions)
        with warnings.catch_warnings():  # "experimental" since Optuna 2.4; its interface is what we use
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._study.sampler = optuna.samplers.PartialFixedSampler(dict(fixed), sampler)
        try:
            return self._study.ask(fixed_distributions=self._distributions)
        finally:
            self._study.sampler = sampler

    def _members(self, trial_id: str, result: dict | None) -> list[tuple[optuna.trial.Trial, dict | None]]:
        """Each Optuna trial behind a Tune trial, with its own part of the result."""
        if trial_id in self._packs:
            reports = member_results(result) if result and is_pack(result) else [None] * len(self._packs[trial_id])
            return list(zip(self._packs[trial_id], reports))
        return [(self._trials[trial_id], result)] if trial_id in self._trials else []

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self._completed:
            self._reuse.keep_report(trial_id, result)
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

    def _values(self, result: Mapping[str, Any]) -> list[float] | None:
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
        if error:
            self._reuse.forget(trial_id)

    def _tell(self, ot_trial: optuna.trial.Trial, trial_id: str, result: dict | None, error: bool) -> None:
        reached = result.get(N_EDITS) if result else None
        values = self._values(result) if result else None
        if error:
            state, values = TrialState.FAIL, None
        elif reached is not None and reached >= self._total_edits and values is not None:
            state = TrialState.COMPLETE
        else:
            state, values = TrialState.PRUNED, None
        points: list[optuna.trial.FrozenTrial] = []
        try:
            if result and state != TrialState.FAIL:
                describe(ot_trial, self._spec, result)
            if state == TrialState.COMPLETE and result and trial_id not in self._reuse.reuse_of:
                points = curve_trials(self._study, self._spec, ot_trial, trial_id, result, self._values)
        except optuna.exceptions.UpdateFinishedTrialError:
            log.debug("optuna trial %d of %s already finished (replayed after resume)", ot_trial.number, trial_id)
            return
        try:
            self._study.tell(ot_trial, values, state=state, skip_if_finished=True)
        except ValueError as exc:  # e.g. a NaN objective
            log.warning("optuna: trial %d of %s cannot be told %s (%s); marking it FAIL", ot_trial.number, trial_id, state.name, exc)
            self._study.tell(ot_trial, state=TrialState.FAIL, skip_if_finished=True)
            return
        for point in points:
            self._study.add_trial(point)

    # -- pickling and Tune's searcher checkpoint (Searcher.save_to_dir / restore_from_dir) -----

    def __getstate__(self) -> dict[str, Any]:
        """Plain data only: Optuna trials by number, distributions as Optuna's JSON, the reuse
        records under their own keys; the storage, study and sampler by what rebuilds them."""
        state = {key: value for key, value in self.__dict__.items() if key not in _LIVE}
        state.update({f"_{name}": value for name, value in self._reuse.state().items()})  # _REUSE_KEYS
        state["_trials"] = {trial_id: trial.number for trial_id, trial in self._trials.items()}
        state["_packs"] = {trial_id: [trial.number for trial in members] for trial_id, members in self._packs.items()}
        state["_waiting"] = None if self._waiting is None else self._waiting.number
        state["_distributions"] = {name: optuna.distributions.distribution_to_json(d) for name, d in self._distributions.items()}
        state[_FORMAT_KEY] = STATE_FORMAT
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state.get(_FORMAT_KEY) != STATE_FORMAT:
            raise ValueError(
                f"the sweep's searcher state has format {state.get(_FORMAT_KEY)!r}, this defer-sweep reads {STATE_FORMAT!r} "
                "(older versions pickled live Optuna objects); start the sweep over in a new output_dir"
            )
        self.__dict__.update({key: value for key, value in state.items() if key != _FORMAT_KEY and key not in _REUSE_KEYS})
        self._reuse = Reuse.from_state(self._spec, {name: state[key] for name, key in zip(Reuse.FIELDS, _REUSE_KEYS)})
        self._distributions = {name: optuna.distributions.json_to_distribution(d) for name, d in state["_distributions"].items()}
        self._storage = make_storage(self._storage_url)
        self._study = optuna.load_study(study_name=self._study_name, storage=self._storage, sampler=self._sampler.build(), pruner=optuna.pruners.NopPruner())
        study_id = self._storage.get_study_id_from_name(self._study_name)

        def handle(number: int) -> optuna.trial.Trial:
            return optuna.trial.Trial(self._study, self._storage.get_trial_id_from_study_id_trial_number(study_id, number))

        self._trials = {trial_id: handle(number) for trial_id, number in state["_trials"].items()}
        self._packs = {trial_id: [handle(number) for number in numbers] for trial_id, numbers in state["_packs"].items()}
        self._waiting = None if state["_waiting"] is None else handle(state["_waiting"])

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__getstate__(), file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__setstate__(pickle.load(file))


STATE_FORMAT = 2  # 2: plain data, Optuna objects rebuilt on load (1: pickled live Optuna objects)
_FORMAT_KEY = "_state_format"
_LIVE = ("_storage", "_study", "_reuse")  # rebuilt from _storage_url, _study_name, _sampler and the reuse keys
_REUSE_KEYS = tuple(f"_{name}" for name in Reuse.FIELDS)  # Reuse's plain data, pickled as the searcher's own attributes


def make_searcher(spec: SweepSpec, storage_url: str, study_name: str) -> DeferOptunaSearch:
    """The study lives in RDB storage; the spec's initial points are enqueued first."""
    metrics = [o.metric for o in spec.objectives]
    modes = [o.mode for o in spec.objectives]
    return DeferOptunaSearch(
        optuna_distributions(spec),
        metric=metrics if spec.multi_objective else metrics[0],
        mode=modes if spec.multi_objective else modes[0],
        points_to_evaluate=[dict(p) for p in spec.initial_points] or None,
        sampler=sampler_settings(spec),
        study_name=study_name,
        storage_url=storage_url,
        total_edits=spec.T,
        pack_size=spec.pack_size,
        num_trials=spec.num_trials,
        spec=spec,
    )
