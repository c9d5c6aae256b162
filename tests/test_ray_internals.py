"""What the orchestrator relies on in the installed Ray, checked without a cluster.

pyproject.toml accepts any `ray[tune]>=2.50,<3`, so these tests fail loudly, naming the file
that depends on it, if a Ray release changes one of those behaviours:

- orchestrator/search/optuna_search.py: `DeferOptunaSearch` is a plain Tune `Searcher` that
  owns its Optuna study (no OptunaSearch private state); Tune's searcher checkpoint must keep
  calling its `save`/`restore` (Searcher.save_to_dir / restore_from_dir).
- orchestrator/search/scheduler.py: ASHA rungs survive a resume through `RungStateCallback`,
  which writes the scheduler with AsyncHyperBandScheduler's public `save`/`restore` into Tune's
  callback checkpoint (Callback.get_state / set_state); that must keep the rung records.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import optuna
import pytest
import ray
import yaml
from optuna.trial import TrialState
from ray.tune.callback import CallbackList
from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler
from ray.tune.search import Searcher

from orchestrator.protocol import N_EDITS, OPTUNA_TRIAL
from orchestrator.search.optuna_search import DeferOptunaSearch
from orchestrator.search.scheduler import MilestoneASHA, RungStateCallback, make_scheduler
from orchestrator.search.study import SamplerSettings
from orchestrator.spec import load_spec, spec_from_dict

from .orchestrator_support import SPECS, tiny_spec

ROOT = Path(__file__).resolve().parent.parent
RAY = f"ray {ray.__version__}"
SEARCHER_FILE = "orchestrator/search/optuna_search.py (DeferOptunaSearch)"
SCHEDULER_FILE = "orchestrator/search/scheduler.py (MilestoneASHA, RungStateCallback)"

# Private attributes of Ray's OptunaSearch and AsyncHyperBandScheduler that earlier versions read.
RAY_PRIVATE = re.compile(r"\.\s*_(ot_study|ot_trials|completed_trials|brackets|rungs|trial_info|metric_op)\b")


def test_the_orchestrator_reads_no_private_state_of_rays_searcher_or_scheduler() -> None:
    offenders = []
    for path in sorted((ROOT / "orchestrator").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if RAY_PRIVATE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, (
        "these lines read private attributes of Ray's OptunaSearch / AsyncHyperBandScheduler, which a Ray "
        "minor release may rename; use the public Searcher / TrialScheduler API, or pin ray in pyproject.toml "
        "and check the field here:\n" + "\n".join(offenders)
    )


# -- ASHA: rung state through Tune's callback checkpoint ---------------------------------------


def trial(trial_id: str) -> Trial:
    return Trial("defer", trial_id=trial_id, stub=True)  # stub: no registered trainable, no cluster


def report(scheduler: TrialScheduler, trial_id: str, n_edits: int, value: float, metric: str) -> str:
    return scheduler.on_trial_result(None, trial(trial_id), {N_EDITS: n_edits, metric: value})


def test_ray_keeps_the_public_hooks_the_asha_checkpoint_uses() -> None:
    """The methods, not just their names: a scheduler that stopped implementing save/restore
    would raise NotImplementedError (TrialScheduler's default)."""
    for name in ("save", "restore", "on_trial_add", "on_trial_result", "on_trial_complete"):
        assert getattr(AsyncHyperBandScheduler, name) is not getattr(TrialScheduler, name), (
            f"{RAY}: AsyncHyperBandScheduler.{name} is no longer its own; {SCHEDULER_FILE} relies on it"
        )
    for name in ("get_state", "set_state"):
        assert callable(getattr(RungStateCallback, name, None)), f"{RAY}: tune.Callback.{name} is gone; {SCHEDULER_FILE} relies on it"


def test_asha_rungs_survive_tunes_callback_checkpoint(tmp_path: Path) -> None:
    spec = load_spec(tiny_spec(tmp_path, name="rungs"))  # T=6, grace 2, rf 2: rungs at 2 and 4 edits
    metric = spec.early_stopping.metric
    before, callbacks = make_scheduler(spec)
    assert isinstance(before, MilestoneASHA) and isinstance(callbacks[0], RungStateCallback)
    for trial_id in "abcde":
        before.on_trial_add(None, trial(trial_id))
    for trial_id, value in zip("abcde", (0.9, 0.8, 0.7, 0.6, 0.85)):
        report(before, trial_id, 2, value, metric)
    report(before, "a", 4, 0.9, metric)
    before.on_trial_complete(None, trial("d"), {N_EDITS: 2, metric: 0.6})  # stopped; e stays live

    # What Tune does: CallbackList.save_to_dir at an experiment checkpoint; on resume the
    # unpickled callbacks restore_from_dir, then every restored trial is added again.
    CallbackList(callbacks).save_to_dir(str(tmp_path), session_str="s")
    after, restored_callbacks = make_scheduler(spec)
    CallbackList(restored_callbacks).restore_from_dir(str(tmp_path))
    assert restored_callbacks[0].scheduler is after, "the callback must restore the TuneConfig's own scheduler object"
    fresh, _ = make_scheduler(spec)  # what a resume without the callback would give
    for scheduler in (after, fresh):
        for trial_id in "abce":
            scheduler.on_trial_add(None, trial(trial_id))

    probes = [("p", 2, 0.65), ("q", 2, 0.95), ("e", 4, 0.5), ("b", 4, 0.95), ("r", 2, 0.86)]
    decisions = {}
    for name, scheduler in (("before", before), ("after", after), ("fresh", fresh)):
        for trial_id in "pqr":
            scheduler.on_trial_add(None, trial(trial_id))
        decisions[name] = [report(scheduler, trial_id, n, value, metric) for trial_id, n, value in probes]
    assert decisions["before"] == [TrialScheduler.STOP, TrialScheduler.CONTINUE, TrialScheduler.STOP, TrialScheduler.CONTINUE, TrialScheduler.CONTINUE]
    assert decisions["after"] == decisions["before"], (
        f"{RAY}: AsyncHyperBandScheduler.save/restore no longer carries ASHA's rung records "
        f"(decisions before a checkpoint {decisions['before']}, after restoring it {decisions['after']}); "
        f"{SCHEDULER_FILE} relies on it to keep early stopping across a resume"
    )
    assert decisions["fresh"] != decisions["before"], "the probes must depend on the recorded rungs"


# -- the searcher: its own Optuna study through Tune's searcher checkpoint ----------------------

SPACE = {
    "layer": optuna.distributions.IntDistribution(1, 3),
    "edit_lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True),
}
FIRST = {"layer": 2, "edit_lr": 5e-2}
SPEC = yaml.safe_load((SPECS / "tiny.yaml").read_text())  # T=6; searching SPACE, n_iter and threshold fixed
SPEC["search_space"].update(n_iter=5, threshold=0.5)
SPEC["initial_points"] = []


def searcher(storage_url: str, points: list[dict] | None = None) -> DeferOptunaSearch:
    return DeferOptunaSearch(
        SPACE,
        metric="rel_tf",
        mode="max",
        points_to_evaluate=points,
        sampler=SamplerSettings("tpe", seed=0, n_startup_trials=2),
        study_name="internals",
        storage_url=storage_url,
        total_edits=6,
        spec=spec_from_dict(SPEC),
    )


def study_trials(storage_url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="internals", storage=storage_url).get_trials(deepcopy=False)


def test_ray_keeps_the_public_hooks_the_searcher_checkpoint_uses() -> None:
    for name in ("save_to_dir", "restore_from_dir", "save", "restore", "suggest", "on_trial_result", "on_trial_complete"):
        assert callable(getattr(Searcher, name, None)), f"{RAY}: tune.search.Searcher.{name} is gone; {SEARCHER_FILE} relies on it"


def test_the_searcher_state_survives_tunes_searcher_checkpoint(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = searcher(url, [FIRST])
    assert first.suggest("t1") == {**FIRST, OPTUNA_TRIAL: 0}, "the initial point is asked first"
    first.on_trial_result("t1", {N_EDITS: 2, "rel_tf": 0.5})
    first.on_trial_complete("t1", {N_EDITS: 6, "rel_tf": 0.7})
    live = first.suggest("t2")
    first.on_trial_result("t2", {N_EDITS: 2, "rel_tf": 0.1})

    first.save_to_dir(str(tmp_path), session_str="s")  # what Tune's SearchGenerator calls
    resumed = searcher(url)
    resumed.restore_from_dir(str(tmp_path))
    state = f"{RAY}: Searcher.save_to_dir/restore_from_dir no longer round-trip {SEARCHER_FILE}'s save/restore"
    assert resumed.suggest("t2") == live, f"{state}: the Tune trial -> Optuna trial map was lost"
    resumed.on_trial_complete("t1", {N_EDITS: 6, "rel_tf": 0.1})  # replayed after a resume: ignored
    resumed.on_trial_result("t2", {N_EDITS: 2, "rel_tf": 0.1})  # the same milestone again: reported once
    resumed.on_trial_complete("t2", {N_EDITS: 4, "rel_tf": 0.2})
    assert resumed.suggest("t3")[OPTUNA_TRIAL] == 2

    trials = study_trials(url)
    assert [(t.number, t.state, t.user_attrs["tune_trial_id"]) for t in trials] == [
        (0, TrialState.COMPLETE, "t1"),
        (1, TrialState.PRUNED, "t2"),
        (2, TrialState.RUNNING, "t3"),
    ], state
    assert trials[0].values == [0.7] and trials[0].intermediate_values == {2: 0.5, 6: 0.7}, f"{state}: the completed set was lost"
    assert trials[1].intermediate_values == {2: 0.1, 4: 0.2}


def test_a_searcher_state_from_before_plain_pickling_is_refused_in_one_line(tmp_path: Path) -> None:
    """Earlier versions pickled the live study and trials (format 1); they cannot be rebuilt,
    so restoring one names the format instead of failing somewhere inside Optuna."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    old = searcher(url)
    old.suggest("t1")
    legacy = {key: value for key, value in old.__getstate__().items() if key != "_state_format"}
    (tmp_path / "searcher-state-old.pkl").write_bytes(pickle.dumps(legacy))
    resumed = pickle.loads(pickle.dumps(old))
    with pytest.raises(ValueError, match=r"format None.*start the sweep over") as raised:
        resumed.restore(str(tmp_path / "searcher-state-old.pkl"))
    assert "\n" not in str(raised.value)
