"""WISE's side memory beside one Linear, restated from EasyEdit (easyeditor/models/wise/WISE.py,
HEAD 14cea82: `WISEAdapter`, `euc`, `EditingMeanAct`).

It holds the original Linear (never changed), `new_weight` (the shard being edited, a copy of
the original weight at first), the saved shards (`memory`) and the merged weight. At inference
it routes by activation: the distance between the activated outputs of the original and a side
weight, compared with `act_ratio` times the smallest in-scope distance seen while editing.

Batches: EasyEdit routes a whole batch with `.item()` (batch size 1 only). Here each row is
routed alone, over its attended positions (`valid`: the attention mask, which WiseEditor takes
from the decoder's call), so a row gets the same decision in a padded batch as alone, and
batch size 1 is EasyEdit exactly. A caller that runs the layers without the decoder sets
`valid` itself (None: every position counts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import DeferInputError
from .wise_hparams import WiseHParams
from .wise_merge import merge

NO_EDIT_YET = 1e9  # EasyEdit's EditingMeanAct starts its minimum here: a threshold nothing reaches
TOPK_AFTER = 100  # EasyEdit's euc(infer=True) takes the largest distance once a sequence is longer


@dataclass
class MinAct:
    """EasyEdit's EditingMeanAct as routing uses it: the smallest in-scope distance of a shard's edits."""

    min_a: float = NO_EDIT_YET
    values: list[float] = field(default_factory=list)

    def update(self, value: float) -> None:
        self.values.append(value)
        self.min_a = min(self.min_a, value)


def distances(reference: torch.Tensor, other: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Per row and position: the L2 distance of the activated outputs (EasyEdit's euc, before the mean)."""
    return torch.norm(act(other) - act(reference), dim=-1)


