"""One stage of a sweep on Ray Tune: the search, or one protocol's confirm experiment.

Each stage is a Tune experiment of its own (the search in OUT/tune, each protocol's confirm
experiment in OUT/tune-confirm/<protocol>; on a storage_uri beside its Parquet dataset), and
`run_stage` runs either the same way: it restores the experiment Tune saved (tune_state.py:
finished trials stay finished, interrupted ones run again from scratch, the recorded ones are
replayed to the searcher) or builds a new one, with the same callbacks (Parquet and MLflow,
the progress line, Tune's result.json) and at most `spec.concurrency` Tune trials at once; runs
fit; drops what a killed driver started after Tune's last snapshot; and counts the stage's
DEFER trials. What differs is a `Stage`: the spec its trials run, where its experiment lives,
its results callback, and how a new experiment proposes trials: `Searched` (the search: Optuna
proposes, a scheduler may stop early) or `Listed` (the confirm stage: a fixed list of configs,
each run to T). Ray's session and Tune's environment are set up here too.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, Mapping, Sequence

import ray
from ray import tune
from ray.tune import Callback
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.basic_variant import BasicVariantGenerator

from defer_core.errors import DeferInputError
from defer_core.runtime import hub_env

from ..results.rows import RecordedTrial, Status
from ..sinks.layout import SweepLayout
from ..sinks.mlflow_sink import MlflowSink
from ..results.query import count_by_status, require_readable, stage_trials
from ..results.store import ResultStore, UnreadableParquetError
from ..sinks.progress import ProgressCallback
from ..sinks.results_callback import ResultsCallback, drop_unknown_trials, recorded_trials
from ..results.stages import other_experiments_packs
from ..spec import SweepSpec
from ..storage import Location
from ..worker.trainable import TrialSettings, defer_trainable
from .preflight import LOCAL_RAY, check_cluster_gpus, joins_cluster, ray_init_address
from .tune_state import TuneSaved, damaged_message, delete_dir, tune_saved

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Tune snapshots its experiment state at most this often (seconds); a short period keeps the
# window small in which a killed driver forgets that a trial finished.
CHECKPOINT_PERIOD_S = "2"


# -- Ray and Tune ----------------------------------------------------------------------------------------


class _NoTuneRestoreHint(logging.Filter):
    """Tune ends an interrupted run with "Resume experiment with: Tuner.restore(...)"; a sweep
    resumes with `defer-sweep resume OUT`, which the command layer prints. Only that record is
    dropped: every other Tune warning and error still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


_RESTORE_HINT_FILTER = _NoTuneRestoreHint()


def set_tune_env(verbose_ray: bool) -> None:
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
    with _quiet_token_notice(not verbose_ray and not joins_cluster(spec)):
        ray.init(address=address, **kwargs)
    try:
        check_cluster_gpus(spec)
        yield
    finally:
        ray.shutdown()


_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"


@contextmanager
def _quiet_token_notice(quiet: bool) -> Iterator[None]:
    """A local instance that Ray starts with token authentication on (its default since 2.59)
    announces it on every start; the sweep keeps the protection and drops the notice. Ray's
    other warnings, and every warning about a cluster the sweep connects to, still show."""
    logger = logging.getLogger(_TOKEN_LOGGER)
    level = logger.level
    if quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def trial_dirname(trial: tune.experiment.Trial) -> str:
    """Tune trial directories are named by trial id: after fit, Tune's known trials by their paths."""
    return trial.trial_id


def _trainable(spec: SweepSpec, records: Sequence, recorded: Mapping[str, RecordedTrial] | None = None, board: str | None = None) -> object:
    settings = TrialSettings(spec=spec, records=tuple(records), recorded=dict(recorded or {}), progress_board=board)
    resources = {"cpu": spec.resources_per_trial.cpu, "gpu": spec.resources_per_trial.gpu}
    return tune.with_resources(tune.with_parameters(defer_trainable, settings=settings), resources)


# -- what differs between the stages ----------------------------------------------------------------------
#
# The concurrency limit: Tune applies TuneConfig(max_concurrent_trials=N) only to a `Searcher`,
# which tune.run wraps in a ConcurrencyLimiter at every fit (a restored experiment's too: N is
# in its pickled TuneConfig). Any other search algorithm, such as the BasicVariantGenerator that
# runs a fixed list of configs, is passed on with the warning "max_concurrent_trials will be
# ignored" and runs as many trials as the cluster has resources for (ray/tune/tune.py, run()).
# So each kind below applies the stage's concurrency in the one way Tune honours for it.


@dataclass(frozen=True)
class Searched:
    """The search: a Searcher (the Optuna study) proposes each trial; the scheduler may stop
    it early (its callbacks keep its state in Tune's callback checkpoint)."""

    searcher: Searcher
    num_samples: int
    scheduler: TrialScheduler
    callbacks: tuple[Callback, ...] = ()
    param_space = None  # the searcher holds the space

    def tune_config(self, concurrency: int) -> dict[str, Any]:
        return {"search_alg": self.searcher, "scheduler": self.scheduler, "num_samples": self.num_samples, "max_concurrent_trials": concurrency}


@dataclass(frozen=True)
class Listed:
    """The confirm stage: a fixed list of configs (Tune's BasicVariantGenerator over them; no
    Optuna study), each run to T (Tune's FIFO scheduler: no early stopping)."""

    configs: tuple[dict[str, Any], ...]
    callbacks: tuple[Callback, ...] = ()

    @property
    def param_space(self) -> dict[str, Any]:
        return dict.fromkeys(self.configs[0])  # every key a point sets must exist in the space

    def tune_config(self, concurrency: int) -> dict[str, Any]:
        # The generator limits itself (Tune would ignore max_concurrent_trials); the limit is
        # saved with it (tuner.pkl, its searcher checkpoint), so a restored experiment keeps it.
        return {"search_alg": BasicVariantGenerator(points_to_evaluate=list(self.configs), max_concurrent=concurrency), "num_samples": len(self.configs)}


