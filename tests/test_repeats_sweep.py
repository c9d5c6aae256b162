"""Repeats inside a sweep (spec `repeats`): every trial runs each (seed, edit order) member of its
config, and Optuna, ASHA, Parquet and MLflow see the mean over members, with each member's
numbers and per-record scores kept for error bars. Real sweeps of the tiny Llama on a local Ray;
members are checked against the same seed and order run alone with defer_core.run_trial."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from statistics import fmean, stdev

import numpy as np
import pytest
import scipy.stats

from defer_core import TrialPlan, run_trial, save_hparams, tiny_llama
from defer_core.runtime import DEFAULT_THREADS
from defer_core.orders import ordered_records
from orchestrator.cli import main
from orchestrator.intervals import BOOTSTRAP, T_INTERVAL, bootstrap_interval, milestone_intervals
from orchestrator.protocol import METRIC_COLUMNS
from orchestrator.results.curve_points import with_mean_metrics
from orchestrator.spec.trial_config import hparams_for
from orchestrator.results.store import TABLES, ResultStore, read_table
from orchestrator.spec import load_spec
from orchestrator.sweep.driver import execute
from orchestrator.sweep.preflight import prepare
from orchestrator.sweep.preflight import load_spec_records

from .orchestrator_support import children_by_trial, mlflow_runs, optuna_trials, parquet_rows, tiny_spec

ROOT = Path(__file__).resolve().parent.parent
SEEDS, ORDERS = [0, 1], 2
MEMBERS = [(seed, order) for order in range(ORDERS) for seed in SEEDS]
# Only n_iter is searched: the two initial points use both of its values, so the third trial
# proposes a training already recorded and reuses it (never train twice).
SPACE = {"layer": 2, "module_template": "model.layers[{layer}].mlp.down_proj", "edit_lr": 5.0e-2, "threshold": 0.5, "n_iter": [2, 5]}
SHORT = {"T": 3, "milestones": [1, 3], "early_stopping": False, "concurrency": 1, "scorings": ["tf"]}
TF_KEYS = ("rel_tf", "gen_tf", "loc_tf", "mean_tf")
T = SHORT["T"]


@pytest.fixture(scope="module")
def sweeps(local_ray: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A repeated sweep (3 trials, the third a reuse) and an unrepeated one (2 trials, seed 3)."""
    tmp = tmp_path_factory.mktemp("repeats")
    repeated = load_spec(tiny_spec(tmp, name="repeated", num_trials=3, search_space=SPACE, initial_points=[{"n_iter": 5}, {"n_iter": 2}],
                                   repeats={"seeds": SEEDS, "orders": ORDERS}, **SHORT))
    single = load_spec(tiny_spec(tmp, name="single", num_trials=2, seed=3, **SHORT))
    for spec in (repeated, single):
        lines: list[str] = []
        assert execute(spec, prepare(spec), sink=lines.append).finished
        (spec.output_dir / "progress.txt").write_text("\n".join(lines))
    return {"repeated": repeated.output_dir, "single": single.output_dir}


def of_trial(rows: list[dict], trial_id: str, **match) -> list[dict]:
    return [row for row in rows if row["trial_id"] == trial_id and all(row[key] == value for key, value in match.items())]


def trained(out: Path) -> list[dict]:
    return [row for row in parquet_rows(out, "trials") if row["reuse_of"] is None]


def test_each_member_equals_its_seed_and_order_run_alone(sweeps: dict[str, Path]) -> None:
    out = sweeps["repeated"]
    spec = load_spec(out / "spec.yaml")
    records = load_spec_records(spec)
    plan = TrialPlan(protocol=spec.protocol, milestones=spec.milestones, scorings=spec.scorings)
    tables = {table: parquet_rows(out, table) for table in ("member_milestones", "record_scores", "edits", "gates")}
    trials = trained(out)
    assert len(trials) == 2
    for trial in trials:
        for seed, order in MEMBERS:
            stream = ordered_records(records, order, spec.T)
            alone = run_trial(tiny_llama(), stream, hparams_for(spec, trial), plan, seed=seed)
            member = {key: of_trial(rows, trial["trial_id"], seed=seed, order=order) for key, rows in tables.items()}
            by_milestone = {row["n_edits"]: row for row in member["member_milestones"]}
            assert sorted(by_milestone) == [1, 3]
            for expected in alone.milestones:
                metrics = with_mean_metrics(expected.metrics, spec.scorings)
                assert {key: by_milestone[expected.n_edits][key] for key in metrics} == metrics
                scored = [row for row in member["record_scores"] if row["n_edits"] == expected.n_edits]
                assert [row["record_id"] for row in scored] == [r.record_id for r in expected.records]
                assert [row["rel_tf"] for row in scored] == [r.metrics["rel_tf"] for r in expected.records]
                gates = [row for row in member["gates"] if row["n_edits"] == expected.n_edits]
                assert [(g["record_id"], g["probe"], g["gate"]) for g in gates] == [(g.record_id, g.probe, g.gate) for g in expected.gates]
            edits = sorted(member["edits"], key=lambda e: e["edit_index"])
            assert [e["record_id"] for e in edits] == [r.record_id for r in stream]
            assert [e["success"] for e in edits] == [e.success for e in alone.edits]
            assert [e["final_loss"] for e in edits] == pytest.approx([e.final_loss for e in alone.edits], rel=1e-5, abs=1e-6)
        orders = {order: [e["record_id"] for e in sorted(of_trial(tables["edits"], trial["trial_id"], seed=0, order=order), key=lambda e: e["edit_index"])]
                  for order in range(ORDERS)}
        assert orders[0] != orders[1] and sorted(orders[0]) == sorted(orders[1]), "order 1 edits the same records in another sequence"


