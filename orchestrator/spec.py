"""The sweep spec: one YAML file that says what to edit, what to search and where results go.

Everything is checked here, before Ray, Optuna or MLflow start, so a typo costs one line of
error output (naming the file and the key) rather than a half-started sweep. Relative paths
(`output_dir`, `data.path`) are resolved against the current working directory.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from defer_core.errors import DeferInputError
from defer_core.files import read_yaml
from defer_core.results import DTYPE_CHOICES, PROTOCOLS, SCORINGS, default_milestones, milestones_ending_at

from .protocol import metric_names

DIRECTIONS = ("maximize", "minimize")
SEARCHED = ("layer", "edit_lr", "threshold", "n_iter")
LAYER_FIELD = "{layer}"

_TOP_KEYS = {
    "name", "model", "data", "T", "milestones", "protocol", "scorings", "search_space",
    "initial_points", "objectives", "num_trials", "concurrency", "resources_per_trial",
    "early_stopping", "seed", "output_dir", "storage_uri", "pack_size", "optuna", "mlflow", "ray",
}
_REQUIRED_TOP = ("model", "T", "search_space", "objectives", "num_trials")


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int  # inclusive


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Choice:
    values: tuple[int, ...]


Param = int | float | IntRange | FloatRange | Choice


@dataclass(frozen=True)
class SearchSpace:
    """Each parameter is either fixed (a plain number) or searched (a range or a choice)."""

    layer: int | IntRange
    module_template: str
    edit_lr: float | FloatRange
    threshold: float | FloatRange
    n_iter: int | Choice

    def searched(self) -> dict[str, IntRange | FloatRange | Choice]:
        return {name: getattr(self, name) for name in SEARCHED if isinstance(getattr(self, name), (IntRange, FloatRange, Choice))}

    def fixed(self) -> dict[str, int | float]:
        return {name: getattr(self, name) for name in SEARCHED if not isinstance(getattr(self, name), (IntRange, FloatRange, Choice))}

    def layer_bounds(self) -> tuple[int, int]:
        return (self.layer.low, self.layer.high) if isinstance(self.layer, IntRange) else (self.layer, self.layer)


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str  # maximize | minimize

    @property
    def mode(self) -> str:
        """Ray Tune's spelling of the direction."""
        return "max" if self.direction == "maximize" else "min"


@dataclass(frozen=True)
class EarlyStopping:
    metric: str
    direction: str
    grace_edits: int
    reduction_factor: float


@dataclass(frozen=True)
class ModelSpec:
    name: str
    dtype: str = "auto"
    device: str | None = None  # None: cuda if the worker sees a GPU, else cpu


@dataclass(frozen=True)
class SweepSpec:
    name: str
    model: ModelSpec
    data_path: str | None
    T: int
    milestones: tuple[int, ...]
    protocol: str
    scorings: tuple[str, ...]
    search_space: SearchSpace
    initial_points: tuple[dict[str, int | float], ...]
    objectives: tuple[Objective, ...]
    num_trials: int
    concurrency: int
    cpus_per_trial: float
    gpus_per_trial: float
    early_stopping: EarlyStopping | None
    seed: int
    output_dir: Path
    optuna_storage: str | None = None
    optuna_study_name: str | None = None
    optuna_startup_trials: int | None = None
    optuna_population_size: int | None = None
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str | None = None
    ray_address: str | None = None
    ray_num_cpus: int | None = None
    ray_max_failures: int = 0
    storage_uri: str | None = None  # Tune and Parquet on shared storage (s3://bucket/prefix …)
    pack_size: int = 1  # DEFER trials per Tune trial, edited in one batched forward pass (same layer)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def with_output_dir(self, output_dir: str | os.PathLike[str]) -> "SweepSpec":
        path = Path(output_dir).expanduser().resolve()
        return dataclasses.replace(self, output_dir=path, raw={**self.raw, "output_dir": str(path)})


