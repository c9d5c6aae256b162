"""The DEFER adaptor: a learned gate and value head wrapped around one frozen Linear.

Semantics follow the reference (GRACE `grace/editors/defer.py`, EasyEdit
`easyeditor/models/defer/DEFER.py`), restated here for batches:

* the query is the wrapped layer's input at the key token, the last real token of each row;
* before the first edit the adaptor is transparent;
* training: out = g * v + (1 - g) * base(x) at every position, g = sigmoid(defer(q)), v = predict_values(q);
* evaluation: per row, every position gets v if g >= threshold, else base(x).

The reference only works for batch size 1; here each row is decided on its own, so a row in a
padded batch gets the answer it would get alone.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


class DeferAdaptor(nn.Module):
    """Wraps `base` (kept frozen) the way a PEFT layer wraps its target."""

    def __init__(self, base: nn.Linear, threshold: float) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"DEFER wraps an nn.Linear, got {type(base).__name__}")
        self.base = base
        for parameter in base.parameters():
            parameter.requires_grad_(False)
        # Like the reference: default init on the CPU in float32, then moved to the layer's device and dtype.
        self.defer = nn.Linear(base.in_features, 1).to(device=base.weight.device, dtype=base.weight.dtype)
        self.predict_values = nn.Linear(base.in_features, base.out_features).to(device=base.weight.device, dtype=base.weight.dtype)
        self.threshold = float(threshold)
        self.untrained = True
        self.key_positions: torch.Tensor | None = None
        self.train(False)

    def head_parameters(self) -> list[nn.Parameter]:
        """The only trainable tensors: gate and value heads."""
        return [*self.defer.parameters(), *self.predict_values.parameters()]

    def reset_heads(self, seed: int | None) -> None:
        """Back to the unedited model: fresh heads with torch's default init, transparent again."""
        with torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext():
            if seed is not None:
                torch.manual_seed(seed)
            fresh_defer = nn.Linear(self.base.in_features, 1)
            fresh_values = nn.Linear(self.base.in_features, self.base.out_features)
        with torch.no_grad():
            for target, source in ((self.defer, fresh_defer), (self.predict_values, fresh_values)):
                target.weight.copy_(source.weight)
                target.bias.copy_(source.bias)
        self.untrained = True

    @contextlib.contextmanager
    def keyed_on(self, key_positions: torch.Tensor | None) -> Iterator[None]:
        """Use these per-row token indices as queries (the last real token of padded rows)."""
        previous, self.key_positions = self.key_positions, key_positions
        try:
            yield
        finally:
            self.key_positions = previous

    @contextlib.contextmanager
    def bypassed(self) -> Iterator[None]:
        """Answer as the unedited model while inside, whatever has been learnt."""
        previous, self.untrained = self.untrained, True
        try:
            yield
        finally:
            self.untrained = previous

    def query(self, x: torch.Tensor) -> torch.Tensor:
        if self.key_positions is None:
            return x[:, -1, :]
        rows = torch.arange(x.shape[0], device=x.device)
        return x[rows, self.key_positions.to(x.device), :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.untrained:
            return out
        query = self.query(x)
        gate = torch.sigmoid(self.defer(query)).unsqueeze(1)  # (B, 1, 1)
        values = self.predict_values(query).unsqueeze(1)  # (B, 1, out)
        if self.training:
            return gate * values + (1 - gate) * out
        return torch.where(gate >= self.threshold, values, out)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, untrained={self.untrained}"
