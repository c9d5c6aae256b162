"""EasyEdit GRACE hyperparameters: read EasyEdit's YAML unchanged, write the same shape.

EasyEdit's `hparams/GRACE/*.yaml` has exactly the keys of `GraceHyperParams`
(`easyeditor/models/grace/grace_hparams.py`, HEAD 14cea82); its loader converts every string
that `float()` accepts into a float (PyYAML reads `1e-4` as a string) and refuses unknown keys,
as this module does.

What EasyEdit's code (`easyeditor/models/grace/GRACE.py`) actually reads, and what it ignores:

* read: `edit_lr`, `n_iter`, `eps`, `val_init`, `val_train`, `replacement`, `eps_expand`,
  `inner_params` (the first entry), `device`;
* carried but never read: `dist_fn` (every distance is Euclidean, `cdist_float32`), `val_reg`,
  `reg`, `dropout`, and `num_pert` (passed to `perturb_values`, which does not use it);
* the YAML comments name values the code does not know: `val_train: pert` (the code tests for
  `adv`), `eps_expand: moving_avg` / `decay` (the code tests for `moving_average`), and
  `dist_fn: mmd` / `cos`. EasyEdit runs such a value silently as something else (plain SGD, no
  radius expansion, Euclidean distance); here it is refused with a one-line error instead, so a
  file never runs differently from what it says.

A few constants EasyEdit fixes in code also change numbers; they are fields here
(PRODUCT_ONLY_FIELDS) with EasyEdit's value as the default. EasyEdit's loader would refuse them
as keys, so they are never written to (or read from) a YAML, and writing hparams whose
product-only values differ from EasyEdit's is refused: such a file would run differently there.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml

from .easyedit_hparams import as_float, as_int, check_keys, common_keys, scientific_floats
from .errors import DeferInputError
from .files import atomic_write_text, read_yaml

# Every field of EasyEdit's GraceHyperParams without a default (its loader needs all of them),
# in the order EasyEdit's llama-7b.yaml writes them; then the three with defaults.
REQUIRED_KEYS = (
    "alg_name", "model_name", "device", "inner_params", "edit_lr", "n_iter", "eps", "dist_fn", "val_init",
    "val_train", "val_reg", "reg", "replacement", "eps_expand", "num_pert", "dropout",
)
OPTIONAL_KEYS = ("batch_size", "max_length", "model_parallel")
EASYEDIT_KEYS = REQUIRED_KEYS + OPTIONAL_KEYS

# The values of each choice EasyEdit's GRACE.py acts on (anything else runs silently as something else there).
DIST_FNS = ("euc",)
VAL_INITS = ("cold", "warm")
VAL_TRAINS = ("sgd", "adv")
REPLACEMENTS = ("replace_last", "replace_all", "replace_prompt")
EPS_EXPANDS = ("coverage", "moving_average")
KEY_LABEL_ORDERS = ("prepend", "append")
DISTANCE_DTYPES = ("float32", "native")
PRODUCT_ONLY_FIELDS = ("key_label_order", "split_margin", "moving_average_weight", "distance_dtype")

_WHY_REFUSED = {
    "dist_fn": "EasyEdit's GRACE never reads dist_fn and always uses Euclidean distance",
    "val_init": "EasyEdit's GRACE fails on any other value (no initial value is made)",
    "val_train": "EasyEdit's GRACE tests only for 'adv' (its YAML comment's 'pert' runs as plain sgd there)",
    "replacement": "EasyEdit's GRACE only prints a warning for any other value and edits nothing",
    "eps_expand": "EasyEdit's GRACE tests for 'moving_average' (its YAML comment's 'moving_avg' and 'decay' expand no radius there)",
}


@dataclasses.dataclass(frozen=True)
class GraceHParams:
    """The GRACE hyperparameters one trial runs with: EasyEdit's `GraceHyperParams` fields, with
    the values of EasyEdit's `hparams/GRACE/llama-7b.yaml` as defaults, plus PRODUCT_ONLY_FIELDS."""

    model_name: str
    inner_params: tuple[str, ...]
    edit_lr: float = 1.0
    n_iter: int = 50
    eps: float = 1.0
    dist_fn: str = "euc"
    val_init: str = "cold"
    val_train: str = "sgd"
    val_reg: str | None = "None"  # the YAML's `None` is the string "None" (YAML's null is `null` or `~`); never read
    reg: str | None = "early_stop"  # never read
    replacement: str = "replace_last"
    eps_expand: str = "coverage"
    num_pert: int = 8  # only passed to perturb_values, which ignores it
    dropout: float = 0.0  # never read
    device: int | str = 1
    alg_name: str = "GRACE"
    batch_size: int = 1
    max_length: int = 30
    model_parallel: bool = False
    # Product-only: constants EasyEdit fixes in GRACE.py, here with EasyEdit's values.
    key_label_order: str = "prepend"  # add_key: `[self.edit_label] + self.key_labels` (GRACE's own repo appends)
    split_margin: float = 1e-5  # split_epsilons_in_half: the nearest key's radius becomes d / 2 - 1e-5
    moving_average_weight: float = 0.5  # forward, eps_expand moving_average: `a = 0.5`
    distance_dtype: str = "float32"  # cdist_float32 (GRACE's own repo: the activations' dtype)

    @property
    def module_path(self) -> str:
        """The one Linear GRACE wraps (EasyEdit uses only the first inner param)."""
        return self.inner_params[0]

    def replace(self, **changes: Any) -> "GraceHParams":
        return dataclasses.replace(self, **changes)

    def to_easyedit_dict(self) -> dict[str, Any]:
        """The mapping EasyEdit's `GraceHyperParams(**config)` accepts, in its YAML's key order."""
        values = dataclasses.asdict(self)
        values["inner_params"] = list(self.inner_params)
        for key in ("edit_lr", "eps", "dropout"):
            values[key] = float(values[key])
        return {key: values[key] for key in EASYEDIT_KEYS}


