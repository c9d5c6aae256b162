"""Never train twice: which recorded or running training a proposal can reuse, and the replay
of a recorded training's milestone reports that stands in for a second one.

A training is its module and every parameter but DEFER's threshold (DEFER: layer, edit_lr,
n_iter; GRACE and WISE: all theirs); seed, protocol, data, T, dtype and scorings are fixed per
sweep. When Optuna proposes a training already running or recorded, the Tune
trial reuses it (config REUSE_OF + "replay": the original's milestone reports, which the
worker replays without a model): in curve mode always; with a sampled threshold when the
threshold is the same, or when tf is the only scoring (the replayed metrics are then re-read
at the new threshold from the original's gate rows, kept compact: `CompactGates`); otherwise
it trains again. While the original still runs the searcher waits (its `suggest` returns
None). A reuse of a pruned original is pruned where it was; a failed original is forgotten
and trained again. Packs always train (the searcher calls none of this for them).

`Reuse` holds plain data only (dicts of strings, numbers and tuples), which the searcher
pickles under its own keys (`Reuse.state` / `Reuse.from_state`); what it needs of the
searcher's Optuna trials (which Tune trials finished, an original's params) it is passed.
"""

from __future__ import annotations

from typing import Any, Callable, Collection, Mapping, Sequence

from defer_core.curve import TF, tf_metrics_at
from defer_core.results import GateRow

from ..protocol import EDITS_KEY, GATES_KEY, GRID_KEY, METRIC_COLUMNS, N_EDITS, POINTS_KEY, RECORDS_KEY, REPEATS_KEY, THRESHOLD
from ..spec import SweepSpec
from ..results.curve_points import with_mean_metrics
from ..spec.trial_config import full_config, module_for

# What a replayed report keeps of the original's (the worker adds its own pid, node, no edits).
REPLAYED_KEYS = (N_EDITS, THRESHOLD, GRID_KEY, POINTS_KEY, *METRIC_COLUMNS)
TrainingKey = tuple[Any, ...]  # (module, (name, value), ...)
CompactGates = tuple[tuple[str, int, float, float, float], ...]  # (probe, chunk, gate, on, off) per row
Params = Mapping[str, Any]
ParamsOf = Callable[[str], Params]  # a Tune trial id -> its Optuna trial's params


def training_key(spec: SweepSpec, params: Params) -> TrainingKey:
    """What makes two trials of a sweep the same training (DEFER's threshold is only read)."""
    config = full_config(spec, params)
    return (module_for(spec, config["layer"]), *((name, value) for name, value in config.items() if name != THRESHOLD))


def compact(gates: Sequence[Mapping[str, Any]]) -> CompactGates:
    return tuple((g["probe"], int(g.get("chunk", 0)), float(g["gate"]), float(g["on"]), float(g["off"])) for g in gates)


def gate_rows(compact_gates: CompactGates) -> list[GateRow]:
    return [GateRow(record_id="", probe=probe, gate=gate, on=on, off=off, chunk=chunk) for probe, chunk, gate, on, off in compact_gates]


