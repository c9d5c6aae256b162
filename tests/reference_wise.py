"""A plain restatement of EasyEdit's WISE (easyeditor/models/wise/, HEAD 14cea82), written for the tests.

Laid out as EasyEdit's code is: an adapter that keeps `layer` (whose weight merging replaces) and
a copy `original_layer`, masks drawn from numpy's global random state, routing on `.item()`
(batch size 1 only), the edit loop of `WISE.edit`, the batch of `utils.tokenize` and the
templates of `utils.get_context_templates`. Deliberately independent of defer_core.wise*.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn import CrossEntropyLoss
from torch.nn import functional as F
from transformers.activations import ACT2FN


class Config:
    """The WISEHyperParams fields the algorithm reads, as attributes."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def euc(query, key, act_name, infer=False):
    act_fn = ACT2FN[act_name]
    l2_norm = torch.norm(act_fn(key) - act_fn(query), dim=-1)
    if l2_norm.dim() == 1:
        l2_norm = l2_norm.unsqueeze(0)
    if infer and l2_norm.size(1) > 100:
        return torch.topk(l2_norm, k=1, largest=True).values.mean()
    return torch.mean(l2_norm, dim=-1)


class MeanAct:
    def __init__(self, min_a=1e9):
        self.min_a = min_a

    def update(self, val):
        self.min_a = min(self.min_a, val)

    def min_act(self):
        return self.min_a


def magnitude(tensor, density):
    if density >= 1:
        return tensor
    k = int(density * tensor.view(-1).shape[0])
    mask = torch.zeros_like(tensor)
    w = tensor.abs().view(-1)
    if w.device.type == "cpu":
        w = w.float()
    mask.view(-1)[torch.topk(w, k=k, largest=True).indices] = 1
    return tensor * mask


def ties(weights, base, tensors, densities):
    """GTA('magnitude', 'sum', normalize=True).execute."""
    deltas = [magnitude(x - base, densities) for x in tensors]
    deltas = torch.stack(deltas, dim=0)
    weights = torch.tensor(list(weights), dtype=deltas.dtype, device=deltas.device)
    while len(deltas.shape) > len(weights.shape):
        weights.unsqueeze_(-1)
    weighted = deltas * weights
    sign = weighted.sign().to(base.dtype)
    majority = (weighted.sum(dim=0) >= 0).to(base.dtype) * 2 - 1
    mask = sign == majority
    mixed = (weighted * mask).sum(dim=0)
    divisor = (weights * mask).sum(dim=0)
    divisor[divisor == 0] = 1
    mixed /= divisor
    return (base + mixed).to(base.dtype)