def train_distance(reference: torch.Tensor, other: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """euc(infer=False) without masks: the mean over every position (pads included), per row."""
    norms = distances(reference, other, act)
    if norms.dim() == 1:
        norms = norms.unsqueeze(0)
    return torch.mean(norms, dim=-1)


def route_distance(norms: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """euc(infer=True) for each row alone: its attended positions, the largest beyond 100, else the mean."""
    rows = []
    for row in range(norms.shape[0]):
        own = norms[row] if valid is None else norms[row][valid[row]]
        own = own.unsqueeze(0)
        rows.append(torch.topk(own, k=1, largest=True).values.mean() if own.size(1) > TOPK_AFTER else torch.mean(own, dim=-1)[0])
    return torch.stack(rows)


class WiseMemory(nn.Module):
    """The side memory in place of one Linear (EasyEdit's WISEAdapter)."""

    def __init__(self, base: nn.Linear, hparams: WiseHParams, act: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.base = base
        self.hparams = hparams
        self.act = act
        self.editing = False
        self.bypass = False
        self.valid: torch.Tensor | None = None  # the attention mask of the call in progress
        self.last_choice: list[int] = []
        self.original_out: torch.Tensor | None = None
        self.edited_out: torch.Tensor | None = None
        self.renew()

    def renew(self) -> None:
        """A fresh memory, as EasyEdit's WISEAdapter starts: nothing edited, saved or merged."""
        self.new_weight = self.base.weight.detach().clone()
        self.merged = self.base.weight.detach()
        self.memory: list[torch.Tensor] = []
        self.memory_acts: list[MinAct] = []
        self.editing_act = MinAct()
        self.edit_count = 0
        self.merge_count = 0
        self.weight_mask: torch.Tensor | None = None

    def new_mask(self, rng: np.random.RandomState) -> None:
        """generate_activation_mask: each entry trainable with probability mask_ratio."""
        ratio = self.hparams.mask_ratio
        drawn = rng.choice([1, 0], size=self.new_weight.numel(), p=[ratio, 1 - ratio])
        self.weight_mask = torch.from_numpy(drawn).to(self.new_weight.device)

    def mask_gradient(self) -> None:
        grad = self.new_weight.grad
        assert grad is not None and self.weight_mask is not None
        self.new_weight.grad = (grad.reshape(-1) * self.weight_mask).view(grad.size()).to(grad.dtype)

    def clamp_to_original(self, bound: float) -> None:
        """norm_constraint: every entry within `bound` of the original weight."""
        with torch.no_grad():
            original = self.base.weight
            self.new_weight[...] = torch.clamp(self.new_weight, min=original - bound, max=original + bound)

    def record_activation(self) -> None:
        """save_editing_activation: the mean in-scope distance of this step joins the shard's minimum."""
        assert self.original_out is not None and self.edited_out is not None
        scope = train_distance(self.original_out[:-1], self.edited_out[:-1], self.act)
        self.editing_act.update(scope.mean().item())

    def save(self) -> None:
        """save_weight: the edited shard joins the memory; the next shard starts from the original."""
        self.memory.append(self.new_weight.detach().clone())
        self.new_weight = self.base.weight.detach().clone()
        if self.hparams.retrieve:
            self.memory_acts.append(MinAct(self.editing_act.min_a, list(self.editing_act.values)))
            self.editing_act = MinAct()

    def merge_shards(self) -> None:
        """merge_weight. WISE-Merge: every saved shard (with the earlier merge, 0.4/0.6, once there is one)
        into the merged weight. WISE-Retrieve: the last merge_freq/save_freq shards into one shard."""
        h = self.hparams
        original = self.base.weight.detach()
        if not h.retrieve:
            if not self.memory:
                return
            if torch.equal(original, self.merged):
                weights = [_weights(h) / len(self.memory)] * len(self.memory)
                merged = merge(h.merge_alg, weights, original, self.memory, h.densities)
            else:
                weights = [0.4 / len(self.memory)] * len(self.memory) + [0.6]
                merged = merge(h.merge_alg, weights, original, self.memory + [self.merged], h.densities)
            self.merged = merged.detach().to(self.merged.device)
            self.new_weight = original.clone()
            self.memory = []
            return
        count = h.merge_freq // h.save_freq
        if len(self.memory) < count:
            raise RuntimeError(f"WISE-Retrieve merge needs {count} saved shards, has {len(self.memory)}")
        merged = merge(h.merge_alg, [_weights(h) / count] * count, original, self.memory[-count:], h.densities)
        smallest = min([NO_EDIT_YET] + [act.min_a for act in self.memory_acts[-count:]])
        del self.memory[-count:], self.memory_acts[-count:]
        self.new_weight = original.clone()
        self.memory.append(merged.detach())
        self.memory_acts.append(MinAct(smallest))
        self.merge_count += 1

    def fold_pending(self) -> None:
        """What EasyEdit's WISE.__call__ does before every evaluation forward in WISE-Merge mode:
        a trained shard not saved yet is added to the memory and everything is merged (once
        edit_count >= save_freq). A second call finds nothing to do."""
        if self.hparams.retrieve or self.editing:
            return
        if not torch.equal(self.base.weight, self.new_weight) and self.edit_count >= self.hparams.save_freq:
            self.memory.append(self.new_weight.detach())
        if self.memory and self.edit_count >= self.hparams.save_freq:
            self.merge_shards()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.editing:
            self.edited_out = F.linear(x, self.new_weight)
            self.original_out = self.base(x)
            return self.edited_out
        original = self.base(x)
        if self.bypass:
            return original
        choice, candidates = self.route(x, original)
        self.last_choice = choice
        return _pick(choice, candidates)

    def _valid(self, length: int) -> torch.Tensor | None:
        """The attended positions of the rows in this call (the last `length` under a KV cache)."""
        if self.valid is None:
            return None
        return self.valid[:, -length:].to(torch.bool)

    def route(self, x: torch.Tensor, original: torch.Tensor) -> tuple[list[int], list[torch.Tensor]]:
        """Per row, which candidate output it takes: 0 the original, then (WISE-Merge) 1 the merged
        weight, 2 the shard in training; (WISE-Retrieve) 1 the shard in training, 2.. the saved shards."""
        valid = self._valid(x.shape[-2]) if x.dim() > 2 else None
        threshold = self.editing_act.min_a * self.hparams.act_ratio
        new_out = F.linear(x, self.new_weight)
        new_dist = route_distance(distances(original, new_out, self.act), valid)
        if not self.hparams.retrieve:
            merged_out = F.linear(x, self.merged, self.base.bias)
            merged_dist = route_distance(distances(original, merged_out, self.act), valid)
            choice = []
            for d_merged, d_new in zip(merged_dist.tolist(), new_dist.tolist()):
                choice.append(0 if d_merged < threshold and d_new < threshold else (1 if d_merged > d_new else 2))
            return choice, [original, merged_out, new_out]
        best = new_dist.clone()
        choice = [0 if d < threshold else 1 for d in new_dist.tolist()]
        candidates = [original, new_out]
        for weight, act in zip(self.memory, self.memory_acts):
            out = F.linear(x, weight)
            dist = route_distance(distances(original, out, self.act), valid)
            wins = (dist > best) & (dist > act.min_a * self.hparams.act_ratio)  # float32 comparisons, as EasyEdit's
            candidates.append(out)
            for row in torch.nonzero(wins).flatten().tolist():
                choice[row] = len(candidates) - 1
            best = torch.where(wins, dist, best)
        return choice, candidates


def _weights(h: WiseHParams) -> float:
    if h.weights is None:
        raise DeferInputError(f"merge_alg {h.merge_alg!r} needs key 'weights'")
    return h.weights


def _pick(choice: Sequence[int], candidates: Sequence[torch.Tensor]) -> torch.Tensor:
    """Row r of the output is row r of candidates[choice[r]]."""
    if all(c == choice[0] for c in choice):
        return candidates[choice[0]]
    return torch.stack([candidates[c][row] for row, c in enumerate(choice)])