class _Reader:
    """Typed access to one mapping of the YAML, with errors that name the file and full key."""

    def __init__(self, source: str, data: Any, prefix: str = "") -> None:
        self.source = source
        self.prefix = prefix
        if not isinstance(data, dict):
            where = f"key '{prefix.rstrip('.')}'" if prefix else "the spec"
            raise DeferInputError(f"{source}: {where} must be a mapping, got {_kind(data)}")
        self.data = data

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def fail(self, name: str, message: str) -> DeferInputError:
        return DeferInputError(f"{self.source}: key '{self.key(name)}' {message}")

    def check_keys(self, allowed: set[str] | tuple[str, ...], required: tuple[str, ...] = ()) -> None:
        unknown = sorted(set(self.data) - set(allowed))
        if unknown:
            raise DeferInputError(
                f"{self.source}: unknown key '{self.key(str(unknown[0]))}' (allowed here: {', '.join(sorted(allowed))})"
            )
        for name in required:
            if name not in self.data or self.data[name] is None:
                raise DeferInputError(f"{self.source}: missing required key '{self.key(name)}'")

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def sub(self, name: str) -> "_Reader":
        return _Reader(self.source, self.data.get(name, {}) if self.data.get(name) is not None else {}, f"{self.key(name)}.")

    def string(self, name: str, default: str | None = None, choices: tuple[str, ...] | None = None) -> str | None:
        value = self.data.get(name, default)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(name, f"must be a non-empty string, got {_kind(value)}")
        if choices is not None and value not in choices:
            raise self.fail(name, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def integer(self, name: str, default: int | None = None, minimum: int | None = None) -> int | None:
        value = self.data.get(name, default)
        if value is None:
            return None
        return _as_int(value, minimum, lambda msg: self.fail(name, msg))

    def number(self, name: str, default: float | None = None, minimum: float | None = None, positive: bool = False) -> float | None:
        value = self.data.get(name, default)
        if value is None:
            return None
        number = _as_float(value, lambda msg: self.fail(name, msg))
        if positive and number <= 0:
            raise self.fail(name, f"must be > 0, got {value!r}")
        if minimum is not None and number < minimum:
            raise self.fail(name, f"must be >= {minimum}, got {value!r}")
        return number

    def str_list(self, name: str, default: tuple[str, ...], choices: tuple[str, ...]) -> tuple[str, ...]:
        value = self.data.get(name, list(default))
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise self.fail(name, f"must be a non-empty list, got {_kind(value)}")
        for item in value:
            if item not in choices:
                raise self.fail(name, f"has {item!r}; allowed: {', '.join(choices)}")
        if len(set(value)) != len(value):
            raise self.fail(name, "lists a value twice")
        return tuple(value)


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, (dict, list)) else type(value).__name__


