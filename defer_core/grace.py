"""GRACE (Hartvigsen et al., NeurIPS 2023): a codebook of keys, values and deferral radii at one Linear.

Restated from EasyEdit's implementation (HEAD 14cea82, `easyeditor/models/grace/GRACE.py`,
`grace_main.py`, `utils.py`), which is the behaviour matched here, number for number:

* The layer's input at one token is the query (`GRACEAdapter.forward`). While editing, that
  token is `key_id = (labels == -100).sum() - 1`: the last prompt token (`GRACE.edit`). At
  evaluation `key_id` is whatever it was last set to, and it is sticky: after an edit it is that
  edit's last prompt position (clipped to the input's length), so a teacher-forced forward of
  any other text queries at the last edited prompt's position, not at its own last token;
  EasyEdit scores GRACE by generation, and `GRACE.generate` first sets `key_id = -1`, after which
  the first forward sets it to that input's last position and keeps it there. `GraceLayer.key_id`
  holds this state and `GraceEditor.prepare_generation` is `GRACE.generate`'s reset.
* Before the first edit the layer is transparent. Once the codebook has keys, every forward
  (training and evaluation) makes a candidate value: `val_init: cold` draws it with `torch.rand`,
  `warm` copies the layer's output at the key token. The cold draw happens on every forward,
  used or not, so the evaluation schedule (how many forwards run between edits) changes the
  values later edits start from. The draws come from the editor's own generator, seeded with
  `seed` (EasyEdit uses torch's global generator, seeded once by its editor module): the same
  stream as `torch.manual_seed(seed)` with nothing else drawing, and no dependence on what other
  code draws.
* Codebook update, only on a forward with `iteration == 0` (the first step of an edit; also any
  evaluation forward after an edit with `n_iter == 1`, since EasyEdit leaves the iteration
  counter at the last step's value):
  - no keys yet: the query becomes the first key with radius `eps`;
  - nearest key farther than `eps + its radius`: a new key with radius `eps`;
  - otherwise, if the edit's labels differ from the nearest key's label (`label_match` compares
    the float means of the two label tensors, -100 entries included): a new key, and both radii
    become half the distance (the old one minus `split_margin`);
  - otherwise, if the distance exceeds the nearest radius: `coverage` sets that radius to the
    distance; `moving_average` also moves the key halfway (`moving_average_weight`) to the query.
  EasyEdit's `add_key` puts the new key's label at the FRONT of the label list while keys are
  appended, so after two adds `key_labels[i]` is not key i's label; `key_label_order: prepend`
  mirrors it (`append` is GRACE's own repository).
* Replacement: the nearest key (Euclidean distance, in float32) answers if the distance is within
  its radius: `replace_last` replaces the output at the key token only, `replace_all` at every
  position, `replace_prompt` at the positions before the key token (not the key token itself).
  With `val_train: adv` a training forward adds standard normal noise with its first row zeroed
  (for one edit row, no noise at all, but the draw still advances the generator).
* One edit: labels are the tokens of f"{prompt} {target}" with the prompt's tokens (and any pad
  ids) set to -100; `n_iter` full forwards with the HF causal-LM loss; a fresh Adam(lr=edit_lr) is
  made after the first forward (the one that may add a key) over the codebook's values.

Batches at evaluation: each row gets its own nearest key and radius decision, but the key token
position is one for the whole batch (EasyEdit's) and a cold draw is one (1, out) tensor per
forward whatever the batch size, so a padded batch consumes the generator differently from the
same rows one by one.

Known difference from EasyEdit's sequential editing: `BaseEditor` builds a new `GRACE` wrapper for
every request, and its constructor sets `requires_grad = False` on every parameter of the model,
the codebook's values included. An edit that adds a key makes a new trainable values tensor, so
nothing changes there; but an edit whose query lands on a key with the same label (the radius
expansion branch, e.g. the same record edited twice) leaves nothing trainable and EasyEdit's
`loss.backward()` raises. Here (as in `GRACE.edit` on one wrapper, and in GRACE's own repo) the
nearest key's value is trained.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import torch
from torch import nn

from .decoder import edit_path_for, suffix_hidden_states
from .editor import EditStats
from .errors import DeferInputError
from .grace_hparams import GraceHParams, check_grace_hparams
from .models import LoadedModel
from .plan import EDIT_PATHS
from .module_path import ModulePath, decoder_layer_index, parse_module_path, replace_module, resolve_module
from .tokens import PromptTarget

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # CrossEntropyLoss's ignore_index, EasyEdit's mask token
StepLoss = Callable[[], torch.Tensor]


class GraceLayer(nn.Module):
    """Wraps `base` (kept frozen) the way a PEFT layer wraps its target, with a GRACE codebook."""

    def __init__(self, base: nn.Linear, hparams: GraceHParams, generator: torch.Generator) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"GRACE wraps an nn.Linear, got {type(base).__name__}")
        self.base = base
        for parameter in base.parameters():
            parameter.requires_grad_(False)
        self.hparams = hparams
        self.generator = generator
        self.value_size = base.out_features
        self.editing = False
        self.edit_label: torch.Tensor | None = None
        self.iteration: int | None = None
        self.key_id = -1
        self.chosen_key: torch.Tensor | None = None
        self.keys: torch.Tensor | None = None
        self.values: nn.Parameter | None = None
        self.epsilons: torch.Tensor | None = None
        self.key_labels: list[torch.Tensor] = []

    @property
    def device(self) -> torch.device:
        return self.base.weight.device

    @property
    def num_keys(self) -> int:
        return 0 if self.keys is None else int(self.keys.shape[0])

    def clear(self) -> None:
        """Empty codebook and the state of a freshly attached layer (EasyEdit's new GRACEAdapter)."""
        self.keys, self.values, self.epsilons, self.key_labels = None, None, None, []
        self.editing, self.edit_label, self.iteration, self.key_id, self.chosen_key = False, None, None, -1, None

    def token_to_edit(self, length: int) -> int:
        """The query position: `key_id` clipped to the input; an unset key_id (-1) at evaluation
        becomes this input's last position and stays set (EasyEdit's sticky key_id)."""
        if not self.editing and self.key_id == -1:
            self.key_id = length - 1
            return length - 1
        position = min(self.key_id, length - 1)
        return position if position >= 0 else position + length  # a negative key_id counts from the end

    def candidate_value(self, out: torch.Tensor, position: int) -> torch.Tensor:
        """The value a new key would get. Cold draws on every call, used or not."""
        if self.hparams.val_init == "cold":
            return torch.rand(1, self.value_size, device=self.device, generator=self.generator)
        return out[:, position, :].detach()

    def distances(self, query: torch.Tensor) -> torch.Tensor:
        """(keys, rows) Euclidean distances, in float32 as EasyEdit's cdist_float32."""
        assert self.keys is not None
        if self.hparams.distance_dtype == "float32":
            return torch.cdist(self.keys.float(), query.float(), p=2).view(-1, len(query))
        return torch.cdist(self.keys, query, p=2).view(-1, len(query))

    def labels_match(self, key_label: torch.Tensor) -> bool:
        """EasyEdit's label_match: equal float means of the whole label tensors, -100 included."""
        assert self.edit_label is not None
        return bool(self.edit_label.float().mean() == key_label.float().mean())

    def _start_codebook(self, query: torch.Tensor, value: torch.Tensor) -> None:
        self.keys = query.detach()
        self.values = nn.Parameter(value.clone(), requires_grad=True)
        self.epsilons = torch.tensor(self.hparams.eps, device=self.device).view(1)
        self.key_labels = [self.edit_label]

    def _add_key(self, query: torch.Tensor, value: torch.Tensor) -> None:
        assert self.keys is not None and self.values is not None and self.epsilons is not None
        self.keys = torch.cat([self.keys, query.detach()])
        self.values = nn.Parameter(torch.cat([self.values.detach(), value]), requires_grad=True)
        self.epsilons = torch.cat([self.epsilons, torch.tensor(self.hparams.eps, device=self.device).view(1)])
        if self.hparams.key_label_order == "prepend":
            self.key_labels = [self.edit_label, *self.key_labels]
        else:
            self.key_labels = [*self.key_labels, self.edit_label]

    def _update_codebook(self, query: torch.Tensor, value: torch.Tensor) -> None:
        """Add a key, split two radii, or expand the nearest radius (EasyEdit forward, iter 0)."""
        assert self.epsilons is not None and self.keys is not None
        if query.shape[0] != 1:
            raise DeferInputError(f"GRACE updates its codebook from one row at a time, got {query.shape[0]} (with n_iter 1 every evaluation forward updates it, as in EasyEdit)")
        smallest, nearest = self.distances(query).min(0)
        index = int(nearest)
        if smallest > self.hparams.eps + self.epsilons[nearest]:
            self._add_key(query, value)
            log.debug("GRACE: new key %d (nearest at %.4g)", self.num_keys - 1, float(smallest))
        elif not self.labels_match(self.key_labels[index]):
            self._add_key(query, value)
            self.epsilons[nearest] = smallest / 2 - self.hparams.split_margin
            self.epsilons[-1] = smallest / 2
            log.debug("GRACE: new key %d splits radius with key %d (distance %.4g)", self.num_keys - 1, index, float(smallest))
        elif smallest > self.epsilons[nearest]:
            if self.hparams.eps_expand == "moving_average":
                weight = self.hparams.moving_average_weight
                self.keys[nearest] = weight * self.keys[nearest] + (1 - weight) * query
            self.epsilons[nearest] = smallest
            log.debug("GRACE: key %d radius expanded to %.4g", index, float(smallest))

    def _perturbed(self, chosen: torch.Tensor) -> torch.Tensor:
        """EasyEdit's perturb_values: N(0, 1) noise, first row zeroed (num_pert is not used)."""
        noise = torch.normal(0.0, 1.0, chosen.shape, device=self.device, generator=self.generator)
        noise[0] = noise[0] * 0
        return chosen + noise

    def _replace(self, out: torch.Tensor, query: torch.Tensor, position: int) -> torch.Tensor:
        assert self.values is not None and self.epsilons is not None
        smallest, self.chosen_key = self.distances(query).min(0)
        hit = (smallest.view(-1, 1) <= self.epsilons[self.chosen_key].view(-1, 1)).view(-1, 1, 1)  # (rows, 1, 1)
        chosen = self.values[self.chosen_key].to(dtype=out.dtype)  # (rows, out)
        if self.hparams.val_train == "adv" and self.editing:
            chosen = self._perturbed(chosen)
        chosen = chosen.unsqueeze(1)  # (rows, 1, out)
        if self.hparams.replacement == "replace_all":
            # repeat_interleave, not expand: its backward sums the positions in EasyEdit's order
            return torch.where(hit, chosen.repeat_interleave(out.shape[1], 1), out)
        if self.hparams.replacement == "replace_last":
            out[:, position : position + 1] = torch.where(hit, chosen, out[:, position : position + 1])
            return out
        out[:, :position] = torch.where(hit, chosen, out[:, :position])  # replace_prompt
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if not self.editing and self.keys is None:
            return out
        position = self.token_to_edit(x.shape[1])
        query = x[:, position, :]
        value = self.candidate_value(out, position)
        if self.keys is None:
            self._start_codebook(query, value)
        elif self.iteration == 0:
            self._update_codebook(query, value)
        return self._replace(out, query, position)

    def extra_repr(self) -> str:
        return f"keys={self.num_keys}, eps={self.hparams.eps}, replacement={self.hparams.replacement}, val_init={self.hparams.val_init}"


def edit_labels(input_ids: torch.Tensor, n_prompt: int, pad_token_id: int | None) -> torch.Tensor:
    """EasyEdit's `tokenize`: the ids, with the prompt's tokens and every pad id set to -100."""
    labels = input_ids.clone()
    labels[:, :n_prompt] = IGNORE_INDEX
    if pad_token_id is not None:
        labels[input_ids == pad_token_id] = IGNORE_INDEX
    return labels


class GraceEditor:
    """Attaches a GRACE layer to one Linear of a loaded model and edits it record by record.

    Same interface as DeferEditor. Two ways to take a step, with the same numbers bit for bit
    (tests/test_grace_editor.py compares them with torch.equal):
    * plain: the whole model's forward with labels, as EasyEdit runs it;
    * fast: the layers below the edited decoder layer are frozen and the codebook is not in
      them, so their output (and the mask and rotary arguments the layer gets) is captured once
      per edit; each step runs the layers from the edited one up, the final norm, the LM head
      over every position and the model's own loss function, i.e. the same operations on the
      same inputs as the top of the plain forward. The GRACE layer runs once per step either
      way, so the random stream is consumed the same. Needs a Llama-style decoder (`layers`,
      `norm`); otherwise the plain path is used, with a warning."""

    def __init__(self, loaded: LoadedModel, hparams: GraceHParams, *, seed: int = 0, edit_path: str = "plain") -> None:
        if edit_path not in EDIT_PATHS:
            raise DeferInputError(f"edit_path must be one of {', '.join(EDIT_PATHS)}, got {edit_path!r}")
        check_grace_hparams(hparams)
        self.loaded = loaded
        self.hparams = hparams
        self.seed = seed
        self.edit_path = edit_path
        self.path: ModulePath = parse_module_path(hparams.module_path)
        base = resolve_module(loaded.model, self.path)
        if isinstance(base, GraceLayer):
            raise DeferInputError(f"module path {hparams.module_path!r} already carries a GRACE layer")
        if not isinstance(base, nn.Linear):
            raise DeferInputError(f"module path {hparams.module_path!r} names a {type(base).__name__}, GRACE needs a Linear")
        self.generator = torch.Generator(device=base.weight.device)
        self.generator.manual_seed(seed)
        self.layer = GraceLayer(base, hparams, self.generator)
        replace_module(loaded.model, self.path, self.layer)
        self.layer_index = decoder_layer_index(self.path)
        self.edit_path = edit_path_for(self.model, self.layer_index, edit_path)

    @property
    def model(self) -> nn.Module:
        return self.loaded.model

    def reset(self) -> None:
        """Back to the unedited model: an empty codebook and the generator at `seed` again."""
        self.layer.clear()
        self.generator.manual_seed(self.seed)

    def detach(self) -> None:
        """Put the original Linear back; the model is exactly as loaded."""
        replace_module(self.model, self.path, self.layer.base)

    def prepare_generation(self) -> None:
        """What EasyEdit's `GRACE.generate` does before generating: unset key_id, so the next
        forward keys on its own last token (and keeps that position until the next edit)."""
        self.layer.key_id = -1

    def edit(self, probe: PromptTarget) -> EditStats:
        """Add or adjust a key for one (prompt, target) and train its value for n_iter steps."""
        start = time.perf_counter()
        device = self.loaded.device
        input_ids = torch.tensor([probe.ids], dtype=torch.long, device=device)
        attention_mask = torch.ones_like(input_ids)
        labels = edit_labels(input_ids, probe.n_prompt, self.loaded.tokenizer.pad_token_id)
        layer = self.layer
        layer.key_id = int((labels == IGNORE_INDEX).sum()) - 1
        layer.edit_label = labels
        step_loss = self._fast_step(input_ids, attention_mask, labels) if self.edit_path == "fast" else self._plain_step(input_ids, attention_mask, labels)
        layer.editing = True
        losses = []
        try:
            optimizer = None
            for iteration in range(self.hparams.n_iter):
                layer.iteration = iteration
                loss = step_loss()
                if optimizer is None:  # after the first forward, which may have made a new values tensor
                    assert layer.values is not None
                    optimizer = torch.optim.Adam([layer.values], lr=self.hparams.edit_lr)
                losses.append(loss.detach())
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
        finally:
            layer.editing = False
        return EditStats(losses=torch.stack(losses).float().cpu().tolist(), seconds=time.perf_counter() - start)

    def _plain_step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> StepLoss:
        return lambda: self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False).loss

    def _fast_step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> StepLoss:
        assert self.layer_index is not None
        upper, top_hidden = suffix_hidden_states(self.model, self.layer_index, input_ids, attention_mask)
        vocab_size = self.model.config.vocab_size

        def step() -> torch.Tensor:
            logits = upper.logits(top_hidden())
            return self.model.loss_function(logits=logits, labels=labels, vocab_size=vocab_size)

        return step
