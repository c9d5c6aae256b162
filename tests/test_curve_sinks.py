"""Curve mode's records: the Parquet gates/grid/points tables and the new trial columns, the
MLflow params/tags/curve artifact, the candidates best/Pareto/export/report rank (points at
T, feasible first), `defer-sweep export` with constraints, `defer-sweep curve`, the progress
summary and the report's threshold plots.

Most tests record trials the way a sweep does, through the driver's real ResultsCallback (a
real Parquet dataset and MLflow SQLite store), fed the worker's own report builders
(worker/trainable.py) with gate rows chosen so each test knows its answer. The end-to-end
tests at the bottom run real tiny sweeps on a local Ray and check that the Parquet gate rows
alone give back every recorded tf metric.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient
from ray.tune.experiment import Trial

from defer_core.curve import adjacent, edit_success_at, exact_curve, in_dtype, safe_threshold, tf_metrics_at
from defer_core.hparams import load_hparams
from defer_core.results import EditOutcome, GateRow, GridPoint, MilestoneResult
from orchestrator.cli import main
from orchestrator.results.query import search_candidates as candidate_rows
from orchestrator.protocol import EDITS_KEY, FEASIBLE, GATES_KEY, METRIC_COLUMNS, OPTUNA_TRIAL, POINTS_KEY, REUSE_OF, THRESHOLD
from orchestrator.results.rows import Status
from orchestrator.export import yaml_text
from orchestrator.report import write_report_files
from orchestrator.report.data import best_yaml_notes, load_sweep, top_trials, trial_yaml
from orchestrator.results.curve_points import MilestoneCurve, point_margin
from orchestrator.results.ranking import is_feasible, rank_by
from orchestrator.sinks.layout import SweepLayout, SweepState, load_state, require_sweep_dir, save_state
from orchestrator.sinks.mlflow_sink import MlflowSink, sweep_mlflow
from orchestrator.results.rows import SCHEMAS
from orchestrator.results.store import ResultStore, UnreadableParquetError, read_table
from orchestrator.sinks.progress import console_session, summary_line, trial_line
from orchestrator.results.candidates import candidates, training_of
from orchestrator.sinks.results_callback import CURVE_ARTIFACT, ResultsCallback
from orchestrator.results.curve import gate_rows
from orchestrator.spec import CURVE_TRAINING_THRESHOLD, SweepSpec, load_spec
from orchestrator.sweep.driver import execute, finish
from orchestrator.sweep.preflight import prepare
from orchestrator.worker.trainable import curve_report, milestone_report

from .orchestrator_support import children_by_trial, mlflow_runs, parquet_rows, tiny_spec

CURVE_SPACE = {
    "layer": {"low": 1, "high": 3},
    "module_template": "model.layers[{layer}].mlp.down_proj",
    "edit_lr": {"low": 1.0e-3, "high": 1.0e-1, "log": True},
    "threshold": "curve",
    "n_iter": [2, 5],
}
DTYPE = "float32"
CONFIG = {"layer": 2, "edit_lr": 0.05, "n_iter": 5}


def f32(value: float) -> float:
    """A gate as the model holds it: a float32 value."""
    return in_dtype(value, DTYPE)


# -- a sweep recorded through the driver's callback ---------------------------------------------------


@dataclass
class Recorder:
    """A sweep folder (spec.yaml, sweep.json, MLflow parent run) and the driver's ResultsCallback."""

    spec: SweepSpec
    layout: SweepLayout
    callback: ResultsCallback
    mlflow: MlflowSink

    @property
    def out(self) -> str:
        return str(self.layout.root)

    def record(self, trial_id: str, config: dict[str, Any], reports: Sequence[dict[str, Any]]) -> None:
        """One Tune trial through on_trial_start / on_trial_result / on_trial_complete: complete
        when its reports reach T, pruned otherwise."""
        trial = Trial("defer", config=config, trial_id=trial_id, stub=True)
        self.callback.on_trial_start(0, [trial], trial)
        for report in reports:
            self.callback.on_trial_result(0, [trial], trial, dict(report))
        self.callback.on_trial_complete(0, [trial], trial)


def recorder(tmp_path: Path, name: str, **changes: Any) -> Recorder:
    spec_path = tiny_spec(tmp_path, name=name, **{"initial_points": [], "early_stopping": False, **changes})
    spec = load_spec(spec_path)
    layout = SweepLayout(spec.output_dir)
    layout.root.mkdir(parents=True)
    shutil.copy(spec_path, layout.spec)
    state = SweepState(sweep_id=name, mlflow_tracking_uri=layout.default_stores["mlflow_tracking_uri"], mlflow_experiment=name,
                       optuna_storage=layout.default_stores["optuna_storage"], optuna_study_name=name)
    save_state(layout, state)
    mlflow = sweep_mlflow(layout, state)
    mlflow.open_sweep(name, {}, layout.spec)
    return Recorder(spec, layout, ResultsCallback(spec, state.sweep_id, ResultStore(layout.parquet), mlflow), mlflow)


def probe_rows(rel: Sequence[tuple[float, float]], gen: Sequence[tuple[float, float]], loc: Sequence[tuple[float, float]], chunk: int = 0) -> tuple[GateRow, ...]:
    """Gate rows from (gate, accuracy forced on) per record: rel/gen rows are wrong unedited
    (off 0), loc rows right by definition (off 1)."""
    rows = []
    for probe, values, off in (("rel", rel, 0.0), ("gen", gen, 0.0), ("loc", loc, 1.0)):
        rows += [GateRow(f"r{i}", probe, f32(gate), on, off, chunk) for i, (gate, on) in enumerate(values)]
    return tuple(rows)


def edits_for(gates: Sequence[GateRow], first: int, count: int, threshold: float) -> list[EditOutcome]:
    """Edit outcomes whose prompt rows are the rel gate rows (as a stream's edits are)."""
    rel = [row for row in gates if row.probe == "rel"]
    out = []
    for offset in range(count):
        row = rel[offset % len(rel)]
        success = edit_success_at(row.gate, row.on, row.off, threshold, DTYPE)
        out.append(EditOutcome(first + offset, row.record_id, 0.25, 0.01, success, 0, row.gate, row.on, row.off))
    return out


