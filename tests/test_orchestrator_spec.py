"""Sweep spec validation: every bad spec fails before anything starts, naming the key."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from defer_core.errors import DeferInputError
from orchestrator.cli import main
from orchestrator.sinks.layout import SWEEP_FORMAT
from orchestrator.sweep.preflight import check_model
from orchestrator.search.space import optuna_distributions
from orchestrator.spec.trial_config import hparams_for
from orchestrator.spec import CURVE_TRAINING_THRESHOLD, Choice, ConfirmSpec, Constraint, CurveSpec, FloatRange, IntRange, Repeats, load_spec, spec_from_dict, spec_to_yaml

from .orchestrator_support import SPECS

ROOT = Path(__file__).resolve().parent.parent
TINY = yaml.safe_load((SPECS / "tiny.yaml").read_text())


def with_change(path: str, value, base: dict = TINY) -> dict:
    """`base` (TINY) with one dotted key set (value None deletes it)."""
    data = copy.deepcopy(base)
    *parents, leaf = path.split(".")
    node = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if value is None:
        del node[leaf]
    else:
        node[leaf] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("T", None, "missing required key 'T'"),
        ("T", 0, "key 'T' must be >= 1"),
        ("Tee", 5, "unknown key 'Tee'"),
        ("milestones", [4, 2], "key 'milestones' must be distinct and ascending"),
        ("milestones", [2, 8], "key 'milestones' has 8 > T=6"),
        ("protocol", "waves", "key 'protocol' must be one of stream, chunks"),
        ("scorings", ["tf", "beam"], "key 'scorings' has 'beam'"),
        ("search_space.layer", {"low": 3, "high": 1}, "key 'search_space.layer.low' must be <= high"),
        ("search_space.module_template", "model.layers[27].mlp.down_proj", "key 'search_space.module_template' must contain {layer}"),
        ("search_space.module_template", "model.layers[{layer}].mlp.{proj}", "key 'search_space.module_template' may only use the field {layer}"),
        ("search_space.module_template", "model.layers[{layer}].mlp.down_proj.weight", "drop the '.weight' suffix"),
        ("search_space.edit_lr", {"low": 0, "high": 0.1, "log": True}, "key 'search_space.edit_lr.low' must be > 0 for a log range"),
        ("search_space.edit_lr", "fast", "key 'search_space.edit_lr' must be a number"),
        ("search_space.threshold", {"low": 0.2, "high": 1.5}, "key 'search_space.threshold' must lie in [0, 1]"),
        ("search_space.n_iter", [5, 0], "key 'search_space.n_iter' must be >= 1"),
        ("search_space.n_iter", {"low": 1, "high": 4}, "key 'search_space.n_iter' must be an integer or a list"),
        ("initial_points", [{"layer": 9, "edit_lr": 0.01, "n_iter": 5, "threshold": 0.5}], "key 'initial_points[0].layer' = 9 lies outside the search space"),
        ("initial_points", [{"layer": 2, "edit_lr": 0.01, "threshold": 0.5}], "missing required key 'initial_points[0].n_iter'"),
        ("objectives", [{"metric": "rel_gen", "direction": "maximize"}], "key 'objectives[0].metric' = 'rel_gen' is not reported under scorings ['tf']"),
        ("objectives", [{"metric": "rel_tf", "direction": "up"}], "key 'objectives[0].direction' must be one of maximize, minimize"),
        ("objectives", [], "key 'objectives' must be a non-empty list"),
        ("num_trials", 0, "key 'num_trials' must be >= 1"),
        ("concurrency", 1.5, "key 'concurrency' must be an integer"),
        ("pack_size", 0, "key 'pack_size' must be >= 1"),
        ("pack_size", 9, "key 'pack_size' must be at most num_trials (4), got 9"),
        ("resources_per_trial.gpu", -1, "key 'resources_per_trial.gpu' must be >= 0.0"),
        ("resources_per_trial.cpu", 0, "key 'resources_per_trial.cpu' must be > 0"),
        ("early_stopping.grace_edits", 3, "key 'early_stopping.grace_edits' = 3 must be a milestone before T"),
        ("early_stopping.reduction_factor", 1, "key 'early_stopping.reduction_factor' must be > 1"),
        ("early_stopping.metric", "loc_gen", "key 'early_stopping.metric' = 'loc_gen' is not reported"),
        ("optuna.population_size", 8, "key 'optuna.population_size' only applies to multi-objective sweeps"),
        ("mlflow.tracking_url", "x", "unknown key 'mlflow.tracking_url'"),
        ("model.name", None, "missing required key 'model.name'"),
        ("model.dtype", "int8", "key 'model.dtype' must be one of"),
        ("storage_uri", "ftp://host/results", "key 'storage_uri' must be a pyarrow filesystem URI such as s3://bucket/prefix"),
        ("storage_uri", "s3://bucket/sweeps?endpoint=x", "Unexpected query parameter in S3 URI: 'endpoint'"),
        ("storage_uri", "s3:///sweeps", "Missing bucket name"),
        ("storage_uri", "mock://results", "in-memory test filesystem"),
        ("storage_uri", ["s3://bucket"], "key 'storage_uri' must be a non-empty string"),
    ],
)
def test_invalid_spec_names_the_key(path: str, value, expected: str) -> None:
    with pytest.raises(DeferInputError) as caught:
        spec_from_dict(with_change(path, value), source="tiny.yaml")
    message = str(caught.value)
    assert message.startswith("tiny.yaml: ")
    assert expected in message
    assert "\n" not in message


def test_tiny_spec_parses_into_a_search_space() -> None:
    spec = load_spec(SPECS / "tiny.yaml")
    space = spec.search_space
    assert space.layer == IntRange(1, 3)
    assert space.edit_lr == FloatRange(1e-3, 1e-1, log=True)
    assert space.n_iter == Choice((2, 5))
    assert spec.milestones == (2, 4, 6) and spec.T == 6
    assert spec.early_stopping is not None and spec.early_stopping.metric == "rel_tf"
    distributions = optuna_distributions(spec)
    assert distributions["layer"].low == 1 and distributions["layer"].high == 3
    assert distributions["edit_lr"].log is True
    hparams = hparams_for(spec, {"layer": 3, "edit_lr": 0.01, "n_iter": 5, "threshold": 0.4})
    assert hparams.inner_params == ("model.layers[3].mlp.down_proj.weight",)


def test_fixed_parameters_are_not_searched_and_milestones_end_at_T() -> None:
    data = with_change("search_space.threshold", 0.5)
    data["milestones"] = [2, 4]
    data["initial_points"] = [{"layer": 2, "edit_lr": 0.05, "n_iter": 5}]
    spec = spec_from_dict(data)
    assert "threshold" not in optuna_distributions(spec)
    assert spec.milestones == (2, 4, 6)
    assert hparams_for(spec, {"layer": 1, "edit_lr": 0.01, "n_iter": 2}).threshold == 0.5


@pytest.mark.parametrize("name", ["llama2-7b-zsre.yaml", "smollm2-zsre-demo.yaml"])
def test_shipped_specs_are_valid(name: str) -> None:
    spec = load_spec(ROOT / "search_spaces" / name)
    assert spec.initial_points, "EasyEdit's defaults are enqueued first"
    first = spec.initial_points[0]
    assert first["layer"] == 27 and first["edit_lr"] == pytest.approx(7e-5) and first["threshold"] == 0.5
    assert spec.multi_objective


def test_llama_spec_is_the_seed_setup() -> None:
    spec = load_spec(ROOT / "search_spaces" / "llama2-7b-zsre.yaml")
    assert spec.model.name == "meta-llama/Llama-2-7b-hf" and spec.model.dtype == "float32"  # EasyEdit's DEFER runs fp32 (issue 11)
    assert spec.T == 1000 and spec.milestones[-1] == 1000
    assert spec.search_space.layer_bounds()[0] <= 27 <= spec.search_space.layer_bounds()[1]
    assert spec.initial_points[0]["n_iter"] == 100
    assert spec.resources_per_trial.gpu == 1  # ~27 GB of fp32 weights: one trial per 48 GB card


def test_layer_range_beyond_the_model_fails_before_the_sweep(tmp_path: Path) -> None:
    spec = spec_from_dict(with_change("search_space.layer", {"low": 2, "high": 4}), source="tiny.yaml")
    with pytest.raises(DeferInputError, match=r"key 'search_space.layer' goes up to 4 but tiny-llama has 4 layers"):
        check_model(spec, "tiny.yaml")


def test_template_naming_a_missing_module_fails_before_the_sweep() -> None:
    spec = spec_from_dict(with_change("search_space.module_template", "model.layers[{layer}].mlp.out_proj"), source="tiny.yaml")
    with pytest.raises(DeferInputError, match=r"key 'search_space.module_template' gives 'model.layers\[1\].mlp.out_proj'.*no submodule 'out_proj'"):
        check_model(spec, "tiny.yaml")


def test_storage_uri_is_kept_as_given_and_a_plain_path_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # no region and no endpoint: checked offline (pyarrow would ask AWS for the region)
    uri = "s3://some-bucket/sweeps/tiny?endpoint_override=127.0.0.1:9000&scheme=http"
    for given in (uri, "s3://some-bucket/sweeps/tiny", "gs://some-bucket/sweeps"):
        spec = spec_from_dict({**TINY, "storage_uri": given})
        assert spec.storage_uri == given
        assert yaml.safe_load(spec_to_yaml(spec))["storage_uri"] == given
    monkeypatch.chdir(tmp_path)
    assert spec_from_dict({**TINY, "storage_uri": "shared/sweeps"}).storage_uri == str(tmp_path / "shared" / "sweeps")
    assert spec_from_dict(TINY).storage_uri is None


def test_cli_run_with_an_invalid_spec_exits_2_and_starts_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = with_change("num_trials", -3)
    data["output_dir"] = str(tmp_path / "never")
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(data))
    assert main(["run", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"defer-sweep: error: {spec}: key 'num_trials' must be >= 1, got -3"
    assert not (tmp_path / "never").exists()


def test_cli_resume_of_a_directory_that_is_no_sweep_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["resume", str(tmp_path)]) == 2
    assert "not a sweep output directory" in capsys.readouterr().err


def test_resume_of_a_moved_sweep_dir_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "spec.yaml").write_text(yaml.safe_dump({**TINY, "output_dir": str(tmp_path / "original")}))
    (moved / "sweep.json").write_text(json.dumps({"format": SWEEP_FORMAT}))  # this version's folder, otherwise empty
    assert main(["resume", str(moved)]) == 2
    assert f"this sweep was created in {tmp_path / 'original'}; resume it there" in capsys.readouterr().err


# -- curve mode and constraints ----------------------------------------------------------------

CURVE = with_change("search_space.threshold", "curve")


def curve_with(path: str, value) -> dict:
    """CURVE with one dotted key set (value None deletes it)."""
    return with_change(path, value, CURVE)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (with_change("search_space.threshold", "curv"), "key 'search_space.threshold' must be a number, a mapping {low, high} or 'curve', got str 'curv'"),
        (with_change("search_space.threshold", [0.3, 0.5]), "key 'search_space.threshold' must be a number, a mapping {low, high} or 'curve'"),
        (with_change("curve", {"resolution": 0.05}), "key 'curve' only applies with search_space.threshold: curve"),
        (curve_with("curve.resolution", 0), "key 'curve.resolution' must be > 0"),
        (curve_with("curve.resolution", 2), "key 'curve.resolution'"),
        (curve_with("curve.gen_grid", [0.5, 0.2]), "key 'curve.gen_grid' must be distinct and ascending, got [0.5, 0.2]"),
        (curve_with("curve.gen_grid", [0.2, 0.2]), "key 'curve.gen_grid' must be distinct and ascending"),
        (curve_with("curve.gen_grid", [0.5, 1.5]), "key 'curve.gen_grid' has 1.5; thresholds lie in [0, 1]"),
        (curve_with("curve.gen_grid", []), "key 'curve.gen_grid' must be a non-empty list of thresholds in [0, 1]"),
        (curve_with("curve.gen_grid", ["high"]), "key 'curve.gen_grid' must be a number, got str 'high'"),
        (curve_with("curve.step", 0.1), "unknown key 'curve.step' (allowed here: gen_grid, resolution)"),
        (curve_with("pack_size", 2), "key 'pack_size' = 2 is not supported with search_space.threshold: curve"),
        (curve_with("initial_points", [{"layer": 2, "edit_lr": 0.05, "n_iter": 5, "threshold": 1.5}]), "key 'initial_points[0].threshold' = 1.5 lies outside the search space (0.0..1.0)"),
        (with_change("constraints", [{"metric": "loc_tf"}]), "key 'constraints[0]' must set min, max or both"),
        (with_change("constraints", [{"metric": "loc_gen", "min": 0.9}]), "key 'constraints[0].metric' = 'loc_gen' is not reported under scorings ['tf']"),
        (with_change("constraints", [{"metric": "loc_tf", "min": 0.9}, {"metric": "mean", "max": 1}]), "key 'constraints[1].metric' = 'mean' is not reported"),
        (with_change("constraints", [{"metric": "loc_tf", "min": 0.9, "max": 0.5}]), "key 'constraints[0].min' must be <= max (0.9 > 0.5)"),
        (with_change("constraints", [{"metric": "loc_tf", "min": "high"}]), "key 'constraints[0].min' must be a number, got str 'high'"),
        (with_change("constraints", [{"metric": "loc_tf", "minimum": 0.9}]), "unknown key 'constraints[0].minimum' (allowed here: max, metric, min)"),
        (with_change("constraints", "loc_tf >= 0.9"), "key 'constraints' must be a list of {metric, min, max}, got str"),
    ],
)
def test_invalid_curve_or_constraint_names_the_key(data: dict, expected: str) -> None:
    with pytest.raises(DeferInputError) as caught:
        spec_from_dict(data, source="tiny.yaml")
    message = str(caught.value)
    assert message.startswith("tiny.yaml: ")
    assert expected in message
    assert "\n" not in message


def test_curve_mode_searches_no_threshold_and_trains_at_the_curve_training_threshold() -> None:
    spec = spec_from_dict(curve_with("constraints", [{"metric": "loc_tf", "min": 0.9}, {"metric": "mean_tf", "max": 0.99}]))
    assert spec.curve_mode and not spec_from_dict(TINY).curve_mode
    assert spec.curve == CurveSpec() and spec.curve.resolution == 0.02 and spec.curve.gen_grid == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    assert spec.constraints == (Constraint("loc_tf", 0.9), Constraint("mean_tf", None, 0.99))
    assert set(optuna_distributions(spec)) == {"layer", "edit_lr", "n_iter"}
    assert "threshold" not in spec.search_space.fixed()
    # initial points keep EasyEdit's threshold on paper only: every training is read at every threshold
    assert [set(point) for point in spec.initial_points] == [{"layer", "edit_lr", "n_iter"}] * 2
    assert hparams_for(spec, {"layer": 2, "edit_lr": 0.01, "n_iter": 2}).threshold == CURVE_TRAINING_THRESHOLD
    assert hparams_for(spec, {"layer": 2, "edit_lr": 0.01, "n_iter": 2, "threshold": 0.8}).threshold == 0.8  # a curve point exported
    custom = spec_from_dict({**CURVE, "curve": {"resolution": 0.1, "gen_grid": [0.25, "0.75"]}})
    assert custom.curve == CurveSpec(resolution=0.1, gen_grid=(0.25, 0.75))
    with pytest.raises(KeyError, match="threshold"):
        hparams_for(spec_from_dict(TINY), {"layer": 2, "edit_lr": 0.01, "n_iter": 2})  # a sampled threshold is never filled in


def test_curve_mode_may_fix_every_other_parameter() -> None:
    data = curve_with("search_space.layer", 2)
    data["search_space"].update(edit_lr=0.05, n_iter=5)
    data["initial_points"] = []
    spec = spec_from_dict(data)
    assert optuna_distributions(spec) == {} and spec.search_space.fixed() == {"layer": 2, "edit_lr": 0.05, "n_iter": 5}
    sampled = copy.deepcopy(data)
    sampled["search_space"]["threshold"] = 0.5
    with pytest.raises(DeferInputError, match="fixes every parameter"):
        spec_from_dict(sampled)


def test_shipped_curve_spec_is_the_demo_in_curve_mode() -> None:
    curve = load_spec(ROOT / "search_spaces" / "smollm2-zsre-curve.yaml")
    demo = load_spec(ROOT / "search_spaces" / "smollm2-zsre-demo.yaml")
    assert curve.curve_mode and not demo.curve_mode
    assert curve.constraints == (Constraint("loc_tf", 0.9),)
    assert [o.metric for o in curve.objectives] == ["rel_tf", "loc_tf"]
    assert (curve.T, curve.milestones, curve.model, curve.scorings) == (demo.T, demo.milestones, demo.model, demo.scorings)
    assert curve.initial_points == ({"layer": 27, "edit_lr": pytest.approx(7e-5), "n_iter": 50},)


# -- repeats and the confirm stage (issue 13) -------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"repeats": {"seeds": [0, 1], "orders": 2}, "pack_size": 2}, "key 'repeats' with 4 members cannot be combined with pack_size 2"),
        ({"repeats": {"seeds": [0, 0]}}, "key 'repeats.seeds' lists a seed twice: [0, 0]"),
        ({"repeats": {"seeds": [0, -1]}}, "key 'repeats.seeds' has -1; seeds are integers >= 0"),
        ({"repeats": {"seeds": []}}, "key 'repeats.seeds' must be a non-empty list of seeds"),
        ({"repeats": {"seeds": ["a"]}}, "key 'repeats.seeds' must be an integer, got str 'a'"),
        ({"repeats": {"orders": 0}}, "key 'repeats.orders' must be >= 1"),
        ({"repeats": {"orderz": 2}}, "unknown key 'repeats.orderz'"),
        ({"repeats": [0, 1]}, "key 'repeats' must be a mapping, got list"),
        ({"confirm": {"top": 0}}, "key 'confirm.top' must be >= 1"),
        ({"confirm": {"seeds": [1, 1]}}, "key 'confirm.seeds' lists a seed twice"),
        ({"confirm": {"protocols": ["stream", "waves"]}}, "key 'confirm.protocols' has 'waves'; allowed: stream, chunks, immediate"),
        ({"confirm": {"T": 2.5}}, "key 'confirm.T' must be an integer"),
        ({"confirm": {"auto": "yes"}}, "key 'confirm.auto' must be true or false"),
        ({"confirm": {"tops": 2}}, "unknown key 'confirm.tops'"),
    ],
)
def test_invalid_repeats_or_confirm_names_the_key(changes: dict, expected: str) -> None:
    with pytest.raises(DeferInputError) as caught:
        spec_from_dict({**copy.deepcopy(TINY), **changes}, source="tiny.yaml")
    message = str(caught.value)
    assert message.startswith("tiny.yaml: ") and expected in message and "\n" not in message


def test_repeats_are_refused_in_curve_mode() -> None:
    with pytest.raises(DeferInputError, match=r"key 'repeats' is not supported with search_space.threshold: curve yet"):
        spec_from_dict({**copy.deepcopy(CURVE), "repeats": {"seeds": [0, 1]}}, source="tiny.yaml")
    assert spec_from_dict({**copy.deepcopy(CURVE), "repeats": {"seeds": [4]}}).repeat_members == ((4, 0),)  # one member: nothing repeated


def test_no_repeats_is_one_member_with_the_spec_seed() -> None:
    spec = spec_from_dict({**copy.deepcopy(TINY), "seed": 7})
    assert spec.repeats == Repeats(seeds=(7,), orders=1) and spec.repeat_members == ((7, 0),)
    assert spec.confirm is None
    assert "repeats" not in spec_to_yaml(spec) and "confirm" not in spec_to_yaml(spec)


def test_repeat_members_are_every_seed_and_order_order_major() -> None:
    spec = spec_from_dict({**copy.deepcopy(TINY), "seed": 5, "repeats": {"seeds": [2, 0, 1], "orders": 2}})
    assert spec.repeat_members == ((2, 0), (0, 0), (1, 0), (2, 1), (0, 1), (1, 1))
    assert spec_from_dict({**copy.deepcopy(TINY), "seed": 5, "repeats": {"orders": 3}}).repeat_members == ((5, 0), (5, 1), (5, 2))
    assert spec_from_dict({**copy.deepcopy(TINY), "repeats": {"seeds": 3}}).repeats.seeds == (3,)
    assert spec_from_dict({**copy.deepcopy(TINY), "repeats": {"seeds": [0, 1]}, "pack_size": 1}).repeats.orders == 1


def test_confirm_section_defaults_and_round_trip(tmp_path: Path) -> None:
    spec = spec_from_dict({**copy.deepcopy(TINY), "confirm": True})
    assert spec.confirm == ConfirmSpec() and spec.confirm.top == 3 and spec.confirm.seeds == (0, 1, 2, 3, 4)
    assert (spec.confirm.orders, spec.confirm.T, spec.confirm.protocols, spec.confirm.auto) == (2, None, None, False)
    assert spec_from_dict({**copy.deepcopy(TINY), "confirm": False}).confirm is None
    given = {"top": 2, "seeds": [3, 4], "orders": 1, "T": 12, "protocols": ["stream", "immediate"], "auto": True}
    spec = spec_from_dict({**copy.deepcopy(TINY), "confirm": given, "repeats": {"seeds": [0, 1]}})
    assert spec.confirm == ConfirmSpec(top=2, seeds=(3, 4), orders=1, T=12, protocols=("stream", "immediate"), auto=True)
    path = tmp_path / "again.yaml"
    path.write_text(spec_to_yaml(spec))
    assert load_spec(path) == spec
