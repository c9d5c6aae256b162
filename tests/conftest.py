"""Shared fixtures: a tiny random Llama (real model, real tokenizer) and the real ZsRE records."""

from __future__ import annotations

import pytest

from defer_core import DeferHParams, load_records, tiny_llama
from defer_core.models import LoadedModel


@pytest.fixture
def tiny() -> LoadedModel:
    return tiny_llama(seed=0)


@pytest.fixture(scope="session")
def zsre_records():
    return load_records(None, limit=12)


def tiny_hparams(layer: int = 2, **changes) -> DeferHParams:
    base = DeferHParams(
        model_name="tiny-llama",
        inner_params=(f"model.layers[{layer}].mlp.down_proj.weight",),
        edit_lr=1e-2,
        n_iter=8,
        threshold=0.5,
        device="cpu",
    )
    return base.replace(**changes)


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray for one test module's sweeps (shut down after the module)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
