"""A plain restatement of EasyEdit's GRACE (HEAD 14cea82: `easyeditor/models/grace/GRACE.py`,
`grace_main.py`, `utils.tokenize`), written for the tests.

Batch size 1, torch's global random generator, the codebook kept the way EasyEdit keeps it
(radii stacked into an (N, 1) column, labels put at the front of their list), the whole model
forward with the tokenizer's own output at every step, and Adam over every model parameter made
after the first forward: the slow, obvious version the product must agree with.
"""

from __future__ import annotations

import torch
from torch import nn


class ReferenceGrace(nn.Module):
    def __init__(self, layer: nn.Linear, eps: float, val_init: str = "cold", val_train: str = "sgd",
                 replacement: str = "replace_last", eps_expand: str = "coverage") -> None:
        super().__init__()
        self.layer = layer
        self.eps = eps
        self.val_init = val_init
        self.val_train = val_train
        self.replacement = replacement
        self.eps_expand = eps_expand
        self.value_size = layer.weight.shape[0]
        self.key_id = -1
        self.iter = None
        self.edit_label = None
        self.is_editing = False
        self.keys = None
        self.values = None
        self.epsilons = None
        self.key_labels = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer_out = self.layer(x)
        if not self.is_editing and self.keys is None:
            return layer_out

        if not self.is_editing and self.key_id == -1:
            token = x.shape[1] - 1
            self.key_id = token
        else:
            token = min(self.key_id, x.shape[1] - 1)
        query = x[:, token, :]

        if self.val_init == "cold":
            new_value = torch.rand(1, self.value_size)
        else:
            new_value = layer_out[:, token, :].detach().clone()

        if self.keys is None:
            self.keys = query.detach()
            self.values = nn.Parameter(new_value, requires_grad=True)
            self.epsilons = torch.tensor(self.eps).view(1)
            self.key_labels = [self.edit_label]
        elif self.iter == 0:
            distances = torch.cdist(self.keys.float(), query.float(), p=2).view(-1, 1)
            d, nearest = distances.min(0)
            if d > self.eps + self.epsilons[nearest]:
                self.add_key(query, new_value)
            elif self.edit_label.float().mean() != self.key_labels[nearest].float().mean():
                self.add_key(query, new_value)
                self.epsilons[nearest] = d / 2 - 1e-5
                self.epsilons[-1] = d / 2
            elif d > self.epsilons[nearest]:
                if self.eps_expand == "coverage":
                    self.epsilons[nearest] = d
                elif self.eps_expand == "moving_average":
                    self.keys[nearest] = 0.5 * self.keys[nearest] + 0.5 * query
                    self.epsilons[nearest] = d

        distances = torch.cdist(self.keys.float(), query.float(), p=2).view(-1, 1)
        d, chosen = distances.min(0)
        d = d.view(-1, 1)
        value = self.values[chosen].to(layer_out.dtype)
        radius = self.epsilons[chosen].view(-1, 1)
        if self.val_train == "adv" and self.is_editing:
            noise = torch.normal(0, 1, value.shape)
            noise[0] = noise[0] * 0
            value = value + noise

        if self.replacement == "replace_all":
            everywhere = value.unsqueeze(1).repeat_interleave(layer_out.shape[1], 1)
            return torch.where((d <= radius).view(-1, 1, 1), everywhere, layer_out)
        if self.replacement == "replace_last":
            layer_out[:, token] = torch.where(d <= radius, value, layer_out[:, token])
        elif self.replacement == "replace_prompt":
            layer_out[:, :token] = torch.where(d <= radius, value, layer_out[:, :token])
        return layer_out

    def add_key(self, query: torch.Tensor, value: torch.Tensor) -> None:
        self.keys = torch.vstack([self.keys, query.detach()])
        self.values = nn.Parameter(torch.vstack([self.values, value]), requires_grad=True)
        self.epsilons = torch.vstack([self.epsilons, torch.tensor(self.eps).view(1)])
        self.key_labels = [self.edit_label] + self.key_labels  # EasyEdit's order: new label first


def attach_reference(model: nn.Module, layer: int, **settings) -> ReferenceGrace:
    mlp = model.model.layers[layer].mlp
    grace = ReferenceGrace(mlp.down_proj, **settings)
    mlp.down_proj = grace
    return grace


def easyedit_tokens(tokenizer, prompt: str, target: str) -> dict[str, torch.Tensor]:
    """EasyEdit's grace `tokenize`: prompt tokens and pad ids masked to -100 in the labels."""
    prompt_ids = tokenizer([prompt], return_tensors="pt", padding=True, truncation=True)["input_ids"]
    n_prompt = int((prompt_ids[0] != tokenizer.pad_token_id).sum())
    tokens = tokenizer([f"{prompt} {target}"], return_tensors="pt", padding=True, truncation=True)
    tokens["labels"] = tokens["input_ids"].clone()
    tokens["labels"][0][:n_prompt] = -100
    tokens["labels"][tokens["input_ids"] == tokenizer.pad_token_id] = -100
    return dict(tokens)


def reference_edit(model: nn.Module, grace: ReferenceGrace, tokenizer, prompt: str, target: str, lr: float, n_iter: int) -> list[float]:
    tokens = easyedit_tokens(tokenizer, prompt, target)
    grace.key_id = int((tokens["labels"] == -100).sum()) - 1
    grace.is_editing = True
    grace.edit_label = tokens["labels"]
    losses = []
    for i in range(n_iter):
        grace.iter = i
        loss = model(**tokens).loss
        if i == 0:
            optimizer = torch.optim.Adam(model.parameters(), lr)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    grace.is_editing = False
    return losses
