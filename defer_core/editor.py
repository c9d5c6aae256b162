"""One DEFER edit: a fresh Adam over the adaptor's heads, `n_iter` steps of the prompt-masked
causal-LM loss; the adaptor persists from edit to edit.

Two ways to take a step, same numbers:
* plain: the whole model forward with labels, as the reference does;
* fast: everything below the edited decoder layer is frozen and does not depend on the
  adaptor, so its output is computed once per edit; each step runs only the layers from the
  edited one up, and only the target positions go through the LM head.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .adaptor import DeferAdaptor
from .decoder import edit_path_for, suffix_hidden_states
from .errors import DeferInputError
from .plan import EDIT_PATHS
from .hparams import DeferHParams
from .models import LoadedModel
from .module_path import ModulePath, decoder_layer_index, parse_module_path, replace_module, resolve_module
from .tokens import PromptTarget

StepLoss = Callable[[], torch.Tensor]


@dataclass(frozen=True)
class EditStats:
    losses: list[float]
    seconds: float

    @property
    def final_loss(self) -> float:
        return self.losses[-1]


class DeferEditor:
    """Attaches a DEFER adaptor to one Linear of a loaded model and edits it record by record."""

    def __init__(self, loaded: LoadedModel, hparams: DeferHParams, *, seed: int = 0, edit_path: str = "fast") -> None:
        if edit_path not in EDIT_PATHS:
            raise DeferInputError(f"edit_path must be one of {', '.join(EDIT_PATHS)}, got {edit_path!r}")
        self.loaded = loaded
        self.hparams = hparams
        self.seed = seed
        self.path: ModulePath = parse_module_path(hparams.module_path)
        base = resolve_module(loaded.model, self.path)
        if isinstance(base, DeferAdaptor):
            raise DeferInputError(f"module path {hparams.module_path!r} already carries a DEFER adaptor")
        if not isinstance(base, nn.Linear):
            raise DeferInputError(f"module path {hparams.module_path!r} names a {type(base).__name__}, DEFER needs a Linear")
        self.adaptor = DeferAdaptor(base, hparams.threshold)
        self.adaptor.reset_heads(seed)
        replace_module(loaded.model, self.path, self.adaptor)
        self.layer_index = decoder_layer_index(self.path)
        self.edit_path = edit_path_for(self.model, self.layer_index, edit_path)

    @property
    def model(self) -> nn.Module:
        return self.loaded.model

    def reset(self) -> None:
        """Back to the unedited model (the same initial heads as at attach)."""
        self.adaptor.reset_heads(self.seed)

    def detach(self) -> None:
        """Put the original Linear back; the model is exactly as loaded."""
        replace_module(self.model, self.path, self.adaptor.base)

    def edit(self, probe: PromptTarget) -> EditStats:
        """Train the adaptor's heads on one (prompt, target) for n_iter steps."""
        start = time.perf_counter()
        device = self.loaded.device
        input_ids = torch.tensor([probe.ids], dtype=torch.long, device=device)
        self.adaptor.untrained = False
        self.adaptor.train(True)
        try:
            step_loss = self._fast_step(input_ids, probe.n_prompt) if self.edit_path == "fast" else self._plain_step(input_ids, probe.n_prompt)
            optimizer = torch.optim.Adam(self.adaptor.head_parameters(), lr=self.hparams.edit_lr)
            losses = []
            for _ in range(self.hparams.n_iter):
                loss = step_loss()
                losses.append(loss.detach())
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
        finally:
            self.adaptor.train(False)
        return EditStats(losses=torch.stack(losses).float().cpu().tolist(), seconds=time.perf_counter() - start)

    def _plain_step(self, input_ids: torch.Tensor, n_prompt: int) -> StepLoss:
        labels = input_ids.clone()
        labels[:, :n_prompt] = -100
        return lambda: self.model(input_ids=input_ids, labels=labels, use_cache=False).loss

    def _fast_step(self, input_ids: torch.Tensor, n_prompt: int) -> StepLoss:
        assert self.layer_index is not None
        upper, top_hidden = suffix_hidden_states(self.model, self.layer_index, input_ids)
        predict_from = torch.arange(n_prompt - 1, input_ids.shape[1] - 1, device=input_ids.device)
        targets = input_ids[0, n_prompt:]

        def step() -> torch.Tensor:
            logits = upper.logits(top_hidden()[0, predict_from]).float()
            return F.cross_entropy(logits, targets)

        return step
