"""The spec's search space: each searched hyperparameter (layer, edit_lr, threshold, n_iter) as a
fixed value, a range or a list of choices, and the initial points checked against it."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Discriminator, Field, Tag, model_validator
from pydantic.json_schema import WithJsonSchema
from typing_extensions import TypedDict

from defer_core.errors import DeferInputError

from ..protocol import THRESHOLD_CURVE
from .fields import CHOICE, FIXED, RANGE, SPEC_ERROR, WORD, Count, Flag, Float, NonNegativeInt, Positional, Section, Text, fail, integer, kind

SEARCHED = ("layer", "edit_lr", "threshold", "n_iter")
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


def within(value: float, param: Any) -> bool:
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
    if isinstance(param, Choice):
        return f"one of {list(param.values)}"
    return f"fixed at {param}"