class Reuse:
    """The trainings behind a sweep's Tune trials: `trainings` (training key -> the Tune trials
    that train it), `originals` (the reverse), `reports` (each original's milestone reports,
    for replays), `gates` (tf-only sampled sweeps: each original's gate rows per milestone) and
    `reuse_of` (a reusing Tune trial -> its original)."""

    FIELDS = ("trainings", "originals", "reports", "gates", "reuse_of")

    def __init__(self, spec: SweepSpec) -> None:
        self.spec = spec
        self.trainings: dict[TrainingKey, list[str]] = {}
        self.originals: dict[str, TrainingKey] = {}
        self.reports: dict[str, list[dict[str, Any]]] = {}
        self.gates: dict[str, dict[int, CompactGates]] = {}
        self.reuse_of: dict[str, str] = {}

    def state(self) -> dict[str, Any]:
        """The plain data to pickle, by field name."""
        return {name: getattr(self, name) for name in self.FIELDS}

    @classmethod
    def from_state(cls, spec: SweepSpec, state: Mapping[str, Any]) -> Reuse:
        reuse = cls(spec)
        for name in cls.FIELDS:
            setattr(reuse, name, state[name])
        return reuse

    def original_for(self, params: Params, finished: Collection[str], params_of: ParamsOf) -> str | None:
        """The Tune trial whose training these params would repeat, if it can stand in for
        them (module docstring): a finished one that can be replayed, else a running one (the
        caller waits for it); None: train."""
        candidates = [o for o in self.trainings.get(training_key(self.spec, params), []) if self._same_reading(params, params_of(o))]
        done = [o for o in candidates if o in finished and self._replayable(o, params, params_of(o))]
        running = [o for o in candidates if o not in finished]
        return (done or running or [None])[0]

    def start(self, trial_id: str, params: Params, original: str | None) -> None:
        """A Tune trial starts: as a reuse of `original`, or as a training of its own."""
        if original is not None:
            self.reuse_of[trial_id] = original
            return
        key = training_key(self.spec, params)
        self.trainings.setdefault(key, []).append(trial_id)
        self.originals[trial_id] = key

    def replay(self, original: str, params: Params, original_params: Params) -> list[dict[str, Any]]:
        """The original's reports as the reuse's: re-read at its threshold when that differs."""
        reports = [dict(r) for r in self.reports[original]]
        if not self._rereads(params, original_params):
            return reports
        spec = self.spec
        threshold = full_config(spec, params)[THRESHOLD]
        replayed = []
        for report in reports:
            metrics = tf_metrics_at(gate_rows(self.gates[original][report[N_EDITS]]), threshold, spec.model.run_dtype)
            kept = {key: value for key, value in report.items() if key not in METRIC_COLUMNS}
            replayed.append({**kept, **with_mean_metrics(metrics, spec.scorings)})
        return replayed

    def keep_report(self, trial_id: str, result: Mapping[str, Any]) -> None:
        """An original's milestone report, for replays (the caller passes only reports of
        trials still running); a trial that reports a milestone again (re-run after a resume)
        starts its list over from there."""
        if trial_id not in self.originals or result.get(N_EDITS) is None:
            return
        n_edits = int(result[N_EDITS])
        kept = [r for r in self.reports.get(trial_id, []) if r[N_EDITS] < n_edits]
        report = {key: result[key] for key in REPLAYED_KEYS if key in result}
        if result.get(REPEATS_KEY):  # each repeat member's metrics (its edits, gates and records stay with the original)
            report[REPEATS_KEY] = [{k: v for k, v in m.items() if k not in (EDITS_KEY, GATES_KEY, RECORDS_KEY)} for m in result[REPEATS_KEY]]
        self.reports[trial_id] = [*kept, report]
        if not self.spec.curve_mode and self.spec.scorings == (TF,):
            gates = self.gates.setdefault(trial_id, {})
            for stale in [n for n in gates if n >= n_edits]:
                del gates[stale]
            gates[n_edits] = compact(result.get(GATES_KEY) or [])

    def forget(self, trial_id: str) -> None:
        """A failed original: the next proposal of its training trains again."""
        key = self.originals.pop(trial_id, None)
        if key is not None and trial_id in self.trainings.get(key, []):
            self.trainings[key].remove(trial_id)
        self.reports.pop(trial_id, None)
        self.gates.pop(trial_id, None)

    def _same_reading(self, params: Params, original_params: Params) -> bool:
        """Whether the original's reports can be read as these params': always in curve mode,
        at the same threshold, or re-read from gate rows when tf is the only scoring."""
        spec = self.spec
        if spec.curve_mode or spec.scorings == (TF,):
            return True
        return full_config(spec, params).get(THRESHOLD) == full_config(spec, original_params).get(THRESHOLD)

    def _rereads(self, params: Params, original_params: Params) -> bool:
        spec = self.spec
        return not spec.curve_mode and full_config(spec, params).get(THRESHOLD) != full_config(spec, original_params).get(THRESHOLD)

    def _replayable(self, original: str, params: Params, original_params: Params) -> bool:
        """A finished original with reports (and, to re-read them, gate rows at every milestone)."""
        reports = self.reports.get(original)
        if not reports:
            return False
        gates = self.gates.get(original, {})
        return not self._rereads(params, original_params) or all(gates.get(r[N_EDITS]) for r in reports)
