"""DEFER continual editing, as the GRACE paper's baseline and EasyEdit define it, and the other
lifelong editors it is compared with (GRACE, WISE: defer_core.editors), run by the same trials.

Data flow: records (data) → a model (models) → an adaptor on one Linear (adaptor, editor)
→ a stream of edits with evaluations at milestones (trial, evaluation, scoring) → results.

Public names are imported from their submodule on first use (PEP 562), so importing a light
module (errors, results, hparams, data, files, module_path parsing) does not import torch or
transformers: the CLI's help and the export command stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULE_OF = {
    "DeferAdaptor": "adaptor",
    "EditRecord": "data",
    "default_data_dir": "data",
    "load_records": "data",
    "resolve_data_path": "data",
    "DeferEditor": "editor",
    "EDITORS": "editors",
    "editor_of": "editors",
    "load_editor_hparams": "editors",
    "save_editor_hparams": "editors",
    "GraceEditor": "grace",
    "GraceHParams": "grace_hparams",
    "WiseEditor": "wise",
    "WiseHParams": "wise_hparams",
    "DeferInputError": "errors",
    "DeferHParams": "hparams",
    "dump_hparams": "hparams",
    "hparams_from_dict": "hparams",
    "load_hparams": "hparams",
    "save_hparams": "hparams",
    "EMBEDDED_MODEL": "models",
    "TINY_MODEL": "models",
    "LoadedModel": "models",
    "load_model": "models",
    "tiny_llama": "models",
    "parse_module_path": "module_path",
    "resolve_module": "module_path",
    "METRICS": "results",
    "PROTOCOLS": "results",
    "SCORINGS": "results",
    "EditOutcome": "results",
    "MilestoneResult": "results",
    "TrialResult": "results",
    "default_milestones": "results",
    "metric_key": "results",
    "PackedDeferAdaptor": "packed",
    "PackedDeferEditor": "packed",
    "repeat_members": "repeats",
    "run_members": "repeats",
    "TrialPlan": "plan",
    "model_dtype": "trial",
    "run_trial": "trial",
    "run_trials": "trial",
}

__all__ = [
    "EDITORS",
    "GraceEditor",
    "GraceHParams",
    "WiseEditor",
    "WiseHParams",
    "editor_of",
    "load_editor_hparams",
    "save_editor_hparams",
    "DeferAdaptor",
    "DeferEditor",
    "DeferHParams",
    "DeferInputError",
    "EMBEDDED_MODEL",
    "EditOutcome",
    "EditRecord",
    "LoadedModel",
    "METRICS",
    "MilestoneResult",
    "PROTOCOLS",
    "SCORINGS",
    "TINY_MODEL",
    "TrialPlan",
    "TrialResult",
    "default_data_dir",
    "default_milestones",
    "dump_hparams",
    "hparams_from_dict",
    "load_hparams",
    "load_model",
    "load_records",
    "metric_key",
    "model_dtype",
    "parse_module_path",
    "repeat_members",
    "resolve_data_path",
    "resolve_module",
    "run_members",
    "run_trial",
    "run_trials",
    "PackedDeferAdaptor",
    "PackedDeferEditor",
    "save_hparams",
    "tiny_llama",
]


def __getattr__(name: str) -> Any:
    submodule = _SUBMODULE_OF.get(name)
    if submodule is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{submodule}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
