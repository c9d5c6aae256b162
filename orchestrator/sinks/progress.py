"""Progress a person can follow: one line per finished trial, a running summary, and live
edit counts of the running trials.

The text is built here; it reaches the terminal through a `Console` the driver attaches for
one `run`/`resume` (`console_session`), so library code never prints. Tune restores its
callbacks from a pickle, so what one invocation shows (its sink, --quiet, the live board) is
never stored on the callback: it reads the attached console. Replaces Ray Tune's verbose
tables (run with --verbose-ray to get those back).

Every line names a DEFER trial by its Optuna trial number, `#007` (protocol.trial_label), as
MLflow run names and the report do; `[k/N done]` only counts finished trials.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from statistics import fmean
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import ray
from ray.exceptions import RayError
from ray.tune import Callback
from ray.tune.experiment import Trial

from ..intervals import Interval, format_interval, repeat_interval
from ..protocol import N_EDITS, OPTUNA_TRIAL, POINTS_KEY, REPEATS_KEY, REUSE_OF, THRESHOLD, trial_label
from ..results.rows import Status
from ..results.candidates import candidates
from ..results.packing import member_configs, member_results, member_trial_id, num_packs
from ..results.ranking import bounds_text, is_feasible, pareto_front, rank_by
from ..spec.trial_config import full_config
from ..spec import SweepSpec
from ..worker.live import EditProgress, board_name, open_board
from ..results.store import finished_packs
from .records import config_text, short_error, trial_error_text
from ..storage import Location

log = logging.getLogger(__name__)

Sink = Callable[[str], None]
StatusSink = Callable[[list[str]], None]  # gets the whole live block each time (a terminal redraws it in place)

LIVE_PREFIX = "  live: "
PARETO_SHOWN = 5  # Pareto points listed in the summary line; the rest are counted


Shown = float | Interval  # a milestone's value on a trial line: the metric, or with repeats its mean ± half-width


def shown_text(value: Shown) -> str:
    return format_interval(value, digits=3) if isinstance(value, Interval) else f"{value:.3f}"


def milestone_text(milestones: Mapping[int, Mapping[str, Shown | None]], metrics: Sequence[str]) -> str:
    parts = []
    for n_edits, values in sorted(milestones.items()):
        shown = " ".join(f"{m}={shown_text(values[m])}" for m in metrics if values.get(m) is not None)  # type: ignore[arg-type]
        parts.append(f"@{n_edits} {shown}")
    return " | ".join(parts) if parts else "no milestone reached"


def trial_line(done: int, total: int, label: str, trial_id: str, status: str, config: str, milestones: Mapping[int, Mapping[str, Shown | None]], metrics: Sequence[str], seconds: float | None, error: str | None, reuses: str | None = None) -> str:
    """`[3/40 done] #007 complete  <trial id>  L27 lr=... @100 rel_tf=... (812.4s)`; a trial
    without an Optuna number (a confirm run) is labelled by its id alone, once; a trial that
    replayed an earlier training ends `  reuses #003`."""
    tail = f" ({seconds:.1f}s)" if seconds is not None else ""
    named = f"{label} {status:<8} {trial_id}" if label != trial_id else f"{trial_id} {status:<8}"
    line = f"[{done}/{total} done] {named}  {config}  {milestone_text(milestones, metrics)}{tail}"
    if reuses:
        line += f"  reuses {reuses}"
    if error:
        line += f"  error: {error}"
    return line


def trial_status(trial: Trial, total_edits: int) -> str:
    """running / pending / complete / pruned / failed, from Tune's view of the trial."""
    if trial.status == Trial.ERROR:
        return Status.FAILED
    if trial.status == Trial.TERMINATED:
        return Status.after((trial.last_result or {}).get(N_EDITS), total_edits, errored=False)
    return Status.RUNNING if trial.status == Trial.RUNNING else Status.PENDING


def trial_statuses(spec: SweepSpec, trials: Iterable[Trial], current: tuple[Trial, str] | None = None) -> dict[str, str]:
    """Status per trial; `current` overrides the trial a callback is reporting on (Tune flips
    its status only after the callbacks ran)."""
    statuses = {t.trial_id: trial_status(t, spec.T) for t in trials}
    if current is not None:
        statuses[current[0].trial_id] = current[1]
    return statuses


