"""EasyEdit WISE hyperparameters: read EasyEdit's `hparams/WISE/*.yaml` unchanged, write the same shape.

EasyEdit's `WISEHyperParams.from_hparams` (easyeditor/models/wise/wise_hparams.py, HEAD 14cea82)
reads the YAML with `yaml.safe_load`, turns strings such as "1e-4" into floats, asserts that
`merge_freq` is a multiple of `save_freq`, splits the three-element `act_margin` into the fields
`alpha`, `beta`, `gamma` and builds the dataclass (unknown keys are a TypeError there). So a file
EasyEdit can load carries `act_margin`, never `alpha`/`beta`/`gamma`; this module reads and
writes exactly that shape, and its dataclass holds exactly `WISEHyperParams`' fields plus one
product field, `sequential_edit`, that EasyEdit's class does not have (see WiseHParams).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import yaml

from .easyedit_hparams import as_float, as_int, check_keys, common_keys, scientific_floats
from .errors import DeferInputError
from .files import atomic_write_text, read_yaml

log = logging.getLogger(__name__)

REQUIRED_KEYS = (
    "alg_name", "model_name", "device", "mask_ratio", "edit_lr", "n_iter", "norm_constraint", "act_margin", "act_ratio",
    "save_freq", "merge_freq", "merge_alg", "objective_optimization", "inner_params", "densities", "weights", "retrieve", "replay",
)
OPTIONAL_KEYS = ("batch_size", "max_length", "model_parallel", "use_chat_template", "save_path", "load_path")
MERGE_ALGS = ("ties", "magnitude_norm", "magnitude", "sign", "linear")  # wise_merge.py restates these of EasyEdit's merge_dict
NOT_RESTATED = ("dare_ties", "dare_linear", "slerp")  # EasyEdit's others: random or numpy-based
SEQUENTIAL_COMMENT = "# sequential_edit: {value}  (not an EasyEdit key: set it on the hparams object; BaseEditor never does)"


@dataclasses.dataclass(frozen=True)
class WiseHParams:
    """EasyEdit's `WISEHyperParams`, field for field, plus `sequential_edit`.

    `sequential_edit` (product default True) keeps one side memory for the whole stream: the
    lifelong editing the WISE paper runs. EasyEdit HEAD reads `getattr(config, "sequential_edit",
    False)` in `WISE.__init__`, a field its hparams class lacks and `BaseEditor` never sets, so
    literally it builds a fresh side memory for every edit (earlier edits are discarded, nothing
    is saved or merged unless save_freq == 1): `sequential_edit=False` reproduces that.
    """

    edit_lr: float
    n_iter: int
    objective_optimization: str
    mask_ratio: float
    alpha: float
    beta: float
    gamma: float
    act_ratio: float
    merge_freq: int
    retrieve: bool
    replay: bool
    save_freq: int
    merge_alg: str
    norm_constraint: float | None
    inner_params: tuple[str, ...]
    weights: float | None
    densities: float | None
    device: int | str
    alg_name: str
    model_name: str
    batch_size: int = 1
    max_length: int = 30
    model_parallel: bool = False
    use_chat_template: bool = False
    save_path: str | None = None
    load_path: str | None = None
    sequential_edit: bool = True

    @property
    def module_path(self) -> str:
        """The one Linear WISE edits (EasyEdit uses only the first inner param)."""
        return self.inner_params[0]

    @property
    def act_margin(self) -> tuple[float, float, float]:
        return (self.alpha, self.beta, self.gamma)

    def replace(self, **changes: Any) -> "WiseHParams":
        return dataclasses.replace(self, **changes)

    def to_easyedit_dict(self) -> dict[str, Any]:
        """What `WISEHyperParams.from_hparams` reads: every field, the margins as `act_margin`."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            if field.name in ("alpha", "beta", "gamma", "sequential_edit"):
                if field.name == "alpha":
                    out["act_margin"] = [float(v) for v in self.act_margin]
                continue
            value = getattr(self, field.name)
            out[field.name] = list(value) if isinstance(value, tuple) else value
        return out


def _as_bool(value: Any, key: str, source: str) -> bool:
    if not isinstance(value, bool):
        raise DeferInputError(f"{source}: key '{key}' must be true or false, got {value!r}")
    return value


def _optional_float(value: Any, key: str, source: str) -> float | None:
    return None if value is None else as_float(value, key, source)


