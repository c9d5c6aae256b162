"""Progress a person can follow: one line per finished trial and a running summary.

The text is built here; it reaches the terminal through a `sink` the CLI passes in (`print`),
so library code never prints. Replaces Ray Tune's verbose tables (run with --verbose-ray
to get those back).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Iterable, Mapping, Sequence

from ray.tune import Callback
from ray.tune.experiment import Trial

from ..protocol import FINAL_STATUSES, N_EDITS, OPTUNA_TRIAL, Status, final_status
from ..search.packing import member_configs, member_results, member_trial_id
from ..search.ranking import pareto_front, rank_by
from ..search.space import describe_config, full_config
from ..spec import SweepSpec
from .parquet_sink import finished_packs
from .records import short_error, trial_error_text
from ..storage import Location

Sink = Callable[[str], None]


def milestone_text(milestones: Mapping[int, Mapping[str, float]], metrics: Sequence[str]) -> str:
    parts = []
    for n_edits, values in sorted(milestones.items()):
        shown = " ".join(f"{m}={values[m]:.3f}" for m in metrics if values.get(m) is not None)
        parts.append(f"@{n_edits} {shown}")
    return " | ".join(parts) if parts else "no milestone reached"


def trial_line(index: int, total: int, trial_id: str, status: str, config: Mapping[str, Any], milestones: Mapping[int, Mapping[str, float]], metrics: Sequence[str], seconds: float | None, error: str | None) -> str:
    tail = f" ({seconds:.1f}s)" if seconds is not None else ""
    line = f"[{index}/{total}] {status:<8} {trial_id}  {describe_config(config)}  {milestone_text(milestones, metrics)}{tail}"
    if error:
        line += f"  error: {error}"
    return line


def trial_status(trial: Trial, total_edits: int) -> str:
    """running / pending / complete / pruned / failed, from Tune's view of the trial."""
    if trial.status == Trial.ERROR:
        return Status.FAILED
    if trial.status == Trial.TERMINATED:
        return final_status((trial.last_result or {}).get(N_EDITS), total_edits, errored=False)
    return Status.RUNNING if trial.status == Trial.RUNNING else Status.PENDING


def trial_statuses(spec: SweepSpec, trials: Iterable[Trial], current: tuple[Trial, str] | None = None) -> dict[str, str]:
    """Status per trial; `current` overrides the trial a callback is reporting on (Tune flips
    its status only after the callbacks ran)."""
    statuses = {t.trial_id: trial_status(t, spec.T) for t in trials}
    if current is not None:
        statuses[current[0].trial_id] = current[1]
    return statuses


def summary_line(spec: SweepSpec, trials: Sequence[Trial], statuses: Mapping[str, str]) -> str:
    """Counts DEFER trials: a pack of K counts K (its members share the pack's status)."""
    counts: Counter[str] = Counter()
    for trial in trials:
        counts[statuses.get(trial.trial_id, Status.PENDING)] += len(member_configs(trial.config))
    done = sum(counts[status] for status in FINAL_STATUSES)
    text = (
        f"  sweep: {done}/{spec.num_trials} done · {counts[Status.RUNNING]} running · "
        f"{counts[Status.COMPLETE]} complete · {counts[Status.PRUNED]} pruned · {counts[Status.FAILED]} failed"
    )
    rows = [
        {**result, "trial_id": member_trial_id(t.trial_id, k, spec.pack_size), "optuna_trial": config.get(OPTUNA_TRIAL), "config": config}
        for t in trials
        if statuses.get(t.trial_id) == Status.COMPLETE
        for k, (config, result) in enumerate(zip(member_configs(t.config), member_results(t.last_result or {})))
    ]
    return text + best_text(spec, rows)


def best_text(spec: SweepSpec, rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return " · best: none complete yet"
    if not spec.multi_objective:
        objective = spec.objectives[0]
        ranked = rank_by(rows, objective)
        if not ranked:
            return ""
        best = ranked[0]
        return f" · best {objective.metric}={best[objective.metric]:.3f} ({best['trial_id']}: {describe_config(full_config(spec, best['config']))})"
    front = pareto_front(rows, spec.objectives)
    bests = ", ".join(f"{o.metric}={rank_by(rows, o)[0][o.metric]:.3f}" for o in spec.objectives if rank_by(rows, o))
    return f" · Pareto front: {len(front)} trial(s) · best {bests}"


class ProgressCallback(Callback):
    """Emits a line when a trial ends and the sweep summary after it."""

    def __init__(self, spec: SweepSpec, sink: Sink, parquet_root: Location) -> None:
        self.spec = spec
        self.sink = sink
        self.parquet_root = parquet_root
        self._milestones: dict[str, dict[int, dict[int, dict[str, float]]]] = {}  # Tune trial → member → n_edits → metrics
        self._metrics = [o.metric for o in spec.objectives]
        self._recorded: set[str] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_milestones": {}, "_recorded": None}

    def on_step_begin(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        if self._recorded is None:  # trials finished before a resume are replayed silently
            self._recorded = set(finished_packs(self.parquet_root))

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._milestones[trial.trial_id] = {}

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        for k, member in enumerate(member_results(result)):
            if N_EDITS in member:
                milestones = self._milestones.setdefault(trial.trial_id, {}).setdefault(k, {})
                milestones[int(member[N_EDITS])] = {m: member.get(m) for m in self._metrics}

    def _emit(self, trials: list[Trial], trial: Trial, status: str, error: str | None) -> None:
        if self._recorded and trial.trial_id in self._recorded:
            return
        statuses = trial_statuses(self.spec, trials, (trial, status))
        members = member_configs(trial.config)
        done_before = sum(len(member_configs(t.config)) for t in trials if t is not trial and statuses.get(t.trial_id) in FINAL_STATUSES)
        seconds = (trial.last_result or {}).get("time_total_s")
        milestones = self._milestones.pop(trial.trial_id, {})
        for k, config in enumerate(members):
            trial_id = member_trial_id(trial.trial_id, k, self.spec.pack_size)
            self.sink(trial_line(done_before + k + 1, self.spec.num_trials, trial_id, status, full_config(self.spec, config), milestones.get(k, {}), self._metrics, seconds, error))
        self.sink(summary_line(self.spec, trials, statuses))

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        reached = (trial.last_result or {}).get(N_EDITS)
        self._emit(trials, trial, final_status(reached, self.spec.T, errored=False), None)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._emit(trials, trial, Status.FAILED, short_error(trial_error_text(trial)))
