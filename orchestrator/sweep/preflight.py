"""Checks that need the model's shape or the data, done in the driver before Ray starts.

The model is built on PyTorch's `meta` device from its config (no weights, so even a 7B model
takes a moment), and every module path the search space can produce is resolved on it: a
layer range past the model's depth or a template naming a module that does not exist fails
here, naming the spec key, instead of failing every trial on the workers.
"""

from __future__ import annotations

import os

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from defer_core.data import EditRecord, load_records
from defer_core.errors import DeferInputError
from defer_core.models import EMBEDDED_MODEL, TINY_MODEL, embedded_model_dir, tiny_llama
from defer_core.module_path import parse_module_path, resolve_module

from ..search.space import module_for
from ..spec import SweepSpec


def _config(name: str) -> PretrainedConfig:
    if name == TINY_MODEL:
        return tiny_llama().model.config
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    source = embedded_model_dir() if name == EMBEDDED_MODEL else name
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise DeferInputError(
            f"key 'model.name' = {name!r}: cannot read its config offline ({str(error).splitlines()[0]}); "
            "give a local directory or an id already in the Hugging Face cache"
        ) from None


def check_model(spec: SweepSpec, source: str) -> int:
    """Resolves the template for every layer in the range; returns the model's layer count."""
    config = _config(spec.model.name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    num_layers = int(getattr(config, "num_hidden_layers", 0))
    low, high = spec.search_space.layer_bounds()
    if num_layers and high >= num_layers:
        raise DeferInputError(f"{source}: key 'search_space.layer' goes up to {high} but {spec.model.name} has {num_layers} layers (valid 0..{num_layers - 1})")
    for layer in range(low, high + 1):
        path = module_for(spec, layer)
        try:
            module = resolve_module(model, parse_module_path(path))
        except DeferInputError as error:
            raise DeferInputError(f"{source}: key 'search_space.module_template' gives {path!r} for layer {layer}: {error}") from None
        if not isinstance(module, torch.nn.Linear):
            raise DeferInputError(f"{source}: key 'search_space.module_template' gives {path!r}, a {type(module).__name__}; DEFER wraps a Linear layer")
    return num_layers


def load_spec_records(spec: SweepSpec) -> list[EditRecord]:
    """The T records the trials edit; read once in the driver and shipped to the workers."""
    return load_records(spec.data.path, limit=spec.T)