def _norm_constraint(value: Any, source: str) -> float | None:
    """EasyEdit clamps only when `type(norm_constraint) is float`: an integer such as `1`
    (or null) switches the clamp off there, so it is None here, with a warning."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        log.warning("%s: norm_constraint %r is an integer; EasyEdit applies it only as a float, so no clamp", source, value)
        return None
    return as_float(value, "norm_constraint", source)


def _margins(value: Any, source: str) -> tuple[float, float, float]:
    if not isinstance(value, list) or len(value) != 3:
        raise DeferInputError(f"{source}: key 'act_margin' must be a list of three numbers (alpha, beta, gamma), got {value!r}")
    alpha, beta, gamma = (as_float(v, "act_margin", source) for v in value)
    return alpha, beta, gamma


def wise_hparams_from_dict(config: Any, source: str = "<hparams>") -> WiseHParams:
    """Validate an EasyEdit WISE mapping; every problem is one line naming `source` and the key."""
    config = scientific_floats(check_keys(config, source, "WISE", REQUIRED_KEYS, OPTIONAL_KEYS))
    common = common_keys(config, source, "WISE")
    for key in ("merge_alg", "objective_optimization"):
        if not isinstance(config[key], str) or not config[key]:
            raise DeferInputError(f"{source}: key '{key}' must be a non-empty string, got {config[key]!r}")
    alpha, beta, gamma = _margins(config["act_margin"], source)
    hparams = WiseHParams(
        edit_lr=as_float(config["edit_lr"], "edit_lr", source),
        n_iter=as_int(config["n_iter"], "n_iter", source),
        objective_optimization=config["objective_optimization"],
        mask_ratio=as_float(config["mask_ratio"], "mask_ratio", source),
        alpha=alpha,
        beta=beta,
        gamma=gamma,
        act_ratio=as_float(config["act_ratio"], "act_ratio", source),
        merge_freq=as_int(config["merge_freq"], "merge_freq", source),
        retrieve=_as_bool(config["retrieve"], "retrieve", source),
        replay=_as_bool(config["replay"], "replay", source),
        save_freq=as_int(config["save_freq"], "save_freq", source),
        merge_alg=config["merge_alg"],
        norm_constraint=_norm_constraint(config["norm_constraint"], source),
        inner_params=common.inner_params,
        weights=_optional_float(config["weights"], "weights", source),
        densities=_optional_float(config["densities"], "densities", source),
        device=common.device,
        alg_name="WISE",
        model_name=config["model_name"],
        batch_size=as_int(config.get("batch_size", 1), "batch_size", source),
        max_length=as_int(config.get("max_length", 30), "max_length", source),
        model_parallel=_as_bool(config.get("model_parallel", False), "model_parallel", source),
        use_chat_template=_as_bool(config.get("use_chat_template", False), "use_chat_template", source),
        save_path=config.get("save_path"),
        load_path=config.get("load_path"),
    )
    check_wise_hparams(hparams, source)
    return hparams


def check_wise_hparams(hparams: WiseHParams, source: str = "<hparams>") -> None:
    """The ranges EasyEdit asserts (or silently needs), one line naming the key."""
    if hparams.edit_lr <= 0:
        raise DeferInputError(f"{source}: key 'edit_lr' must be > 0, got {hparams.edit_lr}")
    if hparams.n_iter < 1:
        raise DeferInputError(f"{source}: key 'n_iter' must be >= 1, got {hparams.n_iter}")
    if not 0.0 < hparams.mask_ratio <= 1.0:
        raise DeferInputError(f"{source}: key 'mask_ratio' must be in (0, 1], got {hparams.mask_ratio}")
    if hparams.save_freq < 1 or hparams.merge_freq < 1:
        raise DeferInputError(f"{source}: keys 'save_freq' and 'merge_freq' must be >= 1, got {hparams.save_freq} and {hparams.merge_freq}")
    if hparams.merge_freq % hparams.save_freq:
        raise DeferInputError(f"{source}: key 'merge_freq' ({hparams.merge_freq}) must be a multiple of 'save_freq' ({hparams.save_freq})")
    if hparams.batch_size != 1:
        raise DeferInputError(f"{source}: key 'batch_size' must be 1 (EasyEdit's single editing), got {hparams.batch_size}")


def load_wise_hparams(path: str | os.PathLike[str]) -> WiseHParams:
    """Read an EasyEdit WISE hparams YAML (EasyEdit's own files load unchanged)."""
    return wise_hparams_from_dict(read_yaml(path, "hparams file"), source=str(path))


def dump_wise_hparams(hparams: WiseHParams) -> str:
    """YAML text `WISEHyperParams.from_hparams` reads back; a comment line records
    `sequential_edit`, which no EasyEdit key can carry."""
    text = yaml.safe_dump(hparams.to_easyedit_dict(), sort_keys=False)
    return SEQUENTIAL_COMMENT.format(value=str(hparams.sequential_edit).lower()) + "\n" + text


def save_wise_hparams(hparams: WiseHParams, path: str | os.PathLike[str]) -> Path:
    """Write atomically: a reader never sees half a file."""
    return atomic_write_text(Path(path), dump_wise_hparams(hparams))
