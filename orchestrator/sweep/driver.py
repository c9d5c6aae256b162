"""Run, resume and finish a sweep: spec → Ray Tune (OptunaSearch + milestone ASHA) → results.

Resume uses Tune's own experiment restore (Tuner.can_restore / Tuner.restore on OUT/tune, or
<storage_uri>/tune when the spec puts Tune and Parquet on shared storage):
finished trials stay finished, interrupted ones run again from scratch, and the Optuna study
continues in its RDB storage. Running `defer-sweep run SPEC` again on the same output
directory resumes too; a different spec in the same directory is refused.

A sweep that stopped before Tune saved its state (e.g. Tuner() could not pickle what it saves
in tuner.pkl, which it leaves empty) has nothing to restore (tune_saved): `run` starts it over
and `resume` refuses in one line. Once the MLflow parent run is open, it never stays RUNNING:
a driver that raises closes it FAILED (an interrupt that escapes Tune: KILLED, resumable).

The library functions here log; only the *_command functions (the CLI layer) print.
"""

from __future__ import annotations

import enum
import fnmatch
import json
import logging
import os
import pickletools
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Mapping

import pyarrow.fs as pafs
import ray
from ray import tune
from ray.tune.logger import JsonLoggerCallback

from defer_core.errors import DeferInputError
from defer_core.files import atomic_write_text, require_writable_dir
from defer_core.runtime import hub_env

from ..export import export_best
from ..protocol import CONFIRMS, FINAL_STATUSES, STAGE, STAGE_CONFIRM, RecordedTrial, Status, trial_named
from ..search.optuna_search import delete_study_if_exists, fail_orphaned_trials, make_searcher
from ..search.packing import num_packs
from ..search.scheduler import make_scheduler
from ..sinks.layout import TUNE_EXPERIMENT, SweepLayout, SweepState, load_state, new_sweep_id, require_in_place, require_sweep_dir, save_state
from ..sinks.mlflow_sink import MlflowSink, sweep_mlflow
from ..sinks.parquet_sink import TABLES, ParquetSink, UnreadableParquetError, read_table, read_tables
from ..sinks.progress import LiveOutput, ProgressCallback, Sink, console_session
from ..sinks.records import TrialLog, bounds_text, threshold_mode
from ..sinks.results_callback import ResultsCallback, drop_unknown_trials, recorded_trials
from ..spec import SweepSpec, load_spec, spec_to_yaml
from ..storage import Location, one_line, read_bytes
from ..worker.trainable import TrialSettings, defer_trainable
from ..sinks.stages import ConfirmPlan, confirm_stage, save_plan, search_stage, stage_of
from .confirm import CONFIRM_EXPERIMENTS, ConfirmRequest, confirm_spec, resolve_plan
from .lock import sweep_lock
from .preflight import LOCAL_RAY, check_cluster_gpus, check_model, load_spec_records, ray_init_address

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Tune snapshots its experiment state at most this often (seconds); a short period keeps the
# window small in which a killed driver forgets that a trial finished.
CHECKPOINT_PERIOD_S = "2"


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
        "model": spec.model.name,
        "dtype": spec.model.run_dtype,
        "strip": spec.data.strip,
        "threads": spec.resources_per_trial.threads,
        "T": spec.T,
        "milestones": ",".join(map(str, spec.milestones)),
        "protocol": spec.protocol,
        "scorings": ",".join(spec.scorings),
        "objectives": ",".join(f"{o.direction} {o.metric}" for o in spec.objectives),
        "num_trials": spec.num_trials,
        "concurrency": spec.concurrency,
        "pack_size": spec.pack_size,
        "module_template": spec.search_space.module_template,
        "early_stopping": "off" if spec.early_stopping is None else f"{spec.early_stopping.metric} grace={spec.early_stopping.grace_edits} rf={spec.early_stopping.reduction_factor:g}",
        "seed": spec.seed,
        "threshold_mode": threshold_mode(spec),
        "constraints": bounds_text(spec.constraints) or "none",
        **({"curve": f"resolution={spec.curve.resolution:g} gen_grid={','.join(f'{t:g}' for t in spec.curve.gen_grid)}"} if spec.curve_mode else {}),
    }


