"""Curve mode, constraints and never-train-twice on the search side: a milestone's curve points
(results/curve_points.py), what the searcher tells a real Optuna study (curve points as trials,
constraint values, NSGA-II generations, reuse of a training instead of a second one), and a
real curve-mode sweep of the tiny Llama on a local Ray."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from defer_core.curve import curve_thresholds, thin, tf_metrics_at
from defer_core.results import GateRow, GridPoint, MilestoneResult
from orchestrator.protocol import GATES_KEY, INTERMEDIATE_KEY, N_EDITS, OPTUNA_TRIAL, POINTS_KEY, REPLAY_KEY, REUSE_OF, THRESHOLD
from orchestrator.results.curve_points import MilestoneCurve, best_point, curve_points
from orchestrator.search.curve_trials import CURVE_TRAINING_ATTR, SOURCE_TRIAL_ATTR, TUNE_TRIAL_ATTR
from orchestrator.search.optuna_search import make_searcher
from orchestrator.spec import SweepSpec, load_spec, spec_from_dict
from orchestrator.sweep.driver import execute
from orchestrator.sweep.preflight import prepare
from orchestrator.worker.trainable import curve_report, milestone_report

from .orchestrator_support import SPECS, parquet_rows, state, tiny_spec

TINY = yaml.safe_load((SPECS / "tiny.yaml").read_text())
P = {"layer": 2, "edit_lr": 5.0e-2, "n_iter": 5}


def spec_of(**changes) -> SweepSpec:
    """tiny.yaml in curve mode, T=6, with top-level keys replaced (search_space merged)."""
    data = copy.deepcopy(TINY)
    data["search_space"].update(threshold="curve", **changes.pop("search_space", {}))
    data.update(initial_points=[P], early_stopping=None)
    data.update(changes)
    return spec_from_dict(data)


# Two records: each probe row's gate (float32 values, as a model computes them), and its tf
# accuracy with the adaptor forced on and off.
GATES = (
    GateRow("a", "rel", 0.25, 1.0, 0.0), GateRow("a", "gen", 0.625, 1.0, 0.0), GateRow("a", "loc", 0.4375, 0.5, 1.0),
    GateRow("b", "rel", 0.75, 1.0, 0.5), GateRow("b", "gen", 0.125, 0.0, 0.0), GateRow("b", "loc", 0.8125, 0.0, 1.0),
)
GRID = (GridPoint(0.5, {"rel_gen": 0.5, "gen_gen": 0.0, "loc_gen": 1.0}), GridPoint(0.9, {"rel_gen": 0.0, "gen_gen": 0.0, "loc_gen": 1.0}))
EARLIER = (GateRow("a", "rel", 0.9, 1.0, 0.0), GateRow("a", "gen", 0.9, 1.0, 0.0), GateRow("a", "loc", 0.1, 0.0, 1.0))
LOC_MIN = [{"metric": "loc_tf", "min": 0.9}]


# -- curve points ---------------------------------------------------------------------------------


def test_points_are_the_thinned_tf_breakpoints_and_the_grid_with_exact_metrics() -> None:
    spec = spec_of(scorings=["tf", "gen"], constraints=LOC_MIN)
    points = curve_points(MilestoneCurve(6, GATES, GRID), spec)
    thresholds = [p[THRESHOLD] for p in points]
    assert thresholds == sorted(set(thin(curve_thresholds(g.gate for g in GATES), 0.02)) | {0.5, 0.9})
    for point in points:
        expected = tf_metrics_at(GATES, point[THRESHOLD], "float32")
        assert {k: point[k] for k in expected} == expected
        assert point["mean_tf"] == pytest.approx(sum(expected.values()) / 3)
        assert ("rel_gen" in point) == (point[THRESHOLD] in (0.5, 0.9))  # generation only on the grid
        assert point["feasible"] == (point["loc_tf"] >= 0.9)
    at_half = next(p for p in points if p[THRESHOLD] == 0.5)
    # by hand: rel a 0.25 < 0.5 -> off 0, b fires -> 1; gen a fires -> 1, b off 0; loc a off 1, b fires -> 0
    assert (at_half["rel_tf"], at_half["gen_tf"], at_half["loc_tf"]) == (0.5, 0.5, 0.5)
    assert at_half["mean_gen"] == pytest.approx(0.5) and at_half["feasible"] is False
    assert [p[THRESHOLD] for p in points if p["feasible"]] == [0.9, 1.0]  # loc_tf 1.0 once neither loc gate fires


def test_best_point_is_feasible_first_then_best_with_ties_to_the_lower_threshold() -> None:
    spec = spec_of(constraints=LOC_MIN)
    points = curve_points(MilestoneCurve(6, GATES), spec)
    assert max(p["rel_tf"] for p in points) == 1.0  # reached only by infeasible points (low thresholds)
    best = best_point(points, spec)
    # feasible: thresholds above 0.8125; rel_tf 0.25 at all of them, so the lowest wins
    assert best is not None and best["feasible"] and best["rel_tf"] == 0.25
    assert best[THRESHOLD] == min(p[THRESHOLD] for p in points if p["feasible"])
    unconstrained = best_point(points, spec_of())
    assert unconstrained is not None and unconstrained[THRESHOLD] == 0.0 and unconstrained["rel_tf"] == 1.0
    by_stopping_metric = spec_of(early_stopping={"metric": "loc_tf", "grace_edits": 2})  # what ASHA compares picks the point
    chosen = best_point(points, by_stopping_metric)
    assert chosen is not None and chosen["loc_tf"] == 1.0 and chosen[THRESHOLD] == min(p[THRESHOLD] for p in points if p["loc_tf"] == 1.0)


def test_thinning_keeps_one_point_per_resolution_step() -> None:
    gates = tuple(GateRow(str(i), "rel", g, 1.0, 0.0) for i, g in enumerate((0.5, 0.505, 0.51, 0.53)))
    assert [p[THRESHOLD] for p in curve_points(MilestoneCurve(6, gates), spec_of())] == [0.0, 0.5, 0.53, 1.0]
    fine = spec_of(curve={"resolution": 0.001})
    assert [p[THRESHOLD] for p in curve_points(MilestoneCurve(6, gates), fine)] == [0.0, 0.5, 0.505, 0.51, 0.53, 1.0]


def test_each_point_carries_its_objective_at_every_milestone_so_far() -> None:
    spec = spec_of()
    points = curve_points(MilestoneCurve(6, GATES), spec, [MilestoneCurve(2, EARLIER)])
    for point in points:
        t = point[THRESHOLD]
        assert point[INTERMEDIATE_KEY] == {2: tf_metrics_at(EARLIER, t, "float32")["rel_tf"], 6: point["rel_tf"]}
    assert INTERMEDIATE_KEY not in curve_points(MilestoneCurve(6, GATES), spec_of(objectives=[{"metric": "rel_tf"}, {"metric": "loc_tf"}]))[0]


# -- the searcher on a real Optuna study (no Ray) ------------------------------------------------


def study_of(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def curve_reports(spec: SweepSpec, gates_by_milestone: list[tuple[GateRow, ...]], grid: tuple[GridPoint, ...] = ()) -> list[dict]:
    """A curve-mode worker's reports (trainable.curve_report) for given gate rows per milestone."""
    reports, earlier = [], []
    for n_edits, gates in zip(spec.milestones, gates_by_milestone):
        milestone = MilestoneResult(n_edits=n_edits, protocol=spec.protocol, metrics={}, gates=gates, grid=grid)
        reports.append(curve_report(spec, milestone, [], 0.0, list(earlier)))
        earlier.append(MilestoneCurve.of(milestone))
    return reports


