"""Driving a Llama-style decoder by hand: the layers from the edited one up, then norm and LM head.

The fast paths (editor, packed, prefix_generation) never change the layers below the adaptor,
so they compute those once and re-run only the top of the model over hidden states. A
Llama-style model has `model.get_decoder()` with `layers` (a ModuleList of decoder layers
called as `layer(hidden, attention_mask=..., position_embeddings=..., ...)`) and a final
`norm`, and `model.get_output_embeddings()` as the LM head.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised by a pre-hook to end a forward pass once the inputs it needs are captured."""


def decoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The decoder's layers, or None when the model has no `layers` ModuleList."""
    layers = getattr(model.get_decoder(), "layers", None)
    return layers if isinstance(layers, nn.ModuleList) else None


def edit_path_for(model: nn.Module, layer_index: int | None, edit_path: str) -> str:
    """The edit path an editor takes: "fast" (suffix-only steps) needs the edited module inside
    a decoder layer of a Llama-style decoder (`layers`, `norm`); otherwise "plain", with a warning."""
    if edit_path != "fast":
        return edit_path
    if layer_index is not None and decoder_layers(model) is not None and hasattr(model.get_decoder(), "norm"):
        return "fast"
    log.warning("fast edit path needs a Llama-style decoder (layers, norm) and a module inside a decoder layer; using the plain path")
    return "plain"


def suffix_hidden_states(model: nn.Module, layer_index: int, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                         ) -> tuple[UpperDecoder, Callable[[], torch.Tensor]]:
    """The fast edit paths' step: the input of decoder layer `layer_index` captured once (the
    layers below never train), and a call that runs the layers from it up over that input (the
    top of the plain forward: same operations, same inputs). Each editor reads its logits from
    the returned UpperDecoder."""
    layers = decoder_layers(model)
    assert layers is not None
    hidden_in, layer_kwargs = capture_layer_input(model, layers[layer_index], input_ids, attention_mask)
    upper = UpperDecoder.of(model, layer_index)
    return upper, lambda: upper.hidden_states(hidden_in, **layer_kwargs)


def first_output(output: torch.Tensor | tuple) -> torch.Tensor:
    """A decoder layer's hidden states (layers return a tuple in some transformers versions)."""
    return output[0] if isinstance(output, tuple) else output


@dataclass(frozen=True, eq=False)
class UpperDecoder:
    """Decoder layers `first`..N-1, the final norm and the LM head."""

    layers: tuple[nn.Module, ...]
    norm: nn.Module
    head: nn.Module

    @classmethod
    def of(cls, model: nn.Module, first: int) -> UpperDecoder:
        decoder = model.get_decoder()
        return cls(layers=tuple(decoder.layers)[first:], norm=decoder.norm, head=model.get_output_embeddings())

    def hidden_states(self, hidden: torch.Tensor, **layer_kwargs: object) -> torch.Tensor:
        """The last layer's output for `hidden` entering layer `first`; `layer_kwargs` are what
        every layer is called with besides the hidden states (attention mask, position ids and
        embeddings, cache arguments)."""
        for layer in self.layers:
            hidden = first_output(layer(hidden, **layer_kwargs))
        return hidden

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM-head logits of last-layer hidden states (final norm, then head), in the model's dtype."""
        return self.head(self.norm(hidden))


@torch.no_grad()
def capture_layer_input(model: nn.Module, layer: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Run the model up to `layer` and keep what that layer is called with (hidden states and
    the keyword arguments: mask, rotary embeddings, positions); the rest of the forward is skipped.
    `attention_mask` is passed on when given (GRACE's plain step passes one; DEFER's does not),
    so the capture makes the very call the plain path makes."""
    captured: dict = {}

    def grab(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if len(args) > 1:
            raise RuntimeError("the fast edit path expects decoder layers called with keyword arguments")
        captured["hidden"] = args[0] if args else kwargs["hidden_states"]
        captured["kwargs"] = {key: value for key, value in kwargs.items() if key != "hidden_states"}
        raise _StopForward

    handle = layer.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model(input_ids=input_ids, use_cache=False, **({} if attention_mask is None else {"attention_mask": attention_mask}))
    except _StopForward:
        pass
    finally:
        handle.remove()
    return captured["hidden"], captured["kwargs"]
