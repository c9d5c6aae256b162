"""WISE (Wang et al. 2024) editing, restated from EasyEdit (easyeditor/models/wise/WISE.py,
HEAD 14cea82: `WISE.edit`, `_cal_ft_loss`, `_cal_activation_loss`; utils.EarlyStopMeter).

Each edit trains the side memory's `new_weight` (wise_memory) by SGD on a random-mask share of
its entries (`mask_ratio`; the mask is drawn anew every `save_freq` edits from a numpy
RandomState, as EasyEdit draws it from its seeded global numpy state), with the edit loss plus
the activation loss (margins alpha, beta, gamma: `act_margin`), on the batch of wise_batch.
Every `save_freq` edits the shard is saved; every `merge_freq` edits the shards are merged
(TIES by default, wise_merge).

Two edit paths with the same numbers bit for bit (tests/test_wise_editor.py): plain, the whole
model's forward per step as EasyEdit runs it; fast, the layers below the memory's decoder layer
run once per edit (nothing below it trains) and each step runs only the layers from it up.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from .decoder import edit_path_for, suffix_hidden_states
from .editor import EditStats
from .errors import DeferInputError
from .models import LoadedModel
from .plan import EDIT_PATHS
from .module_path import ModulePath, decoder_layer_index, parse_module_path, replace_module, resolve_module
from .tokens import PromptTarget
from .wise_batch import EditBatch, WiseRequest, context_templates, edit_batch, wise_tokenizer
from .wise_hparams import WiseHParams, check_wise_hparams
from .wise_memory import WiseMemory, train_distance
from .wise_merge import check_merge_alg

log = logging.getLogger(__name__)

WEIGHT_DECAY = 1e-5


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
            raise DeferInputError(f"edit_path must be one of {', '.join(EDIT_PATHS)}, got {edit_path!r}")
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
        if act_name not in ACT2FN:
            raise DeferInputError(f"model config: WISE's distances need a known hidden_act or activation_function, got {act_name!r}")
        self.tokenizer = wise_tokenizer(loaded.tokenizer)
        self.templates = context_templates(loaded.model, self.tokenizer, loaded.device)  # on the unedited model
        self.memory = WiseMemory(base, hparams, ACT2FN[act_name])
        replace_module(loaded.model, self.path, self.memory)
        self.layer_index = decoder_layer_index(self.path)
        self.edit_path = edit_path_for(self.model, self.layer_index, edit_path)
        # On the decoder: the project's scoring calls it directly (model.get_decoder()), and the
        # top model's forward calls it with the attention mask as a keyword too.
        decoder = loaded.model.get_decoder() if hasattr(loaded.model, "get_decoder") else loaded.model
        self._hooks = [
            decoder.register_forward_pre_hook(self._before_forward, with_kwargs=True),
            decoder.register_forward_hook(self._after_forward),
        ]
        self.reset()
        log.info("WISE memory on %s (%s, %d context templates)", hparams.module_path, "retrieve" if hparams.retrieve else "merge", len(self.templates))

    @property
    def model(self) -> nn.Module:
        return self.loaded.model

    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Hand the call's attention mask to the router, and fold a pending shard as EasyEdit's
        WISE.__call__ does before an evaluation forward."""
        self.memory.valid = kwargs.get("attention_mask")
        if not self.memory.editing and not self.memory.bypass:
            self.memory.fold_pending()

    def _after_forward(self, module: nn.Module, args: tuple, output: object) -> None:
        self.memory.valid = None  # a later direct call of the layers must not see this call's mask

    def reset(self) -> None:
        """Back to the unedited model: an empty memory, the mask stream from its seed, edit 0."""
        self.memory.renew()
        self.mask_rng = np.random.RandomState(self.seed)
        self.edits_done = 0

    def detach(self) -> None:
        """Put the original Linear back; the model is exactly as loaded."""
        for hook in self._hooks:
            hook.remove()
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

    def _step_logits(self, batch: EditBatch) -> Callable[[], torch.Tensor]:
        """The edit batch's logits with the memory in training: the model's forward (plain), or
        the layers from the memory's one up over the captured input of that layer (fast: the
        same operations on the same inputs as the top of the plain forward)."""
        if self.edit_path == "plain":
            return lambda: self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        assert self.layer_index is not None
        upper, top_hidden = suffix_hidden_states(self.model, self.layer_index, batch.input_ids, batch.attention_mask)
        return lambda: upper.logits(top_hidden())

    def _train(self, batch: EditBatch) -> list[float]:
        h, memory = self.hparams, self.memory
        optimizer = torch.optim.SGD([memory.new_weight], h.edit_lr, weight_decay=WEIGHT_DECAY)
        stopper = EarlyStop()
        losses: list[float] = []
        step_logits = self._step_logits(batch)
        for step in range(h.n_iter):
            logits = step_logits()
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
        memory.valid = None  # the fast path's capture stops inside the decoder, before its after-hook
        return losses