def test_curve_points_reach_optuna_as_trials_with_threshold_values_intermediates_and_constraints(tmp_path: Path) -> None:
    spec = spec_of(milestones=[2, 6], constraints=LOC_MIN)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = make_searcher(spec, url, "curve")
    config = searcher.suggest("t1")
    assert config == {**P, OPTUNA_TRIAL: 0}, "curve mode asks no threshold"
    first, final = curve_reports(spec, [EARLIER, GATES])
    searcher.on_trial_result("t1", first)
    searcher.on_trial_complete("t1", final)

    trials = study_of(url, "curve").get_trials()
    training, added = trials[0], trials[1:]
    assert training.state == TrialState.COMPLETE and training.values == [final["rel_tf"]]
    assert training.user_attrs[THRESHOLD] == final[THRESHOLD] and training.user_attrs[CURVE_TRAINING_ATTR] is True
    assert training.user_attrs["feasible"] is True and training.constraints == {"loc_tf>=0.9": pytest.approx(0.9 - final["loc_tf"])}
    assert training.intermediate_values == {2: first["rel_tf"], 6: final["rel_tf"]}
    others = [p for p in final[POINTS_KEY] if p[THRESHOLD] != final[THRESHOLD]]
    assert len(added) == len(others) > 3
    for trial, point in zip(sorted(added, key=lambda t: t.params[THRESHOLD]), others):
        assert trial.state == TrialState.COMPLETE
        assert trial.params == {**P, THRESHOLD: point[THRESHOLD]} and trial.values == [point["rel_tf"]]
        assert trial.intermediate_values == {2: tf_metrics_at(EARLIER, point[THRESHOLD], "float32")["rel_tf"], 6: point["rel_tf"]}
        assert trial.constraints == {"loc_tf>=0.9": pytest.approx(0.9 - point["loc_tf"])}
        assert trial.user_attrs == {
            TUNE_TRIAL_ATTR: "t1", SOURCE_TRIAL_ATTR: 0, THRESHOLD: point[THRESHOLD], "feasible": point["feasible"], CURVE_TRAINING_ATTR: False,
        }
    infeasible = [t for t in added if not t.user_attrs["feasible"]]
    assert infeasible and all(max(t.constraints.values()) > 0 for t in infeasible)
    # the sampler's next proposal works on a study holding points with and without a threshold
    assert set(searcher.suggest("t2")) == {"layer", "edit_lr", "n_iter", OPTUNA_TRIAL}


