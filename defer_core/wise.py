"""WISE (Wang et al. 2024): a side memory beside one MLP Linear, restated from EasyEdit
(easyeditor/models/wise/WISE.py, HEAD 14cea82: `WISE`, `WISEAdapter`, `euc`).

The side memory holds the original Linear (untouched), `new_weight` (the shard being edited,
a copy of the original weight at first), the saved shards (`memory`) and the merged weight.
Each edit trains `new_weight` by SGD on a random-mask share of its entries (`mask_ratio`, the
mask drawn anew every `save_freq` edits from a numpy RandomState, as EasyEdit's seeded global
numpy state draws it), with the edit loss plus the activation loss (margins alpha, beta, gamma:
`act_margin`). Every `save_freq` edits the shard is saved; every `merge_freq` edits the shards
are merged (TIES by default, wise_merge). At inference the layer routes by activation: the
distance between the activated outputs of the original and a side weight, compared with
`act_ratio` times the smallest in-scope distance seen while editing.

Batches: EasyEdit routes a whole batch with `.item()` (batch size 1 only). Here each row is
routed alone, over its attended positions (the attention mask is taken from the model's call),
so a row gets the same decision in a padded batch as alone, and batch size 1 is EasyEdit exactly.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from .editor import EditStats
from .errors import DeferInputError
from .models import LoadedModel
from .module_path import ModulePath, parse_module_path, replace_module, resolve_module
from .tokens import PromptTarget
from .wise_batch import EditBatch, WiseRequest, context_templates, edit_batch, wise_tokenizer
from .wise_hparams import WiseHParams, check_wise_hparams
from .wise_merge import check_merge_alg, merge

log = logging.getLogger(__name__)

EDIT_PATHS = ("plain",)
NO_EDIT_YET = 1e9  # EasyEdit's EditingMeanAct starts its minimum here: a threshold nothing reaches
WEIGHT_DECAY = 1e-5
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


def _hinge_mean(values: torch.Tensor) -> torch.Tensor:
    positive = values[values > 0]
    return torch.mean(positive) if positive.numel() > 0 else torch.tensor(0.0).to(values.device)


def activation_loss(original: torch.Tensor, edited: torch.Tensor, hparams: WiseHParams, act: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """EasyEdit's _cal_activation_loss (no subject masks, batch_size 1): the template rows (in
    scope) should move at least beta, the irrelevant row (last) at most alpha, and in scope at
    least gamma further than out of scope."""
    n_scope = original.shape[0] - 1
    in_scope = train_distance(original[:n_scope], edited[:n_scope], act)
    out_scope = train_distance(original[-1:], edited[-1:], act)
    gap = _hinge_mean(out_scope.view(-1, 1) - in_scope + hparams.gamma)
    too_far = _hinge_mean(out_scope - hparams.alpha)
    too_near = _hinge_mean(hparams.beta - in_scope)
    return gap + too_far + too_near


def edit_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """EasyEdit's _cal_ft_loss: per template row, the token losses (ignored labels count 0) summed
    from one position before the last masked label on, over that many positions (one more than
    the labelled tokens), then the mean over rows. The last row (irrelevant prompt) is left out."""
    shift_logits = logits[:-1, :-1, :]
    shift_labels = labels[:-1, 1:]
    token_loss = F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), reduction="none")
    token_loss = token_loss.view(shift_labels.shape[0], -1)
    last_prompt = (labels == -100).sum(dim=-1) - 1
    counted = torch.zeros_like(token_loss, dtype=torch.bool)
    for row in range(token_loss.shape[0]):
        counted[row, int(last_prompt[row]) - 1 :] = True
    return ((token_loss * counted).sum(1) / counted.sum(1)).mean()


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
        return self._route(x, original)

    def _route(self, x: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        valid = None if self.valid is None else self.valid.to(torch.bool)
        threshold = self.editing_act.min_a * self.hparams.act_ratio
        new_out = F.linear(x, self.new_weight)
        new_dist = route_distance(distances(original, new_out, self.act), valid)
        if not self.hparams.retrieve:
            merged_out = F.linear(x, self.merged, self.base.bias)
            merged_dist = route_distance(distances(original, merged_out, self.act), valid)
            choice = []
            for d_merged, d_new in zip(merged_dist.tolist(), new_dist.tolist()):
                choice.append(0 if d_merged < threshold and d_new < threshold else (1 if d_merged > d_new else 2))
            return _pick(choice, [original, merged_out, new_out])
        best = new_dist.clone()
        choice = [0 if d < threshold else 1 for d in new_dist.tolist()]
        candidates = [original, new_out]
        for weight, act in zip(self.memory, self.memory_acts):
            out = F.linear(x, weight)
            dist = route_distance(distances(original, out, self.act), valid)
            wins = (dist > best) & (dist > act.min_a * self.hparams.act_ratio)
            candidates.append(out)
            for row in torch.nonzero(wins).flatten().tolist():
                choice[row] = len(candidates) - 1
            best = torch.where(wins, dist, best)
        return _pick(choice, candidates)


def _weights(h: WiseHParams) -> float:
    if h.weights is None:
        raise DeferInputError(f"merge_alg {h.merge_alg!r} needs key 'weights'")
    return h.weights


def _pick(choice: Sequence[int], candidates: Sequence[torch.Tensor]) -> torch.Tensor:
    """Row r of the output is row r of candidates[choice[r]]."""
    if all(c == choice[0] for c in choice):
        return candidates[choice[0]]
    return torch.stack([candidates[c][row] for row, c in enumerate(choice)])


class EarlyStop:
    """EasyEdit's EarlyStopMeter: stop once the loss moved by <= 1e-4 and is <= 0.02."""

    def __init__(self) -> None:
        self.previous, self.last = 0.0, 1e9

    def update(self, value: float) -> None:
        self.previous, self.last = self.last, value

    def stop(self) -> bool:
        return abs(self.last - self.previous) <= 1e-4 and self.last <= 0.02


