"""Ctrl-C, one trial number, the Pareto summary, live edit counts and the report's curve labels,
on one real sweep: `defer-sweep run` of the tiny Llama in its own process (real local Ray, Optuna
RDB storage, MLflow SQLite store), interrupted with SIGINT to its process group (what Ctrl-C in
a terminal sends) while a trial runs, then `defer-sweep resume --quiet` to the end."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest

from orchestrator.cli import main
from orchestrator.report.data import load_sweep
from orchestrator.report.html import render_html
from orchestrator.report.importance import SMALL_SAMPLE_TRIALS, param_importances
from orchestrator.report.figures import curves_figure
from orchestrator.results.ranking import pareto_front
from orchestrator.sinks.layout import require_sweep_dir
from orchestrator.spec import Objective

from .orchestrator_support import children_by_trial, mlflow_runs, parquet_rows, tiny_spec

ROOT = Path(__file__).resolve().parent.parent
NUM_TRIALS = 4
T = 16
OBJECTIVES = [{"metric": "rel_tf", "direction": "maximize"}, {"metric": "loc_tf", "direction": "maximize"}]
TRIAL_LINE = re.compile(r"^\[(\d+)/(\d+) done\] (#\d{3}) (\w+)\s+(\S+)  ")
LIVE_LINE = re.compile(r"^  live: (#\d{3}) (\d+)/(\d+) edits · ([0-9.e+-]+) s/edit · ETA (\S+)$")
SWEEP_LIVE_LINE = re.compile(r"^  live: sweep \d+/\d+ done · \d+ running · ETA ≈ \S+$")
PARETO = re.compile(r"Pareto front: (\d+) trial\(s\): (.*)$")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", *args]


def label(number: int) -> str:
    return f"#{number:03d}"


@dataclass
class Sweep:
    out: Path
    run_log: str
    run_rc: int
    after_interrupt: list[dict[str, Any]]  # Parquet trials right after Ctrl-C
    runs_after_interrupt: dict[str, tuple[str, str]]  # trial id → (MLflow run status, status tag)
    parent_after_interrupt: str
    resume: subprocess.CompletedProcess


def _wait_for_second_trial_running(process: subprocess.Popen, log: Path, timeout_s: float = 300) -> None:
    """Until one trial has ended and another has made an edit (its live line is in the log)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "the sweep ended before it could be interrupted:\n" + log.read_text()
        lines = log.read_text().splitlines()
        ended = {m.group(3) for m in map(TRIAL_LINE.match, lines) if m}
        editing = {m.group(1) for m in map(LIVE_LINE.match, lines) if m and int(m.group(2)) >= 1}
        if ended and editing - ended:
            return
        time.sleep(0.2)
    raise AssertionError("no second trial started editing in time:\n" + log.read_text())


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    tmp = tmp_path_factory.mktemp("ctrlc")
    spec = tiny_spec(
        tmp,
        name="ctrlc",
        num_trials=NUM_TRIALS,
        T=T,
        milestones=[4, T],
        concurrency=1,
        search_space={
            "layer": {"low": 1, "high": 3},
            "module_template": "model.layers[{layer}].mlp.down_proj",
            "edit_lr": {"low": 1.0e-3, "high": 1.0e-1, "log": True},
            "threshold": {"low": 0.3, "high": 0.7},
            "n_iter": [150, 250],  # a few tenths of a second per edit: several live lines per trial
        },
        initial_points=[{"layer": 2, "edit_lr": 5.0e-2, "n_iter": 150, "threshold": 0.5}],
        objectives=OBJECTIVES,
        early_stopping=False,
    )
    out = tmp / "ctrlc"
    log_path = tmp / "run.log"
    with log_path.open("w") as log:  # stdout is a file, not a terminal: plain live lines
        process = subprocess.Popen(cli("run", str(spec), "--progress-every", "0.5"), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_for_second_trial_running(process, log_path)
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
            run_rc = process.wait(timeout=180)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    time.sleep(1)  # the driver's local Ray processes fate-share with it
    after = parquet_rows(out, "trials")
    parent, children, _ = mlflow_runs(out)
    runs = {trial_id: (run.info.status, run.data.tags.get("status")) for trial_id, run in children_by_trial(children).items()}
    resumed = subprocess.run(cli("resume", str(out), "--quiet"), cwd=ROOT, capture_output=True, text=True, timeout=600)
    return Sweep(out, log_path.read_text(), run_rc, after, runs, parent.info.status, resumed)


def trial_lines(text: str) -> list[re.Match[str]]:
    return [m for m in map(TRIAL_LINE.match, text.splitlines()) if m]


def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["trial_id"]: row for row in rows}


# -- Ctrl-C and resume --------------------------------------------------------------------------------


