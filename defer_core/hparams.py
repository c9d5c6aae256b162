"""EasyEdit DEFER hyperparameters: read EasyEdit's YAML unchanged, write the same shape.

EasyEdit's `hparams/DEFER/*.yaml` has exactly the keys of `DeferHyperParams`. PyYAML reads
`7e-5` (no dot) as a string, so numeric keys are coerced here, as EasyEdit's own loader does.
EasyEdit's loader refuses unknown keys, so the model dtype a configuration was tuned in goes
into a comment line at the top of the file, never into a key.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import yaml

from .easyedit_hparams import as_float, as_int, check_keys, common_keys
from .errors import DeferInputError
from .files import atomic_write_text, read_yaml
from .runtime import EMBEDDED_MODEL, embedded_hf_dir

# EasyEdit's editor (easyeditor/editors/editor.py, BaseEditor.__init__, HEAD 14cea82) picks the model
# and tokenizer classes by the first of these it finds in model_name.lower() (qwen2 and qwen3 share
# a branch); a name with none of them raises NotImplementedError there.
EASYEDIT_MODEL_FAMILIES = ("t5", "chatglm-api", "gpt-3.5", "gpt", "llama", "baichuan", "chatglm", "internlm", "qwen2", "qwen3", "qwen", "mistral")

REQUIRED_KEYS = ("alg_name", "model_name", "device", "inner_params", "edit_lr", "n_iter", "threshold")
DTYPE_COMMENT = "# dtype: {dtype}  (the model dtype these values were tuned in; EasyEdit's DEFER runs float32)"
OPTIONAL_KEYS = ("batch_size", "max_length", "model_parallel")


@dataclasses.dataclass(frozen=True)
class DeferHParams:
    """The DEFER hyperparameters one trial runs with (EasyEdit's `DeferHyperParams`)."""

    model_name: str
    inner_params: tuple[str, ...]
    edit_lr: float
    n_iter: int
    threshold: float
    device: int | str = 0
    alg_name: str = "DEFER"
    batch_size: int = 1
    max_length: int = 30
    model_parallel: bool = False

    @property
    def module_path(self) -> str:
        """The one Linear the adaptor wraps (DEFER uses only the first inner param)."""
        return self.inner_params[0]

    def replace(self, **changes: Any) -> "DeferHParams":
        return dataclasses.replace(self, **changes)

    def to_easyedit_dict(self) -> dict[str, Any]:
        """The mapping EasyEdit's `DeferHyperParams(**config)` accepts, in its file's key order."""
        return {
            "alg_name": self.alg_name,
            "model_name": self.model_name,
            "device": self.device,
            "inner_params": list(self.inner_params),
            "edit_lr": float(self.edit_lr),
            "n_iter": int(self.n_iter),
            "threshold": float(self.threshold),
            "batch_size": int(self.batch_size),
            "max_length": int(self.max_length),
            "model_parallel": bool(self.model_parallel),
        }


def easyedit_family(model_name: str) -> str | None:
    """The branch of EasyEdit's editor a model_name takes (None: EasyEdit cannot load it)."""
    lowered = model_name.lower()
    return next((family for family in EASYEDIT_MODEL_FAMILIES if family in lowered), None)


def easyedit_model_name(name: str) -> str:
    """What an exported YAML names a model so EasyEdit's editor loads it: the embedded model's
    Hugging Face copy by path (its Hub name has no family EasyEdit knows), any other as given."""
    return str(embedded_hf_dir()) if name == EMBEDDED_MODEL else name


def easyedit_device(device: str | None) -> int:
    """EasyEdit's `device` is a GPU index (DeferHyperParams types it int; before June 2026 its
    editor moved the model to f"cuda:{device}"): `cuda:N` is N; cpu, cuda or none is 0."""
    if device is not None and device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    return 0


def hparams_from_dict(config: Any, source: str = "<hparams>") -> DeferHParams:
    """Validate an EasyEdit DEFER mapping; every problem names `source` and the key."""
    config = check_keys(config, source, "DEFER", REQUIRED_KEYS, OPTIONAL_KEYS)
    common = common_keys(config, source, "DEFER")
    hparams = DeferHParams(
        alg_name="DEFER",
        model_name=common.model_name,
        device=common.device,
        inner_params=common.inner_params,
        edit_lr=as_float(config["edit_lr"], "edit_lr", source),
        n_iter=as_int(config["n_iter"], "n_iter", source),
        threshold=as_float(config["threshold"], "threshold", source),
        batch_size=as_int(config.get("batch_size", 1), "batch_size", source),
        max_length=as_int(config.get("max_length", 30), "max_length", source),
        model_parallel=bool(config.get("model_parallel", False)),
    )
    if hparams.edit_lr <= 0:
        raise DeferInputError(f"{source}: key 'edit_lr' must be > 0, got {hparams.edit_lr}")
    if hparams.n_iter < 1:
        raise DeferInputError(f"{source}: key 'n_iter' must be >= 1, got {hparams.n_iter}")
    if not 0.0 <= hparams.threshold <= 1.0:
        raise DeferInputError(f"{source}: key 'threshold' must be in [0, 1], got {hparams.threshold}")
    return hparams


def load_hparams(path: str | os.PathLike[str]) -> DeferHParams:
    """Read an EasyEdit DEFER hparams YAML (EasyEdit's own files load unchanged)."""
    return hparams_from_dict(read_yaml(path, "hparams file"), source=str(path))


def dump_hparams(hparams: DeferHParams, dtype: str | None = None, notes: Sequence[str] = ()) -> str:
    """YAML text in EasyEdit's DEFER layout; floats are written so PyYAML reads them back as
    floats. With `dtype`, a first comment line says which dtype the values were tuned in; each
    of `notes` follows it as one more comment line (e.g. why the threshold is what it is)."""
    text = yaml.safe_dump(hparams.to_easyedit_dict(), sort_keys=False)
    comments = ([DTYPE_COMMENT.format(dtype=dtype)] if dtype else []) + [f"# {' '.join(note.split())}" for note in notes]
    return "".join(f"{line}\n" for line in comments) + text


def save_hparams(hparams: DeferHParams, path: str | os.PathLike[str], dtype: str | None = None, notes: Sequence[str] = ()) -> Path:
    """Write atomically: a reader never sees half a file."""
    return atomic_write_text(Path(path), dump_hparams(hparams, dtype, notes))
