"""The sweep spec: one YAML file that says what to edit, what to search and where results go.

Everything is checked when the spec is read, before Ray, Optuna or MLflow start, so a typo costs
one line of error output (naming the file and the key) rather than a half-started sweep. Relative
paths (`output_dir`, `data.path`) are resolved against the current working directory.

Field names are the YAML keys (this module: the spec itself; search_space.py and sections.py: its
parts), and each default is written once: on its field, or, where it follows from another key (milestones from T, output_dir from name, early stopping from the
objectives, Optuna's sampler sizes from num_trials), in the one validator or method that works it
out. Defaults that need the output directory or the sweep id (the Optuna storage and study name,
the MLflow tracking URI) are filled in by the driver (orchestrator/sweep/driver.py `new_state`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Callable

from pydantic import AfterValidator, BeforeValidator, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from defer_core.plan import DEFAULT_GRACE_KEY, GRACE_KEYS
from defer_core.results import DEFAULT_SCORINGS, PROTOCOLS, SCORINGS, default_milestones, milestones_ending_at

from ..protocol import METRIC_RANGES, THRESHOLD_CURVE, metric_names
from .fields import Count, NonNegativeInt, Section, Text, derived, enum, fail, kind, mapping, missing, one_of, or_shorthand, text
from .search_space import EDITOR_PARAMS, EDITORS, SEARCHED, UNIT_RANGE, InitialPoint, SearchSpace, counts, describe, within
from .sections import ConfirmSpec, Constraint, CurveSpec, DataSpec, EarlyStopping, MlflowSpec, ModelSpec, Objective, OptunaSpec, RaySpec, Repeats, Resources

DEFAULT_NAME = "sweep"  # a spec read from a file is named after the file instead


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


def _unreachable(constraint: Constraint) -> tuple[str, str] | None:
    """(bound, problem) when a bound lies beyond every value its metric can take (a min above
    the range's top, a max below its bottom); a bound at the range's edge can be met."""
    low, high = METRIC_RANGES[constraint.metric]
    if constraint.min is not None and constraint.min > high:
        bound, value = "min", constraint.min
    elif constraint.max is not None and constraint.max < low:
        bound, value = "max", constraint.max
    else:
        return None
    return bound, f"= {value} is out of {constraint.metric}'s range [{low:g}, {high:g}]; no trial can meet it"


Scoring = Annotated[str, enum(SCORINGS)]
Point = Annotated[InitialPoint, BeforeValidator(lambda point: mapping(point, SEARCHED))]


class SweepSpec(Section):
    """A sweep of one editor's hyperparameters (DEFER by default): what to edit, what to search, where results go."""

    name: Text = derived("default: the spec file's name without .yaml")
    model: Annotated[ModelSpec, _shorthand("name")] = Field(json_schema_extra=or_shorthand({"type": "string"}))
    data: Annotated[DataSpec, _shorthand("path")] = Field(DataSpec(), json_schema_extra=or_shorthand({"type": "string"}))
    T: Count
    milestones: tuple[Count, ...] = derived("edit counts at which trials report; default 1, 10, 100, ... below T; T is always added")
    protocol: Annotated[str, one_of(PROTOCOLS), enum(PROTOCOLS)] = "stream"
    scorings: Annotated[tuple[Scoring, ...], BeforeValidator(_scorings)] = Field(DEFAULT_SCORINGS, json_schema_extra=or_shorthand({"enum": list(SCORINGS)}))
    editor: Annotated[str, one_of(EDITORS), enum(EDITORS)] = Field("defer", description="the lifelong editor swept: DEFER, GRACE or WISE (EasyEdit's restated)")
    grace_key: Annotated[str, one_of(GRACE_KEYS), enum(GRACE_KEYS)] = Field(
        DEFAULT_GRACE_KEY, description="GRACE: where a teacher-forced evaluation reads its key; sticky (EasyEdit's) or prompt (each scored prompt's last token)")
    search_space: SearchSpace
    initial_points: Annotated[tuple[Point, ...], BeforeValidator(_point_list)] = ()
    curve: CurveSpec = Field(CurveSpec(), description=f"only with search_space.threshold: {THRESHOLD_CURVE}")
    objectives: Annotated[tuple[Objective, ...], BeforeValidator(_objective_list)] = Field(json_schema_extra=or_shorthand(None))
    constraints: Annotated[tuple[Constraint, ...], BeforeValidator(_constraint_list)] = Field((), json_schema_extra=or_shorthand(None))
    num_trials: Count
    concurrency: Count = 1
    resources_per_trial: Resources = Resources()
    early_stopping: EarlyStopping | None = Field(None, json_schema_extra=or_shorthand({"type": "boolean"}))
    seed: NonNegativeInt = 0
    output_dir: Path = derived("default: runs/NAME")
    storage_uri: Annotated[Text, AfterValidator(_storage_uri)] | None = None  # Tune and Parquet on shared storage (s3://bucket/prefix ...)
    pack_size: Count = 1  # DEFER trials per Tune trial, edited in one batched forward pass (same layer)
    repeats: Repeats = derived("seeds x edit orders each trial runs, its metrics their mean; default one member: [seed], 1 order")
    confirm: ConfirmSpec | None = Field(None, json_schema_extra=or_shorthand({"type": "boolean"}), description="the confirm stage; true: its defaults")
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
            return milestones_ending_at(counts(value), total)
        except ValueError as error:
            raise fail(str(error)) from None

    @field_validator("grace_key")
    @classmethod
    def _grace_keys_only(cls, key: str, info: ValidationInfo) -> str:
        editor = info.data.get("editor")
        if key != DEFAULT_GRACE_KEY and editor not in (None, "grace"):
            raise fail(f"= {key} is where GRACE reads its key; editor: {editor} has none, so leave it out (or at sticky)")
        return key

    @field_validator("search_space")
    @classmethod
    def _editors_parameters(cls, space: SearchSpace, info: ValidationInfo) -> SearchSpace:
        """Only the editor's own parameters; DEFER needs its threshold."""
        editor = info.data.get("editor")
        if editor is None:
            return space
        own = EDITOR_PARAMS[editor]
        for name in space.given():
            if name not in own:
                owners = " or ".join(e for e, params in EDITOR_PARAMS.items() if name in params)
                raise fail(f"is a parameter of editor: {owners}, not of editor: {editor} (its parameters: {', '.join(own)})", name)
        if editor == "defer" and space.threshold is None:
            raise missing("threshold")
        return space

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
                if name in point and param is None:
                    raise fail("is not a parameter of this search space", index, name)
                if name in point and not within(point[name], param):
                    raise fail(f"= {point[name]} lies outside the search space ({describe(param)})", index, name)
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
            unreachable = _unreachable(constraint) if constraint.metric in METRIC_RANGES else None
            if unreachable:
                raise fail(unreachable[1], index, unreachable[0])
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
        space, editor = info.data.get("search_space"), info.data.get("editor")
        if pack_size > 1 and editor not in (None, "defer"):
            raise fail(f"= {pack_size} is DEFER's (its members share one batched forward pass); {editor} trials run one per Tune trial: set pack_size: 1")
        if pack_size > 1 and space is not None and space.curve_mode:
            raise fail(f"= {pack_size} is not supported with search_space.threshold: {THRESHOLD_CURVE} (its bookkeeping of curve points and "
                       "chosen thresholds assumes one training per Tune trial); set pack_size: 1")
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
