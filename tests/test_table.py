"""`defer-sweep table` on real tiny sweeps (real Ray, Optuna, MLflow, Parquet): every format
parses and its numbers are the Parquet dataset's (means from the milestones table, intervals
recomputed here with scipy / numpy from member_milestones and record_scores), --trials picks
the right rows, and the report's bands and error bars carry the same intervals."""

from __future__ import annotations

import io
import math
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from defer_core.results import METRICS, metric_key
from orchestrator.cli import main
from orchestrator.results.best import choose
from orchestrator.results.query import search_candidates as candidate_rows
from orchestrator.protocol import trial_label
from orchestrator.report.data import load_sweep
from orchestrator.report.importance import Importance
from orchestrator.report.plots import build_plots
from orchestrator.results.ranking import pareto_front
from orchestrator.sinks.layout import read_spec, require_sweep_dir
from orchestrator.spec import load_spec
from orchestrator.sweep.driver import execute
from orchestrator.sweep.preflight import prepare
from orchestrator.table import CONFIDENCE, FALLBACK_MARK, build_table, latex_escape

from .orchestrator_support import parquet_rows, tiny_spec

GOOD = {"layer": 2, "edit_lr": 5.0e-2, "n_iter": 5, "threshold": 0.5}
BAD = {"layer": 2, "edit_lr": 1.0e-3, "n_iter": 2, "threshold": 0.7}
SCORINGS = ("tf", "gen")
MILESTONES = (2, 4)
RESAMPLES = 2000  # intervals.bootstrap_interval's default, seed 0


def sweep(tmp: Path, name: str, **changes: Any) -> Path:
    spec = load_spec(tiny_spec(
        tmp, name=name, T=4, milestones=list(MILESTONES), scorings=list(SCORINGS), concurrency=1, early_stopping=False,
        objectives=[{"metric": "rel_tf", "direction": "maximize"}, {"metric": "loc_tf", "direction": "maximize"}],
        initial_points=[GOOD, BAD], **changes,
    ))
    assert execute(spec, prepare(spec)).finished
    return spec.output_dir