def test_the_trial_command_reproduces_a_sweep_trial_bit_for_bit(sweeps: dict[str, Path], tmp_path: Path) -> None:
    """A sweep worker and `defer-sweep trial` both run torch at DEFAULT_THREADS (1) unless told
    otherwise, and record it: every gate of the trial comes out identical."""
    out = sweeps["single"]
    spec = load_spec(out / "spec.yaml")
    trial = trained(out)[0]
    hparams = save_hparams(hparams_for(spec, trial), tmp_path / "trial.yaml")
    args = ["trial", str(hparams), "--model", "tiny-llama", "--device", "cpu", "--T", str(spec.T), "--milestones", ",".join(map(str, spec.milestones)),
            "--scoring", "tf", "--seed", str(spec.seed), "--json"]
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ran = json.loads(done.stdout)
    assert ran["threads"] == trial["threads"] == DEFAULT_THREADS
    swept = {(g["n_edits"], g["record_id"], g["probe"]): g["gate"] for g in of_trial(parquet_rows(out, "gates"), trial["trial_id"])}
    alone = {(m["n_edits"], g["record_id"], g["probe"]): g["gate"] for m in ran["milestones"] for g in m["gates"]}
    assert alone == swept and len(swept) == 3 * (1 + spec.T)
    by_milestone = {m["n_edits"]: m["metrics"] for m in ran["milestones"]}
    assert {row["n_edits"]: row["rel_tf"] for row in of_trial(parquet_rows(out, "milestones"), trial["trial_id"])} == {n: m["rel_tf"] for n, m in by_milestone.items()}


def test_milestones_and_trials_hold_the_mean_over_members(sweeps: dict[str, Path]) -> None:
    out = sweeps["repeated"]
    members = parquet_rows(out, "member_milestones")
    milestones = parquet_rows(out, "milestones")
    for trial in parquet_rows(out, "trials"):
        assert trial["members"] == len(MEMBERS) and trial["stage"] == "search" and trial["confirms"] is None
        assert trial["status"] == "complete"
        mine = sorted(of_trial(milestones, trial["trial_id"]), key=lambda m: m["n_edits"])
        assert [m["n_edits"] for m in mine] == [1, 3] and all(m["members"] == len(MEMBERS) for m in mine)
        for row in mine:
            at = of_trial(members, trial["trial_id"], n_edits=row["n_edits"])
            assert sorted((m["seed"], m["order"]) for m in at) == sorted(MEMBERS)
            raw = {key: fmean(m[key] for m in at) for key in ("rel_tf", "gen_tf", "loc_tf")}
            assert {key: row[key] for key in TF_KEYS} == with_mean_metrics(raw, ("tf",))
        assert {key: trial[key] for key in METRIC_COLUMNS} == {key: mine[-1][key] for key in METRIC_COLUMNS}


def test_optuna_sees_the_mean(sweeps: dict[str, Path]) -> None:
    out = sweeps["repeated"]
    milestones = parquet_rows(out, "milestones")
    studied = optuna_trials(out)
    for trial in parquet_rows(out, "trials"):
        mine = {m["n_edits"]: m["rel_tf"] for m in of_trial(milestones, trial["trial_id"])}
        optuna_trial = studied[trial["pack_id"]]
        assert optuna_trial.value == mine[3]
        assert optuna_trial.intermediate_values == mine


