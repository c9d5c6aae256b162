"""MLflow: one parent run per sweep, one nested run per trial.

Runs are found again by tags (`defer_sweep.sweep_id`, `defer_sweep.trial_id`) rather than
created blindly, and each (metric, step) is logged once. A resumed sweep re-runs an interrupted
trial from its first edit in a fresh run, the interrupted attempt's run soft-deleted, so the
trial has one run, holding only the points of the attempt its record describes. Uses MlflowClient only
(no fluent active-run state), so nothing depends on which run is "current" in the process.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Mapping

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from ..results.rows import Status
from .layout import SweepLayout, SweepState

log = logging.getLogger(__name__)

TAG_SWEEP = "defer_sweep.sweep_id"
TAG_TRIAL = "defer_sweep.trial_id"
TAG_PACK = "defer_sweep.pack_id"  # the Tune trial (pack) that ran the trial
TAG_ROLE = "defer_sweep.role"
TAG_STATUS = "status"
TAG_ERROR = "error"
# MLflow 3's UI has two views, GenAI (an experiment opens on its traces "Overview") and model
# training (it opens on the runs table). The experiment's kind tag (values: the UI's
# ExperimentKind enum in server/js/build/static/js/main.*.js) chose the view; MLflow 3.17's UI
# takes it from the page URL's `workflowType` instead (else the last choice, else GenAI), so
# the sweep sets the tag for the UIs that read it and links with UI_WORKFLOW (run_page).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # "Machine learning": the runs table
UI_WORKFLOW = "workflowType=machine_learning"
_RUN_STATUS = {Status.COMPLETE: "FINISHED", Status.PRUNED: "KILLED", Status.FAILED: "FAILED", Status.RUNNING: "RUNNING", Status.INTERRUPTED: "KILLED"}
_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch
_TAG_LIMIT = 5000


def run_page(ui_url: str, experiment_id: str, run_id: str | None) -> str:
    """The MLflow UI's page of a run (its hash route `#/experiments/<id>/runs/<run id>`), or of
    the experiment's runs without a run id, in the model-training view."""
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "") + f"?{UI_WORKFLOW}"


def sweep_mlflow(layout: SweepLayout, state: SweepState) -> "MlflowSink":
    """The sweep's sink; with the default store in OUT its artifacts belong in OUT/mlartifacts,
    and none are logged to a run whose artifacts lie elsewhere (see _artifacts_in_place)."""
    local = state.mlflow_tracking_uri == layout.default_stores["mlflow_tracking_uri"]
    return MlflowSink(state.mlflow_tracking_uri, state.mlflow_experiment, state.sweep_id, str(layout.mlflow_artifacts) if local else None)