def curve_reports(spec: SweepSpec, gates: tuple[GateRow, ...], grid: tuple[GridPoint, ...] = (), upto: int | None = None) -> list[dict[str, Any]]:
    """The worker's curve-mode reports (trainable.curve_report) of a training with these gate
    rows at every milestone up to `upto` (default T)."""
    reports, earlier, done = [], [], 0
    for n_edits in [m for m in spec.milestones if m <= (upto or spec.T)]:
        milestone = MilestoneResult(n_edits, spec.protocol, {}, 0.5, (), gates, grid)
        reports.append(curve_report(spec, milestone, edits_for(gates, done + 1, n_edits - done, CURVE_TRAINING_THRESHOLD), 0.0, list(earlier)))
        earlier.append(MilestoneCurve.of(milestone))
        done = n_edits
    return reports


def sampled_reports(spec: SweepSpec, gates: tuple[GateRow, ...], threshold: float) -> list[dict[str, Any]]:
    """The worker's sampled-mode reports: metrics at the trial's threshold (what the gates give)."""
    reports, done = [], 0
    for n_edits in spec.milestones:
        milestone = MilestoneResult(n_edits, spec.protocol, tf_metrics_at(gates, threshold, DTYPE), 0.5, (), gates)
        reports.append(milestone_report(milestone, edits_for(gates, done + 1, n_edits - done, threshold), spec.scorings, 0.0))
        done = n_edits
    return reports


def reuse_reports(reports: Sequence[dict[str, Any]], original: str) -> list[dict[str, Any]]:
    """What a reuse trial's worker replays (trainable.replay_reuse): the original's reports
    without edits or gate rows of its own."""
    return [{**report, EDITS_KEY: [], GATES_KEY: [], REUSE_OF: original} for report in reports]


# The training the feasibility tests use, under `loc_tf >= 0.9`: two rel records whose gates
# are 0.1 and 0.7, a gen record at 0.9, a loc record at 0.3. Up to 0.1 both edits answer (rel
# 1) but so does the loc prompt (loc 0): the best rel, infeasible. Above 0.3 up to 0.7: rel
# 0.5, loc 1: the best feasible point, the breakpoint 0.7.
TRADE_OFF = probe_rows(rel=[(0.1, 1.0), (0.7, 1.0)], gen=[(0.9, 1.0)], loc=[(0.3, 0.0)])
FEASIBLE_THRESHOLD = f32(0.7)
# What export writes for it: the middle of (0.3, 0.7], the thresholds with its metrics (the
# gate below it is the loc record's), off the knife edge at the rel record's gate 0.7.
SAFE_THRESHOLD = 0.5
# A worse training, infeasible everywhere: its loc prompt's gate is saturated at 1.0, so it
# fires at every threshold.
WEAK = probe_rows(rel=[(0.05, 0.5), (0.05, 0.5)], gen=[(0.05, 0.0)], loc=[(1.0, 0.0)])


@pytest.fixture
def curve_sweep(tmp_path: Path) -> Recorder:
    """Curve mode, tf only, one objective (rel_tf), constraint loc_tf >= 0.9: #000 the
    trade-off training (complete), #001 a weak one (complete), #002 pruned at 2 edits, #003 a
    reuse of #000."""
    sweep = recorder(tmp_path, "curves", search_space=CURVE_SPACE, constraints=[{"metric": "loc_tf", "min": 0.9}])
    good = curve_reports(sweep.spec, TRADE_OFF)
    sweep.record("t0", {**CONFIG, OPTUNA_TRIAL: 0}, good)
    sweep.record("t1", {**CONFIG, "layer": 3, OPTUNA_TRIAL: 1}, curve_reports(sweep.spec, WEAK))
    sweep.record("t2", {**CONFIG, "layer": 1, OPTUNA_TRIAL: 2}, curve_reports(sweep.spec, TRADE_OFF, upto=2))
    sweep.record("t3", {**CONFIG, OPTUNA_TRIAL: 3, REUSE_OF: "t0"}, reuse_reports(good, "t0"))
    return sweep


def by_trial(rows: list[dict[str, Any]], trial_id: str) -> list[dict[str, Any]]:
    return [row for row in rows if row["trial_id"] == trial_id]


# -- Parquet ------------------------------------------------------------------------------------------


