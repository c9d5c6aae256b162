"""Teacher-forced and generation scoring in padded batches, identical to one row at a time.

Rows are right-padded, so causal attention never lets a real token see a pad and positions
stay 0..n-1 as when the row is alone; the adaptor is keyed on each row's last real token.
Only the positions that are scored go through the LM head.

Generation re-runs the layers from the edited one up over the whole sequence at every step
(EasyEdit's `use_cache=False`): DEFER's gate looks at the current last token and its decision
applies to every position, which a full KV cache would freeze at older decisions. The layers
below the adaptor are frozen, so by default their keys and values are cached
(`prefix_generation`); `reuse_prefix=False` re-runs everything, as the reference does.

The `*_gated` variants also return each tf row's gate, batched exactly as their plain
counterparts batch it, so the gates are those an evaluation computes (defer_core.curve).
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from torch import nn

from .adaptor import DeferAdaptor
from .prefix_generation import (
    frozen_layer_count,
    generate_at_thresholds,
    generate_reusing_prefix,
    only_gates,
    recorded_gates,
    right_padded,
    shares_prefix,
    teacher_forced_and_generated,
    teacher_forced_gated,
)
from .tokens import GenerationProbe, PromptTarget

DEFAULT_BATCH_SIZE = 32
# A row that stops at EOS before prompt + generation reach len(target) tokens (where EasyEdit's
# np.equal would fail) is left-filled with this id, which matches no real token.
NOT_GENERATED = -1


@torch.no_grad()
def argmax_at(
    model: nn.Module,
    adaptor: DeferAdaptor | None,
    rows: Sequence[Sequence[int]],
    positions: Sequence[Sequence[int]],
    pad_id: int,
) -> list[list[int]]:
    """For each row, the argmax next token at each listed position, in one padded forward."""
    device = next(model.parameters()).device
    ids, mask, lengths = right_padded(rows, pad_id, device)
    keyed = adaptor.keyed_on(lengths - 1) if adaptor is not None else contextlib.nullcontext()
    with keyed:
        hidden = model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    row_index = torch.cat([torch.full((len(p),), r, device=device) for r, p in enumerate(positions)])
    col_index = torch.cat([torch.tensor(list(p), dtype=torch.long, device=device) for p in positions])
    tokens = model.get_output_embeddings()(hidden[row_index, col_index]).argmax(dim=-1).tolist()
    out, start = [], 0
    for p in positions:
        out.append(tokens[start : start + len(p)])
        start += len(p)
    return out


def _batches(count: int, batch_size: int) -> list[range]:
    return [range(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


def _by_length(lengths: Sequence[int]) -> list[int]:
    """Group rows of similar length so padding wastes little; results are re-ordered back."""
    return sorted(range(len(lengths)), key=lambda index: lengths[index])


def teacher_forced_predictions(
    model: nn.Module,
    adaptor: DeferAdaptor | None,
    probes: Sequence[PromptTarget],
    pad_id: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[list[int]]:
    """The model's argmax at each target position given the true previous tokens."""
    return _teacher_forced(model, adaptor, probes, pad_id, batch_size, gated=False)[0]


def teacher_forced_predictions_gated(
    model: nn.Module, adaptor: DeferAdaptor, probes: Sequence[PromptTarget], pad_id: int, batch_size: int = DEFAULT_BATCH_SIZE
) -> tuple[list[list[int]], list[float]]:
    """`teacher_forced_predictions` and each row's gate (the adaptor must be trained)."""
    predictions, gates = _teacher_forced(model, adaptor, probes, pad_id, batch_size, gated=True)
    assert gates is not None
    return predictions, gates


def _teacher_forced(
    model: nn.Module, adaptor: DeferAdaptor | None, probes: Sequence[PromptTarget], pad_id: int, batch_size: int, gated: bool
) -> tuple[list[list[int]], list[float] | None]:
    order = _by_length([len(p.ids) for p in probes])
    results: list[list[int]] = [[] for _ in probes]
    gates: list[float] = [0.0] * len(probes)
    for batch in _batches(len(order), batch_size):
        chosen = [probes[order[i]] for i in batch]
        with recorded_gates(adaptor, gated) as log:
            predictions = argmax_at(
                model, adaptor, [p.ids for p in chosen], [range(p.n_prompt - 1, len(p.ids) - 1) for p in chosen], pad_id
            )
        batch_gates = only_gates(log) if gated else [0.0] * len(chosen)
        for i, prediction, gate in zip(batch, predictions, batch_gates):
            results[order[i]], gates[order[i]] = prediction, gate
    return results, gates if gated else None


