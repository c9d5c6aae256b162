"""A real sweep of GRACE and of WISE on the tiny Llama (local Ray, Optuna, MLflow, Parquet),
from spec to best.yaml: the trial rows name the editor and its parameters, DEFER's threshold
and gate rows are absent, the export is the editor's EasyEdit YAML (EasyEdit's keys, loaded
back by the editor's own loader), and the table shows the editor's columns."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from defer_core.editors import load_editor_hparams
from defer_core.grace_hparams import GraceHParams, load_grace_hparams
from defer_core.wise_hparams import WiseHParams, load_wise_hparams
from orchestrator.cli import main
from orchestrator.spec import EDITOR_PARAMS, OTHER_EDITORS_PARAMS, load_spec
from orchestrator.spec.trial_config import EASYEDIT_HPARAMS
from orchestrator.sweep.driver import execute
from orchestrator.sweep.preflight import prepare

from .orchestrator_support import children_by_trial, mlflow_runs, parquet_rows, tiny_spec

COMMON = {"layer": 2, "module_template": "model.layers[{layer}].mlp.down_proj", "edit_lr": {"low": 1.0e-2, "high": 1.0, "log": True}, "n_iter": [2, 3]}
SPACES = {
    "grace": {**COMMON, "eps": {"low": 0.5, "high": 50.0}, "val_init": ["cold", "warm"]},
    "wise": {**COMMON, "mask_ratio": {"low": 0.1, "high": 0.5}, "save_freq": 2, "merge_freq": 4},
}
LOADERS = {"grace": (load_grace_hparams, GraceHParams, "GRACE"), "wise": (load_wise_hparams, WiseHParams, "WISE")}


@pytest.fixture(scope="module")
def sweeps(local_ray: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("editors")
    out = {}
    for editor, space in SPACES.items():
        spec = load_spec(tiny_spec(tmp, name=f"tiny-{editor}", editor=editor, search_space=space, initial_points=[], T=4, milestones=[2, 4],
                                   num_trials=2, concurrency=2, early_stopping=False, objectives=[{"metric": "rel_tf", "direction": "maximize"}]))
        assert execute(spec, prepare(spec)).finished
        out[editor] = spec.output_dir
    return out


@pytest.mark.parametrize("editor", list(SPACES))
def test_trial_rows_name_the_editor_and_its_parameters(sweeps: dict[str, Path], editor: str) -> None:
    trials = parquet_rows(sweeps[editor], "trials")
    assert len(trials) == 2 and all(t["status"] == "complete" and t["editor"] == editor for t in trials)
    searched = [name for name in SPACES[editor] if name in EDITOR_PARAMS[editor] and isinstance(SPACES[editor][name], (dict, list))]
    for trial in trials:
        assert trial["threshold"] is None and trial["rel_tf"] is not None and trial["loc_tf"] is not None
        assert all(trial[name] is not None for name in searched), trial
        assert all(trial[name] is None for name in OTHER_EDITORS_PARAMS if name not in SPACES[editor])
    assert {t["grace_key"] for t in trials} == {"sticky" if editor == "grace" else None}  # EasyEdit's key position unless the spec says otherwise
    assert not parquet_rows(sweeps[editor], "gates")  # DEFER's gates: no threshold read at inference here
    edits = parquet_rows(sweeps[editor], "edits")
    assert len(edits) == 2 * 4 and all(e["gate"] is None and e["final_loss"] is not None for e in edits)
    _, children, _ = mlflow_runs(sweeps[editor])
    runs = children_by_trial(children)
    for trial in trials:
        params = runs[trial["trial_id"]].data.params
        assert params["editor"] == editor and "threshold" not in params and all(name in params for name in searched)


@pytest.mark.parametrize("editor", list(SPACES))
def test_best_yaml_is_the_editors_easyedit_file(sweeps: dict[str, Path], editor: str) -> None:
    load, kind, alg_name = LOADERS[editor]
    best = sweeps[editor] / "best.yaml"
    text = best.read_text()
    assert text.startswith("# dtype: float32")
    exported = load(best)
    assert isinstance(exported, kind) and exported.alg_name == alg_name and load_editor_hparams(best) == exported
    shipped = load(EASYEDIT_HPARAMS / alg_name / "llama-7b.yaml")
    assert list(yaml.safe_load(text)) == list(shipped.to_easyedit_dict())  # EasyEdit's own keys, in its order
    trials = parquet_rows(sweeps[editor], "trials")
    exported_from = [t for t in trials if (t["edit_lr"], t["n_iter"]) == (exported.edit_lr, exported.n_iter)]
    assert exported_from and exported_from[0]["rel_tf"] == max(t["rel_tf"] for t in trials)  # the best by the objective
    parent, _, _ = mlflow_runs(sweeps[editor])  # attached to the parent run, named there (DEFER's threshold tag only for DEFER)
    tags = parent.data.tags
    assert tags["best.trial_id"] in [t["trial_id"] for t in exported_from] and "best.threshold" not in tags
    assert tags["best.hparams"].startswith(exported.module_path) and f"n_iter {exported.n_iter}" in tags["best.hparams"]


@pytest.mark.parametrize("editor", list(SPACES))
def test_table_and_report_show_the_editors_columns(sweeps: dict[str, Path], editor: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["table", str(sweeps[editor]), "--trials", "pareto", "--format", "csv"]) == 0
    header = capsys.readouterr().out.splitlines()[0].split(",")
    own = [name for name in EDITOR_PARAMS[editor] if name != "layer"]
    assert all(name in header for name in own) and "threshold" not in header
    assert main(["report", str(sweeps[editor])]) == 0
    page = (sweeps[editor] / "report" / "report.html").read_text()
    assert all(f"<th>{name}</th>" in page for name in own[:3])


def test_one_table_across_the_editors_sweeps(sweeps: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """`table OUT_GRACE OUT_WISE`: one row per sweep's best, a sweep column, each editor's own
    parameters (another's left out where no row has them), the cells each sweep's own table shows."""
    import csv
    import io

    def csv_rows(*dirs: Path) -> list[dict[str, str]]:
        assert main(["table", *map(str, dirs), "--trials", "best", "--format", "csv"]) == 0
        return list(csv.DictReader(io.StringIO(capsys.readouterr().out)))

    joined = csv_rows(*sweeps.values())
    assert [r["sweep"] for r in joined] == [f"tiny-{editor}" for editor in sweeps]
    alone = [csv_rows(sweeps[editor])[0] for editor in sweeps]
    for row, own in zip(joined, alone):
        assert {k: v for k, v in row.items() if k in own} == {k: v for k, v in own.items() if k in row}  # same trial, numbers, intervals
        assert all(v == "" for k, v in own.items() if k not in row)  # what the join leaves out: parameters no row has
    grace, wise = joined
    assert grace["eps"] and not grace["mask_ratio"] and wise["mask_ratio"] and not wise["eps"]
    assert "threshold" not in joined[0]  # DEFER's column: no sweep here has it
    assert main(["table", *map(str, sweeps.values()), "--trials", "best"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| trial | sweep | layer | edit_lr | n_iter |") and len(lines) == 2 + len(sweeps) + 2
    assert lines[-1].startswith("Table: defer-sweep sweeps 'tiny-grace', 'tiny-wise': 'tiny-grace': the best trial")
    assert main(["table", *map(str, sweeps.values()), "--trials", "0"]) == 2
    assert "trial ids name trials of one sweep" in capsys.readouterr().err
    assert main(["table", str(sweeps["grace"]), str(sweeps["grace"])]) == 2
    assert "a name came twice: tiny-grace, tiny-grace" in capsys.readouterr().err


@pytest.mark.parametrize("editor", list(SPACES))
def test_confirm_reruns_the_editors_best_with_repeats(sweeps: dict[str, Path], editor: str, capsys: pytest.CaptureFixture[str]) -> None:
    """confirm on a GRACE / WISE sweep: the best re-run as 2 seeds x 1 order at T=4, its members
    recorded, best.yaml written from the confirmed trial, and the table's confirmed row a t
    interval over the 2 members. Last in this file: the tests above read the search stage only
    (a confirm runs only where the sweep was made, so not on a copy)."""
    import csv
    import io

    out = sweeps[editor]
    assert main(["confirm", str(out), "--top", "1", "--seeds", "0,1", "--orders", "1", "--T", "4", "--quiet"]) == 0
    capsys.readouterr()
    confirms = [t for t in parquet_rows(out, "trials") if t["stage"] == "confirm"]
    assert len(confirms) == 1 and confirms[0]["status"] == "complete" and confirms[0]["editor"] == editor
    members = [r for r in parquet_rows(out, "member_milestones") if r["trial_id"] == confirms[0]["trial_id"] and r["n_edits"] == 4]
    assert sorted((r["seed"], r["order"]) for r in members) == [(0, 0), (1, 0)]
    assert load_editor_hparams(out / "best.yaml").alg_name == LOADERS[editor][2]
    assert main(["table", str(out), "--format", "csv"]) == 0  # default: the confirmed trials
    (row,) = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert row["stage"] == "confirm" and row["members"] == "2" and row["interval"] == "t"


def test_grace_key_prompt_is_what_the_trials_scored_and_every_output_names_it(local_ray: None, tmp_path: Path, tiny, capsys: pytest.CaptureFixture[str]) -> None:
    """`grace_key: prompt` in a GRACE spec: the trial's milestones are run_trial's with that key
    (not the sticky key's: on this stream they differ), the trials column and MLflow param say
    prompt, and the table's caption, the report and best.yaml's comment name it."""
    from dataclasses import replace

    from defer_core import run_trial
    from defer_core.plan import TrialPlan, grace_key_note
    from orchestrator.spec.trial_config import hparams_for
    from orchestrator.sweep.preflight import load_spec_records

    space = {**COMMON, "edit_lr": 0.5, "n_iter": [3, 4], "eps": 5.0, "val_init": "warm"}
    spec = load_spec(tiny_spec(tmp_path, name="tiny-grace-prompt", editor="grace", grace_key="prompt", search_space=space, initial_points=[], T=4,
                               milestones=[2, 4], num_trials=1, concurrency=1, early_stopping=False, objectives=[{"metric": "rel_tf", "direction": "maximize"}]))
    assert execute(spec, prepare(spec)).finished
    out = spec.output_dir
    (trial,) = parquet_rows(out, "trials")
    assert trial["status"] == "complete" and trial["grace_key"] == "prompt"
    swept = {m["n_edits"]: (m["rel_tf"], m["gen_tf"], m["loc_tf"]) for m in parquet_rows(out, "milestones")}
    hparams, records = hparams_for(spec, trial), load_spec_records(spec)
    plan = TrialPlan(protocol="stream", milestones=(2, 4), scorings=("tf",), grace_key="prompt")

    def metrics(plan: TrialPlan) -> dict[int, tuple[float, float, float]]:
        result = run_trial(tiny, records, hparams, plan, seed=spec.seed)
        return {m.n_edits: tuple(m.metrics[k] for k in ("rel_tf", "gen_tf", "loc_tf")) for m in result.milestones}

    assert swept == metrics(plan)
    assert swept != metrics(replace(plan, grace_key="sticky")), "the key position must matter on this stream for the test to tell them apart"
    _, children, _ = mlflow_runs(out)
    assert children[0].data.params["grace_key"] == "prompt"
    note = grace_key_note("prompt")
    assert main(["table", str(out), "--trials", "best"]) == 0
    assert note in capsys.readouterr().out.splitlines()[-1]
    assert main(["report", str(out)]) == 0 and note in (out / "report" / "report.html").read_text()
    capsys.readouterr()
    comments = [line for line in (out / "best.yaml").read_text().splitlines() if line.startswith("#")]
    assert any(note in line and "sticky" in line for line in comments), comments
    assert load_grace_hparams(out / "best.yaml") == hparams  # the key is the evaluation's, not an hparam: the file is EasyEdit's as ever