def test_parquet_holds_each_milestones_gates_grid_and_points(tmp_path: Path) -> None:
    sweep = recorder(tmp_path, "tables", search_space=CURVE_SPACE, scorings=["tf", "gen"], objectives=[{"metric": "rel_tf"}, {"metric": "loc_gen"}])
    grid = tuple(GridPoint(t, {"rel_gen": 1.0 - t, "gen_gen": 0.5, "loc_gen": t}) for t in sweep.spec.curve.gen_grid)
    reports = curve_reports(sweep.spec, TRADE_OFF, grid)
    sweep.record("t0", {**CONFIG, OPTUNA_TRIAL: 0}, reports)
    out = sweep.layout.root

    gates = parquet_rows(out, "gates")
    assert len(gates) == len(TRADE_OFF) * len(sweep.spec.milestones)
    for n_edits in sweep.spec.milestones:
        stored = [r for r in gates if r["n_edits"] == n_edits]
        assert {(r["record_id"], r["probe"], r["gate"], r["on"], r["off"], r["chunk"]) for r in stored} == {
            (g.record_id, g.probe, g.gate, g.on, g.off, g.chunk) for g in TRADE_OFF}
        assert {r["protocol"] for r in stored} == {"stream"}
    points = parquet_rows(out, "points")
    for report in reports:
        stored = sorted((p for p in points if p["n_edits"] == report["n_edits"]), key=lambda p: p[THRESHOLD])
        assert [p[THRESHOLD] for p in stored] == [p[THRESHOLD] for p in report[POINTS_KEY]]
        for row, point in zip(stored, report[POINTS_KEY]):
            assert {k: row[k] for k in METRIC_COLUMNS if row[k] is not None} == {k: point[k] for k in METRIC_COLUMNS if k in point}
            assert row[FEASIBLE] is point[FEASIBLE] is True  # no constraints: every point is feasible
    stored_grid = [r for r in parquet_rows(out, "grid") if r["n_edits"] == sweep.spec.T]
    assert [(r[THRESHOLD], r["rel_gen"], r["loc_gen"]) for r in stored_grid] == [(p.threshold, p.metrics["rel_gen"], p.metrics["loc_gen"]) for p in grid]
    assert all(r["rel_tf"] is None for r in stored_grid)  # the grid holds generation scorings only

    edits = parquet_rows(out, "edits")
    assert [e["edit_index"] for e in edits] == list(range(1, sweep.spec.T + 1))
    assert all(e["gate"] in (f32(0.1), f32(0.7)) and e["success_on"] == 1.0 and e["success_off"] == 0.0 for e in edits)
    (trial,) = parquet_rows(out, "trials")
    last = reports[-1]
    assert trial["threshold_mode"] == "curve" and trial["reuse_of"] is None and trial["feasible"] is None
    assert trial["threshold"] == last[THRESHOLD] and trial["rel_tf"] == last["rel_tf"] and trial["loc_gen"] == last.get("loc_gen")
    milestone_thresholds = [m[THRESHOLD] for m in sorted(parquet_rows(out, "milestones"), key=lambda m: m["n_edits"])]
    assert milestone_thresholds == [r[THRESHOLD] for r in reports]


def test_trial_rows_carry_reuse_feasibility_and_the_best_points_threshold(curve_sweep: Recorder) -> None:
    trials = {t["trial_id"]: t for t in parquet_rows(curve_sweep.layout.root, "trials")}
    assert {k: t["status"] for k, t in trials.items()} == {"t0": "complete", "t1": "complete", "t2": "pruned", "t3": "complete"}
    assert trials["t0"]["threshold"] == FEASIBLE_THRESHOLD  # feasible first: not the better rel at 0
    assert (trials["t0"]["rel_tf"], trials["t0"]["loc_tf"], trials["t0"]["feasible"]) == (0.5, 1.0, True)
    assert trials["t1"]["feasible"] is False and trials["t1"]["loc_tf"] < 0.9
    assert trials["t3"]["reuse_of"] == "t0" and trials["t0"]["reuse_of"] is None
    assert {t["threshold_mode"] for t in trials.values()} == {"curve"}
    assert by_trial(parquet_rows(curve_sweep.layout.root, "gates"), "t3") == []  # a reuse trial trains nothing: no gate rows of its own


def test_a_file_without_a_column_of_its_table_is_named_and_tables_never_written_read_empty(tmp_path: Path) -> None:
    """A trials file without reuse_of/feasible/threshold_mode was not written by this version:
    a strict read names it and the first missing column in one line, a skipping read leaves it
    out; a table no trial wrote (gates, grid, points) reads empty in its schema."""
    new_columns = {"reuse_of", "feasible", "threshold_mode"}
    old_schema = pa.schema([f for f in SCHEMAS["trials"] if f.name not in new_columns])
    row = {"trial_id": "old", "pack_id": "old", "status": "complete", "layer": 2, "edit_lr": 0.05, "n_iter": 5, "threshold": 0.5, "n_edits": 6, "rel_tf": 0.75}
    root = tmp_path / "parquet"
    (root / "trials").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([row], schema=old_schema), root / "trials" / "old.parquet")
    with pytest.raises(UnreadableParquetError) as refused:
        read_table(root, "trials")
    assert str(refused.value) == f"{root / 'trials' / 'old.parquet'}: not a readable Parquet file (no column 'reuse_of')"
    assert read_table(root, "trials", skip_unreadable=True).num_rows == 0
    for table in ("gates", "grid", "points"):
        assert read_table(root, table).num_rows == 0 and read_table(root, table).schema == SCHEMAS[table]


# -- candidates, export ----------------------------------------------------------------------------------


def test_curve_mode_candidates_are_the_points_at_T_of_complete_trials(curve_sweep: Recorder) -> None:
    spec, out = curve_sweep.spec, curve_sweep.layout.root
    rows = candidate_rows(curve_sweep.layout, spec)
    points = parquet_rows(out, "points")
    trials = {t["trial_id"]: t for t in parquet_rows(out, "trials")}
    expected = {(p["trial_id"], p[THRESHOLD]) for p in points if p["n_edits"] == spec.T and p["trial_id"] in ("t0", "t1")}
    assert {(r["trial_id"], r[THRESHOLD]) for r in rows} == expected  # not the pruned t2, not t3 (a reuse of t0), not earlier milestones
    assert len(rows) == len(expected) > 2
    for row in rows:
        point = next(p for p in points if p["n_edits"] == spec.T and p["trial_id"] == row["trial_id"] and p[THRESHOLD] == row[THRESHOLD])
        trial = trials[row["trial_id"]]
        assert {k: row[k] for k in METRIC_COLUMNS} == {k: point[k] for k in METRIC_COLUMNS}
        assert {k: row[k] for k in ("layer", "module", "edit_lr", "n_iter", "model", "dtype", OPTUNA_TRIAL, "pack_id")} == {
            k: trial[k] for k in ("layer", "module", "edit_lr", "n_iter", "model", "dtype", OPTUNA_TRIAL, "pack_id")}
        assert row[FEASIBLE] == is_feasible(point, spec.constraints)