def generation_predictions(
    model: nn.Module,
    adaptor: DeferAdaptor | None,
    probes: Sequence[GenerationProbe],
    pad_id: int,
    eos_ids: frozenset[int],
    batch_size: int = DEFAULT_BATCH_SIZE,
    reuse_prefix: bool = True,
) -> list[list[int]]:
    """Greedy-generate len(target) tokens per probe; return the last len(target) ids of prompt +
    generation, as EasyEdit slices `generate`'s output (a row stops at EOS, like generate, and
    the window may then include prompt tokens; if even that is short, NOT_GENERATED fills it)."""
    sequences = generated_sequences(model, adaptor, probes, pad_id, eos_ids, batch_size, reuse_prefix)
    return [_window(sequence, len(probe.target_ids)) for sequence, probe in zip(sequences, probes)]


@torch.no_grad()
def generated_sequences(
    model: nn.Module,
    adaptor: DeferAdaptor | None,
    probes: Sequence[GenerationProbe],
    pad_id: int,
    eos_ids: frozenset[int],
    batch_size: int = DEFAULT_BATCH_SIZE,
    reuse_prefix: bool = True,
) -> list[list[int]]:
    """Each probe's prompt followed by its greedy continuation: len(target) tokens, fewer when
    the row emits EOS. A shorter budget's answer is a prefix of it (`window`), so scorings that
    differ only in how many tokens they compare can share one generation."""
    frozen = frozen_layer_count(model, adaptor) if reuse_prefix else None
    # rows that need as many tokens share a batch, so no row waits long for a longer one
    order = sorted(range(len(probes)), key=lambda i: (len(probes[i].target_ids), len(probes[i].prompt_ids)))
    results: list[list[int]] = [[] for _ in probes]
    for batch in _batches(len(order), batch_size):
        prompts = [probes[order[i]].prompt_ids for i in batch]
        budgets = [len(probes[order[i]].target_ids) for i in batch]
        if frozen is None:
            sequences = _generate_recomputing(model, adaptor, prompts, budgets, pad_id, eos_ids)
        else:
            sequences = generate_reusing_prefix(model, adaptor, frozen, prompts, budgets, pad_id, eos_ids)
        for sequence, i in zip(sequences, batch):
            results[order[i]] = sequence
    return results


def window(sequence: Sequence[int], n_prompt: int, budget: int) -> list[int]:
    """What generating `budget` tokens scores, read from a generation that may have gone on
    longer: greedy decoding and EOS stops do not depend on the budget, so cutting the sequence
    after `budget` generated tokens gives exactly the shorter generation."""
    return _window(sequence[: n_prompt + budget], budget)


def _window(sequence: Sequence[int], budget: int) -> list[int]:
    """The last `budget` ids of prompt + generation, left-filled when even that is short."""
    ids = list(sequence[-budget:]) if budget else []
    return [NOT_GENERATED] * (budget - len(ids)) + ids


@torch.no_grad()
def teacher_forced_and_sequences(
    model: nn.Module,
    adaptor: DeferAdaptor | None,
    tf_probes: Sequence[PromptTarget],
    gen_probes: Sequence[GenerationProbe],
    pad_id: int,
    eos_ids: frozenset[int],
    batch_size: int = DEFAULT_BATCH_SIZE,
    reuse_prefix: bool = True,
) -> tuple[list[list[int]], list[list[int]]]:
    """Teacher-forced predictions and generated sequences (`generated_sequences`) of the same
    prompts. With `reuse_prefix`, a prompt whose generation tokens start its teacher-forced
    sequence goes through the layers below the adaptor once for both."""
    frozen = frozen_layer_count(model, adaptor) if reuse_prefix else None
    shared, alone = _shared_and_alone(tf_probes, gen_probes, frozen)
    teacher_forced: list[list[int]] = [[] for _ in tf_probes]
    generated: list[list[int]] = [[] for _ in tf_probes]
    if alone:
        tf_alone = teacher_forced_predictions(model, adaptor, [tf_probes[i] for i in alone], pad_id, batch_size)
        gen_alone = generated_sequences(model, adaptor, [gen_probes[i] for i in alone], pad_id, eos_ids, batch_size, reuse_prefix)
        for i, tf, gen in zip(alone, tf_alone, gen_alone):
            teacher_forced[i], generated[i] = tf, gen
    for chosen in _shared_batches(shared, tf_probes, gen_probes, batch_size):
        assert frozen is not None
        tf_out, sequences = teacher_forced_and_generated(model, adaptor, frozen, [(tf_probes[i], gen_probes[i]) for i in chosen], pad_id, eos_ids)
        for i, tf, sequence in zip(chosen, tf_out, sequences):
            teacher_forced[i], generated[i] = tf, sequence
    return teacher_forced, generated


