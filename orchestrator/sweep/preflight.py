"""Checks that need the model's shape, the machine or the data, done in the driver before Ray
starts and before anything is written.

The model name is resolved from local files only (defer_core.models.model_source: a built-in
name, a local directory or an id in the Hugging Face cache; no Hub call unless the user allows
downloads), and its architecture is built on PyTorch's `meta` device from its config (no
weights, so even a 7B model takes a moment). Every module path the search space can produce is
resolved on it: a layer range past the model's depth or a template naming a module that does
not exist fails here, naming the spec key, instead of failing every trial on the workers.

`check_machine` (device and model name, from local files), `prepare` (the output folder) and
`check_inputs` (a busy folder, the data file, the cache folder) import neither torch nor Ray,
so the command layer runs them before importing the driver and before its first line of
output: such a refusal comes in a moment.
CUDA is checked where the trials will run. With a Ray instance the driver starts itself, that
is this machine, checked here. When ray.init joins a cluster (`ray.address`, RAY_ADDRESS, or a
cluster `ray start` recorded on this machine, as under `ray submit`), the GPUs are on worker
nodes the driver cannot see: once Ray is up, `check_cluster_gpus` reads the cluster's
resources, and only warns when there are none, since an autoscaling cluster (cluster/cluster.yaml)
adds its GPU workers only when trials wait for one.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from defer_core.data import EditRecord, load_records, resolve_data_path
from defer_core.errors import DeferInputError
from defer_core.files import require_writable_dir
from defer_core.runtime import CACHE_ENV, TINY_MODEL, cache_dir, cuda_problem, hub_offline, model_problem, stay_offline_by_default, uses_cuda

from ..sinks.layout import LOCK_FILE, SweepLayout, require_in_place
from ..spec import SweepSpec, load_spec
from .lock import check_not_busy

if TYPE_CHECKING:
    from transformers import PretrainedConfig

log = logging.getLogger(__name__)

LOCAL_RAY = "local"  # ray.init's address for a new instance on this machine
_RAY_CLUSTER_RECORD = "ray/ray_current_cluster"  # under Ray's temp dir: where `ray start` records its cluster


def ray_init_address(spec: SweepSpec) -> str | None:
    """The address the driver passes to ray.init: a CPU count only makes sense for an
    instance it starts, so `ray.num_cpus` implies a local one."""
    return spec.ray.address or (LOCAL_RAY if spec.ray.num_cpus else None)


def joins_cluster(spec: SweepSpec) -> bool:
    """Whether ray.init(address) joins a running cluster rather than starting Ray here, in the
    order its documentation gives: the address; RAY_ADDRESS; the cluster `ray start` recorded
    in Ray's temp dir (RAY_TMPDIR, TMPDIR or /tmp); else a new local instance."""
    address = ray_init_address(spec) or os.environ.get("RAY_ADDRESS")
    if address:
        return address != LOCAL_RAY
    temp = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    return (Path(temp) / _RAY_CLUSTER_RECORD).is_file()


def cuda_requested(spec: SweepSpec) -> bool:
    return uses_cuda(spec.model.device) or spec.resources_per_trial.gpu > 0


def check_device(spec: SweepSpec, source: str) -> None:
    """CUDA asked for (model.device or resources_per_trial.gpu) on a machine without it fails
    here, before the output folder exists, instead of in every trial; a cluster's GPUs are
    checked once Ray is up (check_cluster_gpus)."""
    if not cuda_requested(spec) or joins_cluster(spec):
        return
    problem = cuda_problem(spec.model.device, spec.resources_per_trial.gpu)
    if problem:
        key = "model.device" if uses_cuda(spec.model.device) else "resources_per_trial.gpu"
        raise DeferInputError(f"{source}: key {key!r}: {problem}")


def check_machine(spec: SweepSpec, source: str) -> None:
    """The device and the model name, before anything heavy is imported or written."""
    check_device(spec, source)
    problem = model_problem(spec.model.name)
    if problem:
        raise DeferInputError(f"{source}: key 'model.name': {problem}")


def check_cluster_gpus(spec: SweepSpec) -> None:
    """After ray.init on a cluster: warn when CUDA is asked for and the nodes up now offer no
    GPU (or fewer than one trial needs); an error would stop an autoscaling cluster's sweep."""
    import ray

    if not cuda_requested(spec) or not joins_cluster(spec):
        return
    gpus = float(ray.cluster_resources().get("GPU", 0))
    if gpus <= 0 or gpus < spec.resources_per_trial.gpu:
        log.warning(
            "the spec asks for CUDA (model.device %s, resources_per_trial.gpu %g) but the Ray cluster has %g GPU(s) now; "
            "trials wait until its autoscaler adds GPU nodes (without one they never start: stop with Ctrl-C)",
            spec.model.device or "auto", spec.resources_per_trial.gpu, gpus,
        )


