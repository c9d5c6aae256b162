"""A plain restatement of the reference DEFER (GRACE `grace/editors/defer.py`, EasyEdit
`easyeditor/models/defer/DEFER.py`) and EasyEdit's scoring, written for the tests.

Batch size 1 only, the whole model forward at every step, `model.generate(use_cache=False)`
for generation scoring: the slow, obvious version the product must agree with.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ReferenceAdaptor(nn.Module):
    def __init__(self, layer: nn.Linear, threshold: float) -> None:
        super().__init__()
        self.original_layer = layer
        self.defer = nn.Linear(layer.weight.shape[1], 1)
        self.predict_values = nn.Linear(layer.weight.shape[1], layer.weight.shape[0])
        self.threshold = threshold
        self.untrained = True
        self.training = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer_out = self.original_layer(x)
        if self.untrained:
            return layer_out
        query = x[:, -1, :]
        gate = torch.sigmoid(self.defer(query))
        values = self.predict_values(query)
        if self.training:
            return gate * values.unsqueeze(1).repeat_interleave(layer_out.shape[1], 1) + (1 - gate) * layer_out
        return torch.where(gate >= self.threshold, values, layer_out)


def attach_reference(model: nn.Module, layer: int, threshold: float) -> ReferenceAdaptor:
    mlp = model.model.layers[layer].mlp
    adaptor = ReferenceAdaptor(mlp.down_proj, threshold)
    mlp.down_proj = adaptor
    return adaptor


def easyedit_edit_tokens(tokenizer, prompt: str, target: str) -> dict[str, torch.Tensor]:
    prompt_ids = tokenizer([prompt], return_tensors="pt", padding=True, truncation=True)["input_ids"]
    num_prompt_toks = int((prompt_ids[0] != tokenizer.pad_token_id).sum())
    tokens = tokenizer([f"{prompt} {target}"], return_tensors="pt", padding=True, truncation=True)
    tokens["labels"] = tokens["input_ids"].clone()
    tokens["labels"][0][:num_prompt_toks] = -100
    return dict(tokens)


def reference_edit(model: nn.Module, adaptor: ReferenceAdaptor, tokenizer, prompt: str, target: str, lr: float, n_iter: int) -> list[float]:
    adaptor.untrained = False
    adaptor.training = True
    optimizer = torch.optim.Adam(model.parameters(), lr)
    tokens = easyedit_edit_tokens(tokenizer, prompt, target)
    losses = []
    for _ in range(n_iter):
        loss = model(**tokens).loss
        losses.append(float(loss.detach()))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    adaptor.training = False
    return losses


@torch.no_grad()
def reference_teacher_forced(model: nn.Module, tokenizer, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """(predicted, expected) target tokens for one prompt, as EasyEdit's test_prediction_acc."""
    full = tokenizer(prompt + " " + target, return_tensors="pt")
    n_prompt = len(tokenizer(prompt)["input_ids"])
    answers = model(**full).logits.argmax(-1)[0].tolist()
    labels = full["input_ids"][0].tolist()
    return answers[n_prompt - 1 : -1], labels[n_prompt:]


@torch.no_grad()
def reference_generation(model: nn.Module, tokenizer, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """(last len(target) ids of the generated sequence, target ids), EasyEdit's vanilla_generation."""
    target_ids = tokenizer.encode(target, add_special_tokens=False)
    prompt_tok = tokenizer(prompt, return_tensors="pt")
    generated = model.generate(
        input_ids=prompt_tok["input_ids"],
        attention_mask=prompt_tok["attention_mask"],
        max_new_tokens=len(target_ids),
        pad_token_id=tokenizer.eos_token_id,
        do_sample=False,
        use_cache=False,
    )
    return generated[0].tolist()[-len(target_ids) :], target_ids


def accuracy(predicted: list[int], expected: list[int]) -> float:
    return float(np.mean(np.equal(predicted, expected)))