def test_optuna_gets_only_the_points_whose_constrained_metric_is_known(tmp_path: Path) -> None:
    """A constraint on a generation metric: tf breakpoints lack it, so only grid points go to
    Optuna (a breakpoint's feasibility is unknown, not false)."""
    spec = spec_of(scorings=["tf", "gen"], constraints=[{"metric": "loc_gen", "min": 0.9}])
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = make_searcher(spec, url, "gen")
    searcher.suggest("t1")
    *_, final = curve_reports(spec, [GATES] * 3, GRID)
    assert len(final[POINTS_KEY]) > len(GRID)
    searcher.on_trial_complete("t1", final)
    training, *added = study_of(url, "gen").get_trials()
    assert training.user_attrs[THRESHOLD] == 0.5  # feasible grid points only; rel_tf 0.5 there, 0.25 at 0.9
    assert [(t.params[THRESHOLD], t.user_attrs["feasible"]) for t in added] == [(0.9, True)]


def test_nsga2_breeds_from_added_curve_points(tmp_path: Path) -> None:
    """NSGA-II picks parents among its population: the COMPLETE trials carrying a generation.
    An added point carries its training's, so the next generation's parents include points."""
    spec = spec_of(objectives=[{"metric": "rel_tf"}, {"metric": "loc_tf"}], optuna={"population_size": 2})
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = make_searcher(spec, url, "nsga")
    searcher.suggest("t1")
    *_, final = curve_reports(spec, [GATES, GATES, GATES])
    searcher.on_trial_complete("t1", final)
    searcher.suggest("t2")
    sampler = optuna.samplers.NSGAIISampler(population_size=2, seed=0)  # generations and parents live in the storage
    study = optuna.load_study(study_name="nsga", storage=url, sampler=sampler)
    asked = study.get_trials(deepcopy=False)[-1]
    generation = sampler.get_trial_generation(study, asked)
    assert generation == 1
    assert len(sampler.get_population(study, 0)) == len(final[POINTS_KEY])  # the training and its other points
    parents = sampler.get_parent_population(study, generation)
    assert len(parents) == 2 and any(p.user_attrs.get(CURVE_TRAINING_ATTR) is False for p in parents)


