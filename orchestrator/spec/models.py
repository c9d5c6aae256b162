"""The sweep spec: one YAML file that says what to edit, what to search and where results go.

Everything is checked when the spec is read, before Ray, Optuna or MLflow start, so a typo costs
one line of error output (naming the file and the key) rather than a half-started sweep. Relative
paths (`output_dir`, `data.path`) are resolved against the current working directory.

Field names are the YAML keys, and each default is written here once: on the field, or, where it
follows from another key (milestones from T, output_dir from name, early stopping from the
objectives, Optuna's sampler sizes from num_trials), in the one validator or method that works it
out. Defaults that need the output directory or the sweep id (the Optuna storage and study name,
the MLflow tracking URI) are filled in by the driver (orchestrator/sweep/driver.py `new_state`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Callable, Union

from annotated_types import Ge, Gt, Le
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, PrivateAttr, Tag, ValidationInfo, field_validator, model_validator
from pydantic.json_schema import WithJsonSchema
from typing_extensions import TypedDict

from defer_core.errors import DeferInputError
from defer_core.results import DEFAULT_SCORINGS, DTYPE_CHOICES, PROTOCOLS, SCORINGS, default_milestones, dtype_name, milestones_ending_at
from defer_core.runtime import DEFAULT_THREADS, DEVICE_PATTERN, device_problem, threads_for

from ..protocol import THRESHOLD_CURVE, metric_names
from .fields import CHOICE, FIXED, RANGE, SPEC_ERROR, WORD, Count, Flag, Float, NonNegativeFloat, NonNegativeInt, PositiveFloat, Text
from .fields import enum, fail, integer, kind, mapping, missing, number, one_of, text

DIRECTIONS = ("maximize", "minimize")
SEARCHED = ("layer", "edit_lr", "threshold", "n_iter")
LAYER_FIELD = "{layer}"
DEFAULT_NAME = "sweep"  # a spec read from a file is named after the file instead
# Curve mode (`search_space.threshold: curve`): a training runs its adaptor at this threshold
# (EasyEdit's default). Only the edits' `success` column reads it: training never does, and
# every milestone is read at every threshold (defer_core.curve).
CURVE_TRAINING_THRESHOLD = 0.5
DEFAULT_GEN_GRID = tuple(round(step / 10, 1) for step in range(1, 10))  # 0.1, 0.2, ..., 0.9

Direction = Annotated[str, one_of(DIRECTIONS), enum(DIRECTIONS)]


def _or(shorthand: dict[str, Any] | None) -> Callable[[dict[str, Any]], None]:
    """The schema also takes the YAML shorthand, e.g. `model: NAME` for `model: {name: NAME}`;
    None: one item for a list of one."""

    def widen(schema: dict[str, Any]) -> None:
        full = {key: schema.pop(key) for key in list(schema) if key not in ("default", "description", "title")}
        schema["anyOf"] = [shorthand or dict(full["items"]), full]

    return widen


def _derived(description: str) -> Any:
    """A default that follows from other keys: the field's validator works it out (the schema
    describes it rather than showing null)."""

    def no_default(schema: dict[str, Any]) -> None:
        schema.pop("default", None)

    return Field(default=None, validate_default=True, description=description, json_schema_extra=no_default)


class Section(BaseModel):
    """One mapping of the YAML: frozen; unknown keys are refused, naming the allowed ones;
    `key: null` counts as not given."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        return mapping(data, cls.model_fields)


class _Positional(Section):
    """Small values that code writes positionally: IntRange(1, 3), Objective("rel_tf", "maximize")."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(**dict(zip(type(self).model_fields, args)), **kwargs)


# -- the search space ------------------------------------------------------------------------------


class IntRange(_Positional):
    low: NonNegativeInt
    high: NonNegativeInt  # inclusive

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low > self.high:
            raise fail(f"must be <= high ({self.low} > {self.high})", "low")
        return self


class FloatRange(_Positional):
    low: Float
    high: Float
    log: Flag = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.low > self.high:
            raise fail(f"must be <= high ({self.low} > {self.high})", "low")
        if self.log and self.low <= 0:
            raise fail(f"must be > 0 for a log range, got {self.low}", "low")
        return self


class Choice(_Positional):
    values: tuple[int, ...]


def _counts(items: list[Any] | tuple[Any, ...]) -> tuple[int, ...]:
    """Counts in a list, checked here so that an error names the list's key (n_iter, milestones)."""
    values = tuple(integer(item) for item in items)
    for value in values:
        if value < 1:
            raise fail(f"must be >= 1, got {value!r}")
    return values


