"""The words the orchestrator's parts share: the keys of a worker's reports, metric columns.

A worker's `tune.report` dict, the searcher, the scheduler, the sinks, the report and the
export all read the same keys; each key is spelled here once (the result tables' columns and
the trial statuses: results/rows.py). Imports nothing
heavy (no torch, Ray, Optuna or MLflow), so every module can import it.
"""

from __future__ import annotations

from typing import Any, Mapping

from defer_core.results import METRICS, SCORINGS, metric_key

# -- keys of a worker's milestone report (tune.report) --------------------------------------------
N_EDITS = "n_edits"  # the milestone: edits made so far; the scheduler's clock
EDITS_KEY = "edits"  # the edit outcomes since the previous milestone
EVAL_SECONDS = "eval_seconds"
WORKER_PID = "worker_pid"
NODE_ID = "node_id"  # the Ray node that ran the trial
MODEL_LOAD_SECONDS = "model_load_seconds"  # 0.0 when the worker had the model cached
OPTUNA_TRIAL = "optuna_trial"  # in a trial's config: the Optuna trial number behind it
PACK_KEY = "pack"  # in a pack's config and reports: one entry per DEFER trial (results/packing.py)
GATES_KEY = "gates"  # the milestone's tf gate rows (defer_core.results.GateRow as dicts): any threshold's tf metrics
GRID_KEY = "grid"  # curve mode: generation scorings at each threshold of the spec's grid (GridPoint as dicts)
POINTS_KEY = "points"  # curve mode: the (threshold, metrics) points of this milestone's curve (results/curve_points.py)
REUSE_OF = "reuse_of"  # a trial whose training was already recorded: the DEFER trial id it reuses
REPLAY_KEY = "replay"  # in a reuse trial's config: the original's milestone reports, which the worker replays
THRESHOLD = "threshold"  # a report's threshold (curve mode: its best point's) and each curve point's
FEASIBLE = "feasible"  # a curve point's: whether it meets the spec's constraints
INTERMEDIATE_KEY = "intermediate"  # a curve point's single objective at each milestone so far, {n_edits: value}
THRESHOLD_CURVE = "curve"  # search_space.threshold: curve, every training read at every threshold
THRESHOLD_SAMPLED = "sampled"  # a searched or fixed threshold: each trial read at its own (the trials table's threshold_mode)
REPEATS_KEY = "repeats"  # a repeated trial's report: one dict per member (seed x order), see worker/trainable.py
RECORDS_KEY = "records"  # a report's (or a member's) per-record scores: [{"record_id", "chunk", <metric keys>}]
SEED = "seed"  # a repeat member's adaptor seed (member dicts, Parquet columns)
ORDER = "order"  # a repeat member's edit order (defer_core.orders; 0 = file order)
MEMBER_COUNT = "members"  # a milestone's: how many repeat members its metrics are the mean of (results/rows.py `members`)
STAGE = "stage"  # the trials table's: which stage ran the trial (STAGE_SEARCH or STAGE_CONFIRM)
STAGE_SEARCH = "search"
STAGE_CONFIRM = "confirm"
CONFIRMS = "confirms"  # in a confirm trial's config and the trials table: the DEFER trial id it re-checks

# -- metric columns -------------------------------------------------------------------------------
DERIVED_METRICS = ("mean",)  # mean_{scoring} = mean of rel, gen and loc under that scoring


def metric_names(scorings: tuple[str, ...] = SCORINGS) -> tuple[str, ...]:
    """Every metric a trial reports for these scorings, e.g. rel_tf ... mean_gen."""
    return tuple(metric_key(m, s) for s in scorings for m in (*METRICS, *DERIVED_METRICS))


METRIC_COLUMNS = metric_names()  # Parquet and MLflow carry every column, null where not scored
# The values each metric can take. Every one is a proportion: rel, gen and loc are token
# accuracies (matching tokens / tokens, averaged over records), mean_* the mean of three of them.
# A constraint bound outside its metric's range is refused when the spec is read (spec/models.py).
PROPORTION = (0.0, 1.0)
METRIC_RANGES: dict[str, tuple[float, float]] = {name: PROPORTION for name in METRIC_COLUMNS}


# -- ordering -------------------------------------------------------------------------------------
_UNNUMBERED = 1 << 30  # trials without an Optuna number sort after every numbered one


def trial_order_key(row: Mapping[str, Any]) -> tuple[int, str]:
    """Ties and listings go by Optuna trial number, then trial id: deterministic everywhere."""
    number = row.get(OPTUNA_TRIAL)
    return (int(number) if number is not None else _UNNUMBERED, str(row.get("trial_id", "")))


def trial_label(number: int | None, trial_id: str) -> str:
    """How the console, MLflow run names and the report name a DEFER trial: its Optuna trial
    number, `#007`; its trial id when it has none."""
    return f"#{int(number):03d}" if number is not None else str(trial_id)


def trial_named(row: Mapping[str, Any]) -> str:
    """A trials row as the command lines name it: `9b882c15 (#007)`, its id alone without an
    Optuna number (a confirm run)."""
    label = trial_label(row.get(OPTUNA_TRIAL), row["trial_id"])
    return row["trial_id"] if label == row["trial_id"] else f"{row['trial_id']} ({label})"
