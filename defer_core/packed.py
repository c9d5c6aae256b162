"""Several trials in one forward pass: K DEFER adaptors on the same Linear, edited in lockstep.

Trials of a sweep edit the same record stream, so at every edit the tokens are the same for
all of them and the frozen layers below the edited one are computed once. The K adaptors then
run as K rows of one batch through the layers above: row k uses trial k's heads, so its loss
and gradients are exactly trial k's. Each trial keeps its own Adam (its own edit_lr), its own
n_iter (a finished trial's row leaves the batch) and its own threshold.

Heads start from the same seeded default init a single `DeferAdaptor.reset_heads(seed)` uses,
so a packed trial gives the result of that trial run alone (the tests check it).
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .adaptor import DeferAdaptor
from .decoder import UpperDecoder, capture_layer_input, decoder_layers
from .editor import EditStats
from .errors import DeferInputError
from .hparams import DeferHParams
from .models import LoadedModel
from .module_path import decoder_layer_index, parse_module_path, replace_module, resolve_module
from .tokens import PromptTarget


class PackedDeferAdaptor(nn.Module):
    """K independent DEFER adaptors. Row block k of a batch goes through member k, or every row
    through one member while `member(k)` is active (evaluation of one trial)."""

    def __init__(self, base: nn.Linear, thresholds: Sequence[float], seeds: Sequence[int]) -> None:
        super().__init__()
        self.base = base
        self.members = nn.ModuleList(DeferAdaptor(base, threshold) for threshold in thresholds)
        self.seeds = list(seeds)
        self.active: list[int] = list(range(len(self.members)))
        self.selected: int | None = None
        self.reset_heads()

    def reset_heads(self) -> None:
        for member, seed in zip(self.members, self.seeds):
            member.reset_heads(seed)

    @property
    def untrained(self) -> bool:
        return all(member.untrained for member in self.members)

    @untrained.setter
    def untrained(self, value: bool) -> None:
        for member in self.members:
            member.untrained = value

    @contextlib.contextmanager
    def member(self, index: int) -> Iterator[DeferAdaptor]:
        previous, self.selected = self.selected, index
        try:
            yield self.members[index]
        finally:
            self.selected = previous

    @contextlib.contextmanager
    def keyed_on(self, key_positions: torch.Tensor | None) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for member in self.members:
                stack.enter_context(member.keyed_on(key_positions))
            yield

    @contextlib.contextmanager
    def bypassed(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for member in self.members:
                stack.enter_context(member.bypassed())
            yield

    def chosen(self) -> DeferAdaptor:
        """The member `member(k)` selected: evaluation reads and sets one trial's adaptor."""
        if self.selected is None:
            raise RuntimeError("select a member with member(k) before evaluating a packed adaptor")
        return self.members[self.selected]

    def forced_on(self) -> contextlib.AbstractContextManager[None]:
        return self.chosen().forced_on()

    def at_threshold(self, threshold: float) -> contextlib.AbstractContextManager[None]:
        return self.chosen().at_threshold(threshold)

    def row_thresholds(self, thresholds: torch.Tensor | None) -> contextlib.AbstractContextManager[None]:
        return self.chosen().row_thresholds(thresholds)

    def recording_gates(self) -> contextlib.AbstractContextManager[list[torch.Tensor]]:
        return self.chosen().recording_gates()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.selected is not None:
            return self.members[self.selected](x)
        blocks = x.chunk(len(self.active), dim=0)
        return torch.cat([self.members[k](block) for k, block in zip(self.active, blocks)], dim=0)


class PackedDeferEditor:
    """Edits K trials' adaptors (same module path) with one shared frozen prefix per edit."""

    def __init__(self, loaded: LoadedModel, hparams: Sequence[DeferHParams], seeds: Sequence[int]) -> None:
        paths = {h.module_path for h in hparams}
        if len(paths) != 1:
            raise DeferInputError(f"packed trials must edit the same module, got {sorted(paths)}")
        self.loaded = loaded
        self.hparams = list(hparams)
        self.path = parse_module_path(self.hparams[0].module_path)
        self.layer_index = decoder_layer_index(self.path)
        layers = decoder_layers(loaded.model)
        if self.layer_index is None or layers is None:
            raise DeferInputError("packing trials needs a Llama-style decoder (model.layers[i]...)")
        base = resolve_module(loaded.model, self.path)
        if not isinstance(base, nn.Linear):
            raise DeferInputError(f"module path {self.hparams[0].module_path!r} names a {type(base).__name__}, DEFER needs a Linear")
        self.adaptor = PackedDeferAdaptor(base, [h.threshold for h in self.hparams], seeds)
        replace_module(loaded.model, self.path, self.adaptor)
        self.layers = layers

    @property
    def size(self) -> int:
        return len(self.hparams)

    def reset(self) -> None:
        self.adaptor.reset_heads()

    def detach(self) -> None:
        replace_module(self.loaded.model, self.path, self.adaptor.base)

    def edit(self, probe: PromptTarget) -> list[EditStats]:
        """One edit of the same record for every member; returns each member's losses."""
        start = time.perf_counter()
        model = self.loaded.model
        input_ids = torch.tensor([probe.ids], dtype=torch.long, device=self.loaded.device)
        self.adaptor.untrained = False
        optimizers = [torch.optim.Adam(m.head_parameters(), lr=h.edit_lr) for m, h in zip(self.adaptor.members, self.hparams)]
        losses: list[list[torch.Tensor]] = [[] for _ in self.hparams]
        self.adaptor.train(True)
        try:
            hidden_in, layer_kwargs = capture_layer_input(model, self.layers[self.layer_index], input_ids)
            upper = UpperDecoder.of(model, self.layer_index)
            predict_from = torch.arange(probe.n_prompt - 1, input_ids.shape[1] - 1, device=input_ids.device)
            targets = input_ids[0, probe.n_prompt :]
            for step in range(max(h.n_iter for h in self.hparams)):
                active = [k for k, h in enumerate(self.hparams) if step < h.n_iter]
                self.adaptor.active = active
                hidden = upper.hidden_states(hidden_in.expand(len(active), -1, -1), **layer_kwargs)
                logits = upper.logits(hidden[:, predict_from]).float()  # (K, T, V)
                per_member = F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), targets.repeat(len(active)), reduction="none"
                ).view(len(active), -1).mean(dim=1)
                per_member.sum().backward()
                for row, k in enumerate(active):
                    losses[k].append(per_member[row].detach())
                    optimizers[k].step()
                    optimizers[k].zero_grad()
        finally:
            self.adaptor.train(False)
            self.adaptor.active = list(range(self.size))
        seconds = time.perf_counter() - start
        return [EditStats(losses=torch.stack(steps).float().cpu().tolist(), seconds=seconds / self.size) for steps in losses]
