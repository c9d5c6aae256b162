"""Run, resume and finish a sweep: spec → its stages on Ray Tune → results.

The search stage (DeferOptunaSearch + milestone ASHA, one Tune experiment in OUT/tune, or
<storage_uri>/tune when the spec puts Tune and Parquet on shared storage) and the confirm
stage (one Tune experiment per protocol, confirm.py plans it) both run through
stage.run_stage; this module decides what each stage is, holds the sweep's lock and MLflow
parent run around it, and finishes it (best.yaml, the report, the parent run closed).

Resume uses Tune's own experiment restore (Tuner.can_restore / Tuner.restore): finished
trials stay finished, interrupted ones run again from scratch, and the Optuna study continues
in its RDB storage. Running `defer-sweep run SPEC` again on the same output directory resumes
too; a different spec in the same directory is refused.

A sweep that stopped before Tune saved its state (e.g. Tuner() could not pickle what it saves
in tuner.pkl, which it leaves empty) has nothing to restore (tune_state.tune_saved): `run`
starts it over and `resume` refuses in one line. Once the MLflow parent run is open, it never
stays RUNNING: a driver that raises closes it FAILED (an interrupt that escapes Tune: KILLED,
resumable).

The library functions here log; only the command layer (orchestrator/commands.py) prints.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Mapping

from defer_core.errors import DeferInputError
from defer_core.files import atomic_write_text, require_writable_dir

from ..export import export_best
from ..protocol import trial_named
from ..results.rows import RecordedTrial, Status
from ..search.optuna_search import delete_study_if_exists, fail_orphaned_trials, make_searcher
from ..results.packing import num_packs
from ..search.scheduler import make_scheduler
from ..sinks.layout import TUNE_EXPERIMENT, SweepLayout, SweepState, load_state, new_sweep_id, require_in_place, require_sweep_dir, save_state
from ..sinks.mlflow_sink import MlflowSink, sweep_mlflow
from ..results.store import ResultStore
from ..sinks.progress import LiveOutput, Sink, console_session
from ..results.ranking import bounds_text
from ..sinks.records import spec_columns
from ..sinks.results_callback import ConfirmResultsCallback, ResultsCallback
from ..results.stages import ConfirmPlan, save_plan
from ..spec import SweepSpec, load_spec, spec_to_yaml
from ..storage import one_line
from .confirm import ConfirmRequest, confirm_spec, resolve_plan
from .lock import sweep_lock
from .preflight import check_model, load_spec_records
from .stage import Counts, Listed, Searched, Stage, count, ray_session, recorded_for_resume, run_stage, set_tune_env
from .stage import trial_dirname as trial_dirname  # see below
from .tune_state import TuneSaved, damaged_message, delete_dir, tune_saved

# Tune pickles the Tuner's TuneConfig and RunConfig into tuner.pkl. Experiments saved before
# stage.py and results_callback.py took these over name them here, as
# orchestrator.sweep.driver.trial_dirname and .ConfirmResultsCallback (imported above), and
# resume needs the names to resolve.

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepOutcome:
    layout: SweepLayout
    state: SweepState
    counts: dict[str, int]
    finished: bool
    best_yaml: Path | None
    best_reason: str | None
    report_html: Path | None = None
    confirm: "ConfirmOutcome | None" = None  # the confirm stage `confirm.auto` ran after the sweep
    confirm_problem: str | None = None  # why that stage did not run (e.g. no trial completed)


@dataclass(frozen=True)
class ConfirmOutcome:
    layout: SweepLayout
    plan: ConfirmPlan
    counts: dict[str, int]  # confirm trials per status
    finished: bool  # every planned confirm trial ended
    best_yaml: Path | None = None
    best_reason: str | None = None
    report_html: Path | None = None


def _quiet_sink(line: str) -> None:
    log.info("%s", line)


# -- output directory and sweep state ------------------------------------------------------------


def new_state(spec: SweepSpec, layout: SweepLayout) -> SweepState:
    """The spec's defaults that need the output directory or the sweep id are filled in here;
    all others are in the spec's models (orchestrator/spec/models.py)."""
    sweep_id = new_sweep_id()
    defaults = layout.default_stores
    return SweepState(
        sweep_id=sweep_id,
        mlflow_tracking_uri=spec.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or defaults["mlflow_tracking_uri"],
        mlflow_experiment=spec.mlflow.experiment,
        optuna_storage=spec.optuna.storage or defaults["optuna_storage"],
        optuna_study_name=spec.optuna.study_name or f"{spec.name}-{sweep_id}",
        storage_uri=spec.storage_uri,
    )


