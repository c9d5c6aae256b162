"""Where a sweep keeps its files: everything under one output directory, so resume and export
need only that directory; with the spec's `storage_uri`, Tune's experiment and the Parquet
dataset live at <storage_uri>/tune and <storage_uri>/parquet instead (see storage.py), and
sweep.json records the URI.

    OUT/spec.yaml        the spec the sweep runs (copied at start; resume reloads it); its
                         output_dir says where the sweep was created
    OUT/sweep.json       sweep id, MLflow URI, Optuna storage/study, storage_uri
    OUT/optuna.db        Optuna RDB storage (default)
    OUT/mlflow.db        MLflow tracking store (default), artifacts under OUT/mlartifacts
    OUT/tune/            Ray Tune experiment (what Tuner.restore reads)
    OUT/parquet/<table>/<pack_id>.parquet     the results (tables: results/rows.py TABLES)
    OUT/best.yaml        the exported EasyEdit DEFER hparams

A folder can be copied or moved (`ray rsync-down` off a cluster) and still read: every path
is taken from the folder's current location. sweep.json writes the default stores in OUT as
null; a user-given MLflow URI, Optuna URL or storage_uri is kept as given. Only `resume` needs
the folder where it was created (require_in_place): Tune's saved experiment holds absolute paths.

sweep.json carries the folder's `format` (SWEEP_FORMAT) and the defer-sweep version that wrote
it. Only this format is read: a folder of another one (or of none, written before the field
existed) is refused in one line naming its writer, rather than half-read by guesswork.
"""

from __future__ import annotations

import json
import os
import uuid
from importlib.metadata import PackageNotFoundError, version
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from defer_core.errors import DeferInputError
from defer_core.files import atomic_write_text

from ..spec import SweepSpec, load_spec
from ..storage import Location, local_location, open_storage
from ..results.stages import CONFIRM_FILE

# The names the sweep writes in OUT (besides the properties below): written here once.
TUNE_EXPERIMENT = "tune"
PARQUET_DIR = "parquet"
CONFIRM_EXPERIMENTS = "tune-confirm"  # beside Tune's `tune`: one confirm experiment per protocol
REPORT_DIR = "report"
LOCK_FILE = ".lock"  # the driver's OS file lock (sweep/lock.py)
SWEEP_FORMAT = 4  # sweep.json's "format": raised whenever a sweep folder's files change shape (2: a pack's Tune config lists its members under "pack"; 3: trials name their editor and its parameters; 4: and GRACE's key position)
_FORMAT_KEY, _WRITER_KEY = "format", "written_by"


SQLITE = "sqlite:///"


def sqlite_url(path: Path) -> str:
    """A SQLite file as the URL MLflow and Optuna (SQLAlchemy) take (MLflow >= 3.7 defaults to
    SQLite and refuses new file stores)."""
    return f"{SQLITE}{path}"


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
    def default_stores(self) -> dict[str, str]:
        """SweepState field -> the store in OUT it defaults to (sweep.json writes these as null)."""
        return {"mlflow_tracking_uri": sqlite_url(self.mlflow_db), "optuna_storage": sqlite_url(self.optuna_db)}

    @property
    def results(self) -> Location:
        """Where Tune's experiment and the Parquet dataset live: OUT, or the storage_uri."""
        return open_storage(self.storage_uri) if self.storage_uri else local_location(self.root)

    @property
    def tune(self) -> Location:
        return self.results.child(TUNE_EXPERIMENT)

    @property
    def parquet(self) -> Location:
        return self.results.child(PARQUET_DIR)

    @property
    def confirm_experiments(self) -> Location:
        return self.results.child(CONFIRM_EXPERIMENTS)

    @property
    def confirm_plan(self) -> Path:
        return self.root / CONFIRM_FILE

    @property
    def report_dir(self) -> Path:
        return self.root / REPORT_DIR

    @property
    def best_yaml(self) -> Path:
        return self.root / "best.yaml"

    @property
    def written_names(self) -> frozenset[str]:
        """Every name the sweep may create at the top of OUT: what it calls its own."""
        files = (self.spec, self.state, self.optuna_db, self.mlflow_db, self.mlflow_artifacts, self.best_yaml, self.confirm_plan, self.report_dir)
        return frozenset({*(path.name for path in files), TUNE_EXPERIMENT, PARQUET_DIR, CONFIRM_EXPERIMENTS, LOCK_FILE})


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
    """sweep.json, with the default stores in OUT as null so the folder can be copied or moved."""
    data = asdict(state)
    for key, default in layout.default_stores.items():
        if data[key] == default:
            data[key] = None
    written = {_FORMAT_KEY: SWEEP_FORMAT, _WRITER_KEY: f"defer-sweep {_this_version()}", **data}
    atomic_write_text(layout.state, json.dumps(written, indent=2) + "\n")