def status_counts(trials: Sequence[Trial], statuses: Mapping[str, str]) -> Counter[str]:
    """DEFER trials per status: a pack of K counts K (its members share the pack's status)."""
    counts: Counter[str] = Counter()
    for trial in trials:
        counts[statuses.get(trial.trial_id, Status.PENDING)] += len(member_configs(trial.config))
    return counts


def summary_line(spec: SweepSpec, trials: Sequence[Trial], statuses: Mapping[str, str]) -> str:
    counts = status_counts(trials, statuses)
    done = sum(counts[status] for status in Status.final())
    text = (
        f"  sweep: {done}/{spec.num_trials} done · {counts[Status.RUNNING]} running · "
        f"{counts[Status.COMPLETE]} complete · {counts[Status.PRUNED]} pruned · {counts[Status.FAILED]} failed"
    )
    complete = [
        {**result, "trial_id": member_trial_id(t.trial_id, k, spec.pack_size), OPTUNA_TRIAL: config.get(OPTUNA_TRIAL), REUSE_OF: config.get(REUSE_OF), "config": config,
         THRESHOLD: result.get(THRESHOLD) if spec.curve_mode else full_config(spec, config).get(THRESHOLD)}
        for t in trials
        if statuses.get(t.trial_id) == Status.COMPLETE
        for k, (config, result) in enumerate(zip(member_configs(t.config), member_results(t.last_result or {})))
    ]
    points = [
        {**point, "trial_id": row["trial_id"], N_EDITS: row.get(N_EDITS)}
        for row in complete
        for point in row.get(POINTS_KEY) or []
    ]
    return text + best_text(spec, candidates(spec, complete, points))


def trial_labels(spec: SweepSpec, trials: Iterable[Trial]) -> dict[str, str]:
    """`#003` per DEFER trial id of the sweep's Tune trials (what a reuse names its original by)."""
    return {
        member_trial_id(t.trial_id, k, spec.pack_size): trial_label(config.get(OPTUNA_TRIAL), member_trial_id(t.trial_id, k, spec.pack_size))
        for t in trials
        for k, config in enumerate(member_configs(t.config))
    }


def _row_label(row: Mapping[str, Any]) -> str:
    return trial_label(row.get(OPTUNA_TRIAL), row["trial_id"])


def _unit(spec: SweepSpec) -> str:
    return "point" if spec.curve_mode else "trial"


def best_text(spec: SweepSpec, rows: Sequence[Mapping[str, Any]]) -> str:
    """The best candidate (results.candidates: a trial, or in curve mode a point of a
    training's curve), or with several objectives the Pareto points: each with its own values,
    never the best of each metric taken from different trials. With constraints feasible
    points rank first; an infeasible best is marked, and the front holds feasible points only."""
    if not rows:
        return " · best: none complete yet"
    constraints = spec.constraints
    if not spec.multi_objective:
        objective = spec.objectives[0]
        ranked = rank_by(rows, objective, constraints)
        if not ranked:
            return ""
        best = ranked[0]
        infeasible = f" (no feasible {_unit(spec)} yet)" if not is_feasible(best, constraints) else ""
        config = config_text(spec, full_config(spec, best["config"]), best.get(THRESHOLD) if spec.curve_mode else None)
        return f" · best {objective.metric}={best[objective.metric]:.3f} ({_row_label(best)} {best['trial_id']}: {config}){infeasible}"
    front = pareto_front(rows, spec.objectives, constraints)
    if not front and constraints:
        return f" · Pareto front: no feasible {_unit(spec)} yet ({bounds_text(constraints)})"
    at = (lambda r: f"th={r[THRESHOLD]:.2f} " if r.get(THRESHOLD) is not None else "") if spec.curve_mode else (lambda r: "")
    shown = [f"{_row_label(r)} {at(r)}" + " ".join(f"{o.metric}={r[o.metric]:.3f}" for o in spec.objectives) for r in front[:PARETO_SHOWN]]
    more = f"; +{len(front) - PARETO_SHOWN} more" if len(front) > PARETO_SHOWN else ""
    return f" · Pareto front: {len(front)} {_unit(spec)}(s): {'; '.join(shown)}{more}"


# -- live progress inside running trials --------------------------------------------------------------