def test_ctrl_c_prints_only_our_resume_line_and_kills_the_interrupted_mlflow_run(sweep: Sweep) -> None:
    assert sweep.run_rc == 130, sweep.run_log
    assert f"continue it with: defer-sweep resume {sweep.out}" in sweep.run_log
    assert "Tuner.restore" not in sweep.run_log and "Resume experiment with" not in sweep.run_log
    interrupted = [t["trial_id"] for t in sweep.after_interrupt if t["status"] == "running"]
    assert interrupted, f"no trial was running at Ctrl-C: {sweep.after_interrupt}"
    for trial_id in interrupted:
        assert sweep.runs_after_interrupt[trial_id] == ("KILLED", "interrupted")
    finished = [t for t in sweep.after_interrupt if t["status"] != "running"]
    assert finished and all(sweep.runs_after_interrupt[t["trial_id"]] == ("FINISHED", "complete") for t in finished)
    assert sweep.parent_after_interrupt == "KILLED"


def test_resume_finishes_every_trial_once(sweep: Sweep) -> None:
    assert sweep.resume.returncode == 0, sweep.resume.stdout + sweep.resume.stderr
    trials = parquet_rows(sweep.out, "trials")
    assert len(trials) == NUM_TRIALS == len({t["trial_id"] for t in trials})
    assert all(t["status"] == "complete" for t in trials)
    parent, children, _ = mlflow_runs(sweep.out)
    runs = children_by_trial(children)
    assert set(runs) == {t["trial_id"] for t in trials} and parent.info.status == "FINISHED"
    for trial in trials:  # the interrupted trial ran again in a fresh run and finished
        assert (runs[trial["trial_id"]].info.status, runs[trial["trial_id"]].data.tags["status"]) == ("FINISHED", "complete")
    before = {t["trial_id"] for t in sweep.after_interrupt if t["status"] != "running"}
    resumed_ids = {m.group(5) for m in trial_lines(sweep.resume.stdout)}
    assert resumed_ids == {t["trial_id"] for t in trials} - before  # finished ones are not run again


# -- one trial number -----------------------------------------------------------------------------------


def test_the_same_trial_number_on_the_console_in_mlflow_and_in_the_report(sweep: Sweep) -> None:
    rows = by_id(parquet_rows(sweep.out, "trials"))
    _, children, _ = mlflow_runs(sweep.out)
    runs = children_by_trial(children)
    page = (sweep.out / "report" / "report.html").read_text(encoding="utf-8")
    lines = trial_lines(sweep.run_log) + trial_lines(sweep.resume.stdout)
    assert {m.group(5) for m in lines} == set(rows)
    for match in lines:
        done, total, number, trial_id = int(match.group(1)), int(match.group(2)), match.group(3), match.group(5)
        assert total == NUM_TRIALS and 1 <= done <= NUM_TRIALS
        assert number == label(rows[trial_id]["optuna_trial"])
        assert runs[trial_id].info.run_name.startswith(f"{number} ")
        assert f"{number} <code>{trial_id}</code>" in page  # the top-trials table


# -- the multi-objective summary -----------------------------------------------------------------------------


def test_the_pareto_summary_lists_points_whose_values_come_from_one_trial(sweep: Sweep) -> None:
    summaries = [line for line in sweep.resume.stdout.splitlines() if line.startswith("  sweep: ")]
    match = PARETO.search(summaries[-1])
    assert match, summaries[-1]
    complete = [t for t in parquet_rows(sweep.out, "trials") if t["status"] == "complete"]
    by_number = {label(t["optuna_trial"]): t for t in complete}
    front = pareto_front(complete, [Objective(o["metric"], o["direction"]) for o in OBJECTIVES])
    points = match.group(2).split("; ")
    assert int(match.group(1)) == len(front) == len(points)
    shown = []
    for point in points:
        number, *values = point.split(" ")
        row = by_number[number]
        for value in values:
            metric, text = value.split("=")
            assert text == f"{row[metric]:.3f}", point
        assert [v.split("=")[0] for v in values] == ["rel_tf", "loc_tf"]
        shown.append(number)
    assert set(shown) == {label(t["optuna_trial"]) for t in front}


# -- live progress and quiet mode ------------------------------------------------------------------------------


