"""Module paths are parsed and walked, never evaluated."""

import pytest

from defer_core import DeferInputError, parse_module_path, resolve_module
from defer_core.module_path import decoder_layer_index


def test_easyedit_path_parses_into_steps():
    path = parse_module_path("model.layers[27].mlp.down_proj.weight")
    assert path.steps == ("model", "layers", 27, "mlp", "down_proj")
    assert decoder_layer_index(path) == 27
    assert parse_module_path("model.layers.3.mlp.up_proj").steps == ("model", "layers", 3, "mlp", "up_proj")


def test_resolves_the_named_linear(tiny):
    module = resolve_module(tiny.model, parse_module_path("model.layers[1].mlp.down_proj.weight"))
    assert module is tiny.model.model.layers[1].mlp.down_proj


def test_out_of_range_layer_names_the_valid_range(tiny):
    with pytest.raises(DeferInputError, match=r"index 9 out of range.*valid 0\.\.3"):
        resolve_module(tiny.model, parse_module_path("model.layers[9].mlp.down_proj.weight"))


def test_missing_attribute_lists_what_exists(tiny):
    with pytest.raises(DeferInputError, match="no submodule 'mlpp'.*mlp"):
        resolve_module(tiny.model, parse_module_path("model.layers[0].mlpp.down_proj"))


@pytest.mark.parametrize("text", ["model.layers[2", "__import__('os').system('x')", "model..layers", ""])
def test_code_like_or_broken_paths_are_rejected(text):
    with pytest.raises(DeferInputError):
        parse_module_path(text)
