"""DEFER continual editing, as the GRACE paper's baseline and EasyEdit define it.

Data flow: records (data) → a model (models) → an adaptor on one Linear (adaptor, editor)
→ a stream of edits with evaluations at milestones (trial, evaluation, scoring) → results.
"""

from .adaptor import DeferAdaptor
from .data import EditRecord, default_data_dir, load_records, resolve_data_path
from .editor import DeferEditor, attached_editor
from .errors import DeferInputError
from .hparams import DeferHParams, dump_hparams, hparams_from_dict, load_hparams, save_hparams
from .models import EMBEDDED_MODEL, TINY_MODEL, LoadedModel, load_model, tiny_llama
from .module_path import parse_module_path, resolve_module
from .results import METRICS, PROTOCOLS, SCORINGS, EditOutcome, MilestoneResult, TrialResult, metric_key
from .packed import PackedDeferAdaptor, PackedDeferEditor
from .trial import TrialPlan, default_milestones, run_trial, run_trials

__all__ = [
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
    "attached_editor",
    "default_data_dir",
    "default_milestones",
    "dump_hparams",
    "hparams_from_dict",
    "load_hparams",
    "load_model",
    "load_records",
    "metric_key",
    "parse_module_path",
    "resolve_data_path",
    "resolve_module",
    "run_trial",
    "run_trials",
    "PackedDeferAdaptor",
    "PackedDeferEditor",
    "save_hparams",
    "tiny_llama",
]
