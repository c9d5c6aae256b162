"""Parse EasyEdit module paths such as `model.layers[27].mlp.down_proj.weight`, never eval them.

The reference resolves these strings with `eval`; here a path is split into attribute names
and integer indices and walked step by step, so a typo or an out-of-range layer gives an
error that says what exists instead. Parsing needs no torch (the spec check parses paths without
a model); torch is imported only where a model is walked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import DeferInputError

if TYPE_CHECKING:
    from torch import nn

_STEP = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|(\d+)")
_PARAM_SUFFIXES = (".weight", ".bias")


@dataclass(frozen=True)
class ModulePath:
    """A parsed path: the steps from the model root to one module."""

    text: str
    steps: tuple[str | int, ...]

    @property
    def parent_steps(self) -> tuple[str | int, ...]:
        return self.steps[:-1]

    @property
    def leaf(self) -> str | int:
        return self.steps[-1]


def parse_module_path(text: str) -> ModulePath:
    """Split `a.b[3].c.weight` into ('a', 'b', 3, 'c'); the parameter suffix names its module."""
    path = text.strip()
    for suffix in _PARAM_SUFFIXES:
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    steps: list[str | int] = []
    position = 0
    while position < len(path):
        if path[position] == "." and steps:
            position += 1
        match = _STEP.match(path, position)
        if match is None:
            raise DeferInputError(
                f"module path {text!r}: cannot parse at character {position + 1}; "
                "expected dotted names with [index], e.g. model.layers[27].mlp.down_proj.weight"
            )
        name, bracket_index, dotted_index = match.groups()
        steps.append(name if name is not None else int(bracket_index or dotted_index))
        position = match.end()
    if not steps:
        raise DeferInputError(f"module path {text!r} is empty")
    return ModulePath(text=text, steps=tuple(steps))


def _child(parent: nn.Module, step: str | int, walked: str, text: str) -> nn.Module:
    from torch import nn

    if isinstance(step, int):
        if not isinstance(parent, (nn.ModuleList, nn.Sequential)):
            raise DeferInputError(f"module path {text!r}: {walked} is not indexable (it is a {type(parent).__name__})")
        if not 0 <= step < len(parent):
            raise DeferInputError(
                f"module path {text!r}: index {step} out of range, {walked} has {len(parent)} entries (valid 0..{len(parent) - 1})"
            )
        return parent[step]
    children = dict(parent.named_children())
    if step not in children:
        raise DeferInputError(
            f"module path {text!r}: {walked or 'the model'} has no submodule {step!r} (has: {', '.join(children) or 'none'})"
        )
    return children[step]


def _describe(steps: tuple[str | int, ...]) -> str:
    out = ""
    for step in steps:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out


def resolve_module(model: nn.Module, path: ModulePath) -> nn.Module:
    """Walk the path from `model`; errors name the valid range or the children that exist."""
    module = model
    for depth, step in enumerate(path.steps):
        module = _child(module, step, _describe(path.steps[:depth]), path.text)
    return module


def resolve_parent(model: nn.Module, path: ModulePath) -> nn.Module:
    """The module that owns the leaf, so the leaf can be replaced in place."""
    module = model
    for depth, step in enumerate(path.parent_steps):
        module = _child(module, step, _describe(path.steps[:depth]), path.text)
    return module


def replace_module(model: nn.Module, path: ModulePath, new: nn.Module) -> None:
    parent = resolve_parent(model, path)
    if isinstance(path.leaf, int):
        parent[path.leaf] = new
    else:
        setattr(parent, path.leaf, new)


def decoder_layer_index(path: ModulePath) -> int | None:
    """The integer after `layers` (the decoder block the module sits in), if the path has one."""
    for step, following in zip(path.steps, path.steps[1:]):
        if step == "layers" and isinstance(following, int):
            return following
    return None