def test_a_reuse_trial_replays_the_members_of_its_original(sweeps: dict[str, Path]) -> None:
    out = sweeps["repeated"]
    trials = parquet_rows(out, "trials")
    (reuse,) = [t for t in trials if t["reuse_of"] is not None]
    original = next(t for t in trials if t["trial_id"] == reuse["reuse_of"])
    assert reuse["n_iter"] == original["n_iter"] and reuse["members"] == len(MEMBERS)
    members = parquet_rows(out, "member_milestones")
    def strip(rows: list[dict]) -> list[dict]:
        return sorted(({k: v for k, v in row.items() if k != "trial_id"} for row in rows), key=lambda r: (r["n_edits"], r["order"], r["seed"]))

    assert strip(of_trial(members, reuse["trial_id"])) == strip(of_trial(members, original["trial_id"]))
    assert {key: reuse[key] for key in METRIC_COLUMNS} == {key: original[key] for key in METRIC_COLUMNS}
    for table in ("record_scores", "edits", "gates"):  # they stay with the training (records.training_of)
        assert not of_trial(parquet_rows(out, table), reuse["trial_id"])


def test_intervals_are_the_t_and_bootstrap_of_the_stored_rows(sweeps: dict[str, Path]) -> None:
    out = sweeps["repeated"]
    members, records = parquet_rows(out, "member_milestones"), parquet_rows(out, "record_scores")
    for trial in trained(out):
        mine_members, mine_records = of_trial(members, trial["trial_id"]), of_trial(records, trial["trial_id"])
        intervals = milestone_intervals(mine_members, mine_records, "rel_tf")
        assert sorted(intervals) == [1, 3]
        for n_edits, found in intervals.items():
            values = np.array([m["rel_tf"] for m in mine_members if m["n_edits"] == n_edits])
            t = found[T_INTERVAL]
            assert t.n == len(MEMBERS) and t.mean == pytest.approx(values.mean(), abs=1e-12)
            if values.std() > 0:
                low, high = scipy.stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=scipy.stats.sem(values))
                assert (t.low, t.high) == pytest.approx((max(0.0, low), min(1.0, high)), abs=1e-12)  # a proportion's interval, clipped
            else:
                assert t.half_width == 0.0
            at = [r for r in mine_records if r["n_edits"] == n_edits]
            ids = sorted({r["record_id"] for r in at})  # before T the orders have edited (and score) different records
            assert len(at) == n_edits * len(MEMBERS) and n_edits <= len(ids) <= n_edits * ORDERS
            per_record = [np.mean([r["rel_tf"] for r in at if r["record_id"] == rid]) for rid in ids]
            boot = found[BOOTSTRAP]
            expected = bootstrap_interval(per_record)
            assert (boot.low, boot.high, boot.n, boot.kind) == (pytest.approx(expected.low, abs=1e-12), pytest.approx(expected.high, abs=1e-12), expected.n, "bootstrap")
            assert boot.n == len(ids) and boot.mean == pytest.approx(np.mean(per_record), abs=1e-12)
            if n_edits == T:
                assert len(ids) == n_edits and boot.mean == pytest.approx(t.mean, abs=1e-12), "at T every member scores every record"