def _sweep_params(spec: SweepSpec) -> dict[str, object]:
    return {
        **spec_columns(spec),
        "milestones": ",".join(map(str, spec.milestones)),
        "scorings": ",".join(spec.scorings),
        "objectives": ",".join(f"{o.direction} {o.metric}" for o in spec.objectives),
        "num_trials": spec.num_trials,
        "concurrency": spec.concurrency,
        "pack_size": spec.pack_size,
        "module_template": spec.search_space.module_template,
        "early_stopping": "off" if spec.early_stopping is None else f"{spec.early_stopping.metric} grace={spec.early_stopping.grace_edits} rf={spec.early_stopping.reduction_factor:g}",
        "seed": spec.seed,
        "constraints": bounds_text(spec.constraints) or "none",
        **({"curve": f"resolution={spec.curve.resolution:g} gen_grid={','.join(f'{t:g}' for t in spec.curve.gen_grid)}"} if spec.curve_mode else {}),
    }


def _reset_partial(layout: SweepLayout, state: SweepState, mlflow: MlflowSink, saved: TuneSaved) -> None:
    """The directory has a sweep whose Tune state never got saved: start it over cleanly (what
    Tune left of the failed start, the Optuna study, the Parquet dataset, the trial runs)."""
    stale_tune = saved is TuneSaved.UNSAVED and delete_dir(layout.tune)
    if delete_study_if_exists(state.optuna_storage, state.optuna_study_name) or stale_tune:
        log.warning("%s: no restorable Tune state; restarting the sweep (what the failed start left of Tune and Optuna deleted)", layout.root)
    ResultStore(layout.parquet).clear()
    if mlflow.find_parent() is not None:
        mlflow.delete_trial_runs()


def _check_storage_unused(layout: SweepLayout, tune_there: bool) -> None:
    """A new sweep must not adopt what another sweep left at the same storage_uri."""
    if layout.storage_uri and (tune_there or ResultStore(layout.parquet).pack_ids()):
        raise DeferInputError(f"key 'storage_uri' = {layout.storage_uri!r} already holds another sweep's Tune experiment or Parquet files ({layout.results}); give each sweep its own prefix")


# -- the search stage ------------------------------------------------------------------------------------


def search_counts(layout: SweepLayout, spec: SweepSpec) -> Counts:
    return count(layout, spec.num_trials)


def _search_stage(spec: SweepSpec, layout: SweepLayout, state: SweepState, records: list, recorded: Mapping[str, RecordedTrial]) -> Stage:
    def proposals() -> Searched:
        scheduler, scheduler_callbacks = make_scheduler(spec)
        searcher = make_searcher(spec, state.optuna_storage, state.optuna_study_name)
        return Searched(searcher, num_packs(spec), scheduler, tuple(scheduler_callbacks))  # one Tune trial per pack of pack_size DEFER trials

    return Stage(spec, layout.results, TUNE_EXPERIMENT, None, records, recorded, ResultsCallback, proposals)


