"""The spec's search space: each hyperparameter of the spec's editor as a fixed value, a range or
a list of choices, and the initial points checked against it.

Every editor has layer, module_template, edit_lr and n_iter; DEFER adds its threshold, GRACE
eps and three words (val_init, replacement, eps_expand), WISE its ratios, frequencies, merge
algorithm and retrieve (EDITOR_PARAMS). A parameter an editor has that the spec leaves out keeps
the value of EasyEdit's llama-7b hparams file for that editor (spec/trial_config.py)."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Discriminator, Field, Tag, model_validator
from pydantic.json_schema import WithJsonSchema
from typing_extensions import TypedDict

from defer_core.errors import DeferInputError

from defer_core.editors import EDITORS
from defer_core.grace_hparams import EPS_EXPANDS, REPLACEMENTS, VAL_INITS
from defer_core.wise_hparams import MERGE_ALGS

from ..protocol import THRESHOLD_CURVE
from .fields import CHOICE, FIXED, RANGE, SPEC_ERROR, WORD, Count, Flag, Float, NonNegativeInt, Positional, Section, Text, fail, integer, kind

EDITOR_PARAMS: dict[str, tuple[str, ...]] = {  # the search-space keys each editor reads, besides module_template
    "defer": ("layer", "edit_lr", "threshold", "n_iter"),
    "grace": ("layer", "edit_lr", "n_iter", "eps", "val_init", "replacement", "eps_expand"),
    "wise": ("layer", "edit_lr", "n_iter", "mask_ratio", "act_ratio", "norm_constraint", "save_freq", "merge_freq", "merge_alg", "retrieve"),
}
assert tuple(EDITOR_PARAMS) == EDITORS
SEARCHED = tuple(dict.fromkeys(name for params in EDITOR_PARAMS.values() for name in params))  # every parameter of any editor
def editor_columns(editor: str) -> tuple[str, ...]:
    """The editor's parameters as tables show them: layer, edit_lr and n_iter first, then its own."""
    common = ("layer", "edit_lr", "n_iter")
    return common + tuple(name for name in EDITOR_PARAMS[editor] if name not in common)


OTHER_EDITORS_PARAMS = tuple(name for name in SEARCHED if name not in EDITOR_PARAMS["defer"])  # trial columns null for DEFER
PARAM_TYPES: dict[str, type] = {  # what a trial config's value of each parameter is
    "layer": int, "edit_lr": float, "threshold": float, "n_iter": int, "eps": float, "val_init": str, "replacement": str, "eps_expand": str,
    "mask_ratio": float, "act_ratio": float, "norm_constraint": float, "save_freq": int, "merge_freq": int, "merge_alg": str, "retrieve": bool,
}
LAYER_FIELD = "{layer}"
# Curve mode (`search_space.threshold: curve`): a training runs its adaptor at this threshold
# (EasyEdit's default). Only the edits' `success` column reads it: training never does, and
# every milestone is read at every threshold (defer_core.curve).
CURVE_TRAINING_THRESHOLD = 0.5


class IntRange(Positional):
    low: NonNegativeInt
    high: NonNegativeInt  # inclusive

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low > self.high:
            raise fail(f"must be <= high ({self.low} > {self.high})", "low")
        return self


class FloatRange(Positional):
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


class Choice(Positional):
    values: tuple[int, ...]


class Options(Positional):
    """A choice among words or flags (val_init: [cold, warm]; retrieve: [true, false])."""

    values: tuple[str | bool, ...]


def counts(items: list[Any] | tuple[Any, ...]) -> tuple[int, ...]:
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
    values = counts(value)
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


def _options(allowed: tuple[Any, ...]) -> BeforeValidator:
    """A word (or flag) of `allowed`, or a list of distinct ones (a choice; one value fixes it)."""

    def check(value: Any) -> Any:
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if not values:
            raise fail("must list at least one value")
        for item in values:
            if item not in allowed or isinstance(item, bool) != isinstance(allowed[0], bool):
                raise fail(f"must be one of {', '.join(map(str, allowed))} (or a list of them), got {item!r}")
        if len(set(values)) != len(values):
            raise fail("lists a value twice")
        return values[0] if len(values) == 1 else Options(tuple(values))

    return BeforeValidator(check)


def options_param(allowed: tuple[Any, ...]) -> Any:
    item = {"enum": list(allowed)}
    schema = {"anyOf": [item, {"type": "array", "items": item, "minItems": 1, "uniqueItems": True}]}
    return Annotated[Union[str, bool, Options], _options(allowed), WithJsonSchema(schema)]


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
SAMPLED = (IntRange, FloatRange, Choice, Options)  # a parameter of one of these shapes is searched