class Adapter(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.layer = layer
        self.weight = layer.weight
        self.config = config
        self.new_weight = copy.deepcopy(self.weight)
        self.original_layer = copy.deepcopy(layer)
        self.memory_weight = []
        self.memory_mean_act = []
        self.merge_cnt = 0
        self.editing = False
        self.editing_mean_act = MeanAct()
        self.editing_total_cnt = 0

    def save_weight(self):
        self.memory_weight.append(copy.deepcopy(self.new_weight))
        self.new_weight = copy.deepcopy(self.original_layer.weight)
        if self.config.retrieve:
            self.memory_mean_act.append(copy.deepcopy(self.editing_mean_act))
            self.editing_mean_act = MeanAct()

    def merge_weight(self):
        c = self.config
        if not c.retrieve:
            n = len(self.memory_weight)
            if self.original_layer.weight.equal(self.layer.weight):
                merged = ties([c.weights / n for _ in range(n)], self.original_layer.weight, self.memory_weight, c.densities)
            else:
                merged = ties([0.4 / n for _ in range(n)] + [0.6], self.original_layer.weight, self.memory_weight + [self.layer.weight], c.densities)
            self.layer.weight = nn.Parameter(merged.to(self.layer.weight.device), requires_grad=False)
            self.new_weight = copy.deepcopy(self.original_layer.weight)
            self.memory_weight = []
        else:
            merge_num = c.merge_freq // c.save_freq
            merged = ties([c.weights / merge_num for _ in range(merge_num)], self.original_layer.weight, self.memory_weight[-merge_num:], c.densities)
            min_a = 1e9
            for _ in range(merge_num):
                self.memory_weight.pop()
                min_a = min(min_a, self.memory_mean_act.pop().min_act())
            self.new_weight = copy.deepcopy(self.original_layer.weight)
            self.memory_weight.append(merged)
            self.memory_mean_act.append(MeanAct(min_a=min_a))
            self.merge_cnt += 1

    def save_editing_activation(self):
        dist = euc(self.original_layer_output[:-1, ...], self.new_weight_layer_output[:-1, ...], self.config.hidden_act)
        self.editing_mean_act.update(dist.mean().item())

    def generate_activation_mask(self, mask_ratio):
        p_grad = self.new_weight.reshape(-1)
        p_mask = np.random.choice([1, 0], size=p_grad.size()[0], p=[mask_ratio, 1 - mask_ratio])
        self.weight_mask = torch.from_numpy(p_mask).to(p_grad.device)

    def mask_new_weight_gradient(self):
        p_size = self.new_weight.grad.size()
        p_grad = self.new_weight.grad.reshape(-1) * self.weight_mask
        self.new_weight.grad = p_grad.view(p_size).to(self.new_weight.grad.dtype)

    def forward(self, x):
        c = self.config
        if self.editing:
            out = F.linear(x, self.new_weight)
            self.new_weight_layer_output = out
            self.original_layer_output = self.original_layer(x)
            return out
        original = self.original_layer(x)
        new = F.linear(x, self.new_weight)
        threshold = self.editing_mean_act.min_act() * c.act_ratio
        if not c.retrieve:
            layer_output = self.layer(x)
            dist2 = euc(original, new, c.hidden_act, infer=True)
            dist1 = euc(original, layer_output, c.hidden_act, infer=True)
            if dist1.item() < threshold and dist2.item() < threshold:
                return original
            return layer_output if dist1.item() > dist2.item() else new
        dist1 = euc(original, new, c.hidden_act, infer=True)
        min_dist = dist1.mean() if dist1.dim() > 0 else dist1
        out = original if min_dist.item() < threshold else new
        for i, weight in enumerate(self.memory_weight):
            mem = F.linear(x, weight)
            dist = euc(original, mem, c.hidden_act, infer=True)
            if dist > min_dist and dist > self.memory_mean_act[i].min_act() * c.act_ratio:
                out, min_dist = mem, dist
        return out


class ReferenceWise:
    """WISE.__init__ (sequential) + WISE.__call__ + WISE.edit on `model.model.layers[layer].mlp.down_proj`."""

    def __init__(self, model, config, layer):
        self.model, self.config = model, config
        config.hidden_act = model.config.hidden_act
        self.mlp = model.model.layers[layer].mlp
        self.adapter = Adapter(config, self.mlp.down_proj)
        self.mlp.down_proj = self.adapter

    def __call__(self, **kwargs):
        a = self.adapter
        if not self.config.retrieve and not a.editing:
            if not a.original_layer.weight.equal(a.new_weight) and a.editing_total_cnt >= self.config.save_freq:
                a.memory_weight.append(a.new_weight)
            if len(a.memory_weight) > 0 and a.editing_total_cnt >= self.config.save_freq:
                a.merge_weight()
        return self.model(**kwargs)

    def edit(self, tokens):
        c, a = self.config, self.adapter
        last_prompt_token_loc = (tokens["labels"] == -100).sum(dim=-1) - 1
        a.editing = True
        a.new_weight.requires_grad = True
        if a.editing_total_cnt % c.save_freq == 0:
            a.generate_activation_mask(c.mask_ratio)
        losses, pre, val = [], 0, 1e9
        for i in range(c.n_iter):
            if i == 0:
                optimizer = torch.optim.SGD([a.new_weight], c.edit_lr, weight_decay=1e-5)
            ft_loss = self.ft_loss(tokens, last_prompt_token_loc)
            act_loss = self.activation_loss(a.original_layer_output, a.new_weight_layer_output)
            loss = ft_loss + act_loss.to(ft_loss.device)
            losses.append(loss.item())
            if abs(val - pre) <= 1e-4 and val <= 0.02:
                a.save_editing_activation()
                break
            if i == c.n_iter - 1:
                a.save_editing_activation()
            optimizer.zero_grad()
            loss.backward()
            a.mask_new_weight_gradient()
            optimizer.step()
            pre, val = val, loss.item()
            if type(c.norm_constraint) is float:
                with torch.no_grad():
                    a.new_weight[...] = torch.clamp(a.new_weight, min=a.weight - c.norm_constraint, max=a.weight + c.norm_constraint)
        a.editing = False
        a.editing_total_cnt += 1
        if a.editing_total_cnt % c.save_freq == 0:
            a.save_weight()
        if a.editing_total_cnt % c.merge_freq == 0:
            a.merge_weight()
        return losses

    def ft_loss(self, tokens, last_prompt_token_loc):
        k = 1
        logits = self.model(**tokens).logits
        shift_logits = logits[:-k, :-1, :].contiguous()
        shift_labels = tokens["labels"][:-k, 1:].contiguous()
        loss = CrossEntropyLoss(reduction="none")(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1))
        loss = loss.view(tokens["input_ids"].shape[0] - k, -1)
        label_mask = torch.zeros_like(loss, dtype=torch.bool)
        for i, col_index in enumerate(last_prompt_token_loc[:-k]):
            label_mask[i, col_index - 1 :] = True
        return ((loss * label_mask).sum(1) / label_mask.sum(1)).mean()

    def activation_loss(self, original, new):
        c, k = self.config, 1
        len_temp = original.shape[0] / k - 1
        in_scope = euc(original[0 : int(len_temp)], new[0 : int(len_temp)], c.hidden_act)
        out_scope = euc(original[-1:], new[-1:], c.hidden_act)
        zero = torch.tensor(0.0).to(original.device)
        loss = out_scope.view(-1, 1) - in_scope + c.gamma
        loss2 = out_scope - c.alpha
        loss3 = c.beta - in_scope
        loss3 = torch.mean(loss3[loss3 > 0]) if min(loss3[loss3 > 0].size()) > 0 else zero
        loss2 = torch.mean(loss2[loss2 > 0]) if min(loss2[loss2 > 0].size()) > 0 else zero
        loss = torch.mean(loss[loss > 0]) if min(loss[loss > 0].size()) > 0 else zero
        return sum([loss + loss2 + loss3]) / 1


