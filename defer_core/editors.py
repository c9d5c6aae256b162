"""The lifelong editors a trial can run, by name, and their EasyEdit hparams files.

A trial's editor is the type of its hparams (DeferHParams, GraceHParams, WiseHParams); an
EasyEdit YAML says which by its `alg_name` (DEFER, GRACE, WISE), and each is read and written by
its own module (hparams, grace_hparams, wise_hparams), so EasyEdit's own files load unchanged.
Light: no torch import.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence, Union

from .errors import DeferInputError
from .files import atomic_write_text, read_yaml
from .grace_hparams import GraceHParams, dump_grace_hparams, grace_hparams_from_dict
from .hparams import DeferHParams, dump_hparams, hparams_from_dict
from .wise_hparams import WiseHParams, dump_wise_hparams, wise_hparams_from_dict

EditorHParams = Union[DeferHParams, GraceHParams, WiseHParams]
EDITORS = ("defer", "grace", "wise")
TUNED_DTYPE_COMMENT = "# dtype: {dtype}  (the model dtype these values were tuned in)"
_HPARAMS_TYPES: dict[type, str] = {DeferHParams: "defer", GraceHParams: "grace", WiseHParams: "wise"}
_READERS: dict[str, Callable[[Any, str], EditorHParams]] = {
    "DEFER": hparams_from_dict,
    "GRACE": grace_hparams_from_dict,
    "WISE": wise_hparams_from_dict,
}


def editor_of(hparams: object) -> str:
    """The editor (one of EDITORS) a trial with these hparams runs."""
    editor = _HPARAMS_TYPES.get(type(hparams))
    if editor is None:
        raise DeferInputError(f"hparams: expected DeferHParams, GraceHParams or WiseHParams, got {type(hparams).__name__}")
    return editor


def load_editor_hparams(path: str | os.PathLike[str]) -> EditorHParams:
    """Read an EasyEdit hparams YAML of any editor here, chosen by its `alg_name`."""
    config = read_yaml(path, "hparams file")
    if not isinstance(config, dict):
        raise DeferInputError(f"{path}: expected a mapping of hyperparameters, got {type(config).__name__}")
    if "alg_name" not in config:
        raise DeferInputError(f"{path}: missing key 'alg_name' (one of {', '.join(_READERS)})")
    reader = _READERS.get(config["alg_name"]) if isinstance(config["alg_name"], str) else None
    if reader is None:
        raise DeferInputError(f"{path}: key 'alg_name' must be one of {', '.join(_READERS)}, got {config['alg_name']!r}")
    return reader(config, str(path))


def dump_editor_hparams(hparams: EditorHParams, dtype: str | None = None, notes: Sequence[str] = ()) -> str:
    """EasyEdit YAML text for any editor's hparams; `dtype` and `notes` become leading comment
    lines (EasyEdit's loaders refuse unknown keys), as DEFER's dump_hparams writes them."""
    editor = editor_of(hparams)
    if editor == "defer":
        return dump_hparams(hparams, dtype, notes)  # type: ignore[arg-type]
    text = dump_grace_hparams(hparams) if editor == "grace" else dump_wise_hparams(hparams)  # type: ignore[arg-type]
    comments = ([TUNED_DTYPE_COMMENT.format(dtype=dtype)] if dtype else []) + [f"# {' '.join(n.split())}" for n in notes]
    return "".join(f"{line}\n" for line in comments) + text


def save_editor_hparams(hparams: EditorHParams, path: str | os.PathLike[str], dtype: str | None = None, notes: Sequence[str] = ()) -> Path:
    """Write atomically (each editor's own writer's layout): a reader never sees half a file."""
    return atomic_write_text(Path(path), dump_editor_hparams(hparams, dtype, notes))


_SUMMARY_FIELDS = {"defer": ("threshold",), "grace": ("eps", "val_init", "replacement"), "wise": ("mask_ratio", "act_ratio", "save_freq", "merge_freq", "retrieve")}


def hparams_summary(hparams: EditorHParams) -> str:
    """`model.layers[27].mlp.down_proj.weight, edit_lr 7e-05, n_iter 100, threshold 0.5` (DEFER):
    a configuration as a header or caption names it (GRACE: eps, val_init, replacement after
    n_iter; WISE: mask_ratio, act_ratio, save_freq, merge_freq, retrieve)."""
    editor = editor_of(hparams)
    fields = [("edit_lr", hparams.edit_lr), ("n_iter", hparams.n_iter), *((name, getattr(hparams, name)) for name in _SUMMARY_FIELDS[editor])]
    values = ", ".join(f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}" for name, value in fields)
    return f"{hparams.module_path}, {values}"