class SearchSpace(Section):
    """Each parameter is either fixed (a plain value) or searched (a range or a choice); the
    editor's own parameters only (EDITOR_PARAMS; SweepSpec checks which)."""

    layer: LayerParam
    module_template: Annotated[Text, AfterValidator(_module_template)]
    edit_lr: Annotated[FloatParam, BeforeValidator(_log_by_default)] = Field(description="a range is searched on a log scale unless log: false")
    n_iter: NIterParam
    threshold: ThresholdParam | None = Field(None, description=f"DEFER (required there): a number, a range {{low, high}} in [0, 1], or {THRESHOLD_CURVE!r}: every training read at every threshold")
    eps: Annotated[FloatParam, BeforeValidator(_log_by_default)] | None = Field(None, description="GRACE: the initial deferral radius; a range is searched on a log scale unless log: false")
    val_init: options_param(VAL_INITS) | None = Field(None, description="GRACE: a new key's value: cold (random) or warm (the layer's output)")
    replacement: options_param(REPLACEMENTS) | None = Field(None, description="GRACE: which positions a matching key replaces")
    eps_expand: options_param(EPS_EXPANDS) | None = Field(None, description="GRACE: how a radius grows for a key with the same label")
    mask_ratio: FloatParam | None = Field(None, description="WISE: the share of the side memory each knowledge shard trains, in (0, 1]")
    act_ratio: FloatParam | None = Field(None, description="WISE: the routing threshold's share of the smallest edit activation")
    norm_constraint: FloatParam | None = Field(None, description="WISE: how far a side-memory weight may move from the original")
    save_freq: NIterParam | None = Field(None, description="WISE: edits per knowledge shard")
    merge_freq: NIterParam | None = Field(None, description="WISE: edits between merges (a multiple of save_freq)")
    merge_alg: options_param(MERGE_ALGS) | None = Field(None, description="WISE: how shards merge")
    retrieve: options_param((True, False)) | None = Field(None, description="WISE: WISE-Retrieve (true) or WISE-Merge (false)")

    @model_validator(mode="after")
    def _in_bounds(self) -> SearchSpace:
        for name in ("edit_lr", "eps", "act_ratio", "norm_constraint"):
            param = getattr(self, name)
            if param is not None and _bounds(param)[0] <= 0:
                raise fail(f"must be > 0, got {describe(param)}", name)
        if self.mask_ratio is not None and not (0 < _bounds(self.mask_ratio)[0] and _bounds(self.mask_ratio)[1] <= 1):
            raise fail(f"must lie in (0, 1], got {describe(self.mask_ratio)}", "mask_ratio")
        if isinstance(self.save_freq, int) and isinstance(self.merge_freq, int) and self.merge_freq % self.save_freq:
            raise fail(f"must be a multiple of save_freq ({self.save_freq}), got {self.merge_freq} (WISE merges whole shards)", "merge_freq")
        if self.threshold is not None and not self.curve_mode:
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

    def searched(self) -> dict[str, IntRange | FloatRange | Choice | Options]:
        """The parameters Optuna samples (in curve mode the threshold is none of them)."""
        return {name: getattr(self, name) for name in SEARCHED if isinstance(getattr(self, name), SAMPLED)}

    def fixed(self) -> dict[str, int | float | str | bool]:
        """The parameters given one value (in curve mode the threshold is none of them; a
        parameter the spec leaves out is none of them either: EasyEdit's value holds)."""
        return {
            name: getattr(self, name)
            for name in SEARCHED
            if getattr(self, name) is not None and not isinstance(getattr(self, name), SAMPLED) and getattr(self, name) != THRESHOLD_CURVE
        }

    def given(self) -> tuple[str, ...]:
        """The parameters the spec names, fixed or searched."""
        return tuple(name for name in SEARCHED if getattr(self, name) is not None)

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
    eps: Float
    val_init: str
    replacement: str
    eps_expand: str
    mask_ratio: Float
    act_ratio: Float
    norm_constraint: Float
    save_freq: Count
    merge_freq: Count
    merge_alg: str
    retrieve: Flag


def within(value: Any, param: Any) -> bool:
    if isinstance(param, Options):
        return value in param.values
    if isinstance(param, IntRange):
        return float(value).is_integer() and param.low <= value <= param.high
    if isinstance(param, FloatRange):
        return param.low <= value <= param.high
    if isinstance(param, Choice):
        return value in param.values
    return value == param


def describe(param: Any) -> str:
    if isinstance(param, (IntRange, FloatRange)):
        return f"{param.low}..{param.high}"
    if isinstance(param, (Choice, Options)):
        return f"one of {list(param.values)}"
    return f"fixed at {param}"
