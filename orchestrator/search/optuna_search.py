"""Optuna proposes the hyperparameters: TPE for one objective, NSGA-II for several.

Ray's OptunaSearch tells Optuna COMPLETE with the last reported value whenever a trial ends,
including trials the scheduler stopped at an early milestone. A value at milestone 10 is not
a value at T, so `DeferOptunaSearch` (a Tune `Searcher` that drives its own Optuna study, not
a subclass of OptunaSearch, whose state is private) tells those trials PRUNED instead (decided
by whether the last reported `n_edits` reached T), and reports intermediate values with
step = n_edits.
With `pack_size` K > 1 (see packing.py) it asks Optuna for K trials per Tune trial, the later
ones with the first one's layer fixed, and tells each its own values.

Constraints (spec `constraints`): every trial told COMPLETE or PRUNED, and every added curve
point, carries its constraint values (search/ranking.py `violations`, <= 0 satisfied) through
Optuna 5's public `Trial.set_constraint` / `create_trial(constraints=...)`, which TPE and
NSGA-II read (trial.constraints) to rank feasible trials first; and a user attr `feasible`.
Optuna 5 deprecates the samplers' `constraints_func` for this (it would store every value a
second time), so sampler_settings passes none.

Curve mode (`search_space.threshold: curve`): Optuna samples layer, edit_lr and n_iter only.
A training that reaches T is told COMPLETE with its best point's values (user attrs threshold,
feasible, curve_training=True), and every other point of its final curve is added as a
COMPLETE trial of its own: the training's params plus `threshold`, its values, intermediate
values and constraint values (user attrs tune_trial_id, source_trial, curve_training=False).
With NSGA-II an added point joins its training's generation, so it can be a parent.

Never train twice (pack_size 1): a training is (layer, module, edit_lr, n_iter); seed,
protocol, data, T, dtype and scorings are fixed per sweep. When Optuna proposes a training
already running or recorded, the Tune trial reuses it (config REUSE_OF + "replay": the
original's milestone reports, which the worker replays without a model): in curve mode
always; with a sampled threshold when the threshold is the same, or when tf is the only
scoring (the replayed metrics are then re-read at the new threshold from the original's gate
rows); otherwise it trains again. While the original still runs, `suggest` returns None (Tune
asks again later) and keeps the asked Optuna trial for that next call. A reuse of a pruned
original is pruned where it was; a failed original is trained again. Packs always train.
"""

from __future__ import annotations

import logging
import pickle
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from defer_core.curve import TF, tf_metrics_at
from defer_core.results import GateRow

from ..protocol import (
    EDITS_KEY, FEASIBLE, GATES_KEY, GRID_KEY, INTERMEDIATE_KEY, MEMBERS, METRIC_COLUMNS, N_EDITS, OPTUNA_TRIAL, POINTS_KEY, RECORDS_KEY, REPEATS_KEY,
    REPLAY_KEY, REUSE_OF, THRESHOLD,
)
from ..spec import SweepSpec
from .curve_points import with_mean_metrics
from .packing import is_pack, member_results
from .ranking import Bound, is_feasible, violations
from .space import full_config, module_for, optuna_distributions

log = logging.getLogger(__name__)

TUNE_TRIAL_ATTR = "tune_trial_id"  # the Tune trial behind an Optuna trial (for an added curve point: its training's)
SOURCE_TRIAL_ATTR = "source_trial"  # an added curve point's: the Optuna trial number of its training
CURVE_TRAINING_ATTR = "curve_training"  # curve mode: True on a training's own trial, False on an added point
THRESHOLD_DISTRIBUTION = optuna.distributions.FloatDistribution(0.0, 1.0)  # an added curve point's threshold
# What a replayed report keeps of the original's (the worker adds its own pid, node, no edits).
REPLAYED_KEYS = (N_EDITS, THRESHOLD, GRID_KEY, POINTS_KEY, *METRIC_COLUMNS)
TrainingKey = tuple[int, str, float, int]
CompactGates = tuple[tuple[str, int, float, float, float], ...]  # (probe, chunk, gate, on, off) per row


def make_storage(url: str) -> optuna.storages.BaseStorage:
    return optuna.storages.RDBStorage(url=url)


SAMPLERS = ("tpe", "nsga2")  # what a spec can get: TPE for one objective, NSGA-II for several


