"""The spec's sections other than the search space: model, data, objectives and constraints, early
stopping, resources, Optuna, MLflow, Ray, threshold curves, repeats and the confirm stage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from annotated_types import Ge, Gt, Le
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, model_validator
from pydantic.json_schema import WithJsonSchema

from defer_core.results import DTYPE_CHOICES, PROTOCOLS, dtype_name
from defer_core.runtime import DEFAULT_THREADS, DEVICE_PATTERN, device_problem, threads_for

from ..protocol import PROPORTION

from .fields import Count, Flag, Float, NonNegativeFloat, NonNegativeInt, Positional, PositiveFloat, Section, Text, enum, fail, integer, kind, number, one_of
from .fields import text

DIRECTIONS = ("maximize", "minimize")
DEFAULT_GEN_GRID = tuple(round(step / 10, 1) for step in range(1, 10))  # 0.1, 0.2, ..., 0.9

Direction = Annotated[str, one_of(DIRECTIONS), enum(DIRECTIONS)]


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


class Objective(Positional):
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


class Constraint(Positional):
    """A bound on a reported metric (inclusive): feasible points rank first, and Optuna's
    samplers get it as a constraint (results/ranking.py `violations`)."""

    metric: Text
    # Every metric is a proportion (protocol.py METRIC_RANGES): a min above 1 or a max below 0
    # can never be met and is refused when the spec is read (SweepSpec).
    min: Float | None = Field(None, json_schema_extra={"maximum": PROPORTION[1]}, description="inclusive; at most 1 (metrics are proportions)")
    max: Float | None = Field(None, json_schema_extra={"minimum": PROPORTION[0]}, description="inclusive; at least 0 (metrics are proportions)")

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
