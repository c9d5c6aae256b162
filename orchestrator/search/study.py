"""The Optuna study's storage and sampler: TPE for one objective, NSGA-II for several, kept as
`SamplerSettings` (plain data that rebuilds a sampler); and the storage chores of a sweep's
start and end (a study to start over, trials a killed driver left RUNNING)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import TrialState

from ..spec import SweepSpec

SAMPLERS = ("tpe", "nsga2")  # what a spec can get: TPE for one objective, NSGA-II for several


def make_storage(url: str) -> optuna.storages.BaseStorage:
    return optuna.storages.RDBStorage(url=url)


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
    Constraints reach them through each trial's constraint values (curve_trials.constraint_values),
    not the `constraints_func` Optuna 5 deprecates."""
    if spec.multi_objective:
        return SamplerSettings("nsga2", seed=spec.seed, population_size=spec.optuna.population_for(spec.num_trials))
    return SamplerSettings("tpe", seed=spec.seed, n_startup_trials=spec.optuna.startup_trials_for(spec.num_trials))


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