def _reset_partial(layout: SweepLayout, state: SweepState, mlflow: MlflowSink, saved: "TuneSaved") -> None:
    """The directory has a sweep whose Tune state never got saved: start it over cleanly (what
    Tune left of the failed start, the Optuna study, the Parquet dataset, the trial runs)."""
    stale_tune = saved is TuneSaved.UNSAVED and _delete_dir(layout.tune)
    if delete_study_if_exists(state.optuna_storage, state.optuna_study_name) or stale_tune:
        log.warning("%s: no restorable Tune state; restarting the sweep (what the failed start left of Tune and Optuna deleted)", layout.root)
    ParquetSink(layout.parquet).clear()
    if mlflow.find_parent() is not None:
        mlflow.delete_trial_runs()


def _check_storage_unused(layout: SweepLayout, tune_there: bool) -> None:
    """A new sweep must not adopt what another sweep left at the same storage_uri."""
    if layout.storage_uri and (tune_there or ParquetSink(layout.parquet).pack_ids()):
        raise DeferInputError(f"key 'storage_uri' = {layout.storage_uri!r} already holds another sweep's Tune experiment or Parquet files ({layout.results}); give each sweep its own prefix")


# -- Tune's saved state ----------------------------------------------------------------------------------

TUNER_PKL = "tuner.pkl"  # what Tuner() writes first and Tuner.restore unpickles (ray/tune/impl/tuner_internal.py)
EXPERIMENT_STATE = "experiment_state-*.json"  # Tune's snapshots (TuneController.CKPT_FILE_TMPL); restore reads the newest


class TuneSaved(enum.Enum):
    """What a Tune experiment directory holds, as far as Tuner.restore is concerned."""

    NOTHING = "nothing"  # no Tune experiment
    UNSAVED = "unsaved"  # a start that stopped before Tune's first snapshot: an empty, cut-short or lone tuner.pkl
    DAMAGED = "damaged"  # snapshots, but tuner.pkl or the newest snapshot cannot be read
    RESTORABLE = "restorable"


def tune_saved(at: Location) -> tuple[TuneSaved, str]:
    """Whether Tuner.restore can restore the experiment in `at` (any pyarrow filesystem), and
    if not, why. Tune's own can_restore only asks whether tuner.pkl exists, but Tuner() opens
    that file before pickling into it, so a start that failed there (e.g. a searcher that
    cannot be pickled) leaves it empty and Tuner.restore fails with EOFError; and one that
    stopped before the first snapshot (experiment_state-*.json) has nothing for restore to read.
    Restorable: can_restore, tuner.pkl a whole pickle (its opcodes read to the end, none run)
    and the newest snapshot valid JSON."""
    entries = at.filesystem.get_file_info(pafs.FileSelector(at.path, allow_not_found=True))
    snapshots = sorted(fnmatch.filter((e.base_name for e in entries if e.type == pafs.FileType.File), EXPERIMENT_STATE))
    pickled = tune.Tuner.can_restore(at.path, storage_filesystem=at.filesystem)
    tuner_ok = pickled and _whole_pickle(read_bytes(at, TUNER_PKL))
    if not snapshots:
        if not entries:
            return TuneSaved.NOTHING, "no Tune experiment"
        return TuneSaved.UNSAVED, f"no Tune snapshot ({EXPERIMENT_STATE}) in {at}" + ("" if tuner_ok else f"; {TUNER_PKL} {'empty or cut short' if pickled else 'missing'}")
    if not tuner_ok:
        return TuneSaved.DAMAGED, f"{at.child(TUNER_PKL)}: {'not a whole pickle (empty or cut short)' if pickled else 'missing'}"
    newest = at.child(snapshots[-1])
    try:
        json.loads(read_bytes(at, snapshots[-1]) or b"")
    except ValueError as error:
        return TuneSaved.DAMAGED, f"{newest}: not valid JSON ({one_line(error)})"
    return TuneSaved.RESTORABLE, f"Tune state in {at}"


def _whole_pickle(data: bytes | None) -> bool:
    """The pickle's opcodes parse up to its STOP (pickletools reads them, runs none)."""
    if not data:
        return False
    try:
        for _ in pickletools.genops(data):
            pass
    except ValueError:  # what genops raises for a pickle that ends early or has an unknown opcode
        return False
    return True