def duration_text(seconds: float | None) -> str:
    """`45s`, `12m05s`, `3h07m`; `?` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    whole = max(0, int(round(seconds)))
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def live_trial_line(note: EditProgress) -> str:
    """`  live: #007 37/1000 edits · 4.21 s/edit · ETA 1h07m`."""
    label = trial_label(note.optuna_trial, note.trial_id)
    return f"{LIVE_PREFIX}{label} {note.done}/{note.total} edits · {note.seconds_per_edit:.3g} s/edit · ETA {duration_text(note.eta_seconds)}"


def sweep_eta(spec: SweepSpec, trials: Sequence[Trial], statuses: Mapping[str, str], notes: Sequence[EditProgress]) -> float | None:
    """Seconds until the last Tune trial (pack) ends, roughly: the running ones' ETAs plus the
    packs not started yet at the mean duration of the finished ones (or, before any finished,
    of the running ones' projected durations), shared among `concurrency` slots."""
    running = [t for t in trials if statuses.get(t.trial_id) == Status.RUNNING]
    finished = [t for t in trials if statuses.get(t.trial_id) in Status.final()]
    left: dict[str, float] = {}
    projected: list[float] = []
    for note in notes:
        if note.done and math.isfinite(note.eta_seconds):
            left[note.trial_id] = max(left.get(note.trial_id, 0.0), note.eta_seconds)
            projected.append(note.elapsed + note.eta_seconds)
    durations = [float(t.last_result["time_total_s"]) for t in finished if (t.last_result or {}).get("time_total_s") is not None]
    per_pack = fmean(durations) if durations else fmean(projected) if projected else None
    if per_pack is None:
        return None
    not_started = max(0, num_packs(spec) - len(finished) - len(running))
    work = sum(left.get(t.trial_id, per_pack) for t in running) + not_started * per_pack
    return max(max(left.values(), default=0.0), work / max(1, spec.concurrency))


def live_block(spec: SweepSpec, trials: Sequence[Trial], notes: Sequence[EditProgress]) -> list[str]:
    """One line per running trial (member) that has made an edit, then the sweep's ETA."""
    statuses = trial_statuses(spec, trials)
    numbered = sorted(notes, key=lambda n: (n.optuna_trial if n.optuna_trial is not None else math.inf, n.trial_id, n.member))
    counts = status_counts(trials, statuses)
    done = sum(counts[status] for status in Status.final())
    eta = sweep_eta(spec, trials, statuses, notes)
    sweep = f"{LIVE_PREFIX}sweep {done}/{spec.num_trials} done · {counts[Status.RUNNING]} running · ETA ≈ {duration_text(eta)}"
    return [*(live_trial_line(n) for n in numbered), sweep]


@dataclass(frozen=True)
class LiveOutput:
    """Live progress for one invocation: `status` gets the block, at most every `every_s`."""

    status: StatusSink
    every_s: float


class Console:
    """What one driver invocation shows, attached around Tuner.fit by `console_session`.

    `poll` never blocks the Tune loop: it asks the board for a snapshot and hands it over on a
    later step, once Ray has it."""

    def __init__(self, sink: Sink, live: LiveOutput | None = None, board: Any = None) -> None:
        self.sink = sink
        self.live = live
        self.board = board  # ActorHandle of worker.live.ProgressBoard, or None
        self._pending: ray.ObjectRef | None = None
        self._next_at = 0.0
        self._shown: list[str] = []

    def show(self, block: list[str]) -> None:
        """The live block, unless it is the one shown last (a log need not repeat it)."""
        if self.live is not None and block != self._shown:
            self._shown = block
            self.live.status(block)

    def poll(self, running: list[str]) -> list[EditProgress] | None:
        if self.live is None or self.board is None:
            return None
        if self._pending is not None:
            ready, _ = ray.wait([self._pending], timeout=0)
            if not ready:
                return None
            pending, self._pending = self._pending, None
            try:
                return ray.get(pending)
            except RayError as error:  # the board is gone (e.g. its node died): no live lines
                log.warning("live progress stopped: %s", error)
                self.board = None
                return None
        now = time.monotonic()
        if now >= self._next_at:
            self._next_at = now + self.live.every_s
            self._pending = self.board.snapshot.remote(running)
        return None


def _log_sink(line: str) -> None:
    log.info("%s", line)


_console = Console(_log_sink)


@contextmanager
def console_session(sink: Sink, live: LiveOutput | None, sweep_id: str) -> Iterator[str | None]:
    """Attach this invocation's console for the `with` block (inside a Ray session); with live
    output, create the board workers post edit counts to and yield its name (None without)."""
    global _console
    board = open_board(board_name(sweep_id)) if live is not None else None
    previous, _console = _console, Console(sink, live, board)
    try:
        yield board_name(sweep_id) if board is not None else None
    finally:
        _console = previous
        if live is not None:
            live.status([])  # the block ends with the run (a terminal clears it)
        if board is not None:
            ray.kill(board)


def shown_value(report: Mapping[str, Any], metric: str) -> Shown | None:
    """A report's metric as a trial line shows it: with several repeat members the mean ±
    the half-width of their t interval (intervals.repeat_interval), else the value."""
    members = report.get(REPEATS_KEY) or []
    values = [float(m[metric]) for m in members if m.get(metric) is not None]
    if len(members) > 1 and len(values) == len(members):
        return repeat_interval(values)
    return report.get(metric)


class ProgressCallback(Callback):
    """Emits a line when a trial ends and the sweep summary after it; between those, the live
    block of the running trials when the attached console has live output."""

    def __init__(self, spec: SweepSpec, parquet_root: Location) -> None:
        self.spec = spec
        self.parquet_root = parquet_root
        self._milestones: dict[str, dict[int, dict[int, dict[str, Shown | None]]]] = {}  # Tune trial → member → n_edits → metrics
        self._metrics = [o.metric for o in spec.objectives]
        self._recorded: set[str] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = {**self.__dict__, "_milestones": {}, "_recorded": None}
        state.pop("sink", None)  # pickled by earlier versions; the console is attached per invocation
        return state

    def on_step_begin(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        if self._recorded is None:  # trials finished before a resume are replayed silently
            self._recorded = set(finished_packs(self.parquet_root))

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        running = [t.trial_id for t in trials if t.status == Trial.RUNNING]
        notes = _console.poll(running)
        if notes is not None:  # a trial may have ended since the snapshot was asked for
            _console.show(live_block(self.spec, trials, [n for n in notes if n.trial_id in running]))

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._milestones[trial.trial_id] = {}

    def _line_metrics(self) -> list[str]:
        """What a trial line shows per milestone: the objectives, in curve mode after the
        threshold they were read at."""
        return [THRESHOLD, *self._metrics] if self.spec.curve_mode else list(self._metrics)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        for k, member in enumerate(member_results(result)):
            if N_EDITS in member:
                milestones = self._milestones.setdefault(trial.trial_id, {}).setdefault(k, {})
                milestones[int(member[N_EDITS])] = {m: shown_value(member, m) for m in self._line_metrics()}

    def _emit(self, trials: list[Trial], trial: Trial, status: str, error: str | None) -> None:
        if self._recorded and trial.trial_id in self._recorded:
            return
        statuses = trial_statuses(self.spec, trials, (trial, status))
        members = member_configs(trial.config)
        done_before = sum(len(member_configs(t.config)) for t in trials if t is not trial and statuses.get(t.trial_id) in Status.final())
        seconds = (trial.last_result or {}).get("time_total_s")
        milestones = self._milestones.pop(trial.trial_id, {})
        labels = trial_labels(self.spec, trials)
        for k, config in enumerate(members):
            trial_id = member_trial_id(trial.trial_id, k, self.spec.pack_size)
            label = trial_label(config.get(OPTUNA_TRIAL), trial_id)
            original = config.get(REUSE_OF)
            reuses = labels.get(str(original), str(original)) if original is not None else None
            _console.sink(trial_line(done_before + k + 1, self.spec.num_trials, label, trial_id, status, config_text(self.spec, full_config(self.spec, config)),
                                     milestones.get(k, {}), self._line_metrics(), seconds, error, reuses))
        _console.sink(summary_line(self.spec, trials, statuses))

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        reached = (trial.last_result or {}).get(N_EDITS)
        self._emit(trials, trial, Status.after(reached, self.spec.T, errored=False), None)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._emit(trials, trial, Status.FAILED, short_error(trial_error_text(trial)))