@dataclass(frozen=True)
class SamplerSettings:
    """What rebuilds a sampler: its kind, sizes and seed. The searcher keeps these, never the
    sampler itself, so Tune pickles plain data whatever a sampler holds (Optuna 5.1's GA
    samplers hold a thread lock). A seeded sampler is built afresh for every ask with a seed
    derived from (seed, trial count): its proposals then depend only on the study's history,
    so a resumed sweep proposes what an uninterrupted one would have."""

    kind: str
    seed: int | None = None
    n_startup_trials: int | None = None  # TPE's random start
    population_size: int | None = None  # NSGA-II's population

    def __post_init__(self) -> None:
        if self.kind not in SAMPLERS:
            raise ValueError(f"sampler kind must be one of {', '.join(SAMPLERS)}, got {self.kind!r}")

    def build(self, trials_so_far: int = 0) -> optuna.samplers.BaseSampler:
        seed = None if self.seed is None else int(np.random.SeedSequence([self.seed, trials_so_far]).generate_state(1)[0])
        if self.kind == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, **({"population_size": self.population_size} if self.population_size else {}))
        return optuna.samplers.TPESampler(seed=seed, **({"n_startup_trials": self.n_startup_trials} if self.n_startup_trials is not None else {}))


def sampler_settings(spec: SweepSpec) -> SamplerSettings:
    """NSGA-II for several objectives, TPE for one; their sizes default in the spec (OptunaSpec).
    Constraints reach them through each trial's constraint values (constraint_values), not
    the `constraints_func` Optuna 5 deprecates."""
    if spec.multi_objective:
        return SamplerSettings("nsga2", seed=spec.seed, population_size=spec.optuna.population_for(spec.num_trials))
    return SamplerSettings("tpe", seed=spec.seed, n_startup_trials=spec.optuna.startup_trials_for(spec.num_trials))


def constraint_values(row: Mapping[str, Any], constraints: Sequence[Bound]) -> dict[str, float]:
    """Optuna's constraint values of a row, named like `loc_tf>=0.9` (<= 0: satisfied)."""
    names = [name for b in constraints for name in ((f"{b.metric}>={b.min:g}",) if b.min is not None else ()) + ((f"{b.metric}<={b.max:g}",) if b.max is not None else ())]
    return dict(zip(names, violations(row, constraints)))


def training_key(spec: SweepSpec, params: Mapping[str, Any]) -> TrainingKey:
    """What makes two trials of a sweep the same training (the threshold is only read)."""
    config = full_config(spec, params)
    return (int(config["layer"]), module_for(spec, config["layer"]), float(config["edit_lr"]), int(config["n_iter"]))


def ga_generation_attrs(study: optuna.Study, number: int) -> dict[str, Any]:
    """The system attr that puts an added curve point in the generation of its training.

    Optuna's GA samplers (NSGA-II) draw parents only from COMPLETE trials that carry their
    generation in a system attr (BaseGASampler.get_population / select_parent); a trial added
    with `study.add_trial` carries none and would never breed. The generation is read with the
    public `get_trial_generation` (which sets it on the still-running training if sampling did
    not); the attr's key is Optuna's private `_get_generation_key()`, the one private name used
    here: tests/test_curve_search.py fails loudly if an Optuna release renames it. {} for
    samplers without generations (TPE)."""
    sampler = study.sampler
    if not isinstance(sampler, optuna.samplers.BaseGASampler):
        return {}
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    return {type(sampler)._get_generation_key(): sampler.get_trial_generation(study, frozen)}


def _compact(gates: Sequence[Mapping[str, Any]]) -> CompactGates:
    return tuple((g["probe"], int(g.get("chunk", 0)), float(g["gate"]), float(g["on"]), float(g["off"])) for g in gates)