def get_context_templates(model, tok):
    """EasyEdit caches these once per process; the tests build them per (identical) model."""
    cache = []
    prompt_tok = tok(["I", "You", "Because", "Yes", "Q: "], padding=True, return_tensors="pt")
    for length, n_gen in [[5, 5], [10, 5]]:
        gen = model.generate(input_ids=prompt_tok["input_ids"], attention_mask=prompt_tok["attention_mask"], max_new_tokens=length,
                             num_beams=n_gen // 5, num_return_sequences=n_gen // 5, pad_token_id=tok.eos_token_id)
        cache += tok.batch_decode(gen, skip_special_tokens=True)
    return ["{}"] + [_ + " {}" for _ in cache]


def tokenize(request, tokenizer, context_templates, objective="only_label"):
    """utils.tokenize for one request (batch_size 1, no chat template, general editing)."""
    prompts, labels, loc_prompts = [request["prompt"]], [request["target_new"]], [request["loc_prompt"]]
    full_prompt = [f"{templ.format(p + ' ' + t)}" for templ in context_templates for p, t in zip(prompts, labels)]
    prompt_ids = tokenizer([f"{templ.format(p)}" for templ in context_templates for p in prompts], return_tensors="pt", padding=True, truncation=True)["input_ids"]
    full_prompt += loc_prompts
    num_prompt_toks = [len(i) for i in prompt_ids]
    tokens = tokenizer(full_prompt, return_tensors="pt", padding=True, truncation=True)
    tokens["labels"] = tokens["input_ids"].clone()
    if objective == "only_label":
        for i in range(len(num_prompt_toks)):
            tokens["labels"][i][: num_prompt_toks[i]] = -100
    tokens["labels"][tokens["input_ids"] == tokenizer.pad_token_id] = -100
    assert request["loc_prompt"] not in request["prompt"]
    return dict(tokens)
