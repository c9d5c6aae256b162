"""The confirm stage runs at most the spec's `concurrency` trials at once, as the search does.

It did not: the confirm experiment handed Tune a BasicVariantGenerator (a fixed list of
configs) with TuneConfig(max_concurrent_trials=...), and Tune applies that limit only to a
`Searcher` (which it wraps in a ConcurrencyLimiter); any other search algorithm is passed on
with the warning "max_concurrent_trials will be ignored" (ray/tune/tune.py). With two CPUs and
`concurrency: 1`, two confirm trials ran at once. Real local Ray (2 CPUs, 1 per trial), T=2,
one seed and order per confirm trial: seconds.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.spec import load_spec
from orchestrator.sweep.confirm import ConfirmRequest
from orchestrator.sweep.driver import confirm, execute, prepare

from .orchestrator_support import parquet_rows, tiny_spec

GOOD = {"layer": 2, "edit_lr": 5.0e-2, "n_iter": 5, "threshold": 0.5}
BAD = {"layer": 2, "edit_lr": 1.0e-3, "n_iter": 2, "threshold": 0.7}


def test_confirm_trials_run_one_at_a_time_with_concurrency_1(local_ray, tmp_path: Path) -> None:
    spec = load_spec(tiny_spec(tmp_path, name="one", T=2, milestones=[2], num_trials=2, concurrency=1, initial_points=[GOOD, BAD], early_stopping=False))
    assert execute(spec, prepare(spec)).finished
    outcome = confirm(spec.output_dir, ConfirmRequest(top=2, seeds=(0,), orders=1))
    assert outcome.finished and outcome.counts["complete"] == 2
    rows = sorted((row for row in parquet_rows(spec.output_dir, "trials") if row["stage"] == "confirm"), key=lambda row: row["started_at"])
    assert len(rows) == 2 and all(row["status"] == "complete" for row in rows)
    first, second = rows
    # the driver's clock on both: the second trial starts (on_trial_start) only after the first ended (on_trial_complete)
    assert first["finished_at"] <= second["started_at"], (
        f"confirm trials overlapped with concurrency 1: {first['trial_id']} ran {first['started_at']} .. {first['finished_at']}, "
        f"{second['trial_id']} started {second['started_at']}"
    )
