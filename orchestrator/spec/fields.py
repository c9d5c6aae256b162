"""How one YAML value of the spec is read, and the errors that say what is wrong with it.

The models (models.py) are built from these types. Every problem is raised as a pydantic error
whose context carries our own one-line wording; reader.py turns the first one into a
DeferInputError naming the file and the full key.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Callable, Iterable

from annotated_types import Ge, Gt, MinLen
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic.json_schema import WithJsonSchema
from pydantic_core import PydanticCustomError

# Error types reader.py words itself; anything else keeps pydantic's message.
SPEC_ERROR = "spec"  # ctx: message (the text after "key '...'"), at (more of the key)
MISSING = "missing"  # pydantic's own type for a required field; ours adds ctx: at
UNKNOWN_KEY = "unknown_key"  # ctx: at (the unknown key), allowed
# Tags of the forms a search-space parameter takes; pydantic puts them in an error's location.
FIXED, RANGE, CHOICE, WORD = "fixed", "range", "choice", "word"  # WORD: `threshold: curve`
SHAPE_TAGS = (FIXED, RANGE, CHOICE, WORD)


def fail(message: str, *at: str | int) -> PydanticCustomError:
    """A problem with the value at the current key (or `at` below it), in our words."""
    return PydanticCustomError(SPEC_ERROR, "{message}", {"message": message, "at": at})


def missing(*at: str | int) -> PydanticCustomError:
    return PydanticCustomError(MISSING, "Field required", {"at": at})


def kind(value: Any) -> str:
    """`str 'x'` for a scalar, the type alone for a mapping or list: enough to spot a YAML slip."""
    return f"{type(value).__name__} {value!r}" if not isinstance(value, (dict, list)) else type(value).__name__


def mapping(data: Any, allowed: Iterable[str]) -> Any:
    """A YAML mapping with only `allowed` keys; `key: null` counts as not given."""
    if isinstance(data, BaseModel):
        return data
    if not isinstance(data, dict):
        raise fail(f"must be a mapping, got {kind(data)}")
    allowed = sorted(allowed)
    unknown = sorted(str(key) for key in data if key not in allowed)
    if unknown:
        raise PydanticCustomError(UNKNOWN_KEY, "unknown key", {"at": (unknown[0],), "allowed": ", ".join(allowed)})
    return {key: value for key, value in data.items() if value is not None}


def number(value: Any) -> float | int:
    """YAML 1.1 reads `7e-5` (no dot) as a string; numeric strings are accepted, as EasyEdit does.
    A YAML number is passed on as written, so that a bound's error shows it unchanged."""
    if isinstance(value, bool):
        raise fail(f"must be a number, got {value!r}")
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise fail(f"must be a number, got {kind(value)}") from None
    if not math.isfinite(result):
        raise fail(f"must be a finite number, got {value!r}")
    return value if isinstance(value, (int, float)) else result


def integer(value: Any) -> int:
    """Whole numbers only; `4.0` is 4, but the string "4" is refused (a quoted count is a slip)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(f"must be an integer, got {kind(value)}")
    if not math.isfinite(value) or not float(value).is_integer():
        raise fail(f"must be an integer, got {value!r}")
    return int(value)


def text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise fail(f"must be a non-empty string, got {kind(value)}")
    return value


def flag(value: Any) -> bool:
    """Only true or false: YAML's yes/no and quoted strings are refused."""
    if not isinstance(value, bool):
        raise fail(f"must be true or false, got {value!r}")
    return value


def one_of(choices: tuple[str, ...]) -> BeforeValidator:
    def check(value: Any) -> str:
        if text(value) not in choices:
            raise fail(f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    return BeforeValidator(check)


def enum(choices: tuple[str, ...]) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "enum": list(choices)})


Text = Annotated[str, MinLen(1), BeforeValidator(text)]
Flag = Annotated[bool, BeforeValidator(flag)]
Float = Annotated[float, BeforeValidator(number)]
PositiveFloat = Annotated[float, Gt(0), BeforeValidator(number)]
NonNegativeFloat = Annotated[float, Ge(0.0), BeforeValidator(number)]
Count = Annotated[int, Ge(1), BeforeValidator(integer)]
NonNegativeInt = Annotated[int, Ge(0), BeforeValidator(integer)]


# -- what every section of the spec is built on -----------------------------------------------------


def or_shorthand(shorthand: dict[str, Any] | None) -> Callable[[dict[str, Any]], None]:
    """The schema also takes the YAML shorthand, e.g. `model: NAME` for `model: {name: NAME}`;
    None: one item for a list of one."""

    def widen(schema: dict[str, Any]) -> None:
        full = {key: schema.pop(key) for key in list(schema) if key not in ("default", "description", "title")}
        schema["anyOf"] = [shorthand or dict(full["items"]), full]

    return widen


def derived(description: str) -> Any:
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


class Positional(Section):
    """Small values that code writes positionally: IntRange(1, 3), Objective("rel_tf", "maximize")."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(**dict(zip(type(self).model_fields, args)), **kwargs)