def test_live_progress_shows_edits_done_seconds_per_edit_and_eta_during_a_trial(sweep: Sweep) -> None:
    lines = sweep.run_log.splitlines()
    ends = {m.group(3): index for index, m in ((i, TRIAL_LINE.match(line)) for i, line in enumerate(lines)) if m}
    live: dict[str, list[tuple[int, int, int]]] = {}
    for index, line in enumerate(lines):
        m = LIVE_LINE.match(line)
        if m:
            live.setdefault(m.group(1), []).append((index, int(m.group(2)), int(m.group(3))))
            assert float(m.group(4)) > 0 and m.group(5) != "?"
    assert any(SWEEP_LIVE_LINE.match(line) for line in lines)
    finished = [number for number in ends if number in live]
    assert finished, f"no live line for a finished trial:\n{sweep.run_log}"
    for number in finished:
        seen = live[number]
        assert all(total == T for _, _, total in seen)
        assert all(index < ends[number] for index, _, _ in seen)  # while the trial ran, before its end line
        counts = [done for _, done, _ in seen]
        assert len(set(counts)) >= 2 and counts == sorted(counts), seen


def test_a_progress_interval_that_is_not_positive_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tiny_spec(tmp_path, name="interval")
    assert main(["run", str(spec), "--progress-every", "0"]) == 2
    assert capsys.readouterr().err == "defer-sweep: error: --progress-every: expected seconds > 0, got 0\n"
    assert not (tmp_path / "interval").exists()  # nothing written


def test_quiet_mode_prints_trial_lines_and_no_live_progress(sweep: Sweep) -> None:
    assert trial_lines(sweep.resume.stdout)
    assert "live:" not in sweep.resume.stdout + sweep.resume.stderr


# -- the report ---------------------------------------------------------------------------------------------------


def _titles(page: str, figure: str) -> list[str]:
    svg = re.search(rf'<svg class="hotspots" id="spots-{figure}"[^>]*>(.*?)</svg>', page, re.S)
    assert svg, f"no hover layer on {figure}"
    return re.findall(r"<title>([^<]*)</title>", svg.group(1))


def test_report_curves_name_every_plotted_trial(sweep: Sweep) -> None:
    page = (sweep.out / "report" / "report.html").read_text(encoding="utf-8")
    titles = "\n".join(_titles(page, "curves_tf"))
    milestones = {m["trial_id"] for m in parquet_rows(sweep.out, "milestones")}
    for trial in parquet_rows(sweep.out, "trials"):
        if trial["trial_id"] in milestones:
            assert label(trial["optuna_trial"]) in titles, trial["trial_id"]
    assert "named at their line&#39;s end" in page  # the caption says how to read the labels


def test_identical_curves_are_drawn_once_with_their_count(sweep: Sweep) -> None:
    """The sweep's trials plus a copy of one (same points, another number): one curve, ×N."""
    data = load_sweep(require_sweep_dir(sweep.out))
    original = data.trials[0]
    copy = dict(original, trial_id="copy-of-first", optuna_trial=99)
    data.milestones[copy["trial_id"]] = [dict(m, trial_id=copy["trial_id"]) for m in data.milestones[original["trial_id"]]]
    args = (data.milestones, None, set(), data.spec.milestones, [original["trial_id"]])
    _, alone = curves_figure("tf", data.trials, *args)
    figure, spots = curves_figure("tf", [*data.trials, copy], *args)
    assert len(spots) == len(alone)  # the copy adds no line and no point of its own
    shared = [s.title for s in spots if "#099" in s.title]
    assert len(shared) == 3 * len(data.spec.milestones)  # each point of each panel
    for title in shared:
        count = re.match(r"^(\d+) trials with this curve: ", title)
        assert count and int(count.group(1)) >= 2 and label(original["optuna_trial"]) in title, title
    texts = [t.get_text() for ax in figure.axes for t in ax.texts]
    assert any(re.search(r"×\d+$", text) and label(original["optuna_trial"]) in text for text in texts), texts


def test_every_importance_method_carries_the_small_sample_caveat(sweep: Sweep) -> None:
    """A real study of 6 trials: fANOVA runs and PED-ANOVA does not; the page says of each
    that 6 trials is a small sample."""
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: (-abs(math.log10(t.suggest_float("edit_lr", 1e-4, 1e-1, log=True)) + 2), 1.0 - 0.01 * t.suggest_int("layer", 1, 3)), n_trials=6)
    assert 6 < SMALL_SAMPLE_TRIALS
    importance = param_importances(study, [Objective("rel_tf", "maximize"), Objective("loc_tf", "maximize")], ["layer", "edit_lr"])
    assert set(importance.values["rel_tf"]) == {"fANOVA"} and set(importance.caveats) == {"fANOVA"}
    page = render_html(load_sweep(require_sweep_dir(sweep.out)), [], importance, [])
    notes = re.findall(r'<p class="note">([^<]*)</p>', page)
    assert any(n.startswith("fANOVA is computed over only 6 completed trial(s)") and "small sample" in n for n in notes), notes
    assert any(n.startswith("PED-ANOVA skipped") and "this study has 6" in n for n in notes), notes
