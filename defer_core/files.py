"""Reading config files and writing result files: one way, shared by every module.

Writes go to a temporary name beside the target and are renamed into place, so a crash leaves
the complete old file or the complete new one, never half a file. A path that cannot be
written (a directory where a file should go, a file where a directory should be, a read-only
place) is a one-line DeferInputError naming it, raised before anything is created, and a
failed write removes its temporary file. YAML reads turn every failure into a one-line
DeferInputError naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from .errors import DeferInputError


def unwritable_reason(directory: Path) -> str | None:
    """Why nothing can be created in `directory` (making it first if it is missing), or None
    when nothing is in the way. It looks at the directory, or at its nearest existing parent,
    without writing: a bad path must leave nothing behind. The file system's read-only flag
    and access(2) are asked rather than the mode bits, which do not stop root."""
    existing = directory
    while not existing.exists() and existing != existing.parent:  # False under a file too (ENOTDIR)
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a directory"
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        return f"{existing} is on a read-only file system"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def require_writable_dir(directory: Path, what: str) -> Path:
    """`directory`, or a one-line DeferInputError saying why it cannot be `what` (e.g. "the
    output directory"); checked before anything is written there."""
    reason = "it is a file" if directory.is_file() else unwritable_reason(directory)
    if reason is not None:
        raise DeferInputError(f"{directory}: cannot be {what}: {reason}")
    return directory


def make_dirs(directory: Path, what: str) -> Path:
    """mkdir -p, with require_writable_dir's one-line error when `directory` cannot be `what`."""
    require_writable_dir(directory, what)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DeferInputError(f"{directory}: cannot create {what} ({error.strerror or error})") from None
    return directory


def atomic_write_bytes(path: Path, payload: bytes) -> Path:
    """Write through a temporary name and a rename; a path that cannot take the file fails in
    one line before anything is created, and a failed write leaves no temporary file."""
    if path.is_dir():
        raise DeferInputError(f"{path}: is a directory; expected the name of a file to write")
    reason = unwritable_reason(path.parent)
    if reason is not None:
        raise DeferInputError(f"{path}: cannot write it: {reason}")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(payload)
        os.replace(tmp, path)
    except OSError as error:  # e.g. a full disk, or a place access(2) thought writable
        tmp.unlink(missing_ok=True)
        raise DeferInputError(f"{path}: cannot write it ({error.strerror or error})") from None
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
    except UnicodeDecodeError as error:  # a damaged or binary file
        raise DeferInputError(f"{path}: {what} is not UTF-8 text (byte {error.start})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise DeferInputError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