def _choice(config: dict[str, Any], key: str, allowed: tuple[str, ...], source: str) -> str:
    value = config[key]
    if value not in allowed:
        why = f" ({_WHY_REFUSED[key]})" if key in _WHY_REFUSED else ""
        raise DeferInputError(f"{source}: key '{key}' must be one of {', '.join(allowed)}, got {value!r}{why}")
    return value


def _optional_text(value: Any, key: str, source: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise DeferInputError(f"{source}: key '{key}' must be a string, got {value!r}")
    return value


def grace_hparams_from_dict(config: Any, source: str = "<hparams>") -> GraceHParams:
    """Validate an EasyEdit GRACE mapping; every problem names `source` and the key."""
    config = scientific_floats(check_keys(config, source, "GRACE", REQUIRED_KEYS, OPTIONAL_KEYS))
    common = common_keys(config, source, "GRACE")
    hparams = GraceHParams(
        alg_name="GRACE",
        model_name=common.model_name,
        device=common.device,
        inner_params=common.inner_params,
        edit_lr=as_float(config["edit_lr"], "edit_lr", source),
        n_iter=as_int(config["n_iter"], "n_iter", source),
        eps=as_float(config["eps"], "eps", source),
        dist_fn=_choice(config, "dist_fn", DIST_FNS, source),
        val_init=_choice(config, "val_init", VAL_INITS, source),
        val_train=_choice(config, "val_train", VAL_TRAINS, source),
        val_reg=_optional_text(config["val_reg"], "val_reg", source),
        reg=_optional_text(config["reg"], "reg", source),
        replacement=_choice(config, "replacement", REPLACEMENTS, source),
        eps_expand=_choice(config, "eps_expand", EPS_EXPANDS, source),
        num_pert=as_int(config["num_pert"], "num_pert", source),
        dropout=as_float(config["dropout"], "dropout", source),
        batch_size=as_int(config.get("batch_size", 1), "batch_size", source),
        max_length=as_int(config.get("max_length", 30), "max_length", source),
        model_parallel=bool(config.get("model_parallel", False)),
    )
    check_grace_hparams(hparams, source)
    return hparams


def check_grace_hparams(hparams: GraceHParams, source: str = "<hparams>") -> None:
    """The value checks, also for hparams built in code (the editor calls this)."""
    if hparams.alg_name != "GRACE":
        raise DeferInputError(f"{source}: key 'alg_name' must be 'GRACE', got {hparams.alg_name!r}")
    if not hparams.inner_params:
        raise DeferInputError(f"{source}: key 'inner_params' must be a non-empty list of module paths")
    if hparams.edit_lr <= 0:
        raise DeferInputError(f"{source}: key 'edit_lr' must be > 0, got {hparams.edit_lr}")
    if hparams.n_iter < 1:
        raise DeferInputError(f"{source}: key 'n_iter' must be >= 1, got {hparams.n_iter}")
    if hparams.eps < 0:
        raise DeferInputError(f"{source}: key 'eps' must be >= 0, got {hparams.eps}")
    if hparams.batch_size != 1:
        raise DeferInputError(f"{source}: key 'batch_size' must be 1 (EasyEdit's single editing asserts it), got {hparams.batch_size}")
    for key, allowed in (
        ("dist_fn", DIST_FNS), ("val_init", VAL_INITS), ("val_train", VAL_TRAINS), ("replacement", REPLACEMENTS),
        ("eps_expand", EPS_EXPANDS), ("key_label_order", KEY_LABEL_ORDERS), ("distance_dtype", DISTANCE_DTYPES),
    ):
        _choice({key: getattr(hparams, key)}, key, allowed, source)
    if not hparams.split_margin >= 0:
        raise DeferInputError(f"{source}: key 'split_margin' must be >= 0, got {hparams.split_margin}")
    if not 0.0 <= hparams.moving_average_weight <= 1.0:
        raise DeferInputError(f"{source}: key 'moving_average_weight' must be in [0, 1], got {hparams.moving_average_weight}")


def load_grace_hparams(path: str | os.PathLike[str]) -> GraceHParams:
    """Read an EasyEdit GRACE hparams YAML (EasyEdit's own files load unchanged)."""
    return grace_hparams_from_dict(read_yaml(path, "hparams file"), source=str(path))


def dump_grace_hparams(hparams: GraceHParams) -> str:
    """YAML text in EasyEdit's GRACE layout. Refuses hparams whose product-only fields differ
    from EasyEdit's constants: EasyEdit has no key for them and would run the file differently."""
    defaults = {field.name: field.default for field in dataclasses.fields(GraceHParams) if field.name in PRODUCT_ONLY_FIELDS}
    changed = [key for key, default in defaults.items() if getattr(hparams, key) != default]
    if changed:
        raise DeferInputError(f"GRACE field '{changed[0]}' = {getattr(hparams, changed[0])!r} has no EasyEdit key (EasyEdit fixes it at {defaults[changed[0]]!r}); cannot write it as EasyEdit YAML")
    return yaml.safe_dump(hparams.to_easyedit_dict(), sort_keys=False)


def save_grace_hparams(hparams: GraceHParams, path: str | os.PathLike[str]) -> Path:
    """Write atomically: a reader never sees half a file."""
    return atomic_write_text(Path(path), dump_grace_hparams(hparams))