@dataclass(frozen=True)
class Stage:
    """One Tune experiment of the folder, and what run_stage needs to run it."""

    spec: SweepSpec  # what its trials run: spec.num_trials DEFER trials, at most spec.concurrency Tune trials at once
    storage: Location  # Tune's storage_path; the experiment is storage/name
    name: str
    protocol: str | None  # None: the search; else the confirm experiment of that protocol
    records: Sequence  # the T records its trials edit
    recorded: Mapping[str, RecordedTrial]  # its finished trials, which a restored experiment replays (empty for a new one)
    results: type[ResultsCallback]  # persists its trials (Parquet, MLflow)
    proposals: Callable[[], Searched | Listed]  # how a new experiment proposes trials (called only for a new one)

    @property
    def at(self) -> Location:
        return self.storage.child(self.name)

    @property
    def title(self) -> str:
        return "Tune experiment" if self.protocol is None else "confirm experiment"


# -- running a stage --------------------------------------------------------------------------------------


def run_stage(stage: Stage, layout: SweepLayout, mlflow: MlflowSink, sweep_id: str, *, verbose_ray: bool, board: str | None) -> "Counts":
    """The stage's experiment, restored or new, run to its end (or an interrupt); its counts."""
    at = stage.at
    saved, why = tune_saved(at)
    if saved is TuneSaved.DAMAGED:
        raise DeferInputError(damaged_message(at, why))
    if saved is TuneSaved.RESTORABLE:
        log.info("resuming the %s in %s", stage.title, at)
        trainable = _trainable(stage.spec, stage.records, stage.recorded, board)
        tuner = tune.Tuner.restore(at.path, trainable=trainable, resume_unfinished=True, resume_errored=False, restart_errored=False, storage_filesystem=at.filesystem)
    else:
        if saved is TuneSaved.UNSAVED:  # a start that failed before Tune's first snapshot: it starts over
            log.warning("%s; starting the %s over", why, stage.title)
            delete_dir(at)
        tuner = _new_tuner(stage, layout, mlflow, sweep_id, verbose_ray, board)
    grid = tuner.fit()
    # Trial directories are named by trial id (trial_dirname): what Tune knows after fit. The
    # folder's other experiments' trials are not this one's to drop.
    known = {PurePosixPath(result.path).name for result in grid}
    if known:
        drop_unknown_trials(ResultStore(layout.parquet), mlflow, known | other_experiments_packs(layout.parquet, stage.protocol))
    return count(layout, stage.spec.num_trials, confirm=stage.protocol is not None, protocol=stage.protocol)


def _new_tuner(stage: Stage, layout: SweepLayout, mlflow: MlflowSink, sweep_id: str, verbose_ray: bool, board: str | None) -> tune.Tuner:
    proposals = stage.proposals()
    callbacks = [
        stage.results(stage.spec, sweep_id, ResultStore(layout.parquet), mlflow),
        ProgressCallback(stage.spec, layout.parquet),  # prints through the console attached by the caller
        *proposals.callbacks,
        JsonLoggerCallback(),  # Tune's own result.json per trial, which its ExperimentAnalysis reads
    ]
    return tune.Tuner(
        _trainable(stage.spec, stage.records, board=board),
        param_space=proposals.param_space,
        tune_config=tune.TuneConfig(**proposals.tune_config(stage.spec.concurrency), reuse_actors=True, trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=stage.name,
            storage_path=stage.storage.path,
            storage_filesystem=stage.storage.filesystem,
            callbacks=callbacks,
            verbose=2 if verbose_ray else 0,
            failure_config=tune.FailureConfig(max_failures=stage.spec.ray.max_failures),
        ),
    )


def recorded_for_resume(layout: SweepLayout, spec: SweepSpec) -> dict[str, RecordedTrial]:
    """The finished trials a resume replays, read before anything changes (MLflow's parent run
    included), with every table file checked. A damaged file stops the resume: re-running its
    trial is not possible, as Tune's restored state may say that trial ended (Tune never runs
    an ended trial again) and Optuna was already told its result."""
    try:
        require_readable(layout)
        return recorded_trials(layout.parquet, spec)
    except UnreadableParquetError as error:
        raise DeferInputError(f"{error}; resume needs every recorded trial: restore that file, or start the sweep over in a new output_dir (export and report skip it)") from None


# -- counting ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    """A stage's DEFER trials per status (the final ones and running), of `planned`."""

    by_status: dict[str, int]
    planned: int

    @property
    def final(self) -> dict[str, int]:
        """The ended trials per status: complete, pruned, failed."""
        return {status: self.by_status[status] for status in Status.final()}

    @property
    def ended(self) -> int:
        return sum(self.final.values())

    @property
    def finished(self) -> bool:
        """Every planned trial ended (complete, pruned or failed): nothing left to resume."""
        return self.ended >= self.planned


def count(layout: SweepLayout, planned: int, *, confirm: bool = False, protocol: str | None = None) -> Counts:
    """The search stage's trials, or the confirm stage's (of one protocol, or of all)."""
    return Counts(count_by_status(stage_trials(layout, confirm=confirm, protocol=protocol, skip_unreadable=False)), planned)