@torch.no_grad()
def teacher_forced_and_sequences_gated(
    model: nn.Module,
    adaptor: DeferAdaptor,
    tf_probes: Sequence[PromptTarget],
    gen_probes: Sequence[GenerationProbe],
    pad_id: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    reuse_prefix: bool = True,
) -> tuple[list[list[int]], list[float]]:
    """The teacher-forced half of `teacher_forced_and_sequences`, in its batches, and each
    row's gate; nothing is generated."""
    frozen = frozen_layer_count(model, adaptor) if reuse_prefix else None
    shared, alone = _shared_and_alone(tf_probes, gen_probes, frozen)
    teacher_forced: list[list[int]] = [[] for _ in tf_probes]
    gates: list[float] = [0.0] * len(tf_probes)
    if alone:
        tf_alone, gates_alone = teacher_forced_predictions_gated(model, adaptor, [tf_probes[i] for i in alone], pad_id, batch_size)
        for i, tf, gate in zip(alone, tf_alone, gates_alone):
            teacher_forced[i], gates[i] = tf, gate
    for chosen in _shared_batches(shared, tf_probes, gen_probes, batch_size):
        assert frozen is not None
        tf_out, batch_gates = teacher_forced_gated(model, adaptor, frozen, [tf_probes[i] for i in chosen], pad_id)
        for i, tf, gate in zip(chosen, tf_out, batch_gates):
            teacher_forced[i], gates[i] = tf, gate
    return teacher_forced, gates


def _shared_and_alone(tf_probes: Sequence[PromptTarget], gen_probes: Sequence[GenerationProbe], frozen: int | None) -> tuple[list[int], list[int]]:
    """Which prompts run tf and generation over one frozen pass, and which run them apart."""
    shared = [i for i, (tf, gen) in enumerate(zip(tf_probes, gen_probes)) if frozen is not None and shares_prefix(tf, gen)]
    return shared, sorted(set(range(len(tf_probes))) - set(shared))


def _shared_batches(shared: Sequence[int], tf_probes: Sequence[PromptTarget], gen_probes: Sequence[GenerationProbe], batch_size: int) -> list[list[int]]:
    order = sorted(shared, key=lambda i: (len(gen_probes[i].target_ids), len(tf_probes[i].ids)))
    return [[order[k] for k in batch] for batch in _batches(len(order), batch_size)]


@torch.no_grad()
def generated_sequences_at(
    model: nn.Module,
    adaptor: DeferAdaptor,
    probes: Sequence[GenerationProbe],
    thresholds: Sequence[float],
    pad_id: int,
    eos_ids: frozenset[int],
    batch_size: int = DEFAULT_BATCH_SIZE,
    reuse_prefix: bool = True,
) -> list[list[list[int]]]:
    """Per threshold, `generated_sequences` with the adaptor at that threshold. With a
    Llama-style decoder and `reuse_prefix`, one batch holds each prompt once per threshold
    (at most `batch_size` rows, at least one prompt) over one frozen-layer pass of the
    prompts; otherwise one generation pass per threshold."""
    frozen = frozen_layer_count(model, adaptor) if reuse_prefix else None
    if frozen is None or not thresholds:
        out = []
        for threshold in thresholds:
            with adaptor.at_threshold(threshold):
                out.append(generated_sequences(model, adaptor, probes, pad_id, eos_ids, batch_size, reuse_prefix))
        return out
    order = sorted(range(len(probes)), key=lambda i: (len(probes[i].target_ids), len(probes[i].prompt_ids)))
    results: list[list[list[int]]] = [[[] for _ in probes] for _ in thresholds]
    for batch in _batches(len(order), max(1, batch_size // len(thresholds))):
        chosen = [probes[order[i]] for i in batch]
        per_prompt = generate_at_thresholds(
            model, adaptor, frozen, [p.prompt_ids for p in chosen], [len(p.target_ids) for p in chosen], thresholds, pad_id, eos_ids
        )
        for i, sequences in zip(batch, per_prompt):
            for t, sequence in enumerate(sequences):
                results[t][order[i]] = sequence
    return results


def _generate_recomputing(
    model: nn.Module,
    adaptor: DeferAdaptor | None,
    prompts: Sequence[Sequence[int]],
    budgets: Sequence[int],
    pad_id: int,
    eos_ids: frozenset[int],
) -> list[list[int]]:
    """The reference loop: every step runs the whole model over every active row."""
    sequences = [list(prompt) for prompt in prompts]
    produced = [0] * len(prompts)
    active = [k for k in range(len(prompts)) if budgets[k] > 0]
    while active:
        rows = [sequences[k] for k in active]
        next_tokens = argmax_at(model, adaptor, rows, [[len(row) - 1] for row in rows], pad_id)
        still_active = []
        for k, (token,) in zip(active, next_tokens):
            sequences[k].append(token)
            produced[k] += 1
            if produced[k] < budgets[k] and token not in eos_ids:
                still_active.append(k)
        active = still_active
    return sequences


def token_accuracy(predicted: Sequence[int], expected: Sequence[int]) -> float:
    """Fraction of positions where the two agree (EasyEdit's np.mean(np.equal(...)))."""
    if len(predicted) != len(expected) or not expected:
        raise ValueError(f"cannot compare {len(predicted)} predicted with {len(expected)} expected tokens")
    return sum(int(a == b) for a, b in zip(predicted, expected)) / len(expected)