def _choice(value: Any) -> Any:
    """`n_iter: [25, 50, 100]`: distinct counts."""
    if not isinstance(value, (list, tuple)):
        return value
    if not value:
        raise fail("must list at least one value")
    values = _counts(value)
    if len(set(values)) != len(values):
        raise fail("lists a value twice")
    return Choice(values)


def _shape(value: Any) -> str:
    """A mapping is a range, a list a choice; anything else is a fixed value."""
    if isinstance(value, (dict, IntRange, FloatRange)):
        return RANGE
    return CHOICE if isinstance(value, (list, tuple, Choice)) else FIXED


def _fixed_if_one(value: Any) -> Any:
    """A range with low == high, or a choice of one value, fixes the parameter."""
    if isinstance(value, (IntRange, FloatRange)) and value.low == value.high:
        return value.low
    if isinstance(value, Choice) and len(value.values) == 1:
        return value.values[0]
    return value


def _shapes(message: str) -> Discriminator:
    return Discriminator(_shape, custom_error_type=SPEC_ERROR, custom_error_message=message)


_NO_LIST = "must be a number or a mapping {low, high}; a list is only allowed for n_iter"
_CHOICE_SCHEMA = {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1, "uniqueItems": True}

LayerParam = Annotated[
    Union[Annotated[NonNegativeInt, Tag(FIXED)], Annotated[IntRange, Tag(RANGE)]], _shapes(_NO_LIST), AfterValidator(_fixed_if_one)
]
FloatParam = Annotated[Union[Annotated[Float, Tag(FIXED)], Annotated[FloatRange, Tag(RANGE)]], _shapes(_NO_LIST), AfterValidator(_fixed_if_one)]
NIterParam = Annotated[
    Union[Annotated[Count, Tag(FIXED)], Annotated[Choice, BeforeValidator(_choice), WithJsonSchema(_CHOICE_SCHEMA), Tag(CHOICE)]],
    _shapes("must be an integer or a list of integers (choices)"),
    AfterValidator(_fixed_if_one),
]


