"""What every EasyEdit hparams file shares, read once for DEFER, GRACE and WISE: a mapping with
only its class's keys, `alg_name`, `model_name`, `inner_params`, `device`, and numbers that
PyYAML may hand over as strings (`7e-5` without a dot is a string in YAML 1.1; EasyEdit's loader
turns every string float() accepts into a float). One-line errors name the file and the key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .errors import DeferInputError


@dataclass(frozen=True)
class CommonKeys:
    """The keys every editor's hparams carry, checked."""

    model_name: str
    inner_params: tuple[str, ...]
    device: int | str


def check_keys(config: Any, source: str, alg_name: str, required: Sequence[str], optional: Sequence[str]) -> dict[str, Any]:
    """`config` as a mapping with no unknown and no missing key, for `alg_name` (DEFER, GRACE, WISE)."""
    if not isinstance(config, dict):
        raise DeferInputError(f"{source}: expected a mapping of {alg_name} hyperparameters, got {type(config).__name__}")
    allowed = (*required, *optional)
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise DeferInputError(f"{source}: unknown key(s) {', '.join(unknown)}; EasyEdit's {alg_name} hyperparameters are {', '.join(allowed)}")
    missing = [key for key in required if key not in config]
    if missing:
        raise DeferInputError(f"{source}: missing key(s) {', '.join(missing)}")
    return config


def common_keys(config: dict[str, Any], source: str, alg_name: str) -> CommonKeys:
    """alg_name, model_name, inner_params (a string is a list of one) and device (a whole number
    read as a float, as after EasyEdit's coercion, is that integer)."""
    if config["alg_name"] != alg_name:
        raise DeferInputError(f"{source}: key 'alg_name' must be {alg_name!r}, got {config['alg_name']!r}")
    inner = config["inner_params"]
    if isinstance(inner, str):
        inner = [inner]
    if not isinstance(inner, list) or not inner or not all(isinstance(p, str) and p for p in inner):
        raise DeferInputError(f"{source}: key 'inner_params' must be a non-empty list of module paths, got {inner!r}")
    if not isinstance(config["model_name"], str) or not config["model_name"]:
        raise DeferInputError(f"{source}: key 'model_name' must be a non-empty string")
    device = config["device"]
    if isinstance(device, float) and device.is_integer():
        device = int(device)
    if not isinstance(device, (int, str)) or isinstance(device, bool):
        raise DeferInputError(f"{source}: key 'device' must be an integer or a device string, got {device!r}")
    return CommonKeys(model_name=config["model_name"], inner_params=tuple(inner), device=device)


def scientific_floats(config: dict[str, Any]) -> dict[str, Any]:
    """EasyEdit's `construct_float_from_scientific_notation`: every top-level string that float()
    accepts becomes that float."""
    out = dict(config)
    for key, value in config.items():
        if isinstance(value, str):
            try:
                out[key] = float(value)
            except ValueError:
                pass
    return out


def as_float(value: Any, key: str, source: str) -> float:
    if isinstance(value, bool):
        raise DeferInputError(f"{source}: key '{key}' must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DeferInputError(f"{source}: key '{key}' must be a number, got {value!r}") from None


def as_int(value: Any, key: str, source: str) -> int:
    number = as_float(value, key, source)
    if not number.is_integer():
        raise DeferInputError(f"{source}: key '{key}' must be an integer, got {value!r}")
    return int(number)
