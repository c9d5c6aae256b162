"""WISE's merge of knowledge shards into one weight (EasyEdit easyeditor/models/wise/merge/).

EasyEdit maps `merge_alg` to a merger (WISE.py `merge_dict`). The GTA family (task vectors
`shard - base`, optional sparsification, optional sign consensus, optional normalisation) is
restated here for the deterministic members:

    ties            magnitude sparsify, sign consensus 'sum', normalize   (the WISE paper's choice)
    magnitude_norm  magnitude sparsify, no consensus, normalize
    magnitude       magnitude sparsify, no consensus, no normalisation
    sign            no sparsify, sign consensus 'sum', normalize
    linear          t * first shard + (1 - t) * base (EasyEdit's `linear` takes the first of each list)

Not restated, refused by name: `dare_ties` / `dare_linear` draw their masks with
`torch.bernoulli` from torch's global random state (so the numbers depend on every other torch
draw in the process), and `slerp` goes through numpy float32 on the CPU.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .errors import DeferInputError
from .wise_hparams import MERGE_ALGS, NOT_RESTATED

# name -> (sparsify, consensus, normalize), as EasyEdit's merge_dict builds its GTA objects
_GTA = {
    "ties": ("magnitude", "sum", True),
    "magnitude_norm": ("magnitude", None, True),
    "magnitude": ("magnitude", None, False),
    "sign": (None, "sum", True),
}
assert set(MERGE_ALGS) == {*_GTA, "linear"}  # MERGE_ALGS (wise_hparams: light, the spec reads it) names these


def check_merge_alg(name: str) -> None:
    if name not in MERGE_ALGS:
        why = " (random or numpy-based in EasyEdit; not restated)" if name in NOT_RESTATED else ""
        raise DeferInputError(f"merge_alg {name!r} is not supported{why}; choose one of {', '.join(MERGE_ALGS)}")


def keep_largest(delta: torch.Tensor, density: float) -> torch.Tensor:
    """TIES' trim step: keep the `density` share of entries with the largest magnitude.
    Same torch.topk call as EasyEdit (ties between equal magnitudes resolve the same way)."""
    if density >= 1:
        return delta
    k = int(density * delta.view(-1).shape[0])
    if k <= 0:
        raise DeferInputError(f"densities {density} keeps no entry of a {delta.numel()}-entry weight")
    magnitudes = delta.abs().view(-1)
    if magnitudes.device.type == "cpu":
        magnitudes = magnitudes.float()
    keep = torch.zeros_like(delta)
    keep.view(-1)[torch.topk(magnitudes, k=k, largest=True).indices] = 1
    return delta * keep


def _majority_agrees(weighted: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """TIES' elect step ('sum'): the sign of the summed deltas (0 counts as +), and where each
    shard's sign agrees with it (a trimmed-away zero never agrees)."""
    signs = weighted.sign().to(dtype)
    majority = (weighted.sum(dim=0) >= 0).to(dtype) * 2 - 1
    return signs == majority


def gta_merge(name: str, weights: Sequence[float], base: torch.Tensor, shards: Sequence[torch.Tensor], density: float | None) -> torch.Tensor:
    """base + the merged task vectors of `shards`, weighted by `weights` (one per shard)."""
    sparsify, consensus, normalize = _GTA[name]
    if len(weights) != len(shards):
        raise ValueError(f"{len(weights)} merge weights for {len(shards)} shards")
    deltas = [shard - base for shard in shards]
    if not deltas:
        return base
    if sparsify == "magnitude":
        if density is None:
            raise DeferInputError(f"merge_alg {name!r} needs key 'densities'")
        deltas = [keep_largest(delta, density) for delta in deltas]
    stacked = torch.stack(deltas, dim=0)
    scale = torch.tensor(list(weights), dtype=stacked.dtype, device=stacked.device)
    while scale.dim() < stacked.dim():
        scale = scale.unsqueeze(-1)
    weighted = stacked * scale
    if consensus is not None:
        agrees = _majority_agrees(weighted, base.dtype)
        mixed = (weighted * agrees).sum(dim=0)
        divisor = (scale * agrees).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = weighted.sum(dim=0)
        divisor = scale.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed = mixed / divisor
    return (base + mixed).to(base.dtype)


def merge(name: str, weights: Sequence[float] | float, base: torch.Tensor, shards: Sequence[torch.Tensor], density: float | None) -> torch.Tensor:
    """EasyEdit's `merge_dict[name].execute(weights, base, shards, densities=density)`."""
    check_merge_alg(name)
    if name == "linear":
        t = weights[0] if isinstance(weights, (list, tuple)) else weights
        return t * shards[0] + (1.0 - t) * base
    assert isinstance(weights, (list, tuple))
    return gta_merge(name, weights, base, shards, density)