def test_a_reuse_stands_in_for_its_original_when_the_original_is_missing(curve_sweep: Recorder) -> None:
    spec = curve_sweep.spec
    trials = [t for t in parquet_rows(curve_sweep.layout.root, "trials") if t["status"] == Status.COMPLETE and t["trial_id"] != "t0"]
    rows = candidates(spec, trials, parquet_rows(curve_sweep.layout.root, "points"))
    assert {r["trial_id"] for r in rows} == {"t1", "t3"}


def test_export_chooses_the_best_feasible_point_over_a_better_infeasible_one(curve_sweep: Recorder, capsys: pytest.CaptureFixture[str]) -> None:
    spec = curve_sweep.spec
    rows = candidate_rows(curve_sweep.layout, spec)
    best_overall = max(rows, key=lambda r: r["rel_tf"])
    assert best_overall["rel_tf"] == 1.0 and not is_feasible(best_overall, spec.constraints)  # the setup: a better point exists, infeasible

    assert main(["export", curve_sweep.out]) == 0
    printed = capsys.readouterr().out
    exported = (curve_sweep.layout.best_yaml).read_text(encoding="utf-8")
    assert f"threshold: {SAFE_THRESHOLD}" in exported  # the breakpoint off its knife edge (test_export_writes_the_chosen_breakpoint_off_the_knife_edge)
    assert "edit_lr: 0.05" in exported and "model.layers[2].mlp.down_proj.weight" in exported
    assert f"best rel_tf=0.5000 (maximize) at threshold {FEASIBLE_THRESHOLD:.4g}, feasible under loc_tf >= 0.9" in printed
    assert "trial t0 (#000):" in printed

    parent = curve_sweep.mlflow.client.get_run(curve_sweep.mlflow.find_parent())
    assert parent.data.tags["best.trial_id"] == "t0" and float(parent.data.tags["best.threshold"]) == SAFE_THRESHOLD


def test_export_writes_the_chosen_breakpoint_off_the_knife_edge(curve_sweep: Recorder, capsys: pytest.CaptureFixture[str]) -> None:
    """best.yaml's threshold is strictly between the gate below and the chosen gate, its tf
    metrics are the chosen point's and stay so when any gate moves one float32 step; its comment
    lines say so, and the report and `defer-sweep curve` hand on the same threshold."""
    spec, layout = curve_sweep.spec, curve_sweep.layout
    chosen = next(r for r in candidate_rows(layout, spec) if (r["trial_id"], r[THRESHOLD]) == ("t0", FEASIBLE_THRESHOLD))
    rows = gate_rows(r for r in by_trial(parquet_rows(layout.root, "gates"), "t0") if r["n_edits"] == spec.T)
    assert main(["export", curve_sweep.out]) == 0
    printed = capsys.readouterr().out
    text = layout.best_yaml.read_text(encoding="utf-8")
    written = load_hparams(layout.best_yaml).threshold

    below = f32(0.3)  # the loc record's gate: the largest under the chosen rel gate 0.7
    assert written == SAFE_THRESHOLD == safe_threshold(FEASIBLE_THRESHOLD, (r.gate for r in rows), DTYPE)
    assert below < in_dtype(written, DTYPE) < FEASIBLE_THRESHOLD
    metrics = {key: chosen[key] for key in ("rel_tf", "gen_tf", "loc_tf")}
    assert tf_metrics_at(rows, written, DTYPE) == tf_metrics_at(rows, FEASIBLE_THRESHOLD, DTYPE) == metrics == {"rel_tf": 0.5, "gen_tf": 1.0, "loc_tf": 1.0}
    for index, row in enumerate(rows):  # any gate one float32 step off: the same metrics at the written threshold
        for steps in (1, -1):
            nudged = (*rows[:index], GateRow(row.record_id, row.probe, adjacent(row.gate, DTYPE, steps), row.on, row.off, row.chunk), *rows[index + 1:])
            assert tf_metrics_at(nudged, written, DTYPE) == metrics

    lines = text.splitlines()
    assert lines[0].startswith("# dtype: float32 ")
    assert lines[1] == ("# threshold 0.5: the chosen point's metrics (rel_tf=0.5000 gen_tf=1.0000 loc_tf=1.0000) hold for every threshold in "
                        "(0.300000012, 0.699999988]; this is its middle in float32, so a gate moving by one rounding step changes no record.")
    assert lines[2].startswith("# The point's own threshold 0.699999988 is a breakpoint of the tf curve (a gate value, or its end 1), a knife edge")
    assert not lines[3].startswith("#")
    assert (f"at threshold {FEASIBLE_THRESHOLD:.4g}, feasible under loc_tf >= 0.9; written as threshold 0.5, "
            "the middle of (0.300000012, 0.699999988] where these metrics hold (off the knife edge at the breakpoint 0.699999988)") in printed
    assert "threshold 0.5" in printed

    data = load_sweep(require_sweep_dir(curve_sweep.out))  # the report: the same choice, the same file
    assert data.best[THRESHOLD] == FEASIBLE_THRESHOLD and data.choice.hparams.threshold == data.exported_best[THRESHOLD] == SAFE_THRESHOLD
    assert trial_yaml(data, data.best) == yaml_text(data.choice) == text and best_yaml_notes(data) == []
    assert "written as threshold 0.5, the middle of (0.300000012, 0.699999988]" in data.choice.reason

    for name in ("#000", "#003"):  # the curve command's chosen point, for the training and for its reuse
        shown = json.loads(_curve(capsys, curve_sweep.out, name, "--format", "json"))["chosen"]
        assert (shown[THRESHOLD], shown["point_threshold"], shown["below"], shown["margin"]) == (SAFE_THRESHOLD, FEASIBLE_THRESHOLD, below, True)
        assert {key: shown[key] for key in metrics} == metrics
    md = _curve(capsys, curve_sweep.out, "#000")
    assert ("chosen point (the trial's best at 6 edits): rel_tf=0.5000 gen_tf=1.0000 loc_tf=1.0000 (tf, exact); "
            "threshold 0.5, the middle of (0.300000012, 0.699999988], where the metrics of the point's own threshold 0.699999988 hold") in md
    (row,) = [r for r in csv.DictReader(io.StringIO(_curve(capsys, curve_sweep.out, "#000", "--format", "csv"))) if r["section"] == "chosen"]
    assert float(row[THRESHOLD]) == SAFE_THRESHOLD and {key: float(row[key]) for key in metrics} == metrics


