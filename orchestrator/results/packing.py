"""Packs: with `pack_size: K` one Tune trial runs K DEFER trials on the same layer in lockstep,
edited in one batched forward pass (defer_core.run_trials). Optuna still sees K trials, and
Parquet and MLflow record K trials; Tune and its scheduler see one trial, the pack.

A pack's config is `{"pack": [config, ...]}` (protocol.PACK_KEY) and each milestone report carries
`{"pack": [report, ...]}` plus, at the top, the best member's value of every objective and
of the early-stopping metric: the scheduler stops a pack only when even its best member trails.
With K = 1 configs and reports stay flat and a trial's id is its Tune trial id.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from ..protocol import PACK_KEY
from ..spec import SweepSpec

PACK_TIMING = ("time_total_s", "training_iteration")


def num_packs(spec: SweepSpec) -> int:
    """Tune trials needed for `num_trials` DEFER trials (the last pack may be smaller)."""
    return math.ceil(spec.num_trials / spec.pack_size)


def is_pack(config_or_result: Mapping[str, Any]) -> bool:
    return PACK_KEY in config_or_result


def member_configs(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The DEFER trial configs a Tune trial runs: its members, or itself."""
    return [dict(member) for member in config[PACK_KEY]] if is_pack(config) else [dict(config)]


def member_results(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each member's report, carrying the pack's Tune timing fields."""
    if not is_pack(result):
        return [dict(result)]
    timing = {key: result[key] for key in PACK_TIMING if key in result}
    return [{**member, **timing} for member in result[PACK_KEY]]


def member_trial_id(tune_trial_id: str, index: int, pack_size: int) -> str:
    """`<tune id>` for an unpacked trial, `<tune id>-<index>` for a pack member."""
    return tune_trial_id if pack_size == 1 else f"{tune_trial_id}-{index}"


def pack_metrics(spec: SweepSpec) -> dict[str, str]:
    """The metrics Tune, its searcher and scheduler read at a pack's top level, with their mode."""
    metrics = {objective.metric: objective.mode for objective in spec.objectives}
    if spec.early_stopping is not None:
        metrics.setdefault(spec.early_stopping.metric, "max" if spec.early_stopping.direction == "maximize" else "min")
    return metrics


def pack_report(spec: SweepSpec, members: Sequence[Mapping[str, Any]], shared: Mapping[str, Any]) -> dict[str, Any]:
    """One milestone report of a pack: `shared` keys (n_edits, worker, node ...), the best member
    value of each metric Tune reads, and every member's own report."""
    report: dict[str, Any] = dict(shared)
    for metric, mode in pack_metrics(spec).items():
        values = [float(m[metric]) for m in members if m.get(metric) is not None and not math.isnan(float(m[metric]))]
        if values:
            report[metric] = max(values) if mode == "max" else min(values)
    report[PACK_KEY] = [dict(member) for member in members]
    return report
