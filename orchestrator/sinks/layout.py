"""Where a sweep keeps its files: everything under one output directory, so resume and export
need only that directory; with the spec's `storage_uri`, Tune's experiment and the Parquet
dataset live at <storage_uri>/tune and <storage_uri>/parquet instead (see storage.py), and
sweep.json records the URI.

    OUT/spec.yaml        the spec the sweep runs (copied at start; resume reloads it)
    OUT/sweep.json       sweep id, resolved MLflow URI, Optuna storage/study, storage_uri
    OUT/optuna.db        Optuna RDB storage (default)
    OUT/mlflow.db        MLflow tracking store (default), artifacts under OUT/mlartifacts
    OUT/tune/            Ray Tune experiment (what Tuner.restore reads)
    OUT/parquet/{trials,milestones,edits}/<trial_id>.parquet
    OUT/best.yaml        the exported EasyEdit DEFER hparams
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from defer_core.errors import DeferInputError
from defer_core.files import atomic_write_text

from ..storage import Location, local_location, open_storage

TUNE_EXPERIMENT = "tune"


@dataclass(frozen=True)
class SweepLayout:
    root: Path
    storage_uri: str | None = None  # shared storage for Tune and Parquet (spec key storage_uri)

    @property
    def spec(self) -> Path:
        return self.root / "spec.yaml"

    @property
    def state(self) -> Path:
        return self.root / "sweep.json"

    @property
    def optuna_db(self) -> Path:
        return self.root / "optuna.db"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def results(self) -> Location:
        """Where Tune's experiment and the Parquet dataset live: OUT, or the storage_uri."""
        return open_storage(self.storage_uri) if self.storage_uri else local_location(self.root)

    @property
    def tune(self) -> Location:
        return self.results.child(TUNE_EXPERIMENT)

    @property
    def parquet(self) -> Location:
        return self.results.child("parquet")

    @property
    def best_yaml(self) -> Path:
        return self.root / "best.yaml"


@dataclass(frozen=True)
class SweepState:
    """What must stay the same across resumes of one sweep."""

    sweep_id: str
    mlflow_tracking_uri: str
    mlflow_experiment: str
    optuna_storage: str
    optuna_study_name: str
    storage_uri: str | None = None  # where Tune and Parquet live when not under OUT


def new_sweep_id() -> str:
    return uuid.uuid4().hex[:12]


def save_state(layout: SweepLayout, state: SweepState) -> None:
    atomic_write_text(layout.state, json.dumps(asdict(state), indent=2) + "\n")


def load_state(layout: SweepLayout) -> SweepState | None:
    if not layout.state.is_file():
        return None
    try:
        data = json.loads(layout.state.read_text(encoding="utf-8"))
        return SweepState(**data)
    except (OSError, ValueError, TypeError) as error:
        raise DeferInputError(f"{layout.state}: unreadable sweep state ({error})") from None


def require_sweep_dir(path: str | os.PathLike[str]) -> SweepLayout:
    """A directory made by `defer-sweep run`: it has spec.yaml and sweep.json (which names the
    sweep's storage_uri, if any)."""
    layout = SweepLayout(Path(path).expanduser().resolve())
    if not layout.spec.is_file() or not layout.state.is_file():
        raise DeferInputError(f"{layout.root}: not a sweep output directory (no spec.yaml / sweep.json); start one with `defer-sweep run SPEC`")
    return SweepLayout(layout.root, _recorded_storage_uri(layout))


def _recorded_storage_uri(layout: SweepLayout) -> str | None:
    """sweep.json's storage_uri; None when absent (an unreadable file fails in load_state)."""
    try:
        data = json.loads(layout.state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    uri = data.get("storage_uri") if isinstance(data, dict) else None
    return uri if isinstance(uri, str) and uri else None