def test_export_keeps_a_breakpoint_with_no_room_below_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The loc record's gate one float32 step under the chosen rel gate: no threshold between
    them is clear of both, so the breakpoint itself is written, and the comment says it has no margin."""
    crowded = probe_rows(rel=[(0.1, 1.0), (0.7, 1.0)], gen=[(0.9, 1.0)], loc=[(adjacent(FEASIBLE_THRESHOLD, DTYPE, -1), 0.0)])
    sweep = recorder(tmp_path, "crowded", search_space=CURVE_SPACE, num_trials=1, constraints=[{"metric": "loc_tf", "min": 0.9}],
                     curve={"resolution": 1e-9})  # both gates stay breakpoints (the default 0.02 would thin one away)
    sweep.record("t0", {**CONFIG, OPTUNA_TRIAL: 0}, curve_reports(sweep.spec, crowded))
    assert main(["export", sweep.out]) == 0
    printed = capsys.readouterr().out
    lines = sweep.layout.best_yaml.read_text(encoding="utf-8").splitlines()
    assert load_hparams(sweep.layout.best_yaml).threshold == FEASIBLE_THRESHOLD
    assert lines[1] == ("# threshold 0.699999988 is the chosen point's own, with no margin: no float32 value lies far enough inside "
                        "(0.699999928, 0.699999988], the thresholds with its metrics.")
    assert lines[2].startswith("# The point's own threshold 0.699999988 is a breakpoint")
    assert "; threshold 0.699999988 written as is, a gate value without margin: no float32 value lies far enough inside (0.699999928, 0.699999988]" in printed
    shown = json.loads(_curve(capsys, sweep.out, "#000", "--format", "json"))["chosen"]
    assert (shown[THRESHOLD], shown["margin"]) == (FEASIBLE_THRESHOLD, False)


def test_export_keeps_a_generation_grid_point_where_its_generation_scorings_were_measured(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = recorder(tmp_path, "grid", search_space=CURVE_SPACE, num_trials=1, scorings=["tf", "gen"], objectives=[{"metric": "rel_gen"}])
    grid = tuple(GridPoint(t, {"rel_gen": 1.0 - t, "gen_gen": 0.5, "loc_gen": t}) for t in sweep.spec.curve.gen_grid)
    sweep.record("t0", {**CONFIG, OPTUNA_TRIAL: 0}, curve_reports(sweep.spec, TRADE_OFF, grid))
    assert main(["export", sweep.out]) == 0
    capsys.readouterr()
    lines = sweep.layout.best_yaml.read_text(encoding="utf-8").splitlines()
    assert load_hparams(sweep.layout.best_yaml).threshold == sweep.spec.curve.gen_grid[0] == 0.1  # rel_gen is best at the lowest grid threshold
    assert lines[0].startswith("# dtype: ") and not lines[1].startswith("#")  # no note: the threshold is the point's
    shown = json.loads(_curve(capsys, sweep.out, "#000", "--format", "json"))["chosen"]
    assert (shown[THRESHOLD], shown["margin"], shown["on_grid"], shown["rel_gen"]) == (0.1, None, True, 0.9)
    assert "generation grid" in shown["note"]


def test_export_refuses_in_one_line_when_no_point_is_feasible(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = recorder(tmp_path, "strict", search_space=CURVE_SPACE, num_trials=1, constraints=[{"metric": "rel_tf", "min": 0.99}, {"metric": "loc_tf", "min": 0.9}])
    sweep.record("t0", {**CONFIG, OPTUNA_TRIAL: 0}, curve_reports(sweep.spec, TRADE_OFF))
    capsys.readouterr()
    assert main(["export", sweep.out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    reason = "sweep 'strict': no completed point satisfies constraints rel_tf >= 0.99, loc_tf >= 0.9 (best rel_tf 1; best loc_tf 1); nothing to export"
    assert err == [f"defer-sweep: error: {reason}"]
    assert not sweep.layout.best_yaml.exists()
    assert main(["export", sweep.out, "--pareto-index", "0", "-o", str(tmp_path / "p0.yaml")]) == 2
    assert "no completed point satisfies constraints" in capsys.readouterr().err and not (tmp_path / "p0.yaml").exists()

    # The sweep itself still finishes: no best.yaml, the reason instead, the report written.
    outcome = finish(sweep.spec, sweep.layout, load_state(sweep.layout), sweep.mlflow)
    assert outcome.finished and outcome.best_yaml is None and outcome.best_reason == reason
    assert outcome.report_html is not None and outcome.report_html.is_file() and not sweep.layout.best_yaml.exists()


def test_sampled_mode_export_ranks_feasible_trials_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = recorder(tmp_path, "sampled", constraints=[{"metric": "loc_tf", "min": 0.9}])
    sweep.record("t0", {**CONFIG, "threshold": 0.05, OPTUNA_TRIAL: 0}, sampled_reports(sweep.spec, TRADE_OFF, 0.05))  # rel 1, loc 0
    sweep.record("t1", {**CONFIG, "threshold": 0.5, OPTUNA_TRIAL: 1}, sampled_reports(sweep.spec, TRADE_OFF, 0.5))  # rel 0.5, loc 1
    trials = {t["trial_id"]: t for t in parquet_rows(sweep.layout.root, "trials")}
    assert (trials["t0"]["feasible"], trials["t1"]["feasible"]) == (False, True)
    assert {t["threshold_mode"] for t in trials.values()} == {"sampled"}
    assert main(["export", sweep.out]) == 0
    assert "threshold: 0.5" in sweep.layout.best_yaml.read_text(encoding="utf-8")
    assert "trial t1 (#001): best rel_tf=0.5000 (maximize), feasible under loc_tf >= 0.9" in capsys.readouterr().out


# -- MLflow -----------------------------------------------------------------------------------------------


def test_mlflow_runs_carry_threshold_mode_reuse_feasibility_and_the_curve(curve_sweep: Recorder) -> None:
    client = MlflowClient(tracking_uri=curve_sweep.mlflow.tracking_uri)
    runs = {run.data.tags["defer_sweep.trial_id"]: run for run in curve_sweep.mlflow._sweep_trial_runs()}
    assert set(runs) == {"t0", "t1", "t2", "t3"}
    good, reuse = runs["t0"], runs["t3"]
    assert good.data.params["threshold_mode"] == "curve" and good.data.params[THRESHOLD] == "curve"
    assert REUSE_OF not in good.data.params and reuse.data.params[REUSE_OF] == "t0"  # no 'None' param on a trial that trained
    assert good.data.tags[FEASIBLE] == "true" and runs["t1"].data.tags[FEASIBLE] == "false"
    assert good.data.metrics["rel_tf"] == 0.5 and good.data.metrics[THRESHOLD] == FEASIBLE_THRESHOLD
    assert [m.step for m in client.get_metric_history(good.info.run_id, THRESHOLD)] == list(curve_sweep.spec.milestones)

    local = client.download_artifacts(good.info.run_id, CURVE_ARTIFACT, str(curve_sweep.layout.root / "download"))
    rows = list(csv.DictReader(Path(local).read_text(encoding="utf-8").splitlines()))
    points = sorted((p for p in by_trial(parquet_rows(curve_sweep.layout.root, "points"), "t0") if p["n_edits"] == curve_sweep.spec.T), key=lambda p: p[THRESHOLD])
    assert [float(r[THRESHOLD]) for r in rows] == [p[THRESHOLD] for p in points]
    assert [(float(r["rel_tf"]), float(r["loc_tf"]), r[FEASIBLE]) for r in rows] == [(p["rel_tf"], p["loc_tf"], str(p[FEASIBLE])) for p in points]
    assert CURVE_ARTIFACT in {a.path for a in client.list_artifacts(runs["t2"].info.run_id)}  # a pruned trial: its last milestone's curve


# -- the curve command ------------------------------------------------------------------------------------


def _curve(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["curve", *args]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_curve_command_prints_the_exact_curve_of_the_parquet_gates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = recorder(tmp_path, "cmd", search_space=CURVE_SPACE, scorings=["tf", "gen"])
    grid = tuple(GridPoint(t, {"rel_gen": 1.0 - t, "gen_gen": 0.5, "loc_gen": t}) for t in sweep.spec.curve.gen_grid)
    sweep.record("t0", {**CONFIG, OPTUNA_TRIAL: 7}, curve_reports(sweep.spec, TRADE_OFF, grid))
    stored = [r for r in parquet_rows(sweep.layout.root, "gates") if r["n_edits"] == sweep.spec.T]
    expected = exact_curve(gate_rows(stored), DTYPE)
    assert len(expected) == 6  # 0, the four distinct gates, 1

    table = list(csv.DictReader(io.StringIO(_curve(capsys, sweep.out, "#007", "--format", "csv"))))
    curve = [r for r in table if r["section"] == "curve"]
    assert [float(r[THRESHOLD]) for r in curve] == [p.threshold for p in expected]
    for row, point in zip(curve, expected):
        assert {k: float(row[k]) for k in point.metrics} == point.metrics
    assert [(float(r[THRESHOLD]), float(r["rel_gen"])) for r in table if r["section"] == "grid"] == [(p.threshold, p.metrics["rel_gen"]) for p in grid]

    data = json.loads(_curve(capsys, sweep.out, "7", "--format", "json", "--threshold", "0.4"))
    assert data["trial_id"] == "t0" and data["n_edits"] == sweep.spec.T and data["milestones"] == list(sweep.spec.milestones)
    assert [({THRESHOLD: p.threshold, **p.metrics}) for p in expected] == data["curve"]
    at = data["at"]
    assert {k: at[k] for k in ("rel_tf", "gen_tf", "loc_tf")} == tf_metrics_at(gate_rows(stored), 0.4, DTYPE) == {"rel_tf": 0.5, "gen_tf": 1.0, "loc_tf": 1.0}
    assert at["on_grid"] is True and at["rel_gen"] == pytest.approx(0.6) and at["loc_gen"] == 0.4
    edits = parquet_rows(sweep.layout.root, "edits")
    assert at["edit_success"] == fmean(edit_success_at(e["gate"], e["success_on"], e["success_off"], 0.4, DTYPE) for e in edits) == 0.5

    off_grid = json.loads(_curve(capsys, sweep.out, "t0", "--format", "json", "--threshold", "0.05", "--n-edits", "2"))
    assert off_grid["n_edits"] == 2 and off_grid["at"]["on_grid"] is False and "rel_gen" not in off_grid["at"]
    assert off_grid["at"]["rel_tf"] == 1.0 and off_grid["at"]["loc_tf"] == 0.0

    text = _curve(capsys, sweep.out, "#007", "--threshold", "0.45")
    assert "trial #007 (t0) at 6 edits" in text and "| threshold | rel_tf | gen_tf | loc_tf |" in text
    assert "at threshold 0.45: rel_tf=0.5000 gen_tf=1.0000 loc_tf=1.0000 (tf, exact); generation scorings: 0.45 is not on the grid" in text


def test_curve_command_bad_trial_or_milestone_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = recorder(tmp_path, "bad", search_space=CURVE_SPACE)
    sweep.record("t0", {**CONFIG, OPTUNA_TRIAL: 0}, curve_reports(sweep.spec, TRADE_OFF))
    no_gates = [{k: v for k, v in report.items() if k != GATES_KEY} for report in curve_reports(sweep.spec, WEAK)]
    sweep.record("t1", {**CONFIG, OPTUNA_TRIAL: 1}, no_gates)
    capsys.readouterr()
    for args, message in (
        (["#009"], "trial '#009': not a trial of sweep 'bad' (expected a trial id or an Optuna number; trials: #000, #001)"),
        (["#001"], "trial #001 (t1): no gate rows recorded"),
        (["t0", "--n-edits", "3"], "--n-edits 3: trial #000 has gate rows at 2, 4, 6 edits"),
        (["t0", "--threshold", "1.5"], "--threshold 1.5: expected a threshold in [0, 1]"),
    ):
        assert main(["curve", sweep.out, *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"defer-sweep: error: {message}"), err


def test_curve_command_on_a_reuse_shows_its_originals_training(curve_sweep: Recorder, capsys: pytest.CaptureFixture[str]) -> None:
    reuse = json.loads(_curve(capsys, curve_sweep.out, "#003", "--format", "json"))
    original = json.loads(_curve(capsys, curve_sweep.out, "#000", "--format", "json"))
    assert reuse["trial_id"] == "t3" and reuse["curve"] == original["curve"]


# -- progress ---------------------------------------------------------------------------------------------


def _finished(trial_id: str, config: dict[str, Any], report: dict[str, Any]) -> Trial:
    trial = Trial("defer", config=config, trial_id=trial_id, stub=True)
    trial.run_metadata.last_result = dict(report)
    trial.set_status(Trial.TERMINATED)
    return trial


def test_progress_ranks_feasible_points_first_and_names_reuses(curve_sweep: Recorder) -> None:
    spec = curve_sweep.spec
    good, weak = curve_reports(spec, TRADE_OFF), curve_reports(spec, WEAK)
    only_weak = [_finished("t1", {**CONFIG, OPTUNA_TRIAL: 1}, weak[-1])]
    statuses = {"t1": Status.COMPLETE}
    text = summary_line(spec, only_weak, statuses)
    best_weak = rank_by(candidates(spec, [weak[-1] | {"trial_id": "t1"}], [p | {"trial_id": "t1", "n_edits": spec.T} for p in weak[-1][POINTS_KEY]]), spec.objectives[0])[0]
    assert text.endswith("(no feasible point yet)") and f"best rel_tf={best_weak['rel_tf']:.3f} (#001 t1:" in text

    trials = [*only_weak, _finished("t0", {**CONFIG, OPTUNA_TRIAL: 0}, good[-1])]
    text = summary_line(spec, trials, {**statuses, "t0": Status.COMPLETE})
    assert f"best rel_tf=0.500 (#000 t0: L2 lr=5.0e-02 it=5 th={FEASIBLE_THRESHOLD:.2f})" in text and "no feasible" not in text

    line = trial_line(4, 4, "#003", "t3", Status.COMPLETE, "L2 lr=5.0e-02 it=5", {6: {THRESHOLD: FEASIBLE_THRESHOLD, "rel_tf": 0.5}}, [THRESHOLD, "rel_tf"], 1.0, None, "#000")
    assert line.endswith("reuses #000") and f"@6 threshold={FEASIBLE_THRESHOLD:.3f} rel_tf=0.500" in line
    confirm_run = trial_line(1, 2, "42afb_00000", "42afb_00000", Status.COMPLETE, "L2 lr=5.0e-02 it=5", {6: {"rel_tf": 0.5}}, ["rel_tf"], 1.0, None)
    assert confirm_run.startswith("[1/2 done] 42afb_00000 complete  L2 ") and confirm_run.count("42afb_00000") == 1  # no Optuna number: its id once


def test_progress_callback_prints_a_reuse_as_a_reuse_of_the_original(curve_sweep: Recorder) -> None:
    from orchestrator.sinks.progress import ProgressCallback

    spec = curve_sweep.spec
    good = curve_reports(spec, TRADE_OFF)
    original = _finished("t0", {**CONFIG, OPTUNA_TRIAL: 0}, good[-1])
    reuse = Trial("defer", config={**CONFIG, OPTUNA_TRIAL: 3, REUSE_OF: "t0"}, trial_id="t3", stub=True)
    lines: list[str] = []
    callback = ProgressCallback(spec, curve_sweep.layout.parquet)
    with console_session(lines.append, None, "s"):
        callback.on_trial_start(0, [original, reuse], reuse)
        for report in reuse_reports(good, "t0"):
            callback.on_trial_result(0, [original, reuse], reuse, report)
        reuse.run_metadata.last_result = reuse_reports(good, "t0")[-1]
        callback.on_trial_complete(0, [original, reuse], reuse)
    assert lines[0].startswith("[2/4 done] #003 complete t3  L2 lr=5.0e-02 it=5  @2 threshold=")
    assert lines[0].endswith("reuses #000")
    assert "Pareto" not in lines[1] and "best rel_tf=0.500 (#000 t0:" in lines[1]  # the reuse repeats #000's points: #000 is named


# -- report -------------------------------------------------------------------------------------------------


def test_report_in_curve_mode_ranks_points_and_draws_threshold_curves(curve_sweep: Recorder) -> None:
    written = write_report_files(curve_sweep.out, log_to_mlflow=False)
    assert {"thresholds_tf.png", "tradeoff_tf.png", "pareto_tf.png", "curves_tf.png"} <= set(written.plots)
    data = load_sweep(require_sweep_dir(curve_sweep.out))
    rows, _ = top_trials(data)
    assert data.best["trial_id"] == "t0" and data.best[THRESHOLD] == FEASIBLE_THRESHOLD
    assert (rows[0]["trial_id"], rows[0][THRESHOLD]) == ("t0", FEASIBLE_THRESHOLD)
    assert all(is_feasible(r, data.spec.constraints) for r in rows[: sum(is_feasible(r, data.spec.constraints) for r in rows)])
    page = written.page.read_text(encoding="utf-8")
    assert page.count('data-trial-id="t0"') > 1  # one row per point of the training
    assert "Rel / Gen / Loc vs threshold" in page and "loc_tf &gt;= 0.9" in page and "<th>feasible</th>" in page


# -- end to end: real tiny sweeps ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sampled_run(local_ray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("sampled")
    spec = load_spec(tiny_spec(tmp, name="gates", T=4, milestones=[2, 4], num_trials=2, concurrency=1, early_stopping=False))
    assert execute(spec, prepare(spec)).finished
    return spec.output_dir


@pytest.fixture(scope="module")
def curve_run(local_ray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("curve")
    spec = load_spec(tiny_spec(tmp, name="curve-e2e", T=4, milestones=[2, 4], num_trials=3, concurrency=1, early_stopping=False, initial_points=[],
                               scorings=["tf", "gen"], search_space=CURVE_SPACE, curve={"resolution": 0.05, "gen_grid": [0.3, 0.6]},
                               constraints=[{"metric": "loc_tf", "min": 0.5}]))
    assert execute(spec, prepare(spec)).finished
    return spec.output_dir


def test_parquet_gates_alone_give_back_every_recorded_tf_metric(sampled_run: Path) -> None:
    """For every trial and milestone of a real sweep, the tf metrics at the trial's threshold
    computed from the Parquet gate rows equal its recorded milestone metrics, bit for bit; and
    each edit's success from its gate columns equals its recorded success."""
    trials = parquet_rows(sampled_run, "trials")
    gates, milestones, edits = (parquet_rows(sampled_run, t) for t in ("gates", "milestones", "edits"))
    assert trials and all(t["status"] == "complete" for t in trials)
    for trial in trials:
        mine = by_trial(milestones, trial["trial_id"])
        assert [m["n_edits"] for m in mine] == [2, 4]
        for milestone in mine:
            rows = [g for g in by_trial(gates, trial["trial_id"]) if g["n_edits"] == milestone["n_edits"]]
            assert len(rows) == 3 * milestone["n_edits"]
            recomputed = tf_metrics_at(gate_rows(rows), trial["threshold"], trial["dtype"])
            assert recomputed == {k: milestone[k] for k in recomputed}
            assert milestone[THRESHOLD] == trial["threshold"]
        for edit in by_trial(edits, trial["trial_id"]):
            assert edit_success_at(edit["gate"], edit["success_on"], edit["success_off"], trial["threshold"], trial["dtype"]) == edit["success"]
        assert trial["threshold_mode"] == "sampled" and trial["feasible"] is None


