"""Reading config files and writing result files: one way, shared by every module.

Writes go to a temporary name beside the target and are renamed into place, so a crash leaves
the complete old file or the complete new one, never half a file. YAML reads turn every
failure into a one-line DeferInputError naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from .errors import DeferInputError


def atomic_write_bytes(path: Path, payload: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(payload)
    os.replace(tmp, path)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_yaml(path: str | os.PathLike[str], what: str) -> Any:
    """The parsed YAML of `path`; `what` names the file's role in the error ("hparams file")."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise DeferInputError(f"{path}: cannot read {what} ({error.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise DeferInputError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