def _delete_dir(at: Location) -> bool:
    """Remove directory `at` with everything in it; False when there is none."""
    if at.filesystem.get_file_info(at.path).type == pafs.FileType.NotFound:
        return False
    at.filesystem.delete_dir(at.path)
    return True


def _damaged_message(at: Location, why: str) -> str:
    return f"{why}: Ray Tune cannot restore the experiment in {at}; restore that file, or start the sweep over in a new output_dir"


# -- Ray and Tune ----------------------------------------------------------------------------------------


class _NoTuneRestoreHint(logging.Filter):
    """Tune ends an interrupted run with "Resume experiment with: Tuner.restore(...)"; a sweep
    resumes with `defer-sweep resume OUT`, which the command layer prints. Only that record is
    dropped: every other Tune warning and error still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


_RESTORE_HINT_FILTER = _NoTuneRestoreHint()


def _set_tune_env(verbose_ray: bool) -> None:
    """Tune reads these from the driver's environment; explicit user settings win."""
    logging.getLogger("ray.tune.tune").addFilter(_RESTORE_HINT_FILTER)  # the logger of ray/tune/tune.py; adding it twice is a no-op
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", CHECKPOINT_PERIOD_S)
    # Parquet and MLflow are the record; of Tune's loggers only JSON is kept (added as a
    # callback), the CSV and TensorBoard ones would duplicate it (and TensorBoard warns
    # about the per-edit list in each result).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    if not verbose_ray:
        os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # our progress line shows the error
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no tables, no banner


