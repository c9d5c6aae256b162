"""The searcher survives any sampler the spec can choose: Tune pickles it (tuner.pkl, searcher
checkpoints), so it must hold plain data only and rebuild its Optuna objects on load; a seeded
sampler must then propose what it would have proposed without the interruption.

Each case runs on a real Optuna SQLite storage under whatever Optuna is installed (the lock's,
or the newest one under `make test-latest`): TPE (one objective), NSGA-II (two objectives),
and packs, whose later members go through Optuna's PartialFixedSampler. The metrics a trial
reports are a fixed function of its config, standing in for a worker.
"""

from __future__ import annotations

import copy
import io
import pickle
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from orchestrator.protocol import PACK_KEY, N_EDITS, OPTUNA_TRIAL
from orchestrator.search.optuna_search import DeferOptunaSearch, make_searcher
from orchestrator.search.study import sampler_settings
from orchestrator.spec import SweepSpec, spec_from_dict

from .orchestrator_support import SPECS

TINY = yaml.safe_load((SPECS / "tiny.yaml").read_text())
TWO_OBJECTIVES = [{"metric": "rel_tf", "direction": "maximize"}, {"metric": "loc_tf", "direction": "maximize"}]
CASES = {
    "tpe": {},
    "nsga2": {"objectives": TWO_OBJECTIVES, "optuna": {"population_size": 2}},
    "tpe-packs": {"pack_size": 2, "initial_points": []},
    "nsga2-packs": {"pack_size": 2, "initial_points": [], "objectives": TWO_OBJECTIVES, "optuna": {"population_size": 2}},
}
TRIALS = 8  # Optuna trials per run: TPE leaves its random start (2 trials), NSGA-II breeds generations of 2


def spec_for(case: str) -> SweepSpec:
    data = copy.deepcopy(TINY)
    data.update(num_trials=TRIALS, early_stopping=None, optuna={"n_startup_trials": 2})
    data.update(copy.deepcopy(CASES[case]))
    return spec_from_dict(data)


PARAMS = ("layer", "edit_lr", "n_iter", "threshold")


def metrics_of(config: dict[str, Any], n_edits: int = TINY["T"]) -> dict[str, float]:
    """A deterministic stand-in for a trial's result at a milestone."""
    rel = 1.0 - abs(config["edit_lr"] - 0.02) * 10 + 0.05 * config["layer"] + 0.01 * config["n_iter"]
    loc = 1.0 - 0.3 * abs(config["threshold"] - 0.5) - 0.02 * config["layer"]
    return {N_EDITS: n_edits, "rel_tf": round(rel, 6), "loc_tf": round(loc, 6)}


def result_of(config: dict[str, Any], n_edits: int = TINY["T"]) -> dict[str, Any]:
    if PACK_KEY in config:
        return {PACK_KEY: [metrics_of(member, n_edits) for member in config[PACK_KEY]], N_EDITS: n_edits}
    return metrics_of(config, n_edits)


def params_of(config: dict[str, Any]) -> tuple:
    first = config[PACK_KEY][0] if PACK_KEY in config else config
    return tuple(first[name] for name in PARAMS)


def run(spec: SweepSpec, url: str, resume_every: int | None) -> list[dict[str, Any]]:
    """Suggest and complete Tune trials until the study has TRIALS Optuna trials; with
    `resume_every`, the searcher is pickled and unpickled (a driver killed and resumed from
    Tune's tuner.pkl) after every that many Tune trials."""
    searcher = make_searcher(spec, url, "pickling")
    proposals: list[dict[str, Any]] = []
    for index in range(TRIALS // spec.pack_size):
        trial_id = f"t{index}"
        config = searcher.suggest(trial_id)
        assert config is not None
        proposals.append(config)
        searcher.on_trial_complete(trial_id, result_of(config))
        if resume_every and (index + 1) % resume_every == 0:
            searcher = pickle.loads(pickle.dumps(searcher))
    return proposals


def pickled_modules(obj: object) -> set[str]:
    """The modules whose classes or functions a pickle of `obj` names (what unpickling imports)."""
    found: set[str] = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            found.add(module)
            return super().find_class(module, name)

    Recorder(io.BytesIO(pickle.dumps(obj))).load()
    return found


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_pickled_searcher_names_no_optuna_class_and_round_trips(case: str, tmp_path: Path) -> None:
    spec = spec_for(case)
    assert sampler_settings(spec).kind == ("nsga2" if "nsga2" in case else "tpe")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = make_searcher(spec, url, "pickling")
    first = searcher.suggest("t0")
    searcher.on_trial_result("t0", result_of(first, 2))
    second = searcher.suggest("t1")

    modules = pickled_modules(searcher)
    assert not [m for m in modules if m.split(".")[0] == "optuna"], f"live Optuna objects in the pickle: {sorted(modules)}"
    restored = pickle.loads(pickle.dumps(searcher))
    assert isinstance(restored, DeferOptunaSearch)
    expected = optuna.samplers.NSGAIISampler if "nsga2" in case else optuna.samplers.TPESampler
    assert type(searcher._study.sampler) is expected and type(restored._study.sampler) is expected
    assert restored.suggest("t0") == first and restored.suggest("t1") == second, "the Tune trial -> Optuna trial map survives"

    restored.on_trial_complete("t0", result_of(first))
    restored.on_trial_complete("t1", result_of(second, 4))  # stopped before T: pruned
    trials = optuna.load_study(study_name="pickling", storage=url).get_trials(deepcopy=False)
    members = spec.pack_size
    assert [t.state for t in trials] == [TrialState.COMPLETE] * members + [TrialState.PRUNED] * members
    assert trials[0].values[0] == metrics_of(first[PACK_KEY][0] if PACK_KEY in first else first)["rel_tf"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_resumed_seeded_searcher_proposes_what_an_uninterrupted_one_does(case: str, tmp_path: Path) -> None:
    spec = spec_for(case)
    uninterrupted = run(spec, f"sqlite:///{tmp_path / 'a.db'}", resume_every=None)
    resumed = run(spec, f"sqlite:///{tmp_path / 'b.db'}", resume_every=1)
    assert resumed == uninterrupted
    again = run(spec, f"sqlite:///{tmp_path / 'c.db'}", resume_every=3)
    assert again == uninterrupted
    numbers = [config[OPTUNA_TRIAL] for config in uninterrupted] if PACK_KEY not in uninterrupted[0] else [m[OPTUNA_TRIAL] for c in uninterrupted for m in c[PACK_KEY]]
    assert numbers == list(range(TRIALS))
    distinct = {params_of(config) for config in uninterrupted}
    assert len(distinct) > 2, "the sampler explores (the comparison is not between constant proposals)"

