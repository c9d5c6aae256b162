"""`defer-sweep compare`: every protocol × scoring × dtype of one configuration, as a table in
four formats and per-record Parquet; each cell equals `trial` runs of the same settings."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from statistics import fmean

import pyarrow.parquet as pq
import pytest
import yaml

from defer_core import TrialPlan, load_model, run_trial
from defer_core.errors import DeferInputError
from defer_core.results import METRICS, PROTOCOLS, SCORINGS, metric_key
from orchestrator.compare import FORMATS, ComparePlan, column_names, render, run_comparison, write_outputs

from .conftest import tiny_hparams

ROOT = Path(__file__).resolve().parent.parent
HPARAMS = tiny_hparams(edit_lr=5e-2, n_iter=4, threshold=0.3)
T = (1, 2)
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def comparison(zsre_records):
    plan = ComparePlan(hparams=HPARAMS, model="tiny-llama", milestones=T, protocols=PROTOCOLS, scorings=SCORINGS, dtypes=("float32",), seeds=SEEDS)
    return run_comparison(plan, zsre_records[: T[-1]])


def _trial_cells(records, protocol: str, dtype: str = "float32", seeds=SEEDS) -> dict[tuple[str, int], dict[str, float]]:
    """(scoring, T) -> rel/gen/loc: the mean over seeds of separate `run_trial`s."""
    runs = [run_trial(load_model("tiny-llama", dtype=dtype), records, HPARAMS, TrialPlan(protocol=protocol, milestones=T, scorings=SCORINGS), seed=seed)
            for seed in seeds]
    return {
        (scoring, n): {m: fmean(next(x for x in run.milestones if x.n_edits == n).metrics[metric_key(m, scoring)] for run in runs) for m in METRICS}
        for scoring in SCORINGS for n in T
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_cells_equal_separate_trials_and_the_mean_of_their_records(comparison, zsre_records, protocol):
    expected = _trial_cells(zsre_records[: T[-1]], protocol)
    rows = comparison.records
    for (scoring, n), values in expected.items():
        assert comparison.cells[("defer", protocol, scoring, "float32")][n] == values
        for metric in METRICS:
            per_seed = [fmean(r[metric] for r in rows if (r["protocol"], r["scoring"], r["T"], r["seed"]) == (protocol, scoring, n, seed)) for seed in SEEDS]
            assert fmean(per_seed) == pytest.approx(values[metric], abs=1e-12)
    assert {r["record_id"] for r in rows if r["protocol"] == protocol} == {r.record_id for r in zsre_records[: T[-1]]}


def _markdown_rows(text: str) -> list[list[str]]:
    table = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table[:1] + table[2:]]


def _latex_rows(text: str) -> list[list[str]]:
    body = text.split("\\hline")[2]  # header, column names, rows, end
    return [[cell.strip() for cell in row.split("&")] for row in body.split("\\\\") if row.strip()]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_parses_to_the_cells(comparison, fmt):
    text = render(comparison, fmt)
    keys = comparison.plan.row_keys()
    assert len(keys) == len(PROTOCOLS) * len(SCORINGS)
    expected = {key: [comparison.cells[key][n][m] for n in T for m in METRICS] for key in keys}
    if fmt == "json":
        data = json.loads(text)
        got = {(r["editor"], r["protocol"], r["scoring"], r["dtype"]): [r["cells"][str(n)][m] for n in T for m in METRICS] for r in data["rows"]}
        assert got == expected and data["hparams"]["defer"]["edit_lr"] == HPARAMS.edit_lr and data["seeds"] == list(SEEDS)
        return
    if fmt == "csv":
        header, *body = list(csv.reader(io.StringIO(text)))
        assert header == ["editor", "protocol", "scoring", "dtype", *column_names(comparison.plan)]
        assert {tuple(r[:4]): [float(v) for v in r[4:]] for r in body} == expected
        return
    rows = _markdown_rows(text) if fmt == "md" else _latex_rows(text)
    body = rows[1:] if fmt == "md" else rows
    got = {tuple(r[:4]): [float(v) for v in r[4 : 4 + 3 * len(T)]] for r in body}
    assert list(got) == keys
    for key in keys:
        assert got[key] == pytest.approx(expected[key], abs=5e-4)
    if fmt == "md":
        assert rows[0][:5] == ["editor", "protocol", "scoring", "dtype", "Rel T=1"]
        assert dict((tuple(r[:4]), r[-1]) for r in body)[("defer", "immediate", "tf", "float32")] == "EasyEdit from 3c21b20 (HEAD)"


def test_outputs_are_written_beside_each_other(comparison, tmp_path):
    table, records = write_outputs(comparison, "latex", tmp_path / "out")
    assert table == tmp_path / "out" / "compare.tex" and table.read_text() == render(comparison, "latex") + "\n"
    assert pq.read_table(records).to_pylist() == comparison.records


def test_bfloat16_runs_in_bfloat16(zsre_records):
    plan = ComparePlan(hparams=HPARAMS, model="tiny-llama", milestones=(1,), protocols=("immediate",), scorings=("tf",), dtypes=("bfloat16",))
    result = run_comparison(plan, zsre_records[:1])
    alone = run_trial(load_model("tiny-llama", dtype="bfloat16"), zsre_records[:1], HPARAMS, TrialPlan(protocol="immediate", scorings=("tf",)))
    assert result.cells[("defer", "immediate", "tf", "bfloat16")][1] == {m: alone.milestones[0].metrics[metric_key(m, "tf")] for m in METRICS}
    assert {r["dtype"] for r in result.records} == {"bfloat16"}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def _hparams_file(tmp_path: Path) -> Path:
    path = tmp_path / "hparams.yaml"
    path.write_text(yaml.safe_dump(HPARAMS.to_easyedit_dict()))
    return path


def test_command_prints_the_table_and_matches_the_trial_command(tmp_path):
    hparams = _hparams_file(tmp_path)
    out = tmp_path / "cmp"
    done = _cli("compare", str(hparams), "--T", "1,2", "--model", "tiny-llama", "--protocols", "immediate,stream",
                "--scorings", "genctx,tf", "--seeds", "1", "--format", "json", "--output", str(out))
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert (out / "compare.json").read_text() == done.stdout
    assert pq.read_table(out / "records.parquet").num_rows == 2 * 2 * (1 + 2)  # protocols x scorings x records over T
    assert "float32 stream+immediate: edit 2/2" in done.stderr, "one edit stream serves both protocols"
    for protocol in ("immediate", "stream"):
        trial = _cli("trial", str(hparams), "--T", "2", "--milestones", "1,2", "--model", "tiny-llama", "--protocol", protocol,
                     "--scoring", "tf,genctx", "--seed", "1", "--json")
        assert trial.returncode == 0, trial.stderr
        result = json.loads(trial.stdout)
        assert (result["dtype"], result["strip"]) == ("float32", False)
        for milestone in result["milestones"]:
            for scoring in ("tf", "genctx"):
                row = next(r for r in data["rows"] if (r["protocol"], r["scoring"]) == (protocol, scoring))
                assert row["cells"][str(milestone["n_edits"])] == {m: milestone["metrics"][metric_key(m, scoring)] for m in METRICS}


@pytest.mark.parametrize("flag, value, message", [
    ("--protocols", "stream,batch", "--protocols: expected distinct comma-separated names among stream, chunks, immediate"),
    ("--dtypes", "float32,fp64", "--dtypes: expected distinct comma-separated names among auto, float32"),
    ("--T", "10,1", "--T: expected distinct positive edit counts in ascending order"),
])
def test_bad_flags_are_one_line_and_write_nothing(tmp_path, flag, value, message):
    out = tmp_path / "never"
    args = {"--T": "1", flag: value}
    done = _cli("compare", str(_hparams_file(tmp_path)), "--model", "tiny-llama", "--output", str(out), *[x for kv in args.items() for x in kv])
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("defer-sweep: error: ") and message in lines[0]
    assert not out.exists()


def test_editors_side_by_side_each_row_equal_to_that_editor_run_alone(zsre_records, tmp_path):
    """compare with a DEFER and a GRACE file: one row per editor x protocol x scoring; each GRACE
    row equals run_trial of that GRACE configuration (stream and immediate run apart for GRACE,
    as its immediate evaluations can change later edits)."""
    from defer_core.editors import load_editor_hparams, save_editor_hparams
    from defer_core.grace_hparams import load_grace_hparams

    grace = load_grace_hparams(ROOT / "hparams" / "GRACE" / "llama-7b.yaml").replace(inner_params=("model.layers[2].mlp.down_proj.weight",), n_iter=3, eps=20.0)
    grace_file = save_editor_hparams(grace, tmp_path / "grace.yaml")
    defer_file = _hparams_file(tmp_path)
    protocols = ("stream", "immediate")
    plan = ComparePlan(hparams=(load_editor_hparams(defer_file), load_editor_hparams(grace_file)), model="tiny-llama", milestones=T, protocols=protocols,
                       scorings=("tf",), dtypes=("float32",))
    assert plan.edit_streams("defer") == [("stream", "immediate")] and plan.edit_streams("grace") == [("stream",), ("immediate",)]
    result = run_comparison(plan, zsre_records[: T[-1]])
    assert [key[:2] for key in plan.row_keys()] == [("defer", "stream"), ("defer", "immediate"), ("grace", "stream"), ("grace", "immediate")]
    for protocol in protocols:
        alone = run_trial(load_model("tiny-llama"), zsre_records[: T[-1]], grace, TrialPlan(protocol=protocol, milestones=T, scorings=("tf",)))
        for milestone in alone.milestones:
            assert result.cells[("grace", protocol, "tf", "float32")][milestone.n_edits] == {m: milestone.metrics[metric_key(m, "tf")] for m in METRICS}
    assert {r["editor"] for r in result.records} == {"defer", "grace"} and all(r["threshold"] is None for r in result.records if r["editor"] == "grace")
    text = render(result, "md")
    assert "grace model.layers[2].mlp.down_proj.weight, edit_lr 1, n_iter 3, eps 20, val_init cold, replacement replace_last" in text
    with pytest.raises(DeferInputError, match=r"labels: expected one distinct name per configuration, got \['grace', 'grace'\]"):
        ComparePlan(hparams=(grace, grace), model="tiny-llama", milestones=T, protocols=protocols, scorings=("tf",), dtypes=("float32",))


def test_two_configurations_of_one_editor_each_row_equal_to_it_alone(zsre_records, tmp_path):
    """EasyEdit's hparams and a sweep's best, side by side: several files of one editor are
    labelled "editor (file)", each row equals that configuration compared alone, and the
    per-record rows carry the label."""
    other = HPARAMS.replace(edit_lr=1e-2, threshold=0.6)
    first, second = _hparams_file(tmp_path), tmp_path / "best.yaml"
    second.write_text(yaml.safe_dump(other.to_easyedit_dict()))
    out = tmp_path / "cmp"
    done = _cli("compare", str(first), str(second), "--T", "1,2", "--model", "tiny-llama", "--protocols", "stream,immediate", "--scorings", "tf",
                "--format", "json", "--output", str(out))
    assert done.returncode == 0, done.stderr
    labels = [f"defer ({first})", f"defer ({second})"]
    data = json.loads(done.stdout)
    assert [(r["editor"], r["protocol"]) for r in data["rows"]] == [(label, p) for label in labels for p in ("stream", "immediate")]
    assert [r["reproduces"] for r in data["rows"]] == ["EasyEdit before 3c21b20 (WISE paper)", "EasyEdit from 3c21b20 (HEAD)"] * 2
    assert set(data["hparams"]) == set(labels) and data["hparams"][labels[1]]["edit_lr"] == 1e-2
    for label, hparams in zip(labels, (HPARAMS, other)):
        plan = ComparePlan(hparams=hparams, model="tiny-llama", milestones=T, protocols=("stream", "immediate"), scorings=("tf",), dtypes=("float32",))
        alone = run_comparison(plan, zsre_records[: T[-1]])
        for protocol in ("stream", "immediate"):
            row = next(r for r in data["rows"] if (r["editor"], r["protocol"]) == (label, protocol))
            assert row["cells"] == {str(n): alone.cells[("defer", protocol, "tf", "float32")][n] for n in T}
    records = pq.read_table(out / "records.parquet").to_pylist()
    assert {r["config"] for r in records} == set(labels) and {r["editor"] for r in records} == {"defer"}
    assert {r["edit_lr"] for r in records if r["config"] == labels[1]} == {1e-2}


@pytest.mark.parametrize("files, editors, message", [
    (1, "defer,grace", "give HPARAMS files or --editors"),
    (0, None, "give HPARAMS files or --editors"),
    (0, "rome", "--editors: expected distinct comma-separated names among defer, grace, wise"),
    (2, None, "came twice; give each configuration once"),
])
def test_editor_choices_are_checked_in_one_line_before_anything_runs(tmp_path, files, editors, message):
    hparams = [str(_hparams_file(tmp_path))] * files
    done = _cli("compare", *hparams, *(["--editors", editors] if editors else []), "--T", "1", "--model", "tiny-llama", "--output", str(tmp_path / "never"))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr
    assert not (tmp_path / "never").exists()