def execute(spec: SweepSpec, layout: SweepLayout, *, sink: Sink = _quiet_sink, verbose_ray: bool = False, live: LiveOutput | None = None,
            resuming: bool = False) -> SweepOutcome:
    """Start the sweep in `layout`, or continue it if the directory already holds it (with
    `resuming`, only continue it: a sweep with no Tune state to restore is refused). One
    driver per sweep: the lock (lock.py) is taken before anything in the directory is touched
    and held to the end, and a second driver is refused in one line."""
    with sweep_lock(layout):
        return _execute_locked(spec, layout, sink=sink, verbose_ray=verbose_ray, live=live, resuming=resuming)


def _execute_locked(spec: SweepSpec, layout: SweepLayout, *, sink: Sink, verbose_ray: bool, live: LiveOutput | None, resuming: bool) -> SweepOutcome:
    check_model(spec, str(layout.spec if layout.spec.is_file() else spec.name))
    records = load_spec_records(spec)
    tune_at = layout.tune  # opens the storage_uri, if any: an unreachable one fails here, before any write
    saved, why = tune_saved(tune_at)
    if saved is TuneSaved.DAMAGED:
        raise DeferInputError(damaged_message(tune_at, why))
    restorable = saved is TuneSaved.RESTORABLE
    if resuming and not restorable:
        raise DeferInputError(
            f"{layout.root}: the sweep never saved its Tune state (it stopped before its first trial), so there is nothing to resume; "
            f"start it again with `defer-sweep run {layout.spec}`"
        )
    recorded = recorded_for_resume(layout, spec) if restorable else {}
    state = load_state(layout)
    if state is None:
        _check_storage_unused(layout, saved is not TuneSaved.NOTHING)
        layout.root.mkdir(parents=True, exist_ok=True)
        state = new_state(spec, layout)
        atomic_write_text(layout.spec, spec_to_yaml(spec))
        save_state(layout, state)
    mlflow = sweep_mlflow(layout, state)
    if not restorable:
        _reset_partial(layout, state, mlflow, saved)
    mlflow.open_sweep(spec.name, _sweep_params(spec), layout.spec)
    with _parent_closed_on_error(mlflow, lambda: search_counts(layout, spec).by_status):
        set_tune_env(verbose_ray)
        # The console (trial lines, live edit counts) is attached here, not pickled with Tune's callbacks.
        with ray_session(spec, verbose_ray), console_session(sink, live, state.sweep_id) as board:
            counts = run_stage(_search_stage(spec, layout, state, records, recorded), layout, mlflow, state.sweep_id, verbose_ray=verbose_ray, board=board)
        outcome = finish(spec, layout, state, mlflow, counts)
    if outcome.finished and spec.confirm is not None and spec.confirm.auto:
        outcome = _auto_confirm(spec, layout, outcome, sink=sink, verbose_ray=verbose_ray, live=live)
    return outcome


@contextmanager
def _parent_closed_on_error(mlflow: MlflowSink, summary: Callable[[], Mapping[str, int]]) -> Iterator[None]:
    """The sweep's parent run, once open, never stays RUNNING: when the driver raises, the
    trial runs still running end interrupted (a resume runs them again) and the parent run
    ends FAILED with the error, or KILLED for an interrupt that escaped Tune (a second
    Ctrl-C: the sweep is resumable, as after one). Closing must not hide the error itself."""
    try:
        yield
    except BaseException as error:
        status = "FAILED" if isinstance(error, Exception) else "KILLED"
        try:
            try:
                counts = dict(summary())
            except Exception:  # noqa: BLE001 - the counts are a courtesy; the run must still close
                counts = {}
            mlflow.interrupt_running_trials()
            mlflow.close_sweep(status, counts, error=f"{type(error).__name__}: {one_line(error)}" if status == "FAILED" else None)
        except Exception as close_error:  # noqa: BLE001 - e.g. the tracking server is gone too
            log.warning("MLflow parent run of sweep %s not closed (%s): %s", mlflow.sweep_id, status, one_line(close_error))
        raise