def test_curve_sweep_end_to_end(curve_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A real curve-mode sweep: each milestone's recorded metrics are its best point's, read
    back from the gates (tf) and the grid (gen); the candidates are its points at T; export
    writes a feasible point's threshold (off the knife edge); the curve command and the report read the dataset."""
    spec = load_spec(curve_run / "spec.yaml")
    layout = require_sweep_dir(curve_run)
    trials = parquet_rows(curve_run, "trials")
    gates, grid, milestones, points = (parquet_rows(curve_run, t) for t in ("gates", "grid", "milestones", "points"))
    assert len(trials) == 3 and {t["threshold_mode"] for t in trials} == {"curve"}
    for trial in (t for t in trials if not t["reuse_of"]):
        for milestone in by_trial(milestones, trial["trial_id"]):
            at = milestone[THRESHOLD]
            rows = [g for g in by_trial(gates, trial["trial_id"]) if g["n_edits"] == milestone["n_edits"]]
            assert tf_metrics_at(gate_rows(rows), at, trial["dtype"]) == {k: milestone[k] for k in ("rel_tf", "gen_tf", "loc_tf")}
            on_grid = [g for g in by_trial(grid, trial["trial_id"]) if g["n_edits"] == milestone["n_edits"] and g[THRESHOLD] == at]
            if on_grid:
                assert on_grid[0]["rel_gen"] == milestone["rel_gen"]
            thresholds = {p[THRESHOLD] for p in by_trial(points, trial["trial_id"]) if p["n_edits"] == milestone["n_edits"]}
            assert {0.3, 0.6} <= thresholds and at in thresholds
    rows = candidate_rows(layout, spec)
    complete = {t["trial_id"] for t in trials if t["status"] == "complete" and not t["reuse_of"]}
    assert {(r["trial_id"], r[THRESHOLD]) for r in rows} == {(p["trial_id"], p[THRESHOLD]) for p in points if p["n_edits"] == spec.T and p["trial_id"] in complete}

    _, children, client = mlflow_runs(curve_run)
    runs = children_by_trial(children)
    for trial in trials:
        assert runs[trial["trial_id"]].data.params["threshold_mode"] == "curve"
        assert CURVE_ARTIFACT in {a.path for a in client.list_artifacts(runs[trial["trial_id"]].info.run_id)}

    feasible = [r for r in rows if is_feasible(r, spec.constraints)]
    best_yaml = (curve_run / "best.yaml").read_text(encoding="utf-8")
    if feasible:
        best = rank_by(rows, spec.objectives[0], spec.constraints)[0]
        at_t = gate_rows(g for g in by_trial(gates, training_of(best)) if g["n_edits"] == spec.T)
        margin = point_margin(spec, best[THRESHOLD], at_t, best["dtype"])
        written = best[THRESHOLD] if margin is None else margin.threshold  # a tf breakpoint off its knife edge; a grid point as it is
        assert f"threshold: {written}" in best_yaml
        assert tf_metrics_at(at_t, written, best["dtype"]) == {k: best[k] for k in ("rel_tf", "gen_tf", "loc_tf")}
    first = trials[0]["trial_id"]
    data = json.loads(_curve(capsys, str(curve_run), first, "--format", "json"))
    assert [p[THRESHOLD] for p in data["curve"]][0] == 0.0 and [p[THRESHOLD] for p in data["grid"]] == [0.3, 0.6]
    html = (curve_run / "report" / "report.html").read_text(encoding="utf-8")
    assert "img-thresholds_tf" in html and "img-tradeoff_gen" in html
    assert math.isfinite(trials[0]["threshold"])
