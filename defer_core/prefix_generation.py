"""Greedy generation that runs the layers below the adaptor once per token instead of once per step.

The decoder layers below the edited one do not depend on the adaptor, so the keys and values
they compute for a token never change as the sequence grows: they go into a KV cache and each
step runs them for the new token only. The layers from the edited one up are re-run over the
whole sequence at every step, because DEFER's gate reads the current last token and its
decision applies to every position (EasyEdit's `use_cache=False` semantics). With no adaptor
every layer is frozen and only the final norm and LM head remain per step.

Slots: row r's prompt sits right-padded in slots 0..W-1 and each step appends one token per row
at the next slot. A 4D mask lets a slot see only earlier real slots of its own row and position
ids are the row's own positions, so every row computes what it would compute alone.

When a probe is scored both ways, the teacher-forced sequence (prompt + target) starts with the
generation prompt, so the frozen layers run once over it: the tf answer is read from it, then
generation keeps only the prompts' slots (the target's become padding) and appends after them.

A threshold grid generates every prompt at several thresholds: the frozen layers run over the
prompts once, then each row is repeated once per threshold (`_SlotBatch.keep` with a repeated
row index) and carries its own threshold, which follows it when finished rows leave the batch.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Iterator, Sequence

import torch
from torch import nn

from .adaptor import DeferAdaptor
from .decoder import UpperDecoder, decoder_layers, first_output
from .tokens import GenerationProbe, PromptTarget


def frozen_layer_count(model: nn.Module, adaptor: nn.Module | None) -> int | None:
    """How many decoder layers sit below the adaptor (all of them without one), or None when
    the model is not a Llama-style decoder this module knows how to drive."""
    decoder = model.get_decoder()
    layers = decoder_layers(model)
    if layers is None or not all(hasattr(decoder, name) for name in ("embed_tokens", "rotary_emb", "norm")):
        return None
    if _cache_keyword(layers[0]) is None:
        return None
    if adaptor is None:
        return len(layers)
    for index, layer in enumerate(layers):
        if any(module is adaptor for module in layer.modules()):
            return index
    return None


def _cache_keyword(layer: nn.Module) -> str | None:
    """The name a decoder layer takes its KV cache by (it changed across transformers versions)."""
    parameters = inspect.signature(layer.forward).parameters
    return next((name for name in ("cache", "past_key_values", "past_key_value") if name in parameters), None)


def _attention_mask(valid: torch.Tensor, query_slots: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive (B, 1, Q, S) mask: a query at slot q sees real slots k <= q of its own row."""
    key_slots = torch.arange(valid.shape[1], device=valid.device)
    allowed = valid[:, None, :] & (key_slots[None, None, :] <= query_slots[None, :, None])
    mask = torch.zeros(allowed.shape, dtype=dtype, device=valid.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


class _FrozenLayersCache:
    """Keys and values of the frozen layers, (B, heads, slots, dim) per layer. Llama-style
    attention only calls `update`; owning the tensors lets rows and slots be dropped."""

    def __init__(self) -> None:
        self.layers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx in self.layers:
            old_keys, old_values = self.layers[layer_idx]
            keys, values = torch.cat([old_keys, keys], dim=2), torch.cat([old_values, values], dim=2)
        self.layers[layer_idx] = (keys, values)
        return keys, values

    def keep(self, rows: torch.Tensor | slice, slots: slice = slice(None)) -> None:
        self.layers = {index: (k[rows][:, :, slots], v[rows][:, :, slots]) for index, (k, v) in self.layers.items()}


class _SlotBatch:
    """The growing batch: token slots, which are real, each slot's position, and the hidden
    states entering the first unfrozen layer (kept for every slot)."""

    def __init__(self, model: nn.Module, frozen: int) -> None:
        self.decoder = model.get_decoder()
        self.frozen = list(self.decoder.layers)[:frozen]
        self.upper = UpperDecoder.of(model, frozen)
        self.cache_keyword = _cache_keyword(self.decoder.layers[0])
        self.cache = _FrozenLayersCache()
        self.valid = torch.zeros(0, 0, dtype=torch.bool)
        self.positions = torch.zeros(0, 0, dtype=torch.long)
        self.hidden: torch.Tensor | None = None
        self.thresholds: torch.Tensor | None = None  # per row (threshold grid), else the adaptor's own

    def append(self, ids: torch.Tensor, valid: torch.Tensor, positions: torch.Tensor) -> None:
        """Run the frozen layers for new slots (B, Q) against the cached earlier slots."""
        first_slot = self.valid.shape[1] if self.hidden is not None else 0
        self.valid = valid if self.hidden is None else torch.cat([self.valid, valid], dim=1)
        self.positions = positions if self.hidden is None else torch.cat([self.positions, positions], dim=1)
        hidden = self.decoder.embed_tokens(ids)
        query_slots = torch.arange(first_slot, first_slot + ids.shape[1], device=ids.device)
        mask = _attention_mask(self.valid, query_slots, hidden.dtype)
        rotary = self.decoder.rotary_emb(hidden, positions)
        for layer in self.frozen:
            hidden = first_output(layer(hidden, attention_mask=mask, position_ids=positions, position_embeddings=rotary,
                                        use_cache=True, **{self.cache_keyword: self.cache}))
        self.hidden = hidden if self.hidden is None else torch.cat([self.hidden, hidden], dim=1)

    def keep(self, rows: torch.Tensor | slice, width: int | None = None) -> None:
        """Drop the other rows (finished ones) and the slots from `width` on; a row index
        repeated in `rows` repeats that row."""
        assert self.hidden is not None
        slots = slice(0, width)
        self.hidden, self.valid, self.positions = self.hidden[rows][:, slots], self.valid[rows][:, slots], self.positions[rows][:, slots]
        self.cache.keep(rows, slots)
        if self.thresholds is not None:
            self.thresholds = self.thresholds[rows]

    def unfrozen_hidden(self, adaptor: DeferAdaptor | None, key_slots: torch.Tensor) -> torch.Tensor:
        """The last decoder layer's output at every slot, the adaptor keyed on `key_slots`."""
        assert self.hidden is not None
        hidden = self.hidden
        if self.upper.layers:
            slots = torch.arange(hidden.shape[1], device=hidden.device)
            mask = _attention_mask(self.valid, slots, hidden.dtype)
            rotary = self.decoder.rotary_emb(hidden, self.positions)
            with contextlib.ExitStack() as stack:
                if adaptor is not None:
                    stack.enter_context(adaptor.keyed_on(key_slots))
                    if self.thresholds is not None:
                        stack.enter_context(adaptor.row_thresholds(self.thresholds))
                hidden = self.upper.hidden_states(hidden, attention_mask=mask, position_ids=self.positions, position_embeddings=rotary,
                                                  use_cache=False, **{self.cache_keyword: None})
        return hidden

    def argmax_at(self, hidden: torch.Tensor, rows: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Greedy token predicted at (row, slot) pairs: final norm and LM head on those only."""
        return self.upper.logits(hidden[rows, slots]).argmax(dim=-1)

    def next_tokens(self, adaptor: DeferAdaptor | None, key_slots: torch.Tensor) -> torch.Tensor:
        """Greedy next token of every row, reading the row's state at `key_slots`."""
        hidden = self.unfrozen_hidden(adaptor, key_slots)
        return self.argmax_at(hidden, torch.arange(hidden.shape[0], device=hidden.device), key_slots)


@contextlib.contextmanager
def recorded_gates(adaptor: nn.Module | None, wanted: bool) -> Iterator[list[torch.Tensor] | None]:
    """The adaptor's gate log while inside when `wanted` (else None): one (B,) tensor per forward."""
    if not wanted or adaptor is None:
        yield None
        return
    with adaptor.recording_gates() as log:
        yield log


def only_gates(log: list[torch.Tensor] | None) -> list[float]:
    """The gates of the one forward a log holds, as the exact floats of the model-dtype values."""
    if log is None or len(log) != 1:
        raise RuntimeError(f"expected the gates of one forward of a trained adaptor, got {0 if log is None else len(log)}")
    return log[0].float().tolist()


def right_padded(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, lengths) of rows padded on the right to the longest."""
    lengths = torch.tensor([len(row) for row in rows], device=device)
    width = int(lengths.max())
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    for index, row in enumerate(rows):
        ids[index, : len(row)] = torch.tensor(list(row), dtype=torch.long, device=device)
    mask = (torch.arange(width, device=device)[None, :] < lengths[:, None]).long()
    return ids, mask, lengths


def _start_batch(model: nn.Module, frozen: int, rows: Sequence[Sequence[int]], pad_id: int) -> tuple[_SlotBatch, torch.Tensor]:
    """Right-padded rows through the frozen layers; returns the batch and the row lengths."""
    ids, mask, lengths = right_padded(rows, pad_id, next(model.parameters()).device)
    batch = _SlotBatch(model, frozen)
    batch.append(ids, mask.bool(), torch.arange(ids.shape[1], device=ids.device).expand_as(ids))
    return batch, lengths


@torch.no_grad()
def generate_reusing_prefix(
    model: nn.Module,
    adaptor: DeferAdaptor | None,
    frozen: int,
    prompts: Sequence[Sequence[int]],
    budgets: Sequence[int],
    pad_id: int,
    eos_ids: frozenset[int],
) -> list[list[int]]:
    """Each prompt followed by its greedy continuation: `budgets[r]` tokens, or fewer when the
    row emits an EOS id (like `generate`). Rows that are done leave the batch."""
    batch, lengths = _start_batch(model, frozen, prompts, pad_id)
    return _generate(batch, adaptor, prompts, budgets, lengths, eos_ids)


@torch.no_grad()
def teacher_forced_and_generated(
    model: nn.Module,
    adaptor: DeferAdaptor | None,
    frozen: int,
    probes: Sequence[tuple[PromptTarget, GenerationProbe]],
    pad_id: int,
    eos_ids: frozenset[int],
) -> tuple[list[list[int]], list[list[int]]]:
    """Both scorings of probes whose generation prompt starts their teacher-forced sequence:
    the frozen layers run once over that sequence for both, then generation masks out the
    target's slots and appends its own tokens after them. Returns (tf predictions, prompt +
    generation per probe), as the separate functions would."""
    batch, lengths = _start_batch(model, frozen, [tf.ids for tf, _ in probes], pad_id)
    teacher_forced, _ = _teacher_forced_in(batch, adaptor, [tf for tf, _ in probes], lengths, gated=False)
    prompts = [gen.prompt_ids for _, gen in probes]
    prompt_lengths = torch.tensor([len(prompt) for prompt in prompts], device=lengths.device)
    batch.keep(slice(None), width=int(prompt_lengths.max()))  # the widest prompt's slots: what generation alone would have
    batch.valid = batch.valid & (torch.arange(batch.valid.shape[1], device=lengths.device)[None, :] < prompt_lengths[:, None])
    generated = _generate(batch, adaptor, prompts, [len(gen.target_ids) for _, gen in probes], prompt_lengths, eos_ids)
    return teacher_forced, generated


@torch.no_grad()
def teacher_forced_gated(
    model: nn.Module, adaptor: DeferAdaptor | None, frozen: int, probes: Sequence[PromptTarget], pad_id: int
) -> tuple[list[list[int]], list[float]]:
    """The teacher-forced half of `teacher_forced_and_generated` (same batch, same numbers) and
    each row's gate: what a threshold curve needs, without generating."""
    batch, lengths = _start_batch(model, frozen, [tf.ids for tf in probes], pad_id)
    teacher_forced, gates = _teacher_forced_in(batch, adaptor, probes, lengths, gated=True)
    assert gates is not None
    return teacher_forced, gates


def _teacher_forced_in(
    batch: _SlotBatch, adaptor: DeferAdaptor | None, probes: Sequence[PromptTarget], lengths: torch.Tensor, gated: bool
) -> tuple[list[list[int]], list[float] | None]:
    """tf predictions of a started batch of tf sequences, and with `gated` each row's gate."""
    with recorded_gates(adaptor, gated) as log:
        hidden = batch.unfrozen_hidden(adaptor, lengths - 1)
    rows = torch.cat([torch.full((len(tf.target_ids),), r) for r, tf in enumerate(probes)]).to(lengths.device)
    slots = torch.cat([torch.arange(tf.n_prompt - 1, len(tf.ids) - 1) for tf in probes]).to(lengths.device)
    tokens = batch.argmax_at(hidden, rows, slots).tolist()
    teacher_forced, start = [], 0
    for tf in probes:
        teacher_forced.append(tokens[start : start + len(tf.target_ids)])
        start += len(tf.target_ids)
    return teacher_forced, only_gates(log) if gated else None


@torch.no_grad()
def generate_at_thresholds(
    model: nn.Module,
    adaptor: DeferAdaptor,
    frozen: int,
    prompts: Sequence[Sequence[int]],
    budgets: Sequence[int],
    thresholds: Sequence[float],
    pad_id: int,
    eos_ids: frozenset[int],
) -> list[list[list[int]]]:
    """Per prompt, per threshold: the prompt and its greedy continuation with the adaptor at
    that threshold (as `generate_reusing_prefix` at that threshold). The frozen layers run over
    the prompts once; each row is then repeated once per threshold."""
    batch, lengths = _start_batch(model, frozen, prompts, pad_id)
    count = len(thresholds)
    rows = torch.arange(len(prompts), device=lengths.device).repeat_interleave(count)
    batch.keep(rows)
    # float32, as a Python threshold is rounded when compared with a tensor (then to the gate's dtype)
    batch.thresholds = torch.tensor(list(thresholds), dtype=torch.float32, device=lengths.device).repeat(len(prompts))
    repeated = [prompt for prompt in prompts for _ in thresholds]
    sequences = _generate(batch, adaptor, repeated, [budget for budget in budgets for _ in thresholds], lengths[rows], eos_ids)
    return [sequences[index * count : (index + 1) * count] for index in range(len(prompts))]


def shares_prefix(tf: PromptTarget, gen: GenerationProbe) -> bool:
    return len(gen.prompt_ids) <= len(tf.ids) and tuple(tf.ids[: len(gen.prompt_ids)]) == tuple(gen.prompt_ids)


def _generate(
    batch: _SlotBatch,
    adaptor: DeferAdaptor | None,
    prompts: Sequence[Sequence[int]],
    budgets: Sequence[int],
    lengths: torch.Tensor,
    eos_ids: frozenset[int],
) -> list[list[int]]:
    """Greedy generation from a batch whose frozen layers have seen the prompts (real slots
    = each prompt); new tokens go to slots after the batch's current width."""
    device = lengths.device
    width = batch.valid.shape[1]
    sequences = [list(prompt) for prompt in prompts]
    live = [index for index, budget in enumerate(budgets) if budget > 0]  # batch row -> prompt index
    if len(live) < len(prompts) and live:
        batch.keep(torch.tensor(live, device=device))
    lengths = lengths[live]
    key_slots = lengths - 1
    step = 0
    while live:
        tokens = batch.next_tokens(adaptor, key_slots).tolist()
        still = [row for row, (index, token) in enumerate(zip(live, tokens)) if _goes_on(sequences[index], token, len(prompts[index]), budgets[index], eos_ids)]
        if not still:
            break
        kept = torch.tensor(still, device=device)
        if len(still) < len(live):
            batch.keep(kept)
        live, lengths = [live[row] for row in still], lengths[kept]
        new_tokens = torch.tensor([[tokens[row]] for row in still], dtype=torch.long, device=device)
        batch.append(new_tokens, torch.ones(len(live), 1, dtype=torch.bool, device=device), (lengths + step)[:, None])
        step += 1
        key_slots = torch.full_like(lengths, width + step - 1)
    return sequences


def _goes_on(sequence: list[int], token: int, n_prompt: int, budget: int, eos_ids: frozenset[int]) -> bool:
    """Append the token; True while the row has budget left and has not emitted EOS."""
    sequence.append(token)
    return len(sequence) - n_prompt < budget and token not in eos_ids