def _config(name: str, source: str) -> "PretrainedConfig":
    from transformers import AutoConfig

    from defer_core.models import model_source, quiet_hub_logging, tiny_llama

    if name == TINY_MODEL:
        return tiny_llama().model.config
    stay_offline_by_default()
    try:
        with quiet_hub_logging():
            return AutoConfig.from_pretrained(model_source(name), local_files_only=hub_offline())
    except (OSError, ValueError) as error:
        raise DeferInputError(f"{source}: key 'model.name' = {name!r}: cannot read its config ({str(error).splitlines()[0]})") from None


def check_model(spec: SweepSpec, source: str) -> int:
    """Checks the device and name, then resolves the template for every layer in the range; returns the
    model's layer count."""
    import torch
    from transformers import AutoModelForCausalLM

    from defer_core.module_path import parse_module_path, resolve_module

    from ..spec.trial_config import module_for

    check_machine(spec, source)
    config = _config(spec.model.name, source)
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


def prepare(spec: SweepSpec, *, force: bool = False) -> SweepLayout:
    """Refuse, before anything is written, an output directory that cannot be one (a file, under
    a file, read-only), one another driver holds, a sweep folder moved from where it was
    created, a different sweep, and a folder with files of someone else's (`force` puts the
    sweep beside them, never over one)."""
    layout = SweepLayout(spec.output_dir, spec.storage_uri)
    require_writable_dir(layout.root, "the output directory")
    check_not_busy(layout.root)  # first: a running driver's folder is half-written
    if layout.spec.is_file() or layout.state.is_file():
        require_in_place(layout)
        existing = load_spec(layout.spec) if layout.spec.is_file() else spec
        if existing != spec:
            raise DeferInputError(
                f"{layout.root}: holds a different sweep (its spec.yaml differs from this spec); "
                f"choose another output_dir, or continue that sweep with `defer-sweep resume {layout.root}`"
            )
        return layout
    _require_no_foreign_files(layout, force)
    return layout


_LISTED_NAMES = 5  # entries a refusal names


def _require_no_foreign_files(layout: SweepLayout, force: bool) -> None:
    """An existing folder that holds no sweep belongs to someone: the sweep starts there only with
    `force`, and even then never where one of its own files would replace one of theirs."""
    try:
        there = sorted(entry.name + ("/" if entry.is_dir() else "") for entry in layout.root.iterdir() if entry.name != LOCK_FILE)
    except FileNotFoundError:
        return
    if not there:
        return
    listed = ", ".join(there[:_LISTED_NAMES]) + (f" and {len(there) - _LISTED_NAMES} more" if len(there) > _LISTED_NAMES else "")
    if not force:
        raise DeferInputError(
            f"{layout.root}: is not empty and holds no sweep ({listed}); choose a new or empty output_dir, or pass --force to put the sweep beside what is there"
        )
    clashing = [name for name in there if name.rstrip("/") in layout.written_names]
    if clashing:
        raise DeferInputError(
            f"{layout.root}: holds {', '.join(clashing)}, which the sweep writes; even with --force it never replaces a file it did not write: move them, or choose another output_dir"
        )


def check_inputs(spec: SweepSpec) -> None:
    """What else can be refused without Ray or the model: a data file or record that cannot be
    used, a cache folder the trials cannot write."""
    load_spec_records(spec)
    if not joins_cluster(spec):  # a cluster's workers cache on their own nodes
        check_cache_writable()


def check_cache_writable() -> None:
    """The trials keep the unedited model's scores (and the embedded model's files) under the
    cache folder; one that cannot be written would fail every trial."""
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise DeferInputError(
            f"{folder}: the cache folder cannot be written ({error.strerror or error}); set {CACHE_ENV} to a writable folder"
        ) from None


def load_spec_records(spec: SweepSpec) -> list[EditRecord]:
    """The T records the trials edit; read once in the driver and shipped to the workers (the
    check before Ray starts and the stage after it share one read of an unchanged file)."""
    path = resolve_data_path(spec.data.path)  # a missing file: named here
    stat = path.stat()
    return list(_records(str(path), (stat.st_mtime_ns, stat.st_size), spec.T, spec.data.strip))


@functools.lru_cache(maxsize=4)
def _records(path: str, version: tuple[int, int], limit: int, strip: bool) -> tuple[EditRecord, ...]:
    """`version` (mtime, size) keys the cache, so a file changed on disk is read again."""
    return tuple(load_records(path, limit=limit, strip=strip))