def _as_float(value: Any, fail) -> float:
    """YAML reads `7e-5` (no dot) as a string; accept numeric strings as EasyEdit does."""
    if isinstance(value, bool):
        raise fail(f"must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise fail(f"must be a number, got {_kind(value)}") from None
    if not math.isfinite(number):
        raise fail(f"must be a finite number, got {value!r}")
    return number


def _as_int(value: Any, minimum: int | None, fail) -> int:
    number = _as_float(value, fail)
    if not number.is_integer():
        raise fail(f"must be an integer, got {value!r}")
    if minimum is not None and number < minimum:
        raise fail(f"must be >= {minimum}, got {value!r}")
    return int(number)


def _parse_model(reader: _Reader) -> ModelSpec:
    if isinstance(reader.data.get("model"), str):
        return ModelSpec(name=reader.data["model"])
    model = reader.sub("model")
    model.check_keys({"name", "dtype", "device"}, required=("name",))
    return ModelSpec(
        name=model.string("name"),
        dtype=model.string("dtype", "auto", choices=DTYPE_CHOICES),
        device=model.string("device"),
    )


def _parse_data(reader: _Reader) -> str | None:
    raw = reader.data.get("data")
    if raw is None or isinstance(raw, str):
        path = raw
    else:
        data = reader.sub("data")
        data.check_keys({"path"})
        path = data.string("path")
    return str(Path(path).expanduser().resolve()) if path else None


def _parse_milestones(reader: _Reader, total: int) -> tuple[int, ...]:
    raw = reader.data.get("milestones")
    if raw is None:
        return default_milestones(total)
    if not isinstance(raw, list) or not raw:
        raise reader.fail("milestones", f"must be a non-empty list of edit counts, got {_kind(raw)}")
    values = [_as_int(v, 1, lambda msg: reader.fail("milestones", msg)) for v in raw]
    try:
        return milestones_ending_at(tuple(values), total)
    except ValueError as error:
        raise reader.fail("milestones", str(error)) from None


def _parse_range_or_fixed(space: _Reader, name: str, kind: str) -> Param:
    """`name: 0.5` is fixed; `name: {low, high[, log]}` is searched; `n_iter: [a, b]` is a choice."""
    if name not in space.data or space.data[name] is None:
        raise DeferInputError(f"{space.source}: missing required key '{space.key(name)}'")
    value = space.data[name]
    fail = lambda msg: space.fail(name, msg)  # noqa: E731
    if isinstance(value, list):
        if kind != "choice":
            raise fail("must be a number or a mapping {low, high}; a list is only allowed for n_iter")
        if not value:
            raise fail("must list at least one value")
        values = tuple(_as_int(v, 1, fail) for v in value)
        if len(set(values)) != len(values):
            raise fail("lists a value twice")
        return Choice(values) if len(values) > 1 else values[0]
    if isinstance(value, dict):
        if kind == "choice":
            raise fail("must be an integer or a list of integers (choices)")
        rng = _Reader(space.source, value, f"{space.key(name)}.")
        rng.check_keys({"low", "high", "log"} if kind == "float" else {"low", "high"}, required=("low", "high"))
        if kind == "int":
            low, high = rng.integer("low", minimum=0), rng.integer("high", minimum=0)
            if low > high:
                raise rng.fail("low", f"must be <= high ({low} > {high})")
            return IntRange(low, high) if low < high else low
        log = rng.data.get("log", name == "edit_lr")
        if not isinstance(log, bool):
            raise rng.fail("log", f"must be true or false, got {log!r}")
        low, high = rng.number("low"), rng.number("high")
        if low > high:
            raise rng.fail("low", f"must be <= high ({low} > {high})")
        if log and low <= 0:
            raise rng.fail("low", f"must be > 0 for a log range, got {low}")
        return FloatRange(low, high, log) if low < high else low
    if kind == "int":
        return _as_int(value, 0, fail)
    if kind == "choice":
        return _as_int(value, 1, fail)
    return _as_float(value, fail)


def _parse_search_space(reader: _Reader) -> SearchSpace:
    space = reader.sub("search_space")
    space.check_keys({"layer", "module_template", "edit_lr", "threshold", "n_iter"}, required=("layer", "module_template"))
    template = space.string("module_template")
    _check_template(template, space)
    parsed = SearchSpace(
        layer=_parse_range_or_fixed(space, "layer", "int"),
        module_template=template,
        edit_lr=_parse_range_or_fixed(space, "edit_lr", "float"),
        threshold=_parse_range_or_fixed(space, "threshold", "float"),
        n_iter=_parse_range_or_fixed(space, "n_iter", "choice"),
    )
    for name, value in parsed.fixed().items():
        if name == "edit_lr" and value <= 0:
            raise space.fail(name, f"must be > 0, got {value}")
    lows_highs = {"threshold": parsed.threshold}
    for name, value in lows_highs.items():
        low, high = (value.low, value.high) if isinstance(value, FloatRange) else (value, value)
        if low < 0 or high > 1:
            raise space.fail(name, f"must lie in [0, 1], got {low}..{high}")
    if isinstance(parsed.edit_lr, FloatRange) and parsed.edit_lr.low <= 0:
        raise space.fail("edit_lr", "range must be > 0")
    if not parsed.searched():
        raise DeferInputError(f"{reader.source}: key 'search_space' fixes every parameter; give at least one a range or a choice")
    return parsed


def _check_template(template: str, space: _Reader) -> None:
    """The only field is {layer}; the result must parse as a module path (never eval'd)."""
    from defer_core.module_path import parse_module_path

    if LAYER_FIELD not in template:
        raise space.fail("module_template", f"must contain {LAYER_FIELD}, got {template!r}")
    try:
        rendered = template.format(layer=0)
    except (KeyError, IndexError, ValueError) as error:
        raise space.fail("module_template", f"may only use the field {LAYER_FIELD} ({error!r}), got {template!r}") from None
    if rendered.endswith((".weight", ".bias")):
        raise space.fail("module_template", f"names a module, not a parameter: drop the '.weight' suffix in {template!r}")
    try:
        parse_module_path(rendered)
    except DeferInputError as error:
        raise space.fail("module_template", f"is not a module path: {error}") from None


def _in_param(value: float, param: Param) -> bool:
    if isinstance(param, IntRange):
        return float(value).is_integer() and param.low <= value <= param.high
    if isinstance(param, FloatRange):
        return param.low <= value <= param.high
    if isinstance(param, Choice):
        return value in param.values
    return value == param


def _parse_initial_points(reader: _Reader, space: SearchSpace) -> tuple[dict[str, int | float], ...]:
    raw = reader.data.get("initial_points") or []
    if not isinstance(raw, list):
        raise reader.fail("initial_points", f"must be a list of mappings, got {_kind(raw)}")
    searched, fixed = space.searched(), space.fixed()
    points = []
    for index, item in enumerate(raw):
        point = _Reader(reader.source, item, f"initial_points[{index}].")
        point.check_keys(SEARCHED, required=tuple(searched))
        values: dict[str, int | float] = {}
        for name in SEARCHED:
            if name not in point.data:
                continue
            value = point.integer(name) if name in ("layer", "n_iter") else point.number(name)
            param = searched.get(name, fixed.get(name))
            if not _in_param(value, param):
                raise point.fail(name, f"= {value} lies outside the search space ({_describe(param)})")
            if name in searched:
                values[name] = value
        points.append(values)
    return tuple(points)


def _describe(param: Param) -> str:
    if isinstance(param, (IntRange, FloatRange)):
        return f"{param.low}..{param.high}"
    if isinstance(param, Choice):
        return f"one of {list(param.values)}"
    return f"fixed at {param}"


def _parse_objectives(reader: _Reader, scorings: tuple[str, ...]) -> tuple[Objective, ...]:
    raw = reader.data.get("objectives")
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise reader.fail("objectives", "must be a non-empty list of {metric, direction}")
    names = metric_names(scorings)
    objectives = []
    for index, item in enumerate(raw):
        objective = _Reader(reader.source, item, f"objectives[{index}].")
        objective.check_keys({"metric", "direction"}, required=("metric",))
        metric = objective.string("metric")
        if metric not in names:
            raise objective.fail("metric", f"= {metric!r} is not reported under scorings {list(scorings)}; choose from {', '.join(names)}")
        direction = objective.string("direction", "maximize", choices=DIRECTIONS)
        objectives.append(Objective(metric, direction))
    if len({o.metric for o in objectives}) != len(objectives):
        raise reader.fail("objectives", "lists a metric twice")
    return tuple(objectives)


def _parse_early_stopping(reader: _Reader, objectives: tuple[Objective, ...], milestones: tuple[int, ...], scorings: tuple[str, ...]) -> EarlyStopping | None:
    """ASHA needs one number: an objective (its direction is used) or any reported metric."""
    raw = reader.data.get("early_stopping")
    if raw is None or raw is False:
        return None
    stop = _Reader(reader.source, {} if raw is True else raw, "early_stopping.")
    stop.check_keys({"metric", "direction", "grace_edits", "reduction_factor"})
    by_metric = {o.metric: o for o in objectives}
    names = metric_names(scorings)
    metric = stop.string("metric", objectives[0].metric)
    if metric not in names:
        raise stop.fail("metric", f"= {metric!r} is not reported under scorings {list(scorings)}; choose from {', '.join(names)}")
    default_direction = by_metric[metric].direction if metric in by_metric else "maximize"
    direction = stop.string("direction", default_direction, choices=DIRECTIONS)
    if metric in by_metric and direction != by_metric[metric].direction:
        raise stop.fail("direction", f"= {direction} contradicts the objective on {metric} ({by_metric[metric].direction})")
    grace = stop.integer("grace_edits", milestones[0], minimum=1)
    if grace not in milestones[:-1]:
        raise stop.fail("grace_edits", f"= {grace} must be a milestone before T (one of {list(milestones[:-1]) or 'none: add milestones below T'})")
    factor = stop.number("reduction_factor", 2.0)
    if factor <= 1:
        raise stop.fail("reduction_factor", f"must be > 1, got {factor}")
    return EarlyStopping(metric=metric, direction=direction, grace_edits=grace, reduction_factor=factor)


def _parse_storage_uri(reader: _Reader) -> str | None:
    """Checked for form only (no network); whether it can be reached is checked when a sweep runs."""
    from .storage import normalize_storage_uri

    uri = reader.string("storage_uri")
    if uri is None:
        return None
    try:
        return normalize_storage_uri(uri)
    except ValueError as error:
        raise reader.fail("storage_uri", f"must be a pyarrow filesystem URI such as s3://bucket/prefix, gs://bucket/prefix or an absolute path, got {uri!r} ({error})") from None


def spec_from_dict(data: Any, source: str = "<spec>", default_name: str = "sweep") -> SweepSpec:
    """Validate a parsed spec; the first problem found raises with the file and key."""
    reader = _Reader(source, data)
    reader.check_keys(_TOP_KEYS, required=_REQUIRED_TOP)
    name = reader.string("name", default_name)
    if any(c in name for c in "/\\") or name.startswith("."):
        raise reader.fail("name", f"must be usable as a directory name, got {name!r}")
    total = reader.integer("T", minimum=1)
    scorings = reader.str_list("scorings", SCORINGS, SCORINGS)
    milestones = _parse_milestones(reader, total)
    space = _parse_search_space(reader)
    objectives = _parse_objectives(reader, scorings)
    resources = reader.sub("resources_per_trial")
    resources.check_keys({"cpu", "gpu"})
    optuna = reader.sub("optuna")
    optuna.check_keys({"storage", "study_name", "n_startup_trials", "population_size"})
    mlflow = reader.sub("mlflow")
    mlflow.check_keys({"tracking_uri", "experiment"})
    ray = reader.sub("ray")
    ray.check_keys({"address", "num_cpus", "max_failures"})
    population = optuna.integer("population_size", minimum=2)
    if population is not None and len(objectives) == 1:
        raise optuna.fail("population_size", "only applies to multi-objective sweeps (NSGA-II)")
    output_dir = reader.string("output_dir", f"runs/{name}")
    storage_uri = _parse_storage_uri(reader)
    num_trials = reader.integer("num_trials", minimum=1)
    pack_size = reader.integer("pack_size", 1, minimum=1)
    if pack_size > num_trials:
        raise reader.fail("pack_size", f"must be at most num_trials ({num_trials}), got {pack_size}")
    return SweepSpec(
        name=name,
        model=_parse_model(reader),
        data_path=_parse_data(reader),
        T=total,
        milestones=milestones,
        protocol=reader.string("protocol", "stream", choices=PROTOCOLS),
        scorings=scorings,
        search_space=space,
        initial_points=_parse_initial_points(reader, space),
        objectives=objectives,
        num_trials=num_trials,
        concurrency=reader.integer("concurrency", 1, minimum=1),
        cpus_per_trial=resources.number("cpu", 1.0, positive=True),
        gpus_per_trial=resources.number("gpu", 0.0, minimum=0.0),
        early_stopping=_parse_early_stopping(reader, objectives, milestones, scorings),
        seed=reader.integer("seed", 0, minimum=0),
        output_dir=Path(output_dir).expanduser().resolve(),
        optuna_storage=optuna.string("storage"),
        optuna_study_name=optuna.string("study_name"),
        optuna_startup_trials=optuna.integer("n_startup_trials", minimum=0),
        optuna_population_size=population,
        mlflow_tracking_uri=mlflow.string("tracking_uri"),
        mlflow_experiment=mlflow.string("experiment"),
        ray_address=ray.string("address"),
        ray_num_cpus=ray.integer("num_cpus", minimum=1),
        ray_max_failures=ray.integer("max_failures", 0, minimum=0),
        storage_uri=storage_uri,
        pack_size=pack_size,
        raw=dict(data),
    )


def load_spec(path: str | os.PathLike[str]) -> SweepSpec:
    """Read and validate a spec YAML file."""
    path = Path(path)
    data = read_yaml(path, "sweep spec")
    if data is None:
        raise DeferInputError(f"{path}: the sweep spec is empty")
    return spec_from_dict(data, source=str(path), default_name=path.stem)


def spec_to_yaml(spec: SweepSpec) -> str:
    """The spec as given, with output_dir and data path made absolute (what resume reloads)."""
    raw = dict(spec.raw)
    raw["name"] = spec.name
    raw["output_dir"] = str(spec.output_dir)
    if spec.storage_uri is not None:
        raw["storage_uri"] = spec.storage_uri
    if spec.data_path is not None:
        raw["data"] = {"path": spec.data_path}
    return yaml.safe_dump(raw, sort_keys=False)