def _rows(compact: CompactGates) -> list[GateRow]:
    return [GateRow(record_id="", probe=probe, gate=gate, on=on, off=off, chunk=chunk) for probe, chunk, gate, on, off in compact]


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
    the storage URL, study name, SamplerSettings and Optuna trial numbers. Unpickling rebuilds
    the storage, the study, the sampler and the trial handles from them, so no live Optuna
    object crosses a pickle, and a checkpoint does not depend on what an Optuna release keeps
    inside its samplers.

    With `spec` it also knows the constraints, curve mode and the trainings behind its trials
    (never train twice, module docstring): `_trainings` (training key -> the Tune trials that
    train it), `_originals` (the reverse), `_reports` (each original's milestone reports, for
    replays), `_gates` (tf-only sampled sweeps: each original's gate rows per milestone),
    `_reuse_of` (a reusing Tune trial -> its original) and `_waiting` (an asked Optuna trial
    whose original still runs) are saved with the rest.
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
        spec: SweepSpec | None = None,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self._spec = spec
        self._trainings: dict[TrainingKey, list[str]] = {}  # never train twice (module docstring)
        self._originals: dict[str, TrainingKey] = {}
        self._reports: dict[str, list[dict[str, Any]]] = {}
        self._gates: dict[str, dict[int, CompactGates]] = {}
        self._reuse_of: dict[str, str] = {}
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
            original = self._original_for(ot_trial.params)
            if original is not None and original not in self._completed:
                self._waiting = ot_trial  # its training still runs: Tune asks again, with another trial id
                return None
            self._trials[trial_id] = ot_trial
            ot_trial.set_user_attr(TUNE_TRIAL_ATTR, trial_id)
            if original is not None:
                self._reuse_of[trial_id] = original
                ot_trial.set_user_attr(REUSE_OF, original)
            elif self._spec is not None:
                key = training_key(self._spec, ot_trial.params)
                self._trainings.setdefault(key, []).append(trial_id)
                self._originals[trial_id] = key
        ot_trial = self._trials[trial_id]
        config = {**ot_trial.params, OPTUNA_TRIAL: ot_trial.number}
        original = self._reuse_of.get(trial_id)
        if original is None:
            return config
        return {**config, REUSE_OF: original, REPLAY_KEY: self._replay(original, ot_trial.params)}

    # -- never train twice ---------------------------------------------------------------------

    def _original_for(self, params: Mapping[str, Any]) -> str | None:
        """The Tune trial whose training these params would repeat, if it can stand in for
        them (module docstring); None: train."""
        spec = self._spec
        if spec is None:
            return None
        candidates = [o for o in self._trainings.get(training_key(spec, params), []) if self._same_reading(o, params)]
        finished = [o for o in candidates if o in self._completed and self._replayable(o, params)]
        running = [o for o in candidates if o not in self._completed]
        return (finished or running or [None])[0]

    def _same_reading(self, original: str, params: Mapping[str, Any]) -> bool:
        """Whether the original's reports can be read as these params': always in curve mode,
        at the same threshold, or re-read from gate rows when tf is the only scoring."""
        spec = self._spec
        assert spec is not None
        if spec.curve_mode or spec.scorings == (TF,):
            return True
        return full_config(spec, params)[THRESHOLD] == full_config(spec, self._trials[original].params)[THRESHOLD]

    def _rereads(self, original: str, params: Mapping[str, Any]) -> bool:
        spec = self._spec
        assert spec is not None
        return not spec.curve_mode and full_config(spec, params)[THRESHOLD] != full_config(spec, self._trials[original].params)[THRESHOLD]

    def _replayable(self, original: str, params: Mapping[str, Any]) -> bool:
        """A finished original with reports (and, to re-read them, gate rows at every milestone)."""
        reports = self._reports.get(original)
        if not reports:
            return False
        gates = self._gates.get(original, {})
        return not self._rereads(original, params) or all(gates.get(r[N_EDITS]) for r in reports)

    def _replay(self, original: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The original's reports as this trial's: re-read at its threshold when that differs."""
        reports = [dict(r) for r in self._reports[original]]
        if not self._rereads(original, params):
            return reports
        spec = self._spec
        assert spec is not None
        threshold = full_config(spec, params)[THRESHOLD]
        replayed = []
        for report in reports:
            metrics = tf_metrics_at(_rows(self._gates[original][report[N_EDITS]]), threshold, spec.model.run_dtype)
            kept = {key: value for key, value in report.items() if key not in METRIC_COLUMNS}
            replayed.append({**kept, **with_mean_metrics(metrics, spec.scorings)})
        return replayed

    def _keep_report(self, trial_id: str, result: Mapping[str, Any]) -> None:
        """An original's milestone report, for replays; a trial that reports a milestone again
        (re-run after a resume) starts its list over from there."""
        spec = self._spec
        if spec is None or trial_id not in self._originals or trial_id in self._completed or result.get(N_EDITS) is None:
            return
        n_edits = int(result[N_EDITS])
        kept = [r for r in self._reports.get(trial_id, []) if r[N_EDITS] < n_edits]
        report = {key: result[key] for key in REPLAYED_KEYS if key in result}
        if result.get(REPEATS_KEY):  # each repeat member's metrics (its edits, gates and records stay with the original)
            report[REPEATS_KEY] = [{k: v for k, v in m.items() if k not in (EDITS_KEY, GATES_KEY, RECORDS_KEY)} for m in result[REPEATS_KEY]]
        self._reports[trial_id] = [*kept, report]
        if not spec.curve_mode and spec.scorings == (TF,):
            gates = self._gates.setdefault(trial_id, {})
            for stale in [n for n in gates if n >= n_edits]:
                del gates[stale]
            gates[n_edits] = _compact(result.get(GATES_KEY) or [])

    def _forget_training(self, trial_id: str) -> None:
        """A failed original: the next proposal of its training trains again."""
        key = self._originals.pop(trial_id, None)
        if key is not None and trial_id in self._trainings.get(key, []):
            self._trainings[key].remove(trial_id)
        self._reports.pop(trial_id, None)
        self._gates.pop(trial_id, None)

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
        return {MEMBERS: [{**member.params, OPTUNA_TRIAL: member.number} for member in self._packs[trial_id]]}

    def _ask(self, fixed: Mapping[str, Any] | None = None) -> optuna.trial.Trial:
        """Ask with a sampler built for this point of the study (SamplerSettings.build); with
        `fixed` (a pack's layer) wrapped in Optuna's PartialFixedSampler."""
        sampler = self._sampler.build(len(self._study.get_trials(deepcopy=False)))
        self._study.sampler = sampler  # what the study keeps (ga_generation_attrs reads it)
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
        self._keep_report(trial_id, result)
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
        if error:
            self._forget_training(trial_id)

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
                self._describe(ot_trial, result)
            if state == TrialState.COMPLETE and result and trial_id not in self._reuse_of:
                points = self._curve_trials(ot_trial, trial_id, result)
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

    def _describe(self, ot_trial: optuna.trial.Trial, result: Mapping[str, Any]) -> None:
        """Before a COMPLETE or PRUNED tell: constraint values and feasibility of the values
        told (a pruned trial's: its last milestone's); in curve mode its point's threshold."""
        spec = self._spec
        if spec is None:
            return
        for name, value in constraint_values(result, spec.constraints).items():
            ot_trial.set_constraint(name, value)
        ot_trial.set_user_attr(FEASIBLE, is_feasible(result, spec.constraints))
        if spec.curve_mode:
            ot_trial.set_user_attr(CURVE_TRAINING_ATTR, True)
            if result.get(THRESHOLD) is not None:
                ot_trial.set_user_attr(THRESHOLD, float(result[THRESHOLD]))

    def _curve_trials(self, ot_trial: optuna.trial.Trial, trial_id: str, result: Mapping[str, Any]) -> list[optuna.trial.FrozenTrial]:
        """Curve mode: each point of a complete training's final curve but the best one (the
        training's own trial) as a COMPLETE trial to add. A point lacking an objective or a
        constrained metric (a tf breakpoint, where only the grid has generation metrics) is
        left out: Optuna gets no value or feasibility it cannot know."""
        spec = self._spec
        if spec is None or not spec.curve_mode:
            return []
        chosen = result.get(THRESHOLD)
        generation = ga_generation_attrs(self._study, ot_trial.number)
        trials = []
        constrained = {bound.metric for bound in spec.constraints}
        for point in result.get(POINTS_KEY) or []:
            values = self._values(point)
            if values is None or point[THRESHOLD] == chosen or any(point.get(metric) is None for metric in constrained):
                continue
            intermediate = point.get(INTERMEDIATE_KEY) if not spec.multi_objective else None
            trials.append(
                optuna.trial.create_trial(
                    state=TrialState.COMPLETE,
                    values=values,
                    params={**ot_trial.params, THRESHOLD: float(point[THRESHOLD])},
                    distributions={**ot_trial.distributions, THRESHOLD: THRESHOLD_DISTRIBUTION},
                    user_attrs={
                        TUNE_TRIAL_ATTR: trial_id, SOURCE_TRIAL_ATTR: ot_trial.number, THRESHOLD: float(point[THRESHOLD]),
                        FEASIBLE: is_feasible(point, spec.constraints), CURVE_TRAINING_ATTR: False,
                    },
                    system_attrs=dict(generation),
                    intermediate_values={int(n): float(v) for n, v in (intermediate or {}).items()},
                    constraints=constraint_values(point, spec.constraints) or None,
                )
            )
        return trials

    # -- pickling and Tune's searcher checkpoint (Searcher.save_to_dir / restore_from_dir) -----

    def __getstate__(self) -> dict[str, Any]:
        """Plain data only: Optuna trials by number, distributions as Optuna's JSON; the storage,
        study and sampler by what rebuilds them."""
        state = {key: value for key, value in self.__dict__.items() if key not in _LIVE}
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
        state = {key: value for key, value in state.items() if key != _FORMAT_KEY}
        self.__dict__.update(state)
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
_LIVE = ("_storage", "_study")  # rebuilt from _storage_url, _study_name and _sampler


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