def test_a_replayed_trial_shows_its_originals_intervals_in_the_table(sweeps: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """The reuse keeps no record scores of its own (they stay with the training), yet its
    table cells carry the same bootstrap interval as the trial it replays, not a bare mean."""
    out = sweeps["repeated"]
    trials = parquet_rows(out, "trials")
    (reuse,) = [t for t in trials if t["reuse_of"] is not None]
    assert main(["table", str(out), "--trials", f"{reuse['reuse_of']},{reuse['trial_id']}", "--interval", "bootstrap", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    cells = [{k: v for k, v in row.items() if "@" in k} for row in rows]
    assert len(rows) == 2 and cells[0] == cells[1]
    assert all(cells[0][key] for key in cells[0] if key.endswith("_low")), "every cell has an interval"


def test_mlflow_logs_the_spread_of_the_members(sweeps: dict[str, Path]) -> None:
    out = sweeps["repeated"]
    _, children, client = mlflow_runs(out)
    runs = children_by_trial(children)
    members = parquet_rows(out, "member_milestones")
    for trial in trained(out):
        run_id = runs[trial["trial_id"]].info.run_id
        assert runs[trial["trial_id"]].data.params["members"] == str(len(MEMBERS))
        intervals = milestone_intervals(of_trial(members, trial["trial_id"]), [], "rel_tf")
        history = {key: {m.step: m.value for m in client.get_metric_history(run_id, key)} for key in ("rel_tf", "rel_tf_std", "rel_tf_ci_low", "rel_tf_ci_high")}
        for n_edits in (1, 3):
            values = [m["rel_tf"] for m in of_trial(members, trial["trial_id"], n_edits=n_edits)]
            assert history["rel_tf"][n_edits] == fmean(values)
            assert history["rel_tf_std"][n_edits] == pytest.approx(stdev(values), abs=1e-12)
            assert history["rel_tf_ci_low"][n_edits] == pytest.approx(intervals[n_edits][T_INTERVAL].low, abs=1e-12)
            assert history["rel_tf_ci_high"][n_edits] == pytest.approx(intervals[n_edits][T_INTERVAL].high, abs=1e-12)


def test_progress_lines_show_mean_and_half_width(sweeps: dict[str, Path]) -> None:
    lines = (sweeps["repeated"] / "progress.txt").read_text().splitlines()
    trial_lines = [line for line in lines if " complete " in line and line.startswith("[")]
    assert len(trial_lines) == 3
    assert all(re.search(r"@3 rel_tf=\d\.\d{3} (± \d\.\d{3}|\[\d\.\d{3}, \d\.\d{3}\])", line) for line in trial_lines), trial_lines
    single = (sweeps["single"] / "progress.txt").read_text()
    assert "@3 rel_tf=" in single and "±" not in single


def test_an_unrepeated_sweep_keeps_its_numbers_and_writes_its_record_scores(sweeps: dict[str, Path]) -> None:
    out = sweeps["single"]
    spec = load_spec(out / "spec.yaml")
    assert spec.repeat_members == ((3, 0),)
    records = load_spec_records(spec)
    plan = TrialPlan(protocol=spec.protocol, milestones=spec.milestones, scorings=spec.scorings)
    milestones, members, scores = (parquet_rows(out, table) for table in ("milestones", "member_milestones", "record_scores"))
    edits, gates = parquet_rows(out, "edits"), parquet_rows(out, "gates")
    trials = parquet_rows(out, "trials")
    assert len(trials) == 2
    for trial in trials:
        assert trial["members"] == 1 and trial["stage"] == "search"
        alone = run_trial(tiny_llama(), records, hparams_for(spec, trial), plan, seed=spec.seed)
        mine = {m["n_edits"]: m for m in of_trial(milestones, trial["trial_id"])}
        for expected in alone.milestones[: len(mine)]:
            metrics = with_mean_metrics(expected.metrics, spec.scorings)
            assert {key: mine[expected.n_edits][key] for key in metrics} == metrics
            assert mine[expected.n_edits]["members"] == 1
            (member,) = of_trial(members, trial["trial_id"], n_edits=expected.n_edits)
            assert (member["seed"], member["order"]) == (3, 0) and {key: member[key] for key in metrics} == metrics
            scored = of_trial(scores, trial["trial_id"], n_edits=expected.n_edits)
            assert [(r["seed"], r["order"], r["record_id"], r["rel_tf"]) for r in scored] == [(3, 0, r.record_id, r.metrics["rel_tf"]) for r in expected.records]
            assert fmean(r["rel_tf"] for r in scored) == pytest.approx(metrics["rel_tf"], abs=1e-12)
            assert math.isnan(milestone_intervals([member], scored, "rel_tf")[expected.n_edits][T_INTERVAL].half_width)
        assert {(e["seed"], e["order"]) for e in of_trial(edits, trial["trial_id"])} == {(3, 0)}
        assert {(g["seed"], g["order"]) for g in of_trial(gates, trial["trial_id"])} == {(3, 0)}
    _, children, client = mlflow_runs(out)
    for run in children:
        assert not any(key.endswith(("_std", "_ci_low", "_ci_high")) for key in run.data.metrics)


def test_removing_a_pack_drops_its_rows_from_every_table(tmp_path: Path) -> None:
    """A trial that runs again from scratch (resume) loses every old row, new tables included."""
    sink = ResultStore(tmp_path)
    assert {"member_milestones", "record_scores"} <= set(TABLES)
    sink.write("member_milestones", "p0", [{"sweep_id": "s", "trial_id": "p0", "seed": 0, "order": 1, "n_edits": 2, "rel_tf": 0.5}])
    sink.write("record_scores", "p0", [{"sweep_id": "s", "trial_id": "p0", "seed": 0, "order": 1, "n_edits": 2, "chunk": 0, "record_id": "r", "rel_tf": 1.0}])
    sink.write("record_scores", "p1", [{"sweep_id": "s", "trial_id": "p1", "seed": 0, "order": 0, "n_edits": 2, "chunk": 0, "record_id": "r", "rel_tf": 0.0}])
    assert sink.pack_ids() == {"p0", "p1"}
    sink.remove_pack("p0")
    assert read_table(tmp_path, "member_milestones").num_rows == 0
    assert read_table(tmp_path, "record_scores").column("trial_id").to_pylist() == ["p1"]


def test_milestone_intervals_take_one_trial_at_a_time() -> None:
    rows = [{"trial_id": t, "seed": 0, "order": 0, "n_edits": 1, "rel_tf": 0.5} for t in ("a", "b")]
    with pytest.raises(Exception, match="one trial's member_milestones rows, got rows of 2 trials"):
        milestone_intervals(rows, [], "rel_tf")