def _this_version() -> str:
    try:
        return version("defer-sweep")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def load_state(layout: SweepLayout) -> SweepState | None:
    """sweep.json with every default store in the folder's current location."""
    if not layout.state.is_file():
        return None
    try:
        data = json.loads(layout.state.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    except (OSError, ValueError) as error:
        raise DeferInputError(f"{layout.state}: unreadable sweep state ({error})") from None
    _require_format(layout, data)
    try:
        state = SweepState(**{key: value for key, value in data.items() if key not in (_FORMAT_KEY, _WRITER_KEY)})
    except TypeError as error:
        raise DeferInputError(f"{layout.state}: unreadable sweep state ({error})") from None
    current = layout.default_stores
    return replace(state, **{key: current[key] for key in current if getattr(state, key) is None})


def _require_format(layout: SweepLayout, data: dict) -> None:
    found = data.get(_FORMAT_KEY)
    if found == SWEEP_FORMAT:
        return
    writer = data.get(_WRITER_KEY) or "a defer-sweep from before sweep folders carried a format"
    raise DeferInputError(
        f"{layout.root}: a sweep folder of format {found if found is not None else 'none'}, written by {writer}; "
        f"defer-sweep {_this_version()} reads format {SWEEP_FORMAT} only: open it with the version that wrote it, or run the sweep again"
    )


def created_in(layout: SweepLayout) -> Path:
    """The output directory the sweep was created in: spec.yaml's output_dir."""
    return load_spec(layout.spec).output_dir


def read_spec(layout: SweepLayout) -> SweepSpec:
    """OUT/spec.yaml with output_dir the folder's current location (the file keeps the first)."""
    return load_spec(layout.spec).with_output_dir(layout.root)


def require_in_place(layout: SweepLayout) -> None:
    """Only resume needs the folder where the sweep was created: Tune's saved experiment, its
    callbacks and the searcher hold absolute paths, so a moved copy would write there."""
    origin = created_in(layout)
    if origin != layout.root:
        raise DeferInputError(
            f"{layout.root}: this sweep was created in {origin}; resume it there (move the folder back first: "
            f"Ray Tune's saved experiment holds absolute paths); export and report work on a moved or copied folder"
        )


def require_sweep_dir(path: str | os.PathLike[str]) -> SweepLayout:
    """A directory made by `defer-sweep run`: it has spec.yaml and sweep.json (which names the
    sweep's storage_uri, if any)."""
    layout = SweepLayout(Path(path).expanduser().resolve())
    if not layout.spec.is_file() or not layout.state.is_file():
        raise DeferInputError(f"{layout.root}: not a sweep output directory (no spec.yaml / sweep.json); start one with `defer-sweep run SPEC`")
    return SweepLayout(layout.root, _recorded_storage_uri(layout))


def _recorded_storage_uri(layout: SweepLayout) -> str | None:
    """sweep.json's storage_uri, once its format is checked (before any command looks further);
    None when absent (an unreadable file fails in load_state)."""
    try:
        data = json.loads(layout.state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    _require_format(layout, data)
    uri = data.get("storage_uri")
    return uri if isinstance(uri, str) and uri else None
