"""Specs and hparams files read strictly: a key written twice in one mapping is refused with
both places, a YAML syntax error gives its line and column, and nothing is written or started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from defer_core import DeferInputError, load_hparams
from orchestrator.cli import main
from orchestrator.commands import ExitCode
from orchestrator.spec import load_spec

from .orchestrator_support import SPECS

ROOT = Path(__file__).resolve().parent.parent
TINY_TEXT = (SPECS / "tiny.yaml").read_text()
EASYEDIT_FILE = Path(__file__).parent / "fixtures" / "easyedit_defer_llama-7b.yaml"


def line_of(text: str, start: str, after: int = 0) -> int:
    """The 1-based number of the first line after line `after` that starts with `start`."""
    lines = text.splitlines()
    return next(number for number, line in enumerate(lines, 1) if number > after and line.startswith(start))


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def refusal(path: Path, read=load_spec) -> str:
    with pytest.raises(DeferInputError) as caught:
        read(path)
    message = str(caught.value)
    assert "\n" not in message
    return message


# -- duplicate keys --------------------------------------------------------------------------------


def test_a_top_level_key_written_twice_is_refused_with_both_lines(tmp_path: Path) -> None:
    text = TINY_TEXT + "num_trials: 1\n"  # tiny.yaml already sets num_trials: 4; SafeLoader kept the 1
    path = write(tmp_path, text)
    first, second = line_of(text, "num_trials:"), line_of(text, "num_trials:", line_of(text, "num_trials:"))
    assert first < second
    assert refusal(path) == f"{path}: key 'num_trials' appears twice (lines {first} and {second})"


def test_a_nested_key_written_twice_is_refused_with_its_full_key_and_both_lines(tmp_path: Path) -> None:
    text = TINY_TEXT.replace("  layer: {low: 1, high: 3}\n", "  layer:\n    low: 1\n    high: 3\n    low: 2\n")
    path = write(tmp_path, text)
    first = line_of(text, "    low: 1")
    assert refusal(path) == f"{path}: key 'search_space.layer.low' appears twice (lines {first} and {first + 2})"


def test_a_key_written_twice_in_a_list_item_or_a_flow_mapping_is_refused(tmp_path: Path) -> None:
    text = TINY_TEXT + "constraints:\n  - metric: loc_tf\n    min: 0.5\n    min: 0.9\n"
    path = write(tmp_path, text)
    first = line_of(text, "    min: 0.5")
    assert refusal(path) == f"{path}: key 'constraints[0].min' appears twice (lines {first} and {first + 1})"

    text = TINY_TEXT.replace("T: 6\n", "T: 6\nmilestones: [2, 4, 6]\n", 1)  # `milestones` twice, no longer "a milestones problem"
    path = write(tmp_path, text)
    assert refusal(path) == f"{path}: key 'milestones' appears twice (lines {line_of(text, 'milestones:')} and {line_of(text, 'milestones:', line_of(text, 'milestones:'))})"

    text = TINY_TEXT.replace("{cpu: 1}", "{cpu: 1, cpu: 2}")
    path = write(tmp_path, text)
    line = line_of(text, "resources_per_trial:")
    assert refusal(path) == f"{path}: key 'resources_per_trial.cpu' appears twice (line {line}, columns 23 and 31)"


def test_T_written_twice_is_named_rather_than_reported_as_a_milestones_problem(tmp_path: Path) -> None:
    text = TINY_TEXT + "T: 1\n"
    path = write(tmp_path, text)
    assert refusal(path) == f"{path}: key 'T' appears twice (lines {line_of(text, 'T:')} and {line_of(text, 'T:', line_of(text, 'T:'))})"


def test_merge_keys_may_override_and_equal_numbers_are_one_key(tmp_path: Path) -> None:
    """`<<: *anchor` then a key of the anchor is an override, as YAML defines it, not a duplicate;
    `1` and `1.0` are one key of the parsed mapping, so writing both is."""
    from defer_core.files import read_yaml

    path = write(tmp_path, "base: &base {low: 1, high: 3}\nlayer:\n  <<: *base\n  high: 2\n")
    assert read_yaml(path, "test file") == {"base": {"low": 1, "high": 3}, "layer": {"low": 1, "high": 2}}
    path = write(tmp_path, "1: a\n1.0: b\n")
    assert refusal(path, lambda p: read_yaml(p, "test file")) == f"{path}: key '1.0' appears twice (lines 1 and 2)"


def test_an_hparams_file_with_a_key_written_twice_is_refused(tmp_path: Path) -> None:
    text = EASYEDIT_FILE.read_text() + "edit_lr: 1.0e-2\n"
    path = write(tmp_path, text, "hparams.yaml")
    first, second = line_of(text, "edit_lr:"), line_of(text, "edit_lr:", line_of(text, "edit_lr:"))
    assert refusal(path, load_hparams) == f"{path}: key 'edit_lr' appears twice (lines {first} and {second})"


# -- YAML syntax errors ----------------------------------------------------------------------------


def test_a_yaml_syntax_error_gives_the_line_and_column(tmp_path: Path) -> None:
    text = TINY_TEXT.replace("seed: 0\n", "seed: 0\n  extra: 1\n")  # a mapping value where none may start
    path = write(tmp_path, text)
    assert refusal(path) == f"{path}: not valid YAML (line {line_of(text, '  extra:')}, column 8: mapping values are not allowed here)"

    path = write(tmp_path, "T: 6\nnum_trials: [1, 2\nseed: 0\n")
    assert refusal(path) == f"{path}: not valid YAML (line 3, column 5: expected ',' or ']', but got ':' (while parsing a flow sequence at line 2, column 13))"

    path = write(tmp_path, "alg_name: DEFER\nedit_lr\nn_iter: 3\n", "hparams.yaml")
    assert refusal(path, load_hparams) == f"{path}: not valid YAML (line 3, column 1: could not find expected ':' (while scanning a simple key at line 2, column 1))"


def test_python_tags_are_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = write(tmp_path, f"T: !!python/object/apply:os.system ['touch {marker}']\n")
    assert refusal(path) == f"{path}: not valid YAML (line 1, column 4: could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system')"
    assert not marker.exists()


# -- the command line ------------------------------------------------------------------------------

_RUN_AND_LIST_HEAVY_MODULES = """
import sys
from orchestrator.cli import main
code = main(sys.argv[1:])
print(code, sorted(name for name in ("ray", "optuna", "mlflow", "torch", "transformers") if name in sys.modules))
"""


def test_cli_run_of_a_spec_with_a_key_written_twice_exits_2_before_ray_and_writes_nothing(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    text = TINY_TEXT + f"output_dir: {tmp_path / 'never'}\nnum_trials: 1\n"
    spec = write(workdir, text)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", _RUN_AND_LIST_HEAVY_MODULES, "run", str(spec)], cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    first, second = line_of(text, "num_trials:"), line_of(text, "num_trials:", line_of(text, "num_trials:"))
    assert done.stderr.strip() == f"defer-sweep: error: {spec}: key 'num_trials' appears twice (lines {first} and {second})"
    assert done.stdout.strip() == f"{int(ExitCode.BAD_INPUT)} []"  # nothing of Ray, Optuna, MLflow or torch imported
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["spec.yaml", "work"]  # neither `never` nor runs/ created


def test_cli_run_of_a_spec_with_a_syntax_error_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, TINY_TEXT.replace("T: 6", "T: [6"))
    assert main(["run", str(spec), "--output-dir", str(tmp_path / "never")]) == ExitCode.BAD_INPUT
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"defer-sweep: error: {spec}: not valid YAML (line ") and "column" in error and "\n" not in error
    assert not (tmp_path / "never").exists()


# -- constraint bounds against the metric's range --------------------------------------------------


def with_constraints(tmp_path: Path, *constraints: str) -> Path:
    return write(tmp_path, TINY_TEXT + "constraints:\n" + "".join(f"  - {c}\n" for c in constraints))


@pytest.mark.parametrize(
    ("constraint", "expected"),
    [
        ("{metric: loc_tf, min: 1.5}", "key 'constraints[0].min' = 1.5 is out of loc_tf's range [0, 1]; no trial can meet it"),
        ("{metric: loc_tf, min: 1.01}", "key 'constraints[0].min' = 1.01 is out of loc_tf's range [0, 1]; no trial can meet it"),
        ("{metric: rel_tf, max: -0.1}", "key 'constraints[0].max' = -0.1 is out of rel_tf's range [0, 1]; no trial can meet it"),
        ("{metric: mean_tf, min: 2}", "key 'constraints[0].min' = 2.0 is out of mean_tf's range [0, 1]; no trial can meet it"),
        ("{metric: loc_tf, min: 1.5, max: 0.5}", "key 'constraints[0].min' must be <= max (1.5 > 0.5)"),
    ],
)
def test_a_constraint_no_metric_value_can_meet_is_refused(tmp_path: Path, constraint: str, expected: str) -> None:
    path = with_constraints(tmp_path, constraint)
    assert refusal(path) == f"{path}: {expected}"


def test_the_second_constraint_is_named_by_its_index(tmp_path: Path) -> None:
    path = with_constraints(tmp_path, "{metric: loc_tf, min: 0.9}", "{metric: rel_tf, min: 1.2}")
    assert refusal(path) == f"{path}: key 'constraints[1].min' = 1.2 is out of rel_tf's range [0, 1]; no trial can meet it"


def test_bounds_at_the_edge_of_the_range_are_reachable_and_accepted(tmp_path: Path) -> None:
    spec = load_spec(with_constraints(tmp_path, "{metric: loc_tf, min: 1.0}", "{metric: rel_tf, max: 0.0}", "{metric: mean_tf, min: 0, max: 1}"))
    assert [(c.metric, c.min, c.max) for c in spec.constraints] == [("loc_tf", 1.0, None), ("rel_tf", None, 0.0), ("mean_tf", 0.0, 1.0)]


def test_every_metric_has_a_range_and_every_one_is_a_proportion() -> None:
    """What the bound check relies on: a metric added without a range fails here, not in a sweep."""
    from orchestrator.protocol import METRIC_COLUMNS, METRIC_RANGES

    assert set(METRIC_RANGES) == set(METRIC_COLUMNS)
    assert set(METRIC_RANGES.values()) == {(0.0, 1.0)}


def test_cli_run_with_an_unreachable_constraint_exits_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = with_constraints(tmp_path, "{metric: loc_tf, min: 1.5}")
    assert main(["run", str(path), "--output-dir", str(tmp_path / "never")]) == ExitCode.BAD_INPUT
    assert capsys.readouterr().err.strip() == f"defer-sweep: error: {path}: key 'constraints[0].min' = 1.5 is out of loc_tf's range [0, 1]; no trial can meet it"
    assert not (tmp_path / "never").exists()