def _auto_confirm(spec: SweepSpec, layout: SweepLayout, outcome: SweepOutcome, *, sink: Sink, verbose_ray: bool, live: LiveOutput | None) -> SweepOutcome:
    """`confirm.auto`: the confirm stage (as recorded, else the spec's) right after the sweep;
    a sweep with nothing to confirm still finished, and says why."""
    try:
        confirmed = _confirm_locked(spec, layout, ConfirmRequest(), sink=sink, verbose_ray=verbose_ray, live=live)
    except DeferInputError as error:
        log.warning("confirm stage not run: %s", error)
        return replace(outcome, confirm_problem=str(error))
    if not confirmed.finished:
        return replace(outcome, confirm=confirmed)
    return replace(outcome, confirm=confirmed, best_yaml=confirmed.best_yaml, best_reason=confirmed.best_reason, report_html=confirmed.report_html or outcome.report_html)


def finish(spec: SweepSpec, layout: SweepLayout, state: SweepState, mlflow: MlflowSink, counts: Counts | None = None) -> SweepOutcome:
    """After fit: if every trial ended, tidy Optuna, write best.yaml and close the MLflow run."""
    counts = search_counts(layout, spec) if counts is None else counts
    if counts.finished:
        orphans = fail_orphaned_trials(state.optuna_storage, state.optuna_study_name)
        if orphans:
            log.warning("marked %d Optuna trial(s) lost with an earlier driver as FAIL", orphans)
    end = _end_stage(spec, layout, mlflow, counts, counts.final, killed_summary=counts.by_status, write_best=bool(counts.by_status[Status.COMPLETE]))
    return SweepOutcome(layout, state, counts.by_status, end.finished, end.best_yaml, end.best_reason, end.report_html)


# -- how a stage ends --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _End:
    finished: bool
    best_yaml: Path | None = None
    best_reason: str | None = None
    report_html: Path | None = None


def _end_stage(spec: SweepSpec, layout: SweepLayout, mlflow: MlflowSink, counts: Counts, summary: Mapping[str, int], *,
               killed_summary: Mapping[str, int] | None = None, write_best: bool = True) -> _End:
    """After a stage's fit. Interrupted (Ctrl-C: not every planned trial ended): resumable, so
    the running trial runs and the parent run end KILLED, not FAILED. Finished: best.yaml
    (confirmed results first, export.py), the report, and the parent run closed FINISHED."""
    if not counts.finished:
        mlflow.interrupt_running_trials()
        mlflow.close_sweep("KILLED", summary if killed_summary is None else killed_summary)
        return _End(False)
    best_yaml, reason = _write_best(layout, spec, mlflow) if write_best else (None, None)
    report_html = _write_report(layout)
    mlflow.close_sweep("FINISHED", summary)
    return _End(True, best_yaml, reason, report_html)


def _write_best(layout: SweepLayout, spec: SweepSpec, mlflow: MlflowSink) -> tuple[Path | None, str]:
    """best.yaml (confirmed results first, export.py) and the line saying which trial and why."""
    try:
        best_yaml, chosen = export_best(layout, spec, mlflow=mlflow)
    except DeferInputError as error:  # e.g. no completed point meets the constraints: the sweep still finished
        log.warning("best.yaml not written: %s", error)
        return None, str(error)
    return best_yaml, f"trial {trial_named(chosen.row)}: {chosen.reason}"


def _write_report(layout: SweepLayout) -> Path | None:
    """The HTML report (also logged to the parent run); a plotting problem must not fail a finished sweep."""
    from ..report import write_report

    try:
        return write_report(layout.root)
    except Exception as error:  # noqa: BLE001 - the sweep's results are already safe on disk
        log.warning("report not written: %s", error)
        return None


