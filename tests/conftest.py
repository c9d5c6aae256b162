"""Shared fixtures: a tiny random Llama (real model, real tokenizer) and the real ZsRE records."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# One intra-op thread in the test processes and the CLIs they start, as a sweep's trial actors
# use: with `make test`, two workers share two cores with the Ray actors they start, and torch's
# default (a thread per core) leaves OpenMP threads spinning at barriers that starve the others
# (a module that takes 31 s alone took 478 s that way). Set before torch is imported; tests that
# compare thread counts set them explicitly.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from defer_core import DeferHParams, load_records, tiny_llama
from defer_core.models import LoadedModel

# `make test` runs test modules on every core (pytest-xdist, --dist loadscope: a module and its
# module-scoped sweeps stay on one worker) and hands them out in this order, the longest first
# (seconds measured with --durations), so that no worker is left with a long module at the end.
LONGEST_FIRST = (
    "test_output_folder_safety.py", "test_confirm.py", "test_checks_and_exits.py", "test_progress_and_interrupts.py", "test_report.py",
    "test_curve_sinks.py", "test_orchestrator_resume.py", "test_table.py", "test_storage_uri.py", "test_relocatable_output.py",
    "test_repeats_sweep.py", "test_orchestrator_sweep.py", "test_compare.py", "test_repeats_groundwork.py", "test_compare_passes.py", "test_scoring_batched.py",
    "test_curve_search.py", "test_crash_before_first_trial.py", "test_threshold_curve.py", "test_orchestrator_packing.py", "test_trial_command.py",
    "test_dtype_and_export.py", "test_cluster_config.py", "test_searcher_pickling.py", "test_protocols.py", "test_reference_equivalence.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest modules first (a stable sort: each module's tests keep their order)."""
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


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


RAY_ARGS = {"num_cpus": 2, "include_dashboard": False, "log_to_driver": False}


@pytest.fixture(scope="session")
def one_ray_per_worker() -> Iterator[None]:
    """One real local Ray per test process (under `make test`, per xdist worker), started by
    the first module that runs sweeps in-process and shared by the later ones; each `ray.init`
    costs seconds. The CLIs the tests start run as a user's do: each starts its own Ray."""
    import ray

    ray.init(**RAY_ARGS)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def local_ray(one_ray_per_worker: None) -> None:
    """A real local Ray for a test module's in-process sweeps: the worker's one (above)."""
