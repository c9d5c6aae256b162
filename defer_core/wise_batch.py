"""What one WISE edit trains on, as EasyEdit builds it (easyeditor/models/wise/utils.py, HEAD 14cea82).

WISE does not train on DEFER's single `f"{prompt} {target}"` row (tokens.PromptTarget), so that
layout is not reused. One edit is a batch of rows:

* `get_context_templates`: once per process, the unedited model greedily continues
  "I", "You", "Because", "Yes", "Q: " by 5 and then by 10 tokens (`model.generate`, left padding,
  pad = eos); the templates are '{}' and each decoded continuation + ' {}' (11 in all);
* `tokenize`: one row per template, `template.format(prompt + ' ' + target)`, and last the
  irrelevant prompt ("loc_prompt"), padded together on the left. With objective 'only_label' the
  first `len(prompt ids)` labels of each template row are -100, where that length is the
  *padded* length of the template-prefixed prompts, and every pad position (pad = eos) is -100.
  The irrelevant row keeps its labels but is not in the edit loss (it feeds the activation loss).

The irrelevant prompts come from the ZsRE training split: EasyEdit's examples
(examples/run_wise_editing.py, examples/WISE.md) take `loc + ' ' + loc_ans` of the first K
training records for K edits, and `_prepare_requests` (easyeditor/editors/utils.py) gives edit i
the i-th of them (it repeats and shuffles them only when fewer than the edits are given).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from .errors import DeferInputError

log = logging.getLogger(__name__)

TEMPLATE_STARTS = ("I", "You", "Because", "Yes", "Q: ")
TEMPLATE_LENGTHS = ((5, 5), (10, 5))  # (max_new_tokens, n_gen) as apply_wise_to_model passes them
TRAIN_FILE = Path("zsre") / "zsre_mend_train-1k.json"
IGNORE = -100


@dataclass(frozen=True)
class WiseRequest:
    """One edit as EasyEdit's request holds it: text, not token ids (the templates need text)."""

    prompt: str
    target: str


@dataclass
class EditBatch:
    """The tensors one edit step feeds the model; row -1 is the irrelevant prompt."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


def wise_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """A copy set up as EasyEdit's BaseEditor sets its tokenizer for WISE on Llama/GPT-style models:
    left padding, pad = eos. A copy, so the project's scoring keeps its own tokenizer settings."""
    copied = copy.deepcopy(tokenizer)
    copied.padding_side = "left"
    copied.pad_token_id = copied.eos_token_id
    return copied


@torch.no_grad()
def context_templates(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, device: torch.device) -> list[str]:
    """EasyEdit's `get_context_templates` with length_params [[5, 5], [10, 5]] on the unedited model."""
    starts = tokenizer(list(TEMPLATE_STARTS), padding=True, return_tensors="pt").to(device)
    texts: list[str] = []
    for length, n_gen in TEMPLATE_LENGTHS:
        generated = model.generate(
            input_ids=starts["input_ids"],
            attention_mask=starts["attention_mask"],
            max_new_tokens=length,
            num_beams=n_gen // 5,
            num_return_sequences=n_gen // 5,
            pad_token_id=tokenizer.eos_token_id,
        )
        texts += tokenizer.batch_decode(generated, skip_special_tokens=True)
    return ["{}"] + [text + " {}" for text in texts]


def _fill(template: str, text: str) -> str:
    """`template.format(text)` as EasyEdit does; a generated template with braces breaks it there too."""
    try:
        return template.format(text)
    except (IndexError, KeyError, ValueError):
        raise DeferInputError(f"context template {template!r} has braces that str.format cannot fill") from None


def edit_batch(
    tokenizer: PreTrainedTokenizerBase,
    templates: Sequence[str],
    request: WiseRequest,
    irrelevant: str,
    objective: str,
    device: torch.device,
) -> EditBatch:
    """EasyEdit's `tokenize` for one request (no chat template); `tokenizer` from wise_tokenizer."""
    if irrelevant in request.prompt:
        raise DeferInputError(
            f"irrelevant prompt {irrelevant!r} occurs in the edit prompt: EasyEdit's subject-masked activation loss is not restated"
        )
    rows = [_fill(t, request.prompt + " " + request.target) for t in templates] + [irrelevant]
    prompt_rows = tokenizer([_fill(t, request.prompt) for t in templates], return_tensors="pt", padding=True, truncation=True)["input_ids"]
    tokens = tokenizer(rows, return_tensors="pt", padding=True, truncation=True)
    labels = tokens["input_ids"].clone()
    if objective == "only_label":
        for row, prompt_ids in enumerate(prompt_rows):
            labels[row][: len(prompt_ids)] = IGNORE
    labels[tokens["input_ids"] == tokenizer.pad_token_id] = IGNORE
    return EditBatch(tokens["input_ids"].to(device), tokens["attention_mask"].to(device), labels.to(device))


def irrelevant_prompts(records: Sequence[dict], n_edits: int, rng: random.Random | None = None) -> list[str]:
    """The `loc_prompts` EasyEdit's WISE examples pass for `n_edits` edits: `loc + ' ' + loc_ans`
    of the first n_edits training records, in order (edit i gets the i-th). Fewer records than
    edits: repeated and shuffled as `_prepare_requests` does (with `rng`, random's global state there)."""
    chosen = list(records[:n_edits])
    prompts = []
    for index, record in enumerate(chosen):
        loc, answer = record.get("loc"), record.get("loc_ans")
        if not isinstance(loc, str) or not isinstance(answer, str):
            raise DeferInputError(f"training record {index}: fields 'loc' and 'loc_ans' must be strings")
        prompts.append(loc + " " + answer)
    if not prompts:
        raise DeferInputError("no training records to take irrelevant prompts from")
    if len(prompts) < n_edits:
        log.warning("%d training records for %d edits: repeated and shuffled, as EasyEdit does", len(prompts), n_edits)
        prompts = (prompts * math.ceil(n_edits / len(prompts)))[:n_edits]
        (rng or random.Random()).shuffle(prompts)
    return prompts


def read_irrelevant_prompts(n_edits: int, path: str | os.PathLike[str] | None = None, rng: random.Random | None = None) -> list[str]:
    """irrelevant_prompts from a ZsRE training file (default: zsre/zsre_mend_train-1k.json in the
    data directory). Records with an empty `alt` still give theirs: only `loc`/`loc_ans` are read."""
    from .data import default_data_dir

    resolved = Path(path) if path is not None else default_data_dir() / TRAIN_FILE
    try:
        records = json.loads(resolved.read_text(encoding="utf-8"))
    except OSError as error:
        raise DeferInputError(f"{resolved}: cannot read the ZsRE training file ({error.strerror}); it comes with the WISE / EasyEdit data release") from None
    except json.JSONDecodeError as error:
        raise DeferInputError(f"{resolved}: not valid JSON (line {error.lineno}: {error.msg})") from None
    if not isinstance(records, list):
        raise DeferInputError(f"{resolved}: expected a JSON array of training records")
    return irrelevant_prompts(records, n_edits, rng)
