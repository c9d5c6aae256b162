"""Issue 13's groundwork: edit orders as repeats, intervals over repeats and over records, and
`trial` / `compare` running every seed x order with error bars."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from statistics import fmean

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from scipy import stats

from defer_core import DeferInputError, EditRecord, TrialPlan, load_model, run_trial
from defer_core.orders import ordered_records
from defer_core.results import METRICS, metric_key
from orchestrator.compare import ComparePlan, render, run_comparison, write_outputs
from orchestrator.intervals import bootstrap_interval, format_interval, repeat_interval

from .conftest import tiny_hparams

ROOT = Path(__file__).resolve().parent.parent
HPARAMS = tiny_hparams(edit_lr=5e-2, n_iter=4, threshold=0.3)
T = (1, 3)  # 3 records: order 1 is [2, 1, 0], so the first edit differs from order 0's
SEEDS = (0, 1)
ORDERS = 2
PROTOCOLS = ("stream", "immediate")  # one edit stream per seed x order serves both
SCORINGS = ("tf",)  # scorings are split per cell in test_compare; here the members matter


def _fixture_records(count: int) -> list[EditRecord]:
    return [EditRecord(f"r{i}", f"p{i}", f"t{i}", f"q{i}", f"l{i}", f"a{i}") for i in range(count)]


def _ids(records) -> list[str]:
    return [r.record_id for r in records]


# -- orders ---------------------------------------------------------------------------------------


def test_order_zero_is_the_file_order(zsre_records):
    assert ordered_records(zsre_records, 0, 10) == zsre_records[:10]


def test_order_k_is_a_pinned_permutation_of_the_first_total_records():
    records = _fixture_records(12)
    first = ordered_records(records, 1, 10)
    assert _ids(first) == ["r8", "r0", "r3", "r4", "r5", "r2", "r9", "r6", "r7", "r1"]  # pinned: any change breaks reproducibility
    assert sorted(first, key=records.index) == records[:10]
    assert ordered_records(records, 1, 10) == first
    shuffles = [tuple(_ids(ordered_records(records, k, 10))) for k in range(6)]
    assert len(set(shuffles)) == 6, "every order differs from file order and from every other"


def test_an_order_is_the_same_in_a_fresh_process_whatever_the_global_seeds():
    code = ("import random, sys, numpy; random.seed(99); numpy.random.seed(5)\n"
            "from defer_core.orders import permutation\nprint(permutation(50, 7))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert done.returncode == 0, done.stderr
    records = _fixture_records(50)
    assert [f"r{i}" for i in json.loads(done.stdout)] == _ids(ordered_records(records, 7, 50))


@pytest.mark.parametrize("order, total, message", [
    (-1, 3, "order must be an integer >= 0, got -1"),
    (1, 13, "total must be between 0 and the 12 records given, got 13"),
])
def test_bad_order_or_total_is_one_line(order, total, message):
    with pytest.raises(DeferInputError) as error:
        ordered_records(_fixture_records(12), order, total)
    assert str(error.value) == message


# -- intervals ------------------------------------------------------------------------------------


def test_repeat_interval_is_student_t_over_members():
    values = [0.61, 0.66, 0.58, 0.70, 0.64]
    got = repeat_interval(values, confidence=0.9)
    low, high = stats.t.interval(0.9, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert (got.kind, got.n) == ("t", 5)
    assert got.mean == pytest.approx(np.mean(values), abs=1e-15)
    assert (got.low, got.high) == pytest.approx((low, high), abs=1e-12)
    assert got.half_width == pytest.approx((high - low) / 2, abs=1e-12)
    assert format_interval(got) == f"{np.mean(values):.2f} ± {(high - low) / 2:.2f}"


@pytest.mark.parametrize(("values", "shown"), [([0.0, 1.0], "0.50 [0.00, 1.00]"), ([0.9, 1.0, 1.0], "0.97 [0.82, 1.00]"), ([0.0, 0.0, 0.1], "0.03 [0.00, 0.18]")])
def test_a_proportions_t_interval_is_clipped_to_0_1_and_shown_as_its_bounds(values: list[float], shown: str):
    """Over 2-3 members the raw t interval of an accuracy leaves [0, 1] (0.50 ± 6.35 for 0 and 1)."""
    got = repeat_interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert low < 0 or high > 1
    assert got.clipped and (got.low, got.high) == pytest.approx((max(0.0, low), min(1.0, high)), abs=1e-12)
    assert got.half_width == pytest.approx((got.high - got.low) / 2, abs=1e-12)
    assert format_interval(got) == shown
    assert not repeat_interval([0.61, 0.66, 0.58, 0.70, 0.64]).clipped


def test_one_member_has_no_spread_and_prints_the_mean_alone():
    one = repeat_interval([0.625])
    assert one.mean == 0.625 and one.n == 1
    assert math.isnan(one.half_width) and math.isnan(one.low) and math.isnan(one.high)
    assert format_interval(one, 3) == "0.625"
    with pytest.raises(DeferInputError, match="confidence must lie strictly between 0 and 1, got 1.5"):
        repeat_interval([0.1, 0.2], confidence=1.5)
    with pytest.raises(DeferInputError, match="at least one repeat member"):
        repeat_interval([])


def test_bootstrap_is_the_percentile_interval_and_deterministic():
    values = np.random.default_rng(42).uniform(size=37).round(2)  # like per-record accuracies
    got = bootstrap_interval(values, confidence=0.95, resamples=3000, seed=3)
    means = values[np.random.default_rng(3).integers(0, len(values), size=(3000, len(values)))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    assert (got.kind, got.n, got.mean) == ("bootstrap", 37, pytest.approx(values.mean(), abs=1e-12))
    assert (got.low, got.high) == pytest.approx((low, high), abs=1e-12)
    assert got.half_width == pytest.approx((high - low) / 2, abs=1e-12)
    assert bootstrap_interval(values, resamples=3000, seed=3) == got
    assert bootstrap_interval(values, resamples=3000, seed=4) != got


# -- compare over seeds x orders ----------------------------------------------------------------


@pytest.fixture(scope="module")
def comparison(zsre_records):
    plan = ComparePlan(hparams=HPARAMS, model="tiny-llama", milestones=T, protocols=PROTOCOLS, scorings=SCORINGS,
                       dtypes=("float32",), seeds=SEEDS, orders=ORDERS, error_bars=True)
    return run_comparison(plan, zsre_records[: T[-1]])


@pytest.fixture(scope="module")
def member_runs(zsre_records):
    """(seed, order) -> a separate `run_trial` on the records in that order."""
    loaded = load_model("tiny-llama", dtype="float32")
    return {(s, o): run_trial(loaded, ordered_records(zsre_records, o, T[-1]), HPARAMS, TrialPlan(protocol=PROTOCOLS, milestones=T, scorings=SCORINGS), seed=s)
            for s in SEEDS for o in range(ORDERS)}


def _member_values(member_runs, protocol: str, scoring: str, n: int, metric: str) -> list[float]:
    return [next(m for m in run.milestones_of(protocol) if m.n_edits == n).metrics[metric_key(metric, scoring)] for run in member_runs.values()]


def test_cells_are_the_mean_and_t_interval_of_separate_trials(comparison, member_runs):
    for protocol in PROTOCOLS:
        for scoring in SCORINGS:
            for n in T:
                for metric in METRICS:
                    values = _member_values(member_runs, protocol, scoring, n, metric)
                    assert len(values) == len(SEEDS) * ORDERS
                    assert comparison.cells[("defer", protocol, scoring, "float32")][n][metric] == fmean(values)
                    assert comparison.intervals[("defer", protocol, scoring, "float32")][n][metric] == repeat_interval(values)
    first_edited = {o: member_runs[(0, o)].milestones_of("stream")[0].records[0].record_id for o in range(ORDERS)}
    assert first_edited[0] != first_edited[1], "order 1 starts with another record"


def test_records_parquet_names_seed_and_order(comparison, zsre_records, tmp_path):
    _, path = write_outputs(comparison, "md", tmp_path)
    rows = pq.read_table(path).to_pylist()
    assert {(r["seed"], r["order"]) for r in rows} == {(s, o) for s in SEEDS for o in range(ORDERS)}
    first = {r["order"]: r["record_id"] for r in rows if (r["protocol"], r["T"], r["scoring"], r["seed"]) == ("stream", 1, "tf", 0)}
    assert first == {0: zsre_records[0].record_id, 1: zsre_records[2].record_id}


def test_tables_show_mean_and_half_width(comparison):
    key, n = ("defer", "stream", "tf", "float32"), T[-1]
    interval = comparison.intervals[key][n]["rel"]
    assert interval.n == 4 and interval.half_width > 0
    md_row = next(line for line in render(comparison, "md").splitlines() if line.startswith("| defer | stream | tf |"))
    assert md_row.split(" | ")[4 + 3 * (len(T) - 1)] == f"{interval.mean:.3f} ± {interval.half_width:.3f}"
    assert f"{interval.mean:.3f} $\\pm$ {interval.half_width:.3f}" in render(comparison, "latex")
    header, *rows = list(csv.reader(io.StringIO(render(comparison, "csv"))))
    row = dict(zip(header, next(r for r in rows if tuple(r[:4]) == key)))
    assert (float(row[f"rel@{n}"]), float(row[f"rel@{n}_half_width"]), row["n"]) == (interval.mean, interval.half_width, "4")
    data = json.loads(render(comparison, "json"))
    json_row = next(r for r in data["rows"] if (r["editor"], r["protocol"], r["scoring"], r["dtype"]) == key)
    assert (json_row["cells"][str(n)]["rel"], json_row["half_width"][str(n)]["rel"], json_row["n"], data["orders"]) == (interval.mean, interval.half_width, 4, 2)
    plain = render(replace(comparison, plan=replace(comparison.plan, error_bars=False)), "md")
    assert "±" not in plain and f"| {interval.mean:.3f} |" in plain


# -- the commands ---------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def _hparams_file(tmp_path: Path) -> Path:
    path = tmp_path / "hparams.yaml"
    path.write_text(yaml.safe_dump(HPARAMS.to_easyedit_dict()))
    return path


def test_compare_and_trial_commands_agree_over_seeds_and_orders(comparison, tmp_path):
    hparams = _hparams_file(tmp_path)
    done = _cli("compare", str(hparams), "--T", "1,3", "--model", "tiny-llama", "--protocols", ",".join(PROTOCOLS), "--scorings", ",".join(SCORINGS),
                "--seeds", "0,1", "--orders", "2", "--format", "csv", "--output", str(tmp_path / "cmp"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip("\n") == render(comparison, "csv")
    trial = _cli("trial", str(hparams), "--T", "3", "--milestones", "1,3", "--model", "tiny-llama", "--protocol", "stream",
                 "--scoring", "tf", "--seeds", "0,1", "--orders", "2", "--json")
    assert trial.returncode == 0, trial.stderr
    result = json.loads(trial.stdout)
    assert [(m["seed"], m["order"]) for m in result["members"]] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    for milestone in result["milestones"]:
        for scoring in SCORINGS:
            interval = comparison.intervals[("defer", "stream", scoring, "float32")][milestone["n_edits"]]
            for metric in METRICS:
                name = metric_key(metric, scoring)
                assert (milestone["metrics"][name], milestone["half_width"][name], milestone["n"]) == (interval[metric].mean, interval[metric].half_width, 4)
    assert "seed 1 order 1: edit     3" in trial.stderr


@pytest.mark.parametrize("command, flags, message", [
    ("trial", ["--T", "1", "--orders", "0"], "--orders: expected a number of edit orders >= 1, got 0"),
    ("trial", ["--T", "1", "--seed", "1", "--seeds", "0,1"], "--seed 1 and --seeds 0,1: give one of them"),
    ("compare", ["--T", "1", "--orders", "-2"], "--orders: expected a number of edit orders >= 1, got -2"),
])
def test_bad_repeat_flags_are_one_line(tmp_path, command, flags, message):
    done = _cli(command, str(_hparams_file(tmp_path)), "--model", "tiny-llama", *flags, *(["--output", str(tmp_path / "o")] if command == "compare" else []))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"defer-sweep: error: {message}"]