def _threshold_shape(value: Any) -> str:
    """`threshold: curve` (or any other word, refused by name) besides a number or a range;
    a numeric string is a number (YAML 1.1 reads `7e-1` as a string)."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return WORD
    return _shape(value)


def _curve_word(value: Any) -> str:
    if value != THRESHOLD_CURVE:
        raise fail(f"must be a number, a mapping {{low, high}} or {THRESHOLD_CURVE!r}, got {kind(value)}")
    return value


ThresholdParam = Annotated[
    Union[
        Annotated[str, BeforeValidator(_curve_word), WithJsonSchema({"const": THRESHOLD_CURVE}), Tag(WORD)],
        Annotated[Float, Tag(FIXED)],
        Annotated[FloatRange, Tag(RANGE)],
    ],
    Discriminator(_threshold_shape, custom_error_type=SPEC_ERROR, custom_error_message=f"must be a number, a mapping {{low, high}} or {THRESHOLD_CURVE!r}; a list is only allowed for n_iter"),
    AfterValidator(_fixed_if_one),
]


def _log_by_default(value: Any) -> Any:
    """An edit_lr range spans decades: searched on a log scale unless `log: false`."""
    return {**value, "log": True} if isinstance(value, dict) and value.get("log") is None else value


def _module_template(template: str) -> str:
    """The only field is {layer}; the result must parse as a module path (never eval'd)."""
    from defer_core.module_path import parse_module_path

    if LAYER_FIELD not in template:
        raise fail(f"must contain {LAYER_FIELD}, got {template!r}")
    try:
        rendered = template.format(layer=0)
    except (KeyError, IndexError, ValueError) as error:
        raise fail(f"may only use the field {LAYER_FIELD} ({error!r}), got {template!r}") from None
    if rendered.endswith((".weight", ".bias")):
        raise fail(f"names a module, not a parameter: drop the '.weight' suffix in {template!r}")
    try:
        parse_module_path(rendered)
    except DeferInputError as error:
        raise fail(f"is not a module path: {error}") from None
    return template


def _bounds(param: float | FloatRange) -> tuple[float, float]:
    return (param.low, param.high) if isinstance(param, FloatRange) else (param, param)


UNIT_RANGE = FloatRange(0.0, 1.0)  # every threshold a curve covers


class SearchSpace(Section):
    """Each parameter is either fixed (a plain number) or searched (a range or a choice)."""

    layer: LayerParam
    module_template: Annotated[Text, AfterValidator(_module_template)]
    edit_lr: Annotated[FloatParam, BeforeValidator(_log_by_default)] = Field(description="a range is searched on a log scale unless log: false")
    threshold: ThresholdParam = Field(description=f"a number, a range {{low, high}} in [0, 1], or {THRESHOLD_CURVE!r}: every training read at every threshold")
    n_iter: NIterParam

    @model_validator(mode="after")
    def _in_bounds(self) -> SearchSpace:
        if isinstance(self.edit_lr, FloatRange) and self.edit_lr.low <= 0:
            raise fail("range must be > 0", "edit_lr")
        if not isinstance(self.edit_lr, FloatRange) and self.edit_lr <= 0:
            raise fail(f"must be > 0, got {self.edit_lr}", "edit_lr")
        if not self.curve_mode:
            low, high = _bounds(self.threshold)  # type: ignore[arg-type]
            if low < 0 or high > 1:
                raise fail(f"must lie in [0, 1], got {low}..{high}", "threshold")
        if not self.searched() and not self.curve_mode:  # a curve searches the threshold even when the rest is fixed
            raise fail("fixes every parameter; give at least one a range or a choice")
        return self

    @property
    def curve_mode(self) -> bool:
        """`threshold: curve`: Optuna samples the other parameters; each training is read at every threshold."""
        return self.threshold == THRESHOLD_CURVE

    def searched(self) -> dict[str, IntRange | FloatRange | Choice]:
        """The parameters Optuna samples (in curve mode the threshold is none of them)."""
        return {name: getattr(self, name) for name in SEARCHED if isinstance(getattr(self, name), (IntRange, FloatRange, Choice))}

    def fixed(self) -> dict[str, int | float]:
        """The parameters given one value (in curve mode the threshold is none of them)."""
        return {
            name: getattr(self, name)
            for name in SEARCHED
            if not isinstance(getattr(self, name), (IntRange, FloatRange, Choice)) and getattr(self, name) != THRESHOLD_CURVE
        }

    def layer_bounds(self) -> tuple[int, int]:
        return (self.layer.low, self.layer.high) if isinstance(self.layer, IntRange) else (self.layer, self.layer)


class InitialPoint(TypedDict, total=False):
    """A point Optuna tries first; it names every searched parameter (fixed ones may be given;
    in curve mode a threshold may be given and is dropped: the training is read at every one)."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    layer: NonNegativeInt
    edit_lr: Float
    threshold: Float
    n_iter: Count


def _within(value: float, param: Any) -> bool:
    if isinstance(param, IntRange):
        return float(value).is_integer() and param.low <= value <= param.high
    if isinstance(param, FloatRange):
        return param.low <= value <= param.high
    if isinstance(param, Choice):
        return value in param.values
    return value == param


def _describe(param: Any) -> str:
    if isinstance(param, (IntRange, FloatRange)):
        return f"{param.low}..{param.high}"
    if isinstance(param, Choice):
        return f"one of {list(param.values)}"
    return f"fixed at {param}"


# -- the other sections ----------------------------------------------------------------------------


def _device(value: Any) -> str:
    """A torch device name a trial can run on; `gpu` or a typo fails here, naming the key."""
    problem = device_problem(text(value))
    if problem:
        raise fail(problem)
    return value


Device = Annotated[str, BeforeValidator(_device), WithJsonSchema({"type": "string", "pattern": DEVICE_PATTERN})]


class ModelSpec(Section):
    name: Text
    dtype: Annotated[str, one_of(DTYPE_CHOICES), enum(DTYPE_CHOICES)] = "auto"
    device: Device | None = None  # None: cuda if the worker sees a GPU, else cpu

    @property
    def run_dtype(self) -> str:
        """The dtype trials run in, as recorded with them: `auto` is float32 (EasyEdit's)."""
        return dtype_name(self.dtype)


class DataSpec(Section):
    # None: $DEFER_SWEEP_DATA_DIR or ../shared/data (defer_core.data.resolve_data_path)
    path: Annotated[Text, AfterValidator(lambda path: str(Path(path).expanduser().resolve()))] | None = None
    # false: text as the file has it, as EasyEdit reads it (a spaced `alt` becomes a double space)
    strip: Flag = Field(False, description="strip surrounding whitespace from every text field (EasyEdit does not)")


class Objective(_Positional):
    metric: Text
    direction: Direction = "maximize"

    @property
    def mode(self) -> str:
        """Ray Tune's spelling of the direction."""
        return "max" if self.direction == "maximize" else "min"


class EarlyStopping(Section):
    """ASHA over the edit milestones; by default on the first objective, from the first milestone."""

    # metric and grace_edits are filled in from the objectives and milestones (SweepSpec), so a
    # spec may leave them out; the schema shows them as optional.
    model_config = ConfigDict(json_schema_extra=lambda schema: schema.pop("required"))

    metric: Text
    direction: Direction = "maximize"
    grace_edits: Count
    reduction_factor: Annotated[float, Gt(1), BeforeValidator(number)] = 2.0


class Resources(Section):
    cpu: PositiveFloat = float(DEFAULT_THREADS)
    gpu: NonNegativeFloat = 0.0

    @property
    def threads(self) -> int:
        """torch's intra-op thread count of each trial (recorded with it): whole CPUs, at least one."""
        return threads_for(self.cpu)


class OptunaSpec(Section):
    storage: Text | None = None  # None: sqlite:///OUTPUT_DIR/optuna.db (driver)
    study_name: Text | None = None  # None: NAME-SWEEP_ID (driver)
    n_startup_trials: NonNegativeInt | None = None  # None: startup_trials_for(num_trials)
    population_size: Annotated[int, Ge(2), BeforeValidator(integer)] | None = None  # None: population_for(num_trials)

    def startup_trials_for(self, num_trials: int) -> int:
        """TPE's random start: few-trial sweeps need a short one, or TPE never gets to model anything."""
        return self.n_startup_trials if self.n_startup_trials is not None else max(2, min(10, num_trials // 4))

    def population_for(self, num_trials: int) -> int:
        """NSGA-II's population: about a third of the trials, so that several generations run."""
        return self.population_size or max(4, min(50, num_trials // 3))


class MlflowSpec(Section):
    tracking_uri: Text | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///OUTPUT_DIR/mlflow.db (driver)
    experiment: Text = "defer-sweep"


class RaySpec(Section):
    address: Text | None = None  # None: RAY_ADDRESS, a cluster started with `ray start`, or a local instance
    num_cpus: Count | None = None  # only for an instance we start
    max_failures: NonNegativeInt = 0


def _grid(value: Any) -> tuple[float, ...]:
    """Thresholds in [0, 1], distinct and ascending."""
    if not isinstance(value, (list, tuple)) or not value:
        raise fail(f"must be a non-empty list of thresholds in [0, 1], got {kind(value)}")
    values = tuple(float(number(item)) for item in value)
    outside = next((v for v in values if not 0.0 <= v <= 1.0), None)
    if outside is not None:
        raise fail(f"has {outside}; thresholds lie in [0, 1]")
    if list(values) != sorted(set(values)):
        raise fail(f"must be distinct and ascending, got {list(values)}")
    return values


_GRID_SCHEMA = {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}, "minItems": 1, "uniqueItems": True}


class CurveSpec(Section):
    """Curve mode's reading of a training: the tf curve is exact at every gate value, thinned to
    one point per `resolution`; generation scorings (gen, genctx) depend on the threshold at
    every generated token, so they are evaluated at the `gen_grid` thresholds only."""

    resolution: Annotated[float, Gt(0), Le(1), BeforeValidator(number)] = Field(0.02, description="at most one tf curve point per this step of threshold")
    gen_grid: Annotated[tuple[float, ...], BeforeValidator(_grid), WithJsonSchema(_GRID_SCHEMA)] = Field(
        DEFAULT_GEN_GRID, description="thresholds at which the generation scorings are evaluated"
    )


class Constraint(_Positional):
    """A bound on a reported metric (inclusive): feasible points rank first, and Optuna's
    samplers get it as a constraint (search/ranking.py `violations`)."""

    metric: Text
    min: Float | None = None
    max: Float | None = None

    @model_validator(mode="after")
    def _bounded(self) -> Constraint:
        if self.min is None and self.max is None:
            raise fail("must set min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise fail(f"must be <= max ({self.min} > {self.max})", "min")
        return self


def _distinct_seeds(value: Any) -> tuple[int, ...]:
    """A non-empty list of distinct seeds (>= 0); a single int is a list of one."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise fail(f"must be a non-empty list of seeds (integers >= 0), got {kind(value)}")
    seeds = tuple(integer(item) for item in value)
    negative = next((seed for seed in seeds if seed < 0), None)
    if negative is not None:
        raise fail(f"has {negative}; seeds are integers >= 0")
    if len(set(seeds)) != len(seeds):
        raise fail(f"lists a seed twice: {list(seeds)}")
    return seeds


_SEEDS_SCHEMA = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1, "uniqueItems": True}
Seeds = Annotated[tuple[int, ...], BeforeValidator(_distinct_seeds), WithJsonSchema(_SEEDS_SCHEMA)]


class Repeats(Section):
    """Each trial repeated: every seed (the adaptor heads' initial weights) x every edit order
    (defer_core.orders: 0 is the file's order, k > 0 a fixed shuffle of the same T records).
    A trial's metrics are the mean over these members; their spread gives error bars."""

    # seeds is filled in from the spec's `seed` when left out (SweepSpec), so the schema shows it optional
    model_config = ConfigDict(json_schema_extra=lambda schema: schema.pop("required", None))

    seeds: Seeds = Field(description="adaptor seeds; default [seed]")
    orders: Count = Field(1, description="edit orders 0..orders-1; 0 is the data's own order")

    @property
    def members(self) -> tuple[tuple[int, int], ...]:
        """(seed, order) of every member, order-major: order 0's seeds first."""
        return tuple((seed, order) for order in range(self.orders) for seed in self.seeds)


def _protocol_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise fail(f"must be a non-empty list of protocols ({', '.join(PROTOCOLS)}), got {kind(value)}")
    for item in value:
        if item not in PROTOCOLS:
            raise fail(f"has {item!r}; allowed: {', '.join(PROTOCOLS)}")
    if len(set(value)) != len(value):
        raise fail("lists a protocol twice")
    return tuple(value)


ProtocolName = Annotated[str, enum(PROTOCOLS)]


class ConfirmSpec(Section):
    """The confirm stage (`defer-sweep confirm`, or right after the sweep with `auto`): the
    best trials run again at full T without early stopping, with more repeats, so the numbers
    a paper reports carry error bars."""

    # The only place these defaults are written: `defer-sweep confirm` without a `confirm:`
    # section takes them from ConfirmSpec() too (sweep/confirm.py new_plan).
    top: Count = Field(3, description="how many of the sweep's best trials (or Pareto points) to confirm")
    seeds: Seeds = Field((0, 1, 2, 3, 4), description="adaptor seeds of each confirm run")
    orders: Count = Field(2, description="edit orders of each confirm run")
    T: Count | None = Field(None, description="edits per confirm run; null: the spec's T")
    protocols: Annotated[tuple[ProtocolName, ...], BeforeValidator(_protocol_list)] | None = Field(None, description="protocols to confirm under; null: the spec's protocol")
    auto: Flag = Field(False, description="run the confirm stage right after the sweep")


# -- the spec --------------------------------------------------------------------------------------


def _shorthand(key: str) -> BeforeValidator:
    """`model: NAME` is `model: {name: NAME}`; `data: PATH` is `data: {path: PATH}`."""
    return BeforeValidator(lambda value: {key: value} if isinstance(value, str) else value)


def _scorings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise fail(f"must be a non-empty list, got {kind(value)}")
    for item in value:
        if item not in SCORINGS:
            raise fail(f"has {item!r}; allowed: {', '.join(SCORINGS)}")
    if len(set(value)) != len(value):
        raise fail("lists a value twice")
    return tuple(value)


def _objective_list(value: Any) -> Any:
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise fail("must be a non-empty list of {metric, direction}")
    return value


def _constraint_list(value: Any) -> Any:
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise fail(f"must be a list of {{metric, min, max}}, got {kind(value)}")
    return value


def _point_list(value: Any) -> Any:
    if not isinstance(value, (list, tuple)):
        raise fail(f"must be a list of mappings, got {kind(value)}")
    return value


def _storage_uri(uri: str) -> str:
    """Checked for form only (no network); whether it can be reached is checked when a sweep runs."""
    from ..storage import normalize_storage_uri

    try:
        return normalize_storage_uri(uri)
    except ValueError as error:
        raise fail(f"must be a pyarrow filesystem URI such as s3://bucket/prefix, gs://bucket/prefix or an absolute path, got {uri!r} ({error})") from None


def _not_reported(metric: str, scorings: tuple[str, ...]) -> str | None:
    names = metric_names(scorings)
    return None if metric in names else f"= {metric!r} is not reported under scorings {list(scorings)}; choose from {', '.join(names)}"


Scoring = Annotated[str, enum(SCORINGS)]
Point = Annotated[InitialPoint, BeforeValidator(lambda point: mapping(point, SEARCHED))]


class SweepSpec(Section):
    """A sweep of DEFER's hyperparameters: what to edit, what to search, where results go."""

    name: Text = _derived("default: the spec file's name without .yaml")
    model: Annotated[ModelSpec, _shorthand("name")] = Field(json_schema_extra=_or({"type": "string"}))
    data: Annotated[DataSpec, _shorthand("path")] = Field(DataSpec(), json_schema_extra=_or({"type": "string"}))
    T: Count
    milestones: tuple[Count, ...] = _derived("edit counts at which trials report; default 1, 10, 100, ... below T; T is always added")
    protocol: Annotated[str, one_of(PROTOCOLS), enum(PROTOCOLS)] = "stream"
    scorings: Annotated[tuple[Scoring, ...], BeforeValidator(_scorings)] = Field(DEFAULT_SCORINGS, json_schema_extra=_or({"enum": list(SCORINGS)}))
    search_space: SearchSpace
    initial_points: Annotated[tuple[Point, ...], BeforeValidator(_point_list)] = ()
    curve: CurveSpec = Field(CurveSpec(), description=f"only with search_space.threshold: {THRESHOLD_CURVE}")
    objectives: Annotated[tuple[Objective, ...], BeforeValidator(_objective_list)] = Field(json_schema_extra=_or(None))
    constraints: Annotated[tuple[Constraint, ...], BeforeValidator(_constraint_list)] = Field((), json_schema_extra=_or(None))
    num_trials: Count
    concurrency: Count = 1
    resources_per_trial: Resources = Resources()
    early_stopping: EarlyStopping | None = Field(None, json_schema_extra=_or({"type": "boolean"}))
    seed: NonNegativeInt = 0
    output_dir: Path = _derived("default: runs/NAME")
    storage_uri: Annotated[Text, AfterValidator(_storage_uri)] | None = None  # Tune and Parquet on shared storage (s3://bucket/prefix ...)
    pack_size: Count = 1  # DEFER trials per Tune trial, edited in one batched forward pass (same layer)
    repeats: Repeats = _derived("seeds x edit orders each trial runs, its metrics their mean; default one member: [seed], 1 order")
    confirm: ConfirmSpec | None = Field(None, json_schema_extra=_or({"type": "boolean"}), description="the confirm stage; true: its defaults")
    optuna: OptunaSpec = OptunaSpec()
    mlflow: MlflowSpec = MlflowSpec()
    ray: RaySpec = RaySpec()

    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)  # the mapping as written (spec_to_yaml); not compared

    # Checks and defaults across keys: a validator sees the fields declared above its own
    # (info.data) and does nothing when one it needs failed, whose error is then the first.

    @model_validator(mode="wrap")
    @classmethod
    def _keep_raw(cls, data: Any, handler: Callable[[Any], SweepSpec]) -> SweepSpec:
        spec = handler(data)
        if isinstance(data, dict):
            spec._raw = dict(data)
        return spec

    @field_validator("name", mode="before")
    @classmethod
    def _default_name(cls, name: Any, info: ValidationInfo) -> Any:
        return name if name is not None else (info.context or {}).get("default_name", DEFAULT_NAME)

    @field_validator("name")
    @classmethod
    def _directory_name(cls, name: str) -> str:
        if any(c in name for c in "/\\") or name.startswith("."):
            raise fail(f"must be usable as a directory name, got {name!r}")
        return name

    @field_validator("milestones", mode="before")
    @classmethod
    def _milestones_up_to_T(cls, value: Any, info: ValidationInfo) -> Any:
        total = info.data.get("T")
        if total is None:
            return value or ()  # T itself is reported
        if value is None:
            return default_milestones(total)
        if not isinstance(value, (list, tuple)) or not value:
            raise fail(f"must be a non-empty list of edit counts, got {kind(value)}")
        try:
            return milestones_ending_at(_counts(value), total)
        except ValueError as error:
            raise fail(str(error)) from None

    @field_validator("initial_points")
    @classmethod
    def _points_in_space(cls, points: tuple[dict[str, int | float], ...], info: ValidationInfo) -> tuple[dict[str, int | float], ...]:
        """Each point names every searched parameter and lies in the space; fixed ones are dropped."""
        space: SearchSpace | None = info.data.get("search_space")
        if space is None:
            return points
        searched, fixed = space.searched(), space.fixed()
        if space.curve_mode:
            fixed = {**fixed, "threshold": UNIT_RANGE}  # any threshold lies on the training's curve
        for index, point in enumerate(points):
            for name in searched:
                if name not in point:
                    raise missing(index, name)
            for name in SEARCHED:
                param = searched.get(name, fixed.get(name))
                if name in point and not _within(point[name], param):
                    raise fail(f"= {point[name]} lies outside the search space ({_describe(param)})", index, name)
        return tuple({name: point[name] for name in searched} for point in points)

    @field_validator("curve", mode="before")
    @classmethod
    def _curve_needs_curve_mode(cls, value: Any, info: ValidationInfo) -> Any:
        """Runs only when the key is given: its settings mean nothing for a sampled threshold."""
        space: SearchSpace | None = info.data.get("search_space")
        if space is not None and not space.curve_mode:
            raise fail(f"only applies with search_space.threshold: {THRESHOLD_CURVE}")
        return value

    @field_validator("objectives")
    @classmethod
    def _objectives_reported(cls, objectives: tuple[Objective, ...], info: ValidationInfo) -> tuple[Objective, ...]:
        scorings = info.data.get("scorings")
        for index, objective in enumerate(objectives):
            problem = _not_reported(objective.metric, scorings) if scorings else None
            if problem:
                raise fail(problem, index, "metric")
        if len({o.metric for o in objectives}) != len(objectives):
            raise fail("lists a metric twice")
        return objectives

    @field_validator("constraints")
    @classmethod
    def _constraints_reported(cls, constraints: tuple[Constraint, ...], info: ValidationInfo) -> tuple[Constraint, ...]:
        scorings = info.data.get("scorings")
        for index, constraint in enumerate(constraints):
            problem = _not_reported(constraint.metric, scorings) if scorings else None
            if problem:
                raise fail(problem, index, "metric")
        return constraints

    @field_validator("early_stopping", mode="before")
    @classmethod
    def _early_stopping_defaults(cls, value: Any, info: ValidationInfo) -> Any:
        """`early_stopping: true` stops on the first objective (in its direction) from the first
        milestone; a mapping may change any of these."""
        if value is False:
            return None
        value = {} if value is True else value
        objectives, milestones = info.data.get("objectives"), info.data.get("milestones")
        if not isinstance(value, dict) or not objectives or not milestones:
            return value
        given = {key: item for key, item in value.items() if item is not None}
        metric = given.get("metric", objectives[0].metric)
        directions = {o.metric: o.direction for o in objectives}
        defaults = {"metric": metric, "grace_edits": milestones[0]}
        if metric in directions:
            defaults["direction"] = directions[metric]
        return {**defaults, **given}

    @field_validator("early_stopping")
    @classmethod
    def _early_stopping_fits(cls, stop: EarlyStopping | None, info: ValidationInfo) -> EarlyStopping | None:
        scorings, objectives, milestones = (info.data.get(key) for key in ("scorings", "objectives", "milestones"))
        if stop is None or not scorings or not objectives or not milestones:
            return stop
        problem = _not_reported(stop.metric, scorings)
        if problem:
            raise fail(problem, "metric")
        objective = next((o for o in objectives if o.metric == stop.metric), None)
        if objective is not None and stop.direction != objective.direction:
            raise fail(f"= {stop.direction} contradicts the objective on {stop.metric} ({objective.direction})", "direction")
        if stop.grace_edits not in milestones[:-1]:
            raise fail(
                f"= {stop.grace_edits} must be a milestone before T (one of {list(milestones[:-1]) or 'none: add milestones below T'})", "grace_edits"
            )
        return stop

    @field_validator("output_dir", mode="before")
    @classmethod
    def _output_dir(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            value = f"runs/{info.data.get('name', DEFAULT_NAME)}"
        if "://" in text(value):  # it would become a local folder named like the URL
            raise fail(f"must be a local directory path, got {value!r} (Tune's experiment and the Parquet dataset go to shared storage with storage_uri)")
        return Path(value).expanduser().resolve()

    @field_validator("pack_size")
    @classmethod
    def _pack_fits(cls, pack_size: int, info: ValidationInfo) -> int:
        num_trials = info.data.get("num_trials")
        if num_trials is not None and pack_size > num_trials:
            raise fail(f"must be at most num_trials ({num_trials}), got {pack_size}")
        return pack_size

    @field_validator("repeats", mode="before")
    @classmethod
    def _repeats_default(cls, value: Any, info: ValidationInfo) -> Any:
        """No `repeats` (or no `repeats.seeds`): the spec's seed alone, i.e. one member."""
        if value is None:
            value = {}
        if isinstance(value, dict) and value.get("seeds") is None and "seed" in info.data:
            value = {**value, "seeds": [info.data["seed"]]}
        return value

    @field_validator("repeats")
    @classmethod
    def _repeats_supported(cls, repeats: Repeats, info: ValidationInfo) -> Repeats:
        if len(repeats.members) == 1:
            return repeats
        pack_size, space = info.data.get("pack_size"), info.data.get("search_space")
        if pack_size is not None and pack_size > 1:
            raise fail(f"with {len(repeats.members)} members cannot be combined with pack_size {pack_size} (a trial's members already share one forward pass); set pack_size: 1")
        if space is not None and space.curve_mode:
            raise fail(f"is not supported with search_space.threshold: {THRESHOLD_CURVE} yet; use a sampled threshold or one member")
        return repeats

    @field_validator("confirm", mode="before")
    @classmethod
    def _confirm_flag(cls, value: Any) -> Any:
        """`confirm: true` is the stage with its defaults; `false` is none."""
        if value is True:
            return {}
        return None if value is False else value

    @field_validator("optuna")
    @classmethod
    def _population_needs_objectives(cls, optuna: OptunaSpec, info: ValidationInfo) -> OptunaSpec:
        objectives = info.data.get("objectives")
        if optuna.population_size is not None and objectives is not None and len(objectives) == 1:
            raise fail("only applies to multi-objective sweeps (NSGA-II)", "population_size")
        return optuna

    def __eq__(self, other: object) -> bool:
        """The same sweep: every validated field equal (`raw`, the YAML as written, is not compared)."""
        return isinstance(other, SweepSpec) and self.__dict__ == other.__dict__

    @property
    def raw(self) -> dict[str, Any]:
        return self._raw

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def curve_mode(self) -> bool:
        """`search_space.threshold: curve`: each training contributes its whole threshold curve."""
        return self.search_space.curve_mode

    @property
    def repeat_members(self) -> tuple[tuple[int, int], ...]:
        """(seed, order) of each repeat member of a trial, order-major; ((seed, 0),) unrepeated."""
        return self.repeats.members

    def with_output_dir(self, output_dir: str | os.PathLike[str]) -> SweepSpec:
        path = Path(output_dir).expanduser().resolve()
        spec = self.model_copy(update={"output_dir": path})
        spec._raw = {**self._raw, "output_dir": str(path)}
        return spec