@pytest.fixture(scope="module")
def repeated(local_ray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three trials, each 2 seeds x 2 edit orders = 4 members."""
    return sweep(tmp_path_factory.mktemp("repeated"), "table-repeated", num_trials=3, repeats={"seeds": [0, 1], "orders": 2})


@pytest.fixture(scope="module")
def single(local_ray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two unrepeated trials: one member each, so only the bootstrap over records exists."""
    return sweep(tmp_path_factory.mktemp("single"), "table-single", num_trials=2)


# -- what the Parquet dataset says ------------------------------------------------------------------


def by_trial(out: Path, table: str) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in parquet_rows(out, table):
        rows[row["trial_id"]].append(row)
    return rows


def expected_t(members: list[dict[str, Any]], key: str, n_edits: int) -> tuple[float, float, int]:
    """(low, high, n) of the Student t interval over the members' values, with scipy, clipped to
    [0, 1] where every accuracy lies."""
    values = np.array([m[key] for m in members if m["n_edits"] == n_edits], dtype=float)
    half = stats.t.ppf((1 + CONFIDENCE) / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return max(0.0, values.mean() - half), min(1.0, values.mean() + half), len(values)


def expected_bootstrap(records: list[dict[str, Any]], key: str, n_edits: int) -> tuple[float, float, int]:
    """(low, high, n) of the percentile bootstrap over records of each record's mean over the
    members: RESAMPLES draws of n records from numpy's PCG64 seeded 0."""
    per_record: dict[tuple[int, str], list[float]] = defaultdict(list)
    for row in records:
        if row["n_edits"] == n_edits:
            per_record[(row["chunk"], row["record_id"])].append(row[key])
    values = np.array([np.mean(v) for _, v in sorted(per_record.items())])
    draws = np.random.default_rng(0).integers(0, len(values), size=(RESAMPLES, len(values)))
    low, high = np.quantile(values[draws].mean(axis=1), [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return float(low), float(high), len(values)


def expected_cells(out: Path, trial_id: str, kind: str) -> dict[str, tuple[float, float, float, int]]:
    """`rel_tf@2` -> (mean, low, high, n) for every metric and milestone of the trial."""
    means = {m["n_edits"]: m for m in by_trial(out, "milestones")[trial_id]}
    members, records = by_trial(out, "member_milestones")[trial_id], by_trial(out, "record_scores")[trial_id]
    cells = {}
    for n_edits, row in means.items():
        for scoring in SCORINGS:
            for metric in METRICS:
                key = metric_key(metric, scoring)
                low, high, n = (expected_t(members, key, n_edits) if kind == "t" else expected_bootstrap(records, key, n_edits))
                cells[f"{key}@{n_edits}"] = (row[key], low, high, n)
    return cells


def cell_text(mean: float, low: float, high: float, kind: str = "t") -> str:
    """`0.63 ± 0.02`; a t interval clipped to [0, 1] as its bounds, `0.50 [0.00, 1.00]`; a
    bootstrap interval is shown by its half-width, symmetric or not."""
    if kind == "t" and (low == 0.0 or high == 1.0) and low != high:  # low == high: no spread, nothing to clip
        return f"{mean:.2f} [{low:.2f}, {high:.2f}]"
    return f"{mean:.2f} ± {(high - low) / 2:.2f}"


def run_table(capsys: pytest.CaptureFixture[str], out: Path, *args: str) -> str:
    assert main(["table", str(out), *args]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def label_to_id(out: Path) -> dict[str, str]:
    return {trial_label(t["optuna_trial"], t["trial_id"]): t["trial_id"] for t in parquet_rows(out, "trials")}


# -- the sweeps behind the tables ------------------------------------------------------------------


def test_the_repeated_sweep_stored_four_members_and_every_records_scores(repeated: Path) -> None:
    trials = parquet_rows(repeated, "trials")
    assert len(trials) == 3 and {t["members"] for t in trials} == {4}
    members = by_trial(repeated, "member_milestones")
    records = by_trial(repeated, "record_scores")
    for trial in trials:
        assert {(m["seed"], m["order"]) for m in members[trial["trial_id"]]} == {(0, 0), (1, 0), (0, 1), (1, 1)}
        assert {(r["n_edits"], r["seed"], r["order"]) for r in records[trial["trial_id"]]} == {(n, s, o) for n in MILESTONES for s in (0, 1) for o in (0, 1)}


# -- md ----------------------------------------------------------------------------------------------


def md_rows(text: str) -> tuple[list[str], list[dict[str, str]], str]:
    """(header, rows as dicts, caption) of a pipe table followed by a `Table:` caption line."""
    lines = text.rstrip("\n").split("\n")
    pipes = [line for line in lines if line.startswith("|")]
    header = [c.strip() for c in pipes[0].strip("|").split("|")]
    assert set(pipes[1].replace("|", "")) == {"-"}
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in pipes[2:]]
    assert all(len(r) == len(header) for r in rows)
    captions = [line for line in lines if line.startswith("Table: ")]
    assert len(captions) == 1
    return header, rows, captions[0]


def test_md_cells_are_the_parquet_means_with_t_intervals_over_members(repeated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    header, rows, caption = md_rows(run_table(capsys, repeated, "--trials", "0,1,2"))
    assert header[:5] == ["trial", "layer", "edit_lr", "n_iter", "threshold"]
    assert header[5:] == [f"{metric_key(m, s)}@{n}" for s in SCORINGS for n in MILESTONES for m in METRICS]
    ids = label_to_id(repeated)
    assert [r["trial"] for r in rows] == ["#000", "#001", "#002"]
    trials = {t["trial_id"]: t for t in parquet_rows(repeated, "trials")}
    for row in rows:
        trial_id = ids[row["trial"]]
        assert row["layer"] == str(trials[trial_id]["layer"]) and row["n_iter"] == str(trials[trial_id]["n_iter"])
        for name, (mean, low, high, n) in expected_cells(repeated, trial_id, "t").items():
            assert n == 4
            assert row[name] == cell_text(mean, low, high), (row["trial"], name)
    assert "95% Student t interval over n = 4 repeat members: seeds 0, 1 × edit orders 0, 1" in caption
    assert FALLBACK_MARK not in caption


def test_bootstrap_cells_resample_the_records_mean_over_members(repeated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, rows, caption = md_rows(run_table(capsys, repeated, "--trials", "#001", "--interval", "bootstrap"))
    (row,) = rows
    expected = expected_cells(repeated, label_to_id(repeated)["#001"], "bootstrap")
    for name, (mean, low, high, n) in expected.items():
        assert row[name] == cell_text(mean, low, high, "bootstrap"), name
    # stream: each order scores its first n_edits records, so a milestone's records are the union over orders
    n = [expected[f"rel_tf@{n_edits}"][3] for n_edits in MILESTONES]
    assert n[-1] == MILESTONES[-1] and MILESTONES[0] <= n[0] <= 2 * MILESTONES[0]
    assert f"95% percentile bootstrap interval over the records scored at each milestone (n = {n[0]}, {n[1]} records at 2, 4 edits)" in caption


def test_one_member_falls_back_to_the_bootstrap_and_says_so(single: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, rows, caption = md_rows(run_table(capsys, single, "--trials", "0,1"))
    assert [r["trial"] for r in rows] == [f"#000 {FALLBACK_MARK}", f"#001 {FALLBACK_MARK}"]
    ids = label_to_id(single)
    for row in rows:
        for name, (mean, low, high, _) in expected_cells(single, ids[row["trial"].split()[0]], "bootstrap").items():
            assert row[name] == cell_text(mean, low, high, "bootstrap"), name
    assert f"{FALLBACK_MARK}: one repeat member per configuration" in caption and "Student t interval over" not in caption


# -- csv ---------------------------------------------------------------------------------------------


def read_table_csv(text: str) -> pd.DataFrame:
    """The table's csv in pandas, trial ids as text: an id of hex digits that are all decimal
    (about 2% of them) would otherwise be read as a number."""
    return pd.read_csv(io.StringIO(text), dtype={"trial_id": str, "confirms": str})


def test_csv_opens_in_pandas_with_the_exact_stored_numbers(repeated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame = read_table_csv(run_table(capsys, repeated, "--format", "csv", "--trials", "0,2"))
    assert list(frame["trial"]) == ["#000", "#002"] and set(frame["interval"]) == {"t"} and set(frame["members"]) == {4}
    for _, row in frame.iterrows():
        for name, (mean, low, high, n) in expected_cells(repeated, row["trial_id"], "t").items():
            assert row[f"{name}_mean"] == mean  # bit for bit: the milestones table's value
            assert row[f"{name}_low"] == pytest.approx(low, abs=1e-12) and row[f"{name}_high"] == pytest.approx(high, abs=1e-12)
            assert row[f"{name}_half_width"] == pytest.approx((high - low) / 2, abs=1e-12) and row[f"{name}_n"] == n


def test_csv_bootstrap_bounds_equal_numpys(single: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame = read_table_csv(run_table(capsys, single, "--format", "csv", "--trials", "0", "--interval", "bootstrap"))
    (row,) = [r for _, r in frame.iterrows()]
    assert row["interval"] == "bootstrap" and row["members"] == 1
    for name, (mean, low, high, n) in expected_cells(single, row["trial_id"], "bootstrap").items():
        assert (row[f"{name}_mean"], row[f"{name}_low"], row[f"{name}_high"], row[f"{name}_n"]) == (mean, low, high, n)


# -- latex -------------------------------------------------------------------------------------------


def balanced(text: str) -> bool:
    depth = 0
    for match in re.finditer(r"(?<!\\)[{}]", text):
        depth += 1 if match.group() == "{" else -1
        if depth < 0:
            return False
    return depth == 0


def test_latex_is_a_booktabs_table_with_the_same_numbers(repeated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = run_table(capsys, repeated, "--format", "latex", "--trials", "0,1,2")
    lines = text.strip().split("\n")
    assert lines[0].startswith("% ") and "booktabs" in lines[0]  # a comment naming the packages it needs
    assert lines[1] == r"\begin{table}[t]" and lines[-1] == r"\end{table}"
    order = [next(i for i, line in enumerate(lines) if line.startswith(cmd)) for cmd in (r"\caption{", r"\begin{tabular}", r"\toprule", r"\midrule", r"\bottomrule", r"\end{tabular}")]
    assert order == sorted(order)
    assert balanced(text)
    columns = re.search(r"\\begin\{tabular\}\{(.*)\}$", next(line for line in lines if line.startswith(r"\begin{tabular}"))).group(1)
    n_columns = len(re.sub(r"@\{\\hspace\{1em\}\}", "", columns))
    body = lines[lines.index(r"\midrule") + 1 : lines.index(r"\bottomrule")]
    assert len(body) == 3
    _, md, _ = md_rows(run_table(capsys, repeated, "--trials", "0,1,2"))
    for line, row in zip(body, md):
        assert line.endswith(r" \\")
        cells = [c.strip() for c in line.removesuffix(r" \\").split(" & ")]
        assert len(cells) == n_columns
        assert cells == [latex_escape(v) for v in row.values()]
        assert cells[0] == r"\#" + row["trial"].removeprefix("#")
    assert r"\$" not in text.replace(r"$\pm$", "")  # cells use math-mode ±, nothing else is escaped dollars
    assert "edit\\_lr" in text and "model.layers[2].mlp.down\\_proj" in text  # underscores escaped, in headers and caption
    assert len(re.findall(r"\\cmidrule\(lr\)", text)) == len(SCORINGS) * len(MILESTONES)


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no pdflatex on this machine (Debian: texlive-latex-recommended)")
def test_latex_compiles_in_a_document(repeated: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The structural checks above, confirmed by TeX itself where it is installed."""
    table = run_table(capsys, repeated, "--format", "latex", "--trials", "0,1,2")
    document = tmp_path / "table.tex"
    document.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{graphicx}\n\\begin{document}\n" + table + "\\end{document}\n")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", document.name], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    assert (tmp_path / "table.pdf").stat().st_size > 0


def test_latex_escape_covers_every_special_character() -> None:
    assert latex_escape("a_b & 50% #1 $x {y} ~ ^ \\") == r"a\_b \& 50\% \#1 \$x \{y\} \textasciitilde{} \textasciicircum{} \textbackslash{}"


# -- choosing rows -----------------------------------------------------------------------------------


def test_default_is_the_pareto_front_and_best_is_exports_choice(repeated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layout = require_sweep_dir(repeated)
    spec = read_spec(layout)
    rows = candidate_rows(layout, spec)
    front = [r["trial_id"] for r in pareto_front(rows, spec.objectives, spec.constraints)]
    ids = label_to_id(repeated)
    _, default, caption = md_rows(run_table(capsys, repeated))
    assert [ids[r["trial"]] for r in default] == front
    assert "the Pareto front on rel_tf, loc_tf" in caption
    _, pareto, _ = md_rows(run_table(capsys, repeated, "--trials", "pareto"))
    assert pareto == default
    _, best, caption = md_rows(run_table(capsys, repeated, "--trials", "best"))
    assert [ids[r["trial"]] for r in best] == [choose(spec, rows).row["trial_id"]]
    assert "the best trial, as exported (best rel_tf=" in caption


def test_trials_by_id_and_number_in_the_order_given(repeated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids = label_to_id(repeated)
    _, rows, _ = md_rows(run_table(capsys, repeated, "--trials", f"2,{ids['#000']},#002"))
    assert [r["trial"] for r in rows] == ["#002", "#000"]  # a trial named twice shows once


def test_scorings_and_milestones_narrow_the_columns(repeated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    header, rows, _ = md_rows(run_table(capsys, repeated, "--trials", "0", "--scorings", "gen", "--milestones", "4"))
    assert header[5:] == ["rel_gen@4", "gen_gen@4", "loc_gen@4"]
    mean, low, high, _ = expected_cells(repeated, label_to_id(repeated)["#000"], "t")["loc_gen@4"]
    assert rows[0]["loc_gen@4"] == cell_text(mean, low, high)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--trials", "#099"], ["trial '#099'", "not a trial of sweep 'table-repeated'"]),
        (["--trials", "confirmed"], ["--trials confirmed", "no confirm stage has run"]),
        (["--milestones", "3"], ["--milestones: 3 not recorded", "2, 4"]),
        (["--scorings", "genctx"], ["--scorings: genctx has no values"]),
        (["--scorings", "nope"], ["--scorings", "expected distinct comma-separated names"]),
    ],
)
def test_bad_selection_is_one_line_and_exit_2(repeated: Path, capsys: pytest.CaptureFixture[str], args: list[str], words: list[str]) -> None:
    assert main(["table", str(repeated), *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    line = captured.err.strip()
    assert "\n" not in line and line.startswith("defer-sweep: error: ")
    assert all(word in line for word in words), line


def test_not_a_sweep_directory_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["table", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1 and str(tmp_path) in captured.err


# -- the report carries the same intervals -------------------------------------------------------------


def test_report_bands_and_error_bars_are_the_tables_intervals(repeated: Path, single: Path) -> None:
    for out in (repeated, single):
        layout = require_sweep_dir(out)
        data = load_sweep(layout)
        table = build_table(layout, data.spec, ",".join(t["trial_id"] for t in data.completed))
        assert data.band_trials and {t["trial_id"] for t in data.band_trials} <= {t["trial_id"] for t in data.completed}
        for row in table.rows:
            spreads = data.spreads[row.trial["trial_id"]]
            for (key, n_edits), cell in row.cells.items():
                if n_edits == data.spec.T or row.trial["trial_id"] in {t["trial_id"] for t in data.band_trials}:
                    found = spreads[key][n_edits]
                    assert (found.low, found.high, found.kind, found.n) == (cell.interval.low, cell.interval.high, cell.interval.kind, cell.interval.n)
        names = [p.name for p in build_plots(data, Importance())]
        assert {"bands_tf", "bands_gen"} <= set(names)
        assert names.index("curves_tf") < names.index("bands_tf") < names.index("curves_gen")


def test_the_table_command_does_not_import_torch(repeated: Path) -> None:
    from .test_light_imports import heavy_imported, run_fresh

    result = run_fresh(f"from orchestrator.cli import main\nassert main(['table', {str(repeated)!r}, '--trials', 'best', '--format', 'latex']) == 0\n")
    assert heavy_imported(result) == []
    assert r"\begin{tabular}" in result.stdout


def test_a_curve_mode_sweep_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Its rows are (training, threshold) points; the stored rows hold one threshold per milestone."""
    from orchestrator.sinks.layout import SweepLayout, SweepState, save_state

    curve = {"layer": 2, "module_template": "model.layers[{layer}].mlp.down_proj", "edit_lr": 0.05, "threshold": "curve", "n_iter": [2, 5]}
    spec = load_spec(tiny_spec(tmp_path, name="curve-table", initial_points=[], search_space=curve))
    layout = SweepLayout(spec.output_dir)
    layout.root.mkdir(parents=True)
    (tmp_path / "curve-table.yaml").replace(layout.spec)
    save_state(layout, SweepState(sweep_id="c", mlflow_tracking_uri="", mlflow_experiment="c", optuna_storage="", optuna_study_name="c"))
    assert main(["table", str(layout.root)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert "search_space.threshold: curve" in captured.err and "defer-sweep curve" in captured.err


# -- the confirm stage (last: it adds trials to the `single` sweep) ----------------------------------


def test_after_a_confirm_stage_the_default_rows_are_its_trials(single: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["confirm", str(single), "--top", "1", "--seeds", "0,1", "--orders", "1", "--quiet"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    trials = parquet_rows(single, "trials")
    (confirm,) = [t for t in trials if t["stage"] == "confirm"]
    original = next(t for t in trials if t["trial_id"] == confirm["confirms"])
    _, rows, caption = md_rows(run_table(capsys, single))
    assert [r["trial"] for r in rows] == [f"{trial_label(original['optuna_trial'], original['trial_id'])} confirm"]
    assert "the 1 confirm-stage trial(s)" in caption and "n = 2 repeat members: seeds 0, 1 × edit orders 0" in caption
    for name, (mean, low, high, n) in expected_cells(single, confirm["trial_id"], "t").items():
        assert n == 2 and rows[0][name] == cell_text(mean, low, high), name
    frame = read_table_csv(run_table(capsys, single, "--format", "csv", "--trials", "best"))
    assert list(frame["trial_id"]) == [confirm["trial_id"]] and list(frame["confirms"]) == [original["trial_id"]]
    _, pareto, _ = md_rows(run_table(capsys, single, "--trials", "pareto"))
    assert all("confirm" not in r["trial"] for r in pareto)  # the search stage's front only