class WiseEditor:
    """Attaches a WISE side memory to one Linear of a loaded model and edits it record by record.

    `irrelevant`: the activation loss's irrelevant prompts, edit k (counted from attach or reset)
    taking the k-th (wise_batch.read_irrelevant_prompts builds EasyEdit's list). `seed` seeds the
    numpy RandomState the masks are drawn from (EasyEdit: the global numpy state, seeded 42).
    """

    def __init__(
        self, loaded: LoadedModel, hparams: WiseHParams, *, seed: int = 0, edit_path: str = "plain", irrelevant: Sequence[str] = ()
    ) -> None:
        if edit_path not in EDIT_PATHS:
            raise DeferInputError(f"edit_path must be 'plain' for WISE (no faster path gives the same numbers), got {edit_path!r}")
        check_wise_hparams(hparams)
        check_merge_alg(hparams.merge_alg)
        if hparams.replay:
            raise DeferInputError("key 'replay': WISE-Retrieve's replay (Appendix B.3) is not restated; set it to false")
        if hparams.use_chat_template:
            raise DeferInputError("key 'use_chat_template': chat-template edits are not restated; set it to false")
        self.loaded, self.hparams, self.seed = loaded, hparams, seed
        self.irrelevant = list(irrelevant)
        self.path: ModulePath = parse_module_path(hparams.module_path)
        base = resolve_module(loaded.model, self.path)
        if isinstance(base, WiseMemory):
            raise DeferInputError(f"module path {hparams.module_path!r} already carries a WISE memory")
        if not isinstance(base, nn.Linear):
            raise DeferInputError(f"module path {hparams.module_path!r} names a {type(base).__name__}, WISE needs a Linear")
        config = loaded.model.config
        act_name = getattr(config, "hidden_act", None) or getattr(config, "activation_function", None)
        self.tokenizer = wise_tokenizer(loaded.tokenizer)
        self.templates = context_templates(loaded.model, self.tokenizer, loaded.device)  # on the unedited model
        self.memory = WiseMemory(base, hparams, ACT2FN[act_name])
        replace_module(loaded.model, self.path, self.memory)
        self._hook = loaded.model.register_forward_pre_hook(self._before_forward, with_kwargs=True)
        self.reset()

    @property
    def model(self) -> nn.Module:
        return self.loaded.model

    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Hand the call's attention mask to the router, and fold a pending shard as EasyEdit's
        WISE.__call__ does before an evaluation forward."""
        self.memory.valid = kwargs.get("attention_mask")
        if not self.memory.editing and not self.memory.bypass:
            self.memory.fold_pending()

    def reset(self) -> None:
        """Back to the unedited model: an empty memory, the mask stream from its seed, edit 0."""
        self.memory.renew()
        self.mask_rng = np.random.RandomState(self.seed)
        self.edits_done = 0

    def detach(self) -> None:
        """Put the original Linear back; the model is exactly as loaded."""
        self._hook.remove()
        replace_module(self.model, self.path, self.memory.base)

    @contextmanager
    def bypassed(self) -> Iterator[None]:
        """The unedited model's outputs, with the memory kept (for locality baselines)."""
        self.memory.bypass = True
        try:
            yield
        finally:
            self.memory.bypass = False

    def request_of(self, probe: PromptTarget | WiseRequest) -> WiseRequest:
        """WISE needs text; a PromptTarget is decoded and must re-encode to the same ids."""
        if isinstance(probe, WiseRequest):
            return probe
        tok = self.loaded.tokenizer
        prompt = tok.decode(probe.ids[: probe.n_prompt], skip_special_tokens=True)
        target = tok.decode(probe.ids[probe.n_prompt :], skip_special_tokens=True)
        target = target[1:] if target.startswith(" ") else target
        if tuple(tok(f"{prompt} {target}")["input_ids"]) != probe.ids:
            raise DeferInputError("this tokenizer does not decode the edit's ids back to its text; pass a WiseRequest(prompt, target)")
        return WiseRequest(prompt, target)

    def edit(self, probe: PromptTarget | WiseRequest) -> EditStats:
        """One WISE edit (WISE.edit): SGD on the masked shard for up to n_iter steps, then save/merge."""
        start = time.perf_counter()
        h, memory = self.hparams, self.memory
        if self.edits_done >= len(self.irrelevant):
            raise DeferInputError(f"edit {self.edits_done + 1} needs irrelevant prompt {self.edits_done + 1}, only {len(self.irrelevant)} given")
        batch = edit_batch(self.tokenizer, self.templates, self.request_of(probe), self.irrelevant[self.edits_done], h.objective_optimization, self.loaded.device)
        if not h.sequential_edit:
            memory.renew()  # EasyEdit HEAD: a fresh WISEAdapter per edit
        memory.editing = True
        memory.new_weight.requires_grad_(True)
        if memory.edit_count % h.save_freq == 0:
            memory.new_mask(self.mask_rng)
        try:
            losses = self._train(batch)
        finally:
            memory.editing = False
            memory.new_weight = memory.new_weight.detach()
        memory.edit_count += 1
        self.edits_done += 1
        if memory.edit_count % h.save_freq == 0:
            memory.save()
        if memory.edit_count % h.merge_freq == 0:
            memory.merge_shards()
        return EditStats(losses=losses, seconds=time.perf_counter() - start)

    def _train(self, batch: EditBatch) -> list[float]:
        h, memory = self.hparams, self.memory
        optimizer = torch.optim.SGD([memory.new_weight], h.edit_lr, weight_decay=WEIGHT_DECAY)
        stopper = EarlyStop()
        losses: list[float] = []
        for step in range(h.n_iter):
            logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            ft = edit_loss(logits, batch.labels)
            assert memory.original_out is not None and memory.edited_out is not None
            loss = ft + activation_loss(memory.original_out, memory.edited_out, h, memory.act).to(ft.device)
            losses.append(loss.item())
            if stopper.stop():
                memory.record_activation()
                break
            if step == h.n_iter - 1:
                memory.record_activation()
            optimizer.zero_grad()
            loss.backward()
            memory.mask_gradient()
            optimizer.step()
            stopper.update(loss.item())
            if h.norm_constraint is not None:
                memory.clamp_to_original(h.norm_constraint)
        memory.original_out = memory.edited_out = None
        return losses
