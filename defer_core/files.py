"""Reading config files and writing result files: one way, shared by every module.

Writes go to a temporary name beside the target and are renamed into place, so a crash leaves
the complete old file or the complete new one, never half a file. A path that cannot be
written (a directory where a file should go, a file where a directory should be, a read-only
place) is a one-line DeferInputError naming it, raised before anything is created, and a
failed write removes its temporary file. YAML reads turn every failure into a one-line
DeferInputError naming the file: a syntax error with its line and column, and a key written
twice in one mapping (which YAML libraries otherwise settle silently, the last one winning)
with both lines. Every user YAML (sweep specs, EasyEdit hparams) is read by `read_yaml`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

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
        return strict_yaml(text)
    except DuplicateKeyError as error:
        raise DeferInputError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        raise DeferInputError(f"{path}: not valid YAML ({yaml_problem(error, text)})") from None


# -- strict YAML -----------------------------------------------------------------------------------

_MERGE_TAG = "tag:yaml.org,2002:merge"  # `<<: *defaults`: its keys may be overridden, not duplicated


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that names one key twice: the full key and where each one is (1-based)."""

    def __init__(self, key: str, first: yaml.Mark, second: yaml.Mark) -> None:
        where = (
            f"line {first.line + 1}, columns {first.column + 1} and {second.column + 1}"
            if first.line == second.line
            else f"lines {first.line + 1} and {second.line + 1}"
        )
        super().__init__(f"key '{key}' appears twice ({where})")


class StrictLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader (plain data only, no Python objects), refusing a key written twice in
    one mapping at any depth: SafeLoader would keep the last value and say nothing."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _check_unique_keys(self, node, "", set())
        return self.construct_document(node)


def strict_yaml(text: str) -> Any:
    """`text` read with StrictLoader: yaml.safe_load's result, or DuplicateKeyError (a
    yaml.YAMLError) for a key written twice."""
    loader = StrictLoader(text)  # the reader refuses a character YAML does not allow here already
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _check_unique_keys(loader: StrictLoader, node: Node, key: str, seen: set[int]) -> None:
    """Walk the composed document (before anything is constructed), naming keys as the spec's
    errors do (`search_space.layer.low`, `constraints[0].min`); an alias is walked once."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            _check_unique_keys(loader, item, f"{key}[{index}]", seen)
    elif isinstance(node, MappingNode):
        first_marks: dict[Any, yaml.Mark] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                _check_unique_keys(loader, value_node, key, seen)
                continue
            name = key_node.value if isinstance(key_node, ScalarNode) else "?"
            full = f"{key}.{name}" if key else str(name)
            identity = _key_identity(loader, key_node)
            if identity is not None:
                if identity in first_marks:
                    raise DuplicateKeyError(full, first_marks[identity], key_node.start_mark)
                first_marks[identity] = key_node.start_mark
            _check_unique_keys(loader, value_node, full, seen)


def _key_identity(loader: StrictLoader, key_node: Node) -> Any:
    """The key as the mapping will hold it (`1` and `1.0` are one key), or None when it is no
    plain scalar (complex keys are left to the constructor)."""
    if not isinstance(key_node, ScalarNode):
        return None
    try:
        identity = loader.construct_object(key_node, deep=True)
        hash(identity)
    except (yaml.YAMLError, TypeError):
        return None
    return identity


def yaml_problem(error: yaml.YAMLError, text: str) -> str:
    """A PyYAML error in one line: where (line and column, 1-based) and what, with the context
    it was read in when PyYAML gives one (`while scanning a simple key at line 2, column 1`)."""

    def at(mark: yaml.Mark) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}"

    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        line = f"{at(error.problem_mark)}: {_one_line(error.problem or 'unreadable')}"
        if error.context:
            context = _one_line(error.context)
            context_mark = error.context_mark
            if context_mark is not None and (context_mark.line, context_mark.column) != (error.problem_mark.line, error.problem_mark.column):
                context += f" at {at(context_mark)}"
            line += f" ({context})"
        return line
    if isinstance(error, yaml.reader.ReaderError):  # a character YAML does not allow: where it is
        before = text[: error.position]
        line_number, column = before.count("\n") + 1, error.position - (before.rfind("\n") + 1) + 1
        return f"line {line_number}, column {column}: {_one_line(str(error).splitlines()[0])}"
    return _one_line(str(error))


def _one_line(words: str) -> str:
    return " ".join(words.split())
