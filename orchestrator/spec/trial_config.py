"""From a trial's config to what it means: the full typed config (searched values plus the
spec's fixed ones), its module path and the editor's EasyEdit hparams, its short description.

A trial config holds only the editor's parameters the spec names (search_space.EDITOR_PARAMS);
every other field of the editor's hparams is the value in EasyEdit's own llama-7b file for that
editor (hparams/DEFER|GRACE|WISE/llama-7b.yaml, shipped unchanged), model_name and device
as EasyEdit reads them. The module path is the spec's template with `{layer}` filled in by
str.format, never eval.
In curve mode the threshold is no Optuna parameter: a training runs at
CURVE_TRAINING_THRESHOLD and is read at every threshold; a config that names one (a curve
point being exported) keeps it. Light (no Optuna): the worker and the outputs use it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from defer_core.hparams import DeferHParams, easyedit_device, easyedit_model_name

from ..protocol import THRESHOLD
from .models import SweepSpec
from .search_space import CURVE_TRAINING_THRESHOLD, PARAM_TYPES, SEARCHED

if TYPE_CHECKING:
    from defer_core.grace_hparams import GraceHParams
    from defer_core.wise_hparams import WiseHParams

EASYEDIT_HPARAMS = Path(__file__).resolve().parents[2] / "hparams"  # EasyEdit's own files, unchanged


def full_config(spec: SweepSpec, config: Mapping[str, Any]) -> dict[str, Any]:
    """Searched values from Optuna plus the spec's fixed ones, typed: every parameter the spec
    names (search_space.given)."""
    merged = {**spec.search_space.fixed(), **{k: config[k] for k in SEARCHED if k in config}}
    if spec.curve_mode:
        merged.setdefault(THRESHOLD, CURVE_TRAINING_THRESHOLD)
    names = spec.search_space.given()
    missing = [k for k in names if k not in merged]
    if missing:
        raise KeyError(f"trial config lacks {', '.join(missing)}")
    return {name: PARAM_TYPES[name](merged[name]) for name in names}


def module_for(spec: SweepSpec, layer: int) -> str:
    return spec.search_space.module_template.format(layer=int(layer))


def hparams_for(spec: SweepSpec, config: Mapping[str, Any]) -> "DeferHParams | GraceHParams | WiseHParams":
    """A trial config as the editor's EasyEdit hparams, what the worker runs and an export
    writes (model_name and device as EasyEdit reads them, defer_core.hparams)."""
    values = full_config(spec, config)
    inner_params = (f"{module_for(spec, values.pop('layer'))}.weight",)
    where = {"model_name": easyedit_model_name(spec.model.name), "inner_params": inner_params, "device": easyedit_device(spec.model.device)}
    if spec.editor == "defer":
        return DeferHParams(**where, **values)
    return _easyedit_base(spec.editor).replace(**where, **values)


def easyedit_hparams_file(editor: str) -> Path:
    """EasyEdit's own llama-7b hparams file of an editor (defer, grace, wise), shipped unchanged."""
    return EASYEDIT_HPARAMS / editor.upper() / "llama-7b.yaml"


@functools.lru_cache(maxsize=None)
def _easyedit_base(editor: str) -> "GraceHParams | WiseHParams":
    """Read once per process (hparams_for runs per trial, and per row in a report); the hparams
    are frozen, so every caller's `replace` makes its own copy."""
    from defer_core.editors import load_editor_hparams

    return load_editor_hparams(easyedit_hparams_file(editor))  # type: ignore[return-value]


def describe_config(config: Mapping[str, Any]) -> str:
    """Short and readable, for run names and progress lines: `L27 lr=7.0e-05 it=100 th=0.50`,
    then any other editor parameter (`eps=4 val_init=warm`); a parameter without a value is left out."""
    given = {name: config[name] for name in SEARCHED if config.get(name) is not None}
    parts = []
    if "layer" in given:
        parts.append(f"L{int(given['layer'])}")
    if "edit_lr" in given:
        parts.append(f"lr={float(given['edit_lr']):.1e}")
    if "n_iter" in given:
        parts.append(f"it={int(given['n_iter'])}")
    if THRESHOLD in given:
        parts.append(f"th={float(given[THRESHOLD]):.2f}")
    shown = ("layer", "edit_lr", "n_iter", THRESHOLD)
    parts += [f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}" for name, value in given.items() if name not in shown]
    return " ".join(parts)