@contextmanager
def ray_session(spec: SweepSpec, verbose_ray: bool) -> Iterator[None]:
    """Connect to a running cluster (RAY_ADDRESS, or one started with `ray start`, as under
    `ray submit`) or start a local instance; shut down only what we started."""
    if ray.is_initialized():
        yield
        return
    kwargs: dict[str, object] = {
        "include_dashboard": False,
        "logging_level": logging.INFO if verbose_ray else logging.WARNING,
        "log_to_driver": verbose_ray,
        # workers load models offline too, unless the user set the HF variables (hub_env)
        "runtime_env": {"env_vars": {**hub_env(), "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)}},
    }
    address = ray_init_address(spec)
    if spec.ray.num_cpus and address == LOCAL_RAY:
        kwargs["num_cpus"] = spec.ray.num_cpus
    ray.init(address=address, **kwargs)
    try:
        check_cluster_gpus(spec)
        yield
    finally:
        ray.shutdown()


def trial_dirname(trial: tune.experiment.Trial) -> str:
    return trial.trial_id


def _trainable(spec: SweepSpec, records: list, recorded: dict | None = None, board: str | None = None) -> object:
    settings = TrialSettings(spec=spec, records=tuple(records), recorded=recorded or {}, progress_board=board)
    resources = {"cpu": spec.resources_per_trial.cpu, "gpu": spec.resources_per_trial.gpu}
    return tune.with_resources(tune.with_parameters(defer_trainable, settings=settings), resources)


def _new_tuner(spec: SweepSpec, layout: SweepLayout, state: SweepState, records: list, mlflow: MlflowSink, verbose_ray: bool, board: str | None) -> tune.Tuner:
    scheduler, scheduler_callbacks = make_scheduler(spec)
    callbacks = [
        ResultsCallback(spec, state.sweep_id, ParquetSink(layout.parquet), mlflow),
        ProgressCallback(spec, layout.parquet),  # prints through the console attached in execute
        *scheduler_callbacks,
        JsonLoggerCallback(),  # Tune's own result.json per trial, which its ExperimentAnalysis reads
    ]
    return tune.Tuner(
        _trainable(spec, records, board=board),
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(spec, state.optuna_storage, state.optuna_study_name),
            scheduler=scheduler,
            num_samples=num_packs(spec),  # one Tune trial per pack of pack_size DEFER trials
            max_concurrent_trials=spec.concurrency,
            reuse_actors=True,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=TUNE_EXPERIMENT,
            storage_path=layout.results.path,
            storage_filesystem=layout.results.filesystem,
            callbacks=callbacks,
            verbose=2 if verbose_ray else 0,
            failure_config=tune.FailureConfig(max_failures=spec.ray.max_failures),
        ),
    )


# -- the sweep -----------------------------------------------------------------------------------------


def status_counts(layout: SweepLayout, confirm: bool = False) -> dict[str, int]:
    """DEFER trials per status, of the search stage (or of the confirm stage)."""
    rows = read_table(layout.parquet, "trials").select(["status", STAGE]).to_pylist()
    rows = confirm_stage(rows) if confirm else search_stage(rows)
    statuses = [row["status"] for row in rows]
    return {status: statuses.count(status) for status in (*FINAL_STATUSES, Status.RUNNING)}


def _search_finished(layout: SweepLayout, spec: SweepSpec) -> bool:
    counts = status_counts(layout)
    return sum(counts[s] for s in FINAL_STATUSES) >= spec.num_trials


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
        raise DeferInputError(_damaged_message(tune_at, why))
    restorable = saved is TuneSaved.RESTORABLE
    if resuming and not restorable:
        raise DeferInputError(
            f"{layout.root}: the sweep never saved its Tune state (it stopped before its first trial), so there is nothing to resume; "
            f"start it again with `defer-sweep run {layout.spec}`"
        )
    recorded = _recorded_for_resume(layout, spec) if restorable else {}
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
    with _parent_closed_on_error(mlflow, lambda: status_counts(layout)):
        _set_tune_env(verbose_ray)
        # The console (trial lines, live edit counts) is attached here, not pickled with Tune's callbacks.
        with ray_session(spec, verbose_ray), console_session(sink, live, state.sweep_id) as board:
            if restorable:
                log.info("resuming the Tune experiment in %s", tune_at)
                trainable = _trainable(spec, records, recorded, board)
                tuner = tune.Tuner.restore(
                    tune_at.path, trainable=trainable, resume_unfinished=True, resume_errored=False, restart_errored=False, storage_filesystem=tune_at.filesystem
                )
            else:
                tuner = _new_tuner(spec, layout, state, records, mlflow, verbose_ray, board)
            grid = tuner.fit()
        # Trial directories are named by trial id (trial_dirname): what Tune knows after fit; the
        # confirm stage's trials belong to its own Tune experiments.
        known = {PurePosixPath(result.path).name for result in grid}
        if known:
            drop_unknown_trials(ParquetSink(layout.parquet), mlflow, known | _other_packs(layout.parquet, None))
        outcome = finish(spec, layout, state, mlflow)
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


def _recorded_for_resume(layout: SweepLayout, spec: SweepSpec) -> dict[str, RecordedTrial]:
    """The finished trials a resume replays, read before anything changes (MLflow's parent run
    included), with every table file checked. A damaged file stops the resume: re-running its
    trial is not possible, as Tune's restored state may say that trial ended (Tune never runs
    an ended trial again) and Optuna was already told its result."""
    try:
        read_tables(layout.parquet, TABLES)
        return recorded_trials(layout.parquet, spec)
    except UnreadableParquetError as error:
        raise DeferInputError(f"{error}; resume needs every recorded trial: restore that file, or start the sweep over in a new output_dir (export and report skip it)") from None


def finish(spec: SweepSpec, layout: SweepLayout, state: SweepState, mlflow: MlflowSink) -> SweepOutcome:
    """After fit: if every trial ended, tidy Optuna, write best.yaml and close the MLflow run."""
    counts = status_counts(layout)
    done = sum(counts[s] for s in FINAL_STATUSES)
    finished = done >= spec.num_trials
    best_yaml = reason = None
    if not finished:  # interrupted (Ctrl-C): resumable, so the runs are KILLED, not FAILED
        mlflow.interrupt_running_trials()
        mlflow.close_sweep("KILLED", counts)
        return SweepOutcome(layout, state, counts, False, None, None)
    orphans = fail_orphaned_trials(state.optuna_storage, state.optuna_study_name)
    if orphans:
        log.warning("marked %d Optuna trial(s) lost with an earlier driver as FAIL", orphans)
    if counts[Status.COMPLETE]:
        best_yaml, reason = _write_best(layout, spec, mlflow)
    report_html = _write_report(layout)
    mlflow.close_sweep("FINISHED", {status: counts[status] for status in FINAL_STATUSES})
    return SweepOutcome(layout, state, counts, True, best_yaml, reason, report_html)


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


def prepare(spec: SweepSpec) -> SweepLayout:
    """Refuse, before anything is written, an output directory that cannot be one (a file, under
    a file, read-only), a sweep folder moved from where it was created, and a different sweep."""
    layout = SweepLayout(spec.output_dir, spec.storage_uri)
    require_writable_dir(layout.root, "the output directory")
    if layout.spec.is_file():
        require_in_place(layout)
        existing = load_spec(layout.spec)
        if existing != spec:
            raise DeferInputError(
                f"{layout.root}: holds a different sweep (its spec.yaml differs from this spec); "
                f"choose another output_dir, or continue that sweep with `defer-sweep resume {layout.root}`"
            )
    return layout


# -- the confirm stage (confirm.py plans it) ----------------------------------------------------------


@dataclass(frozen=True)
class ConfirmOutcome:
    layout: SweepLayout
    plan: ConfirmPlan
    counts: dict[str, int]  # confirm trials per status
    finished: bool  # every planned confirm trial ended
    best_yaml: Path | None = None
    best_reason: str | None = None
    report_html: Path | None = None


TAG_STAGE, TAG_CONFIRMS = STAGE, CONFIRMS  # a confirm trial run's MLflow tags: `stage` confirm, `confirms` <trial id>


class ConfirmResultsCallback(ResultsCallback):
    """The ResultsCallback of one protocol's confirm experiment. That Tune experiment knows only
    its own trials, so the search's and the other protocols' recorded trials are no killed
    driver's leftovers; its runs are tagged with their stage and the trial they confirm."""

    def __init__(self, spec: SweepSpec, sweep_id: str, parquet: ParquetSink, mlflow: MlflowSink) -> None:
        super().__init__(spec, sweep_id, parquet, mlflow)
        self._confirms: dict[str, str] = {}  # Tune trial id -> the DEFER trial it confirms

    def other_experiments_packs(self) -> set[str]:
        return _other_packs(self.parquet.root, self.spec.protocol)

    def _start(self, trial: tune.experiment.Trial) -> list[TrialLog]:
        self._confirms[trial.trial_id] = str(trial.config.get(CONFIRMS))
        return super()._start(trial)

    def _finish_tags(self, entry: TrialLog) -> dict[str, str]:
        return {**super()._finish_tags(entry), TAG_STAGE: STAGE_CONFIRM, TAG_CONFIRMS: self._confirms.get(entry.pack_id, "")}


def _other_packs(parquet: Location, protocol: str | None) -> set[str]:
    """Tune trials of the other Tune experiments in the folder: for the search (protocol None)
    the confirm stage's; for one protocol's confirm experiment every other trial."""
    rows = read_table(parquet, "trials").select(["pack_id", STAGE, "protocol"]).to_pylist()
    if protocol is None:
        return {str(row["pack_id"]) for row in confirm_stage(rows)}
    return {str(row["pack_id"]) for row in rows if not (stage_of(row) == STAGE_CONFIRM and row.get("protocol") == protocol)}


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


def _confirm_locked(spec: SweepSpec, layout: SweepLayout, request: ConfirmRequest, *, sink: Sink, verbose_ray: bool, live: LiveOutput | None) -> ConfirmOutcome:
    state = load_state(layout)
    if state is None or not _search_finished(layout, spec):
        raise DeferInputError(f"{layout.root}: the sweep has not finished; finish it with `defer-sweep resume {layout.root}` before confirming")
    plan = resolve_plan(layout, spec, request)
    for protocol in plan.protocols:  # refused before anything is written
        saved, why = tune_saved(_confirm_at(layout, protocol))
        if saved is TuneSaved.DAMAGED:
            raise DeferInputError(_damaged_message(_confirm_at(layout, protocol), why))
    save_plan(layout, plan)
    mlflow = sweep_mlflow(layout, state)
    mlflow.open_sweep(spec.name, _sweep_params(spec), layout.spec)
    with _parent_closed_on_error(mlflow, lambda: {f"confirm.{s}": n for s, n in status_counts(layout, confirm=True).items()}):
        _set_tune_env(verbose_ray)
        with ray_session(spec, verbose_ray), console_session(sink, live, state.sweep_id) as board:
            for protocol in plan.protocols:
                if not _fit_confirm(confirm_spec(spec, plan, protocol), layout, state.sweep_id, plan, mlflow, verbose_ray, board):
                    break  # interrupted: the next protocol waits for the resume
        return _finish_confirm(spec, layout, plan, mlflow)


def _confirm_at(layout: SweepLayout, protocol: str) -> Location:
    """One protocol's confirm experiment (_confirm_tuner names it so)."""
    return layout.results.child(CONFIRM_EXPERIMENTS, protocol)


def _fit_confirm(cspec: SweepSpec, layout: SweepLayout, sweep_id: str, plan: ConfirmPlan, mlflow: MlflowSink, verbose_ray: bool, board: str | None) -> bool:
    """One protocol's confirm experiment, new or restored (the sweep's resume machinery: Tune's
    restore, and the recorded trials replayed); True when each of its trials ended."""
    at = _confirm_at(layout, cspec.protocol)
    records = load_spec_records(cspec)
    saved, why = tune_saved(at)
    if saved is TuneSaved.DAMAGED:
        raise DeferInputError(_damaged_message(at, why))
    if saved is TuneSaved.RESTORABLE:
        log.info("resuming the confirm experiment in %s", at)
        trainable = _trainable(cspec, records, _recorded_for_resume(layout, cspec), board)
        tuner = tune.Tuner.restore(at.path, trainable=trainable, resume_unfinished=True, resume_errored=False, restart_errored=False, storage_filesystem=at.filesystem)
    else:
        if saved is TuneSaved.UNSAVED:  # a start that failed before Tune's first snapshot: it starts over
            log.warning("%s; starting the confirm experiment over", why)
            _delete_dir(at)
        tuner = _confirm_tuner(cspec, layout, sweep_id, plan, mlflow, records, verbose_ray, board)
    grid = tuner.fit()
    known = {PurePosixPath(result.path).name for result in grid}
    parquet = ParquetSink(layout.parquet)
    if known:
        drop_unknown_trials(parquet, mlflow, known | _other_packs(layout.parquet, cspec.protocol))
    rows = confirm_stage(read_table(layout.parquet, "trials").to_pylist(), cspec.protocol)
    return sum(row["status"] in FINAL_STATUSES for row in rows) >= len(plan.picks)


def _confirm_tuner(cspec: SweepSpec, layout: SweepLayout, sweep_id: str, plan: ConfirmPlan, mlflow: MlflowSink, records: list, verbose_ray: bool, board: str | None) -> tune.Tuner:
    """A fixed list of configs (Tune's BasicVariantGenerator over the picks; no Optuna study),
    each run to T (FIFO: no early stopping)."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    configs = plan.configs()
    at = layout.results.child(CONFIRM_EXPERIMENTS)
    callbacks = [ConfirmResultsCallback(cspec, sweep_id, ParquetSink(layout.parquet), mlflow), ProgressCallback(cspec, layout.parquet), JsonLoggerCallback()]
    return tune.Tuner(
        _trainable(cspec, records, board=board),
        param_space=dict.fromkeys(configs[0]),  # every key a point sets must exist in the space
        tune_config=tune.TuneConfig(
            search_alg=BasicVariantGenerator(points_to_evaluate=configs),
            num_samples=len(configs),
            max_concurrent_trials=cspec.concurrency,
            reuse_actors=True,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=cspec.protocol,
            storage_path=at.path,
            storage_filesystem=at.filesystem,
            callbacks=callbacks,
            verbose=2 if verbose_ray else 0,
            failure_config=tune.FailureConfig(max_failures=cspec.ray.max_failures),
        ),
    )


def _finish_confirm(spec: SweepSpec, layout: SweepLayout, plan: ConfirmPlan, mlflow: MlflowSink) -> ConfirmOutcome:
    """Every confirm trial ended: best.yaml again (now from the confirmed results), the report,
    and the parent run closed; otherwise the running runs end interrupted, to be resumed."""
    counts = status_counts(layout, confirm=True)
    summary = {f"confirm.{status}": counts[status] for status in FINAL_STATUSES}
    if sum(counts[s] for s in FINAL_STATUSES) < len(plan.picks) * len(plan.protocols):
        mlflow.interrupt_running_trials()
        mlflow.close_sweep("KILLED", summary)
        return ConfirmOutcome(layout, plan, counts, False)
    best_yaml, reason = _write_best(layout, spec, mlflow)
    report_html = _write_report(layout)
    mlflow.close_sweep("FINISHED", summary)
    return ConfirmOutcome(layout, plan, counts, True, best_yaml, reason, report_html)