def _local_path(uri: str) -> Path | None:
    """The local path of a file:// URI or a plain path; None for any other scheme."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme == "file":
        return Path(urllib.request.url2pathname(parts.path)).resolve()
    return Path(uri).resolve() if not parts.scheme else None


class MlflowSink:
    """Writes the sweep's runs; the client is created lazily so the object pickles (Tune
    pickles callbacks into its experiment state)."""

    def __init__(self, tracking_uri: str, experiment: str, sweep_id: str, artifact_location: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.sweep_id = sweep_id
        self.artifact_location = artifact_location
        self._reset()

    def _reset(self) -> None:
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._parent_id: str | None = None
        self._trial_runs: dict[str, str] = {}
        self._logged: dict[str, set[tuple[str, int]]] = {}  # per run this driver opened: the (key, step) points logged
        self._created: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("tracking_uri", "experiment", "sweep_id", "artifact_location")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                self._experiment_id = self.client.create_experiment(
                    self.experiment, artifact_location=self.artifact_location, tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND}
                )
            else:
                self._experiment_id = found.experiment_id
                if TAG_EXPERIMENT_KIND not in found.tags:  # made outside defer-sweep (the UI, a shared server); a kind chosen in the UI stays
                    self.client.set_experiment_tag(self._experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
        return self._experiment_id

    def _find_runs(self, filter_string: str) -> list[Any]:
        runs: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def find_parent(self) -> str | None:
        runs = self._find_runs(f"tags.`{TAG_SWEEP}` = '{self.sweep_id}' and tags.`{TAG_ROLE}` = 'sweep'")
        return runs[0].info.run_id if runs else None

    # -- the sweep's parent run -------------------------------------------------------------

    def open_sweep(self, run_name: str, params: Mapping[str, Any], spec_file: Path) -> str:
        """Get or create the parent run and mark it running again."""
        parent = self.find_parent()
        if parent is None:
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags={TAG_SWEEP: self.sweep_id, TAG_ROLE: "sweep"})
            parent = run.info.run_id
            self.client.log_batch(parent, params=[Param(k, _param(v)) for k, v in params.items()])
            if self._artifacts_in_place(parent):
                self.client.log_artifact(parent, str(spec_file))
        else:
            self.client.update_run(parent, status="RUNNING")
        self._parent_id = parent
        return parent

    @property
    def parent_id(self) -> str:
        if self._parent_id is None:
            self._parent_id = self.find_parent()
            if self._parent_id is None:
                raise RuntimeError(f"no MLflow parent run for sweep {self.sweep_id}; call open_sweep first")
        return self._parent_id

    def close_sweep(self, status: str, summary: Mapping[str, Any], error: str | None = None) -> None:
        """Ends the parent run with `status`; `summary` (trial counts) and, when the driver
        failed, its `error` are set as tags; a later close without an error removes that tag."""
        tags = [RunTag(f"trials.{k}", str(v)) for k, v in summary.items()]
        if error:
            tags.append(RunTag(TAG_ERROR, error[:_TAG_LIMIT]))
        elif TAG_ERROR in self.client.get_run(self.parent_id).data.tags:
            self.client.delete_tag(self.parent_id, TAG_ERROR)
        self.client.log_batch(self.parent_id, tags=tags)
        self.client.set_terminated(self.parent_id, status=status)

    def log_best(self, best_yaml: Path, tags: Mapping[str, Any]) -> None:
        if self._artifacts_in_place(self.parent_id):
            self.client.log_artifact(self.parent_id, str(best_yaml))
        self.client.log_batch(self.parent_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_side_export(self, path: Path, artifact_path: str) -> None:
        """A YAML exported beside the sweep's own best (another objective, a Pareto point, a
        copy elsewhere): an artifact under `artifact_path`, never the run's best.* tags."""
        if self._artifacts_in_place(self.parent_id):
            self.client.log_artifact(self.parent_id, str(path), artifact_path)

    def log_report(self, report_dir: Path, artifact_path: str) -> str | None:
        """Logs every file of a report directory under artifact_path of the sweep's parent run;
        returns that run's id, or None (with a warning) when it was not logged."""
        parent = self.find_parent()
        if parent is None:
            log.warning("no MLflow parent run for sweep %s in %s; %s/ not logged", self.sweep_id, self.tracking_uri, artifact_path)
            return None
        if not self._artifacts_in_place(parent):
            return None
        self.client.log_artifacts(parent, str(report_dir), artifact_path)
        return parent

    def _artifacts_in_place(self, run_id: str) -> bool:
        """With the default store in OUT, artifacts are logged only into OUT/mlartifacts. MLflow
        keeps each run's artifact location, absolute, in mlflow.db, so the runs of a copied or
        moved sweep folder still name the original folder: logging there would write into it,
        or create it again. Such a run gets tags and metrics but no artifacts, and a warning."""
        if self.artifact_location is None:
            return True
        where = self.client.get_run(run_id).info.artifact_uri
        path, root = _local_path(where), _local_path(self.artifact_location)
        if path is not None and root is not None and path.is_relative_to(root):
            return True
        log.warning(
            "MLflow artifacts not logged: run %s keeps them in %s, outside this sweep folder's %s (the folder was copied or moved)",
            run_id, where, self.artifact_location,
        )
        return False

    def _sweep_trial_runs(self) -> list[Any]:
        return self._find_runs(f"tags.`{TAG_SWEEP}` = '{self.sweep_id}' and tags.`{TAG_ROLE}` = 'trial'")

    def pack_ids(self) -> set[str]:
        """The Tune trials behind the sweep's trial runs (a pack's id, or the trial's own)."""
        return {run.data.tags.get(TAG_PACK, run.data.tags[TAG_TRIAL]) for run in self._sweep_trial_runs()}

    def delete_pack_runs(self, pack_id: str) -> None:
        """Soft-deletes (MLflow's lifecycle 'deleted') the runs of a Tune trial that no longer exists."""
        for run in self._sweep_trial_runs():
            if run.data.tags.get(TAG_PACK, run.data.tags[TAG_TRIAL]) == pack_id:
                self.client.delete_run(run.info.run_id)
                self._trial_runs.pop(run.data.tags[TAG_TRIAL], None)

    def delete_trial_runs(self) -> int:
        """Fresh start in a directory whose Tune state is gone: its old trial runs are stale."""
        runs = self._sweep_trial_runs()
        for run in runs:
            self.client.delete_run(run.info.run_id)
        return len(runs)

    # -- nested trial runs --------------------------------------------------------------------

    def start_trial(self, trial_id: str, run_name: str, params: Mapping[str, Any], pack_id: str | None = None) -> str:
        """The trial's run, opened for a start from its first edit (trials keep no checkpoint).
        A run an earlier driver left (killed or interrupted mid-trial) is that attempt's: its
        points can reach milestones this attempt will not (the scheduler may prune it sooner
        this time), so it is soft-deleted and the attempt gets a fresh run."""
        run_id = self._trial_run(trial_id)
        if run_id is not None and run_id in self._created:
            return run_id
        if run_id is not None:
            self.client.delete_run(run_id)
        tags = {MLFLOW_PARENT_RUN_ID: self.parent_id, TAG_SWEEP: self.sweep_id, TAG_TRIAL: trial_id, TAG_PACK: pack_id or trial_id,
                TAG_ROLE: "trial", TAG_STATUS: Status.RUNNING.value}
        run_id = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags).info.run_id
        self.client.log_batch(run_id, params=[Param(k, _param(v)) for k, v in params.items()])
        self._created.add(run_id)
        self._trial_runs[trial_id] = run_id
        return run_id

    def interrupt_running_trials(self) -> int:
        """After Ctrl-C: the sweep's trial runs still RUNNING end KILLED with status
        `interrupted` (a resume runs the trial again in a fresh run: start_trial)."""
        runs = self._find_runs(f"tags.`{TAG_SWEEP}` = '{self.sweep_id}' and tags.`{TAG_ROLE}` = 'trial' and attributes.status = 'RUNNING'")
        for run in runs:
            self.client.set_tag(run.info.run_id, TAG_STATUS, Status.INTERRUPTED.value)
            self.client.set_terminated(run.info.run_id, status=_RUN_STATUS[Status.INTERRUPTED])
        return len(runs)

    def _trial_run(self, trial_id: str) -> str | None:
        if trial_id in self._trial_runs:
            return self._trial_runs[trial_id]
        runs = self._find_runs(f"tags.`{TAG_TRIAL}` = '{trial_id}' and tags.`{TAG_SWEEP}` = '{self.sweep_id}'")
        if not runs:
            return None
        run_id = runs[0].info.run_id
        self._trial_runs[trial_id] = run_id
        return run_id

    def log_metrics(self, trial_id: str, points: Iterable[tuple[str, float, int]]) -> int:
        """Logs (key, value, step) points not logged before to the run this driver opened for
        the trial (start_trial: an earlier driver's run is never written to); returns how many were new."""
        run_id = self._trial_run(trial_id)
        if run_id is None or run_id not in self._created:
            raise RuntimeError(f"no MLflow run opened by this driver for trial {trial_id}; call start_trial first")
        points = [(k, float(v), int(s)) for k, v, s in points if v is not None]
        logged = self._logged.setdefault(run_id, set())
        now = int(time.time() * 1000)
        new = [Metric(k, v, now, s) for k, v, s in points if (k, s) not in logged]
        for start in range(0, len(new), _BATCH):
            self.client.log_batch(run_id, metrics=new[start : start + _BATCH])
        logged.update((m.key, m.step) for m in new)
        return len(new)

    def finish_trial(self, trial_id: str, status: str, error: str | None, short_error: str | None,
                     tags: Mapping[str, str] | None = None, texts: Mapping[str, str] | None = None) -> None:
        """Ends the trial's run with its status (and error); `tags` are set on it and `texts`
        (artifact file name -> content, e.g. a curve-mode trial's curve.csv) logged to it."""
        run_id = self._trial_run(trial_id)
        if run_id is None:
            return
        run_tags = [RunTag(TAG_STATUS, str(status)), *(RunTag(k, str(v)) for k, v in (tags or {}).items())]
        if short_error:
            run_tags.append(RunTag(TAG_ERROR, short_error[:_TAG_LIMIT]))
        self.client.log_batch(run_id, tags=run_tags)
        files = {**({"error.txt": error} if error else {}), **(texts or {})}
        if files and self._artifacts_in_place(run_id):
            for name, text in files.items():
                self.client.log_text(run_id, text, name)
        self.client.set_terminated(run_id, status=_RUN_STATUS[status])


def _param(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."