def resume(output_dir: str | os.PathLike[str], *, sink: Sink = _quiet_sink, verbose_ray: bool = False, live: LiveOutput | None = None) -> SweepOutcome:
    layout = require_sweep_dir(output_dir)
    require_in_place(layout)  # a moved copy would write where Tune's saved state points
    require_writable_dir(layout.root, "the output directory")
    spec = load_spec(layout.spec)
    return execute(spec, layout, sink=sink, verbose_ray=verbose_ray, live=live, resuming=True)


# -- the confirm stage (confirm.py plans it) ----------------------------------------------------------


def confirm(output_dir: str | os.PathLike[str], request: ConfirmRequest, *, sink: Sink = _quiet_sink, verbose_ray: bool = False,
            live: LiveOutput | None = None) -> ConfirmOutcome:
    """`defer-sweep confirm OUT`: run (or continue) the confirm stage of a finished sweep, under
    the sweep's lock, in the folder where it was created (Tune's state holds absolute paths)."""
    layout = require_sweep_dir(output_dir)
    require_in_place(layout)
    require_writable_dir(layout.root, "the output directory")
    spec = load_spec(layout.spec)
    with sweep_lock(layout):
        return _confirm_locked(spec, layout, request, sink=sink, verbose_ray=verbose_ray, live=live)


def _confirm_stage(layout: SweepLayout, plan: ConfirmPlan, cspec: SweepSpec) -> Stage:
    """One protocol's confirm experiment (OUT/tune-confirm/<protocol>): a damaged one is refused
    here, before anything is written; a restorable one replays its recorded trials."""
    storage = layout.confirm_experiments
    saved, why = tune_saved(storage.child(cspec.protocol))
    if saved is TuneSaved.DAMAGED:
        raise DeferInputError(damaged_message(storage.child(cspec.protocol), why))
    recorded = recorded_for_resume(layout, cspec) if saved is TuneSaved.RESTORABLE else {}
    configs = tuple(plan.configs())
    return Stage(cspec, storage, cspec.protocol, cspec.protocol, load_spec_records(cspec), recorded, ConfirmResultsCallback, lambda: Listed(configs))


def _confirm_locked(spec: SweepSpec, layout: SweepLayout, request: ConfirmRequest, *, sink: Sink, verbose_ray: bool, live: LiveOutput | None) -> ConfirmOutcome:
    state = load_state(layout)
    if state is None or not search_counts(layout, spec).finished:
        raise DeferInputError(f"{layout.root}: the sweep has not finished; finish it with `defer-sweep resume {layout.root}` before confirming")
    plan = resolve_plan(layout, spec, request)
    stages = [_confirm_stage(layout, plan, confirm_spec(spec, plan, protocol)) for protocol in plan.protocols]
    save_plan(layout, plan)
    mlflow = sweep_mlflow(layout, state)
    mlflow.open_sweep(spec.name, _sweep_params(spec), layout.spec)
    with _parent_closed_on_error(mlflow, lambda: _confirm_summary(_confirm_counts(layout, plan).by_status)):
        set_tune_env(verbose_ray)
        with ray_session(spec, verbose_ray), console_session(sink, live, state.sweep_id) as board:
            for stage in stages:
                if not run_stage(stage, layout, mlflow, state.sweep_id, verbose_ray=verbose_ray, board=board).finished:
                    break  # interrupted: the next protocol waits for the resume
        counts = _confirm_counts(layout, plan)
        end = _end_stage(spec, layout, mlflow, counts, _confirm_summary(counts.final))
        return ConfirmOutcome(layout, plan, counts.by_status, end.finished, end.best_yaml, end.best_reason, end.report_html)


def _confirm_counts(layout: SweepLayout, plan: ConfirmPlan) -> Counts:
    """The confirm trials of every protocol: one per pick and protocol."""
    return count(layout, len(plan.picks) * len(plan.protocols), confirm=True)


def _confirm_summary(by_status: Mapping[str, int]) -> dict[str, int]:
    """The parent run's counts of the confirm stage: `confirm.complete`, ..."""
    return {f"confirm.{status}": n for status, n in by_status.items()}