def sampled_spec(**changes) -> SweepSpec:
    data = copy.deepcopy(TINY)
    data.update(initial_points=[{**P, "threshold": 0.5}, {**P, "threshold": 0.7}], early_stopping=None)
    data.update(changes)
    return spec_from_dict(data)


def gates_at(n_edits: int) -> tuple[GateRow, ...]:
    """The gate rows at a milestone: record a's alone at 2 edits, both records' later."""
    return GATES[:3] if n_edits < 4 else GATES


def sampled_reports(spec: SweepSpec, threshold: float, milestones: tuple[int, ...]) -> list[dict]:
    """A sampled-threshold worker's reports (trainable.milestone_report): metrics at `threshold`."""
    reports = []
    for n_edits in milestones:
        gates = gates_at(n_edits)
        metrics = tf_metrics_at(gates, threshold, "float32")
        reports.append(milestone_report(MilestoneResult(n_edits=n_edits, protocol="stream", metrics=metrics, gates=gates), [], spec.scorings, 0.0))
    return reports


def test_a_proposal_of_a_running_training_waits_then_replays_it_reread_at_its_threshold(tmp_path: Path) -> None:
    """tf only: a second proposal of a training at another threshold reuses it; while the
    original runs Tune gets None (and asks again with a new trial id), Optuna is asked once."""
    spec = sampled_spec()
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = make_searcher(spec, url, "reuse")
    assert searcher.suggest("t1") == {**P, "threshold": 0.5, OPTUNA_TRIAL: 0}
    reports = sampled_reports(spec, 0.5, spec.milestones)
    searcher.on_trial_result("t1", reports[0])
    assert searcher.suggest("t2") is None and searcher.suggest("t3") is None
    assert len(study_of(url, "reuse").get_trials()) == 2, "the waiting proposal is kept, not asked again"

    # Tune's searcher checkpoint in between: the waiting proposal and the reports survive it
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = pickle.loads(pickle.dumps(searcher))
    restored.restore(str(tmp_path / "searcher.pkl"))
    for report in reports[1:]:
        restored.on_trial_result("t1", report)
    restored.on_trial_complete("t1", reports[-1])
    config = restored.suggest("t4")
    assert {k: config[k] for k in (*P, "threshold", OPTUNA_TRIAL, REUSE_OF)} == {**P, "threshold": 0.7, OPTUNA_TRIAL: 1, REUSE_OF: "t1"}
    replay = config[REPLAY_KEY]
    assert [r[N_EDITS] for r in replay] == [2, 4, 6] and all(GATES_KEY not in r and "edits" not in r for r in replay)
    for report in replay:
        expected = tf_metrics_at(gates_at(report[N_EDITS]), 0.7, "float32")
        assert {k: report[k] for k in expected} == expected, "re-read at the new threshold from the original's gate rows"
        assert report["mean_tf"] == pytest.approx(sum(expected.values()) / 3)
    assert replay[-1]["gen_tf"] != reports[-1]["gen_tf"]  # gen a (gate 0.625) fires at 0.5, not at 0.7
    for report in replay:  # what the worker reports back (replay_reuse adds its own keys)
        restored.on_trial_result("t4", report)
    restored.on_trial_complete("t4", replay[-1])
    trials = study_of(url, "reuse").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[1].values == [replay[-1]["rel_tf"]] and trials[1].user_attrs[REUSE_OF] == "t1"
    assert trials[1].intermediate_values == {r[N_EDITS]: r["rel_tf"] for r in replay}


def test_another_threshold_trains_again_unless_tf_is_the_only_scoring(tmp_path: Path) -> None:
    spec = sampled_spec(scorings=["tf", "gen"])
    searcher = make_searcher(spec, f"sqlite:///{tmp_path / 'optuna.db'}", "twice")
    searcher.suggest("t1")
    second = searcher.suggest("t2")  # the same training at 0.7: gen would differ, so it trains (no waiting)
    assert second == {**P, "threshold": 0.7, OPTUNA_TRIAL: 1}


