"""Specs for the three editors (`editor: defer | grace | wise`): each editor's own search-space
keys, refusals naming the key, the shipped example specs, and the EasyEdit hparams a trial
config becomes (EasyEdit's llama-7b file for every field the spec leaves out)."""

from __future__ import annotations

import copy
from pathlib import Path

import optuna
import pytest
import yaml

from defer_core.errors import DeferInputError
from defer_core.grace_hparams import GraceHParams, load_grace_hparams
from defer_core.wise_hparams import WiseHParams, load_wise_hparams
from orchestrator.search.space import optuna_distributions
from orchestrator.spec import EDITOR_PARAMS, Options, load_spec, spec_from_dict
from orchestrator.spec.trial_config import EASYEDIT_HPARAMS, describe_config, full_config, hparams_for

from .orchestrator_support import SPECS

ROOT = Path(__file__).resolve().parents[1]
TINY = yaml.safe_load((SPECS / "tiny.yaml").read_text())
COMMON = {"layer": {"low": 1, "high": 3}, "module_template": "model.layers[{layer}].mlp.down_proj", "edit_lr": {"low": 1.0e-2, "high": 1.0}, "n_iter": [2, 3]}


def spec_data(editor: str, **space) -> dict:
    data = copy.deepcopy(TINY)
    data.update(editor=editor, search_space={**COMMON, **space}, initial_points=[])
    return data


def refusal(data: dict) -> str:
    with pytest.raises(DeferInputError) as caught:
        spec_from_dict(data, source="tiny.yaml")
    message = str(caught.value)
    assert message.startswith("tiny.yaml: ") and "\n" not in message
    return message


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (spec_data("defer", threshold=0.5, eps=1.0), "key 'search_space.eps' is a parameter of editor: grace, not of editor: defer"),
        (spec_data("grace", threshold=0.5), "key 'search_space.threshold' is a parameter of editor: defer, not of editor: grace"),
        (spec_data("wise", val_init="cold"), "key 'search_space.val_init' is a parameter of editor: grace, not of editor: wise"),
        (spec_data("defer"), "key 'search_space.threshold'"),
        (spec_data("rome"), "key 'editor'"),
        (spec_data("grace", val_init="hot"), "key 'search_space.val_init' must be one of cold, warm (or a list of them), got 'hot'"),
        (spec_data("grace", val_init=["cold", "cold"]), "key 'search_space.val_init' lists a value twice"),
        (spec_data("wise", retrieve="yes"), "key 'search_space.retrieve' must be one of True, False"),
        (spec_data("wise", merge_alg="dare_ties"), "key 'search_space.merge_alg' must be one of ties, magnitude_norm, magnitude, sign, linear"),
        (spec_data("wise", save_freq=3, merge_freq=4), "key 'search_space.merge_freq' must be a multiple of save_freq (3), got 4"),
        (spec_data("wise", mask_ratio=1.5), "key 'search_space.mask_ratio' must lie in (0, 1]"),
        (spec_data("grace", eps=0), "key 'search_space.eps' must be > 0"),
        ({**spec_data("grace"), "pack_size": 2}, "key 'pack_size' = 2 is DEFER's"),
        ({**spec_data("defer", threshold=0.5), "grace_key": "prompt"}, "key 'grace_key' = prompt is where GRACE reads its key; editor: defer has none, so leave it out (or at sticky)"),
        ({**spec_data("grace"), "grace_key": "first"}, "key 'grace_key' must be one of sticky, prompt, got 'first'"),
        ({**spec_data("grace"), "initial_points": [{"layer": 2, "edit_lr": 0.1, "n_iter": 2, "threshold": 0.5}]}, "key 'initial_points[0].threshold' is not a parameter of this search space"),
    ],
)
def test_each_editor_takes_only_its_own_parameters(data: dict, expected: str) -> None:
    assert expected in refusal(data)


def test_words_and_flags_are_optuna_choices_and_fixed_ones_stay_fixed() -> None:
    spec = spec_from_dict(spec_data("wise", retrieve=[True, False], merge_alg="ties", save_freq=2, merge_freq=4), source="tiny.yaml")
    assert spec.search_space.retrieve == Options((True, False)) and spec.search_space.fixed() == {"merge_alg": "ties", "save_freq": 2, "merge_freq": 4}
    space = optuna_distributions(spec)
    assert space["retrieve"] == optuna.distributions.CategoricalDistribution([True, False])
    assert set(space) == {"layer", "edit_lr", "n_iter", "retrieve"}
    grace = spec_from_dict(spec_data("grace", val_init=["cold", "warm"], eps={"low": 0.5, "high": 50.0}), source="tiny.yaml")
    assert optuna_distributions(grace)["eps"] == optuna.distributions.FloatDistribution(0.5, 50.0, log=True)  # a radius spans decades: log by default
    assert optuna_distributions(grace)["val_init"] == optuna.distributions.CategoricalDistribution(["cold", "warm"])


def test_a_config_becomes_the_editors_easyedit_hparams_with_easyedits_values_elsewhere() -> None:
    grace = spec_from_dict(spec_data("grace", eps={"low": 0.5, "high": 50.0}, val_init=["cold", "warm"]), source="tiny.yaml")
    config = {"layer": 2, "edit_lr": 0.3, "n_iter": 3, "eps": 4.0, "val_init": "warm"}
    assert full_config(grace, config) == config
    hparams = hparams_for(grace, config)
    easyedit = load_grace_hparams(EASYEDIT_HPARAMS / "GRACE" / "llama-7b.yaml")
    assert isinstance(hparams, GraceHParams)
    assert (hparams.inner_params, hparams.edit_lr, hparams.n_iter, hparams.eps, hparams.val_init) == (("model.layers[2].mlp.down_proj.weight",), 0.3, 3, 4.0, "warm")
    assert (hparams.replacement, hparams.eps_expand, hparams.dist_fn, hparams.val_train) == (easyedit.replacement, easyedit.eps_expand, easyedit.dist_fn, easyedit.val_train)
    assert hparams.to_easyedit_dict().keys() == easyedit.to_easyedit_dict().keys()
    assert describe_config(config) == "L2 lr=3.0e-01 it=3 eps=4 val_init=warm"
    wise = spec_from_dict(spec_data("wise", mask_ratio={"low": 0.1, "high": 0.5}, save_freq=2, merge_freq=4), source="tiny.yaml")
    hparams = hparams_for(wise, {"layer": 1, "edit_lr": 0.5, "n_iter": 2, "mask_ratio": 0.3})
    easyedit = load_wise_hparams(EASYEDIT_HPARAMS / "WISE" / "llama-7b.yaml")
    assert isinstance(hparams, WiseHParams)
    assert (hparams.mask_ratio, hparams.save_freq, hparams.merge_freq, hparams.act_ratio, hparams.retrieve) == (0.3, 2, 4, easyedit.act_ratio, easyedit.retrieve)


@pytest.mark.parametrize("editor", ["grace", "wise"])
def test_the_shipped_example_spec_of_each_editor_loads(editor: str) -> None:
    spec = load_spec(ROOT / "search_spaces" / f"smollm2-zsre-{editor}.yaml")
    assert spec.editor == editor and set(spec.search_space.given()) <= set(EDITOR_PARAMS[editor])
    assert not spec.curve_mode and spec.pack_size == 1
    (point,) = spec.initial_points
    assert hparams_for(spec, point).alg_name == editor.upper()
