"""From a trial's config to what it means: the full typed config (searched values plus the
spec's fixed ones), its module path and DEFER hparams, its short description.

A trial config holds only the four searched numbers (layer, edit_lr, n_iter, threshold);
the module path is the spec's template with `{layer}` filled in by str.format, never eval.
In curve mode the threshold is no Optuna parameter: a training runs at
CURVE_TRAINING_THRESHOLD and is read at every threshold; a config that names one (a curve
point being exported) keeps it. Light (no Optuna): the worker and the outputs use it.
"""

from __future__ import annotations

from typing import Any, Mapping

from defer_core.hparams import DeferHParams, easyedit_device, easyedit_model_name

from ..protocol import THRESHOLD
from .models import SweepSpec
from .search_space import CURVE_TRAINING_THRESHOLD, SEARCHED


def full_config(spec: SweepSpec, config: Mapping[str, Any]) -> dict[str, int | float]:
    """Searched values from Optuna plus the spec's fixed ones, typed."""
    merged = {**spec.search_space.fixed(), **{k: config[k] for k in SEARCHED if k in config}}
    if spec.curve_mode:
        merged.setdefault(THRESHOLD, CURVE_TRAINING_THRESHOLD)
    missing = [k for k in SEARCHED if k not in merged]
    if missing:
        raise KeyError(f"trial config lacks {', '.join(missing)}")
    return {
        "layer": int(merged["layer"]),
        "edit_lr": float(merged["edit_lr"]),
        "n_iter": int(merged["n_iter"]),
        THRESHOLD: float(merged[THRESHOLD]),
    }


def module_for(spec: SweepSpec, layer: int) -> str:
    return spec.search_space.module_template.format(layer=int(layer))


def hparams_for(spec: SweepSpec, config: Mapping[str, Any]) -> DeferHParams:
    """A trial config as the EasyEdit hparams an export writes (model_name and device as EasyEdit
    reads them, defer_core.hparams); the worker uses only its numbers and module path."""
    values = full_config(spec, config)
    return DeferHParams(
        model_name=easyedit_model_name(spec.model.name),
        inner_params=(f"{module_for(spec, values['layer'])}.weight",),
        edit_lr=values["edit_lr"],
        n_iter=values["n_iter"],
        threshold=values[THRESHOLD],
        device=easyedit_device(spec.model.device),
    )


def describe_config(config: Mapping[str, Any]) -> str:
    """Short and readable, for run names and progress lines: `L27 lr=7.0e-05 it=100 th=0.50`."""
    parts = []
    if "layer" in config:
        parts.append(f"L{int(config['layer'])}")
    if "edit_lr" in config:
        parts.append(f"lr={float(config['edit_lr']):.1e}")
    if "n_iter" in config:
        parts.append(f"it={int(config['n_iter'])}")
    if "threshold" in config:
        parts.append(f"th={float(config['threshold']):.2f}")
    return " ".join(parts)