def test_a_failed_original_is_trained_again_and_a_pruned_one_replays_pruned(tmp_path: Path) -> None:
    spec = sampled_spec(initial_points=[{**P, "threshold": 0.5}] * 3)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = make_searcher(spec, url, "fail")
    searcher.suggest("t1")
    searcher.on_trial_complete("t1", error=True)
    assert REUSE_OF not in searcher.suggest("t2"), "a failed training is trained again"
    first = sampled_reports(spec, 0.5, (2,))[0]
    searcher.on_trial_complete("t2", first)  # stopped at 2 edits of 6: pruned
    config = searcher.suggest("t3")
    assert config[REUSE_OF] == "t2" and [r[N_EDITS] for r in config[REPLAY_KEY]] == [2]
    searcher.on_trial_complete("t3", config[REPLAY_KEY][-1])
    assert [t.state for t in study_of(url, "fail").get_trials()] == [TrialState.FAIL, TrialState.PRUNED, TrialState.PRUNED]


# -- a real curve-mode sweep on Ray -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def curve_sweep(local_ray: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 Tune trials, one at a time: P twice (the second reuses the first's training), then one
    proposed by TPE; rel_tf is the objective, loc_tf >= 0.9 the constraint."""
    tmp = tmp_path_factory.mktemp("curve")
    search_space = {**TINY["search_space"], "threshold": "curve"}
    spec = load_spec(tiny_spec(
        tmp, name="curve", T=3, milestones=[1, 3], search_space=search_space, initial_points=[P, P], num_trials=3, concurrency=1,
        early_stopping=None, constraints=LOC_MIN,
    ))
    assert execute(spec, prepare(spec)).finished
    return spec.output_dir


def test_the_sweep_trains_a_repeated_proposal_once_and_replays_it(curve_sweep: Path) -> None:
    trials = sorted(parquet_rows(curve_sweep, "trials"), key=lambda t: t["optuna_trial"])
    first, second = trials[0], trials[1]
    assert (second["reuse_of"], first["reuse_of"]) == (first["trial_id"], None)
    edits = parquet_rows(curve_sweep, "edits")
    assert sorted(e["edit_index"] for e in edits if e["trial_id"] == first["trial_id"]) == [1, 2, 3]
    assert all(0.0 < e["gate"] < 1.0 and e["success_on"] is not None for e in edits), "each edit carries its gate (curve mode reads success anywhere)"
    assert not [e for e in edits if e["trial_id"] == second["trial_id"]], "the reuse made no edit"
    milestones = parquet_rows(curve_sweep, "milestones")
    values = {t["trial_id"]: [(m["n_edits"], m["rel_tf"], m["loc_tf"]) for m in sorted(milestones, key=lambda m: m["n_edits"]) if m["trial_id"] == t["trial_id"]] for t in trials}
    assert values[second["trial_id"]] == values[first["trial_id"]] and len(values[first["trial_id"]]) == 2

    studies = training_trials(curve_sweep)
    assert studies[second["trial_id"]].values == studies[first["trial_id"]].values
    assert studies[second["trial_id"]].intermediate_values == studies[first["trial_id"]].intermediate_values
    assert studies[second["trial_id"]].user_attrs[REUSE_OF] == first["trial_id"]


def training_trials(out: Path) -> dict[str, optuna.trial.FrozenTrial]:
    """The asked trials (one per Tune trial) by Tune trial id; added curve points left out."""
    info = state(out)
    study = optuna.load_study(study_name=info["optuna_study_name"], storage=info["optuna_storage"])
    return {t.user_attrs[TUNE_TRIAL_ATTR]: t for t in study.get_trials() if t.user_attrs.get(CURVE_TRAINING_ATTR) is True}


def test_optuna_gets_each_trainings_curve_points_and_marks_the_infeasible(curve_sweep: Path) -> None:
    info = state(curve_sweep)
    trials = optuna.load_study(study_name=info["optuna_study_name"], storage=info["optuna_storage"]).get_trials()
    trainings = {t.number: t for t in trials if t.user_attrs.get(CURVE_TRAINING_ATTR) is True and REUSE_OF not in t.user_attrs}
    points = [t for t in trials if t.user_attrs.get(CURVE_TRAINING_ATTR) is False]
    assert len(trainings) == 2 and {p.user_attrs[SOURCE_TRIAL_ATTR] for p in points} == set(trainings)
    assert all(t.state == TrialState.COMPLETE and "threshold" not in t.params for t in trainings.values())
    for point in points:
        training = trainings[point.user_attrs[SOURCE_TRIAL_ATTR]]
        assert point.state == TrialState.COMPLETE
        assert point.params == {**training.params, "threshold": point.user_attrs[THRESHOLD]} and 0.0 <= point.params["threshold"] <= 1.0
        assert set(point.intermediate_values) == {1, 3} and point.intermediate_values[3] == point.value
        assert point.user_attrs["feasible"] == (point.constraints["loc_tf>=0.9"] <= 0)
    assert {p.user_attrs["feasible"] for p in points} == {True, False}, "low thresholds damage locality, high ones do not"
    rows = {(r["trial_id"], r["threshold"]): r for r in parquet_rows(curve_sweep, "points") if r["n_edits"] == 3}
    for point in points:  # Optuna's values are the recorded curve's
        row = rows[(point.user_attrs[TUNE_TRIAL_ATTR], point.params["threshold"])]
        assert point.value == row["rel_tf"] and point.user_attrs["feasible"] == row["feasible"]


# -- what the searcher relies on in the installed Optuna (pyproject: optuna>=5,<6) ---------------

OPTUNA = f"optuna {optuna.__version__}"
SEARCHER_FILE = "orchestrator/search/curve_trials.py"


def test_optuna_keeps_the_public_constraint_api_the_searcher_uses(tmp_path: Path) -> None:
    """Trial.set_constraint and create_trial(constraints=...) (Optuna 5), which samplers and
    best_trial read as trial.constraints without any constraints_func."""
    assert callable(getattr(optuna.trial.Trial, "set_constraint", None)), f"{OPTUNA}: Trial.set_constraint is gone; {SEARCHER_FILE} (describe) sets constraints with it"
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'c.db'}", direction="maximize")
    x = optuna.distributions.FloatDistribution(0, 1)
    asked = study.ask({"x": x})
    asked.set_constraint("loc_tf>=0.9", 0.5)
    study.tell(asked, 1.0)
    study.add_trial(optuna.trial.create_trial(params={"x": 0.1}, distributions={"x": x}, value=0.2, constraints={"loc_tf>=0.9": -0.1}))
    assert [t.constraints for t in study.trials] == [{"loc_tf>=0.9": 0.5}, {"loc_tf>=0.9": -0.1}]
    assert study.best_trial.number == 1, f"{OPTUNA}: an infeasible trial ranks first; constraints set by {SEARCHER_FILE} are ignored"


def test_optuna_keeps_the_generation_attr_that_puts_added_points_in_nsga2s_population(tmp_path: Path) -> None:
    """The one private name the searcher uses (curve_trials.ga_generation_attrs); NSGA-II
    ranks the feasible added trial first, though the infeasible one dominates it."""
    key_of = getattr(optuna.samplers.NSGAIISampler, "_get_generation_key", None)
    assert callable(key_of), f"{OPTUNA}: NSGAIISampler._get_generation_key is gone; {SEARCHER_FILE} ga_generation_attrs needs the new way to set a trial's generation"
    sampler = optuna.samplers.NSGAIISampler(population_size=2, seed=0)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'g.db'}", directions=["maximize", "maximize"], sampler=sampler)
    x = optuna.distributions.FloatDistribution(0, 1)
    for generation, values, violation in ((0, [0.9, 0.9], 0.5), (0, [0.1, 0.2], -0.1), (1, [0.5, 0.5], -0.1)):
        study.add_trial(optuna.trial.create_trial(
            params={"x": 0.5}, distributions={"x": x}, values=values, system_attrs={key_of(): generation}, constraints={"loc_tf>=0.9": violation},
        ))
    populations = [[t.number for t in sampler.get_population(study, g)] for g in (0, 1)]
    assert populations == [[0, 1], [2]], f"{OPTUNA}: an added trial's generation system attr no longer places it in NSGA-II's population"
    assert [t.number for t in sampler.select_parent(study, 1)] == [1, 0], f"{OPTUNA}: NSGA-II no longer ranks feasible trials first (trial.constraints)"
