"""The DEFER adaptor: a learned gate and value head wrapped around one frozen Linear.

Semantics follow the reference (GRACE `grace/editors/defer.py`, EasyEdit
`easyeditor/models/defer/DEFER.py`), restated here for batches:

* the query is the wrapped layer's input at the key token, the last real token of each row;
* before the first edit the adaptor is transparent;
* training: out = g * v + (1 - g) * base(x) at every position, g = sigmoid(defer(q)), v = predict_values(q);
* evaluation: per row, every position gets v if g >= threshold, else base(x).

Evaluation can also force the value head on for every row (`forced_on`), log each forward's
gates (`recording_gates`) and give each row its own threshold (`row_thresholds`): a threshold
curve reads a row's accuracy at any threshold from its gate and its forced-on and unedited
answers, and a threshold grid generates every row at several thresholds in one batch.

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
        self.thresholds: torch.Tensor | None = None  # per row, used instead of `threshold` while set
        self.gate_log: list[torch.Tensor] | None = None
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

    @contextlib.contextmanager
    def forced_on(self) -> Iterator[None]:
        """The value head answers every row (threshold -inf: a sigmoid gate is always >= it)."""
        previous = self.threshold, self.thresholds
        self.threshold, self.thresholds = float("-inf"), None
        try:
            yield
        finally:
            self.threshold, self.thresholds = previous

    @contextlib.contextmanager
    def at_threshold(self, threshold: float) -> Iterator[None]:
        """Evaluate at another threshold while inside (the heads are untouched)."""
        previous, self.threshold = self.threshold, float(threshold)
        try:
            yield
        finally:
            self.threshold = previous

    @contextlib.contextmanager
    def row_thresholds(self, thresholds: torch.Tensor | None) -> Iterator[None]:
        """One threshold per batch row, (B,), instead of the scalar one while inside. Give them in
        float32 (as Python floats become when compared with a tensor), or in the model's dtype."""
        previous, self.thresholds = self.thresholds, thresholds
        try:
            yield
        finally:
            self.thresholds = previous

    @contextlib.contextmanager
    def recording_gates(self) -> Iterator[list[torch.Tensor]]:
        """Collects the (B,) gate tensor, in the model's dtype, of every evaluation forward inside."""
        previous, self.gate_log = self.gate_log, []
        try:
            yield self.gate_log
        finally:
            self.gate_log = previous

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
        if self.gate_log is not None:
            self.gate_log.append(gate.detach().view(-1))
        if self.thresholds is None:
            return torch.where(gate >= self.threshold, values, out)
        thresholds = self.thresholds.to(device=gate.device).to(gate.dtype).view(-1, 1, 1)
        return torch.where(gate >= thresholds, values, out)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, untrained={self.untrained}"
