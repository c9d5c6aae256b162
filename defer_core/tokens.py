"""Token layouts shared by editing and scoring, as EasyEdit builds them.

An edit or a teacher-forced probe is the text f"{prompt} {target}" tokenized with the
tokenizer's special tokens; its first `n_prompt` ids are the tokens of `prompt` alone (so the
labels are the remaining ids). A generation probe is `prompt` tokenized alone plus the ids to
compare the generation with, whose count is the number of tokens to generate:

* `generation_probe` (scoring `gen`): the target encoded alone without special tokens, as
  EasyEdit's vanilla_generation does. A byte-level BPE (SmolLM2, GPT-2, Llama-3) encodes
  "species" without its leading space, while a model continues a prompt with the spaced token
  (" species"), so these ids are not what a right answer generates;
* `in_context` (scoring `genctx`): the target's ids as they follow the prompt, i.e. the ids the
  teacher-forced probe scores. A sentencepiece tokenizer that adds the prefix space itself
  (Llama-2) gives the same ids both ways.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from .errors import DeferInputError


@dataclass(frozen=True)
class PromptTarget:
    """`ids` = tokens of prompt + " " + target; positions n_prompt.. are the target tokens."""

    ids: tuple[int, ...]
    n_prompt: int

    @property
    def target_ids(self) -> tuple[int, ...]:
        return self.ids[self.n_prompt :]


@dataclass(frozen=True)
class GenerationProbe:
    prompt_ids: tuple[int, ...]
    target_ids: tuple[int, ...]


def prompt_target(tokenizer: PreTrainedTokenizerBase, prompt: str, target: str) -> PromptTarget:
    prompt_ids = tokenizer(prompt)["input_ids"]
    n_prompt = sum(1 for token in prompt_ids if token != tokenizer.pad_token_id)
    ids = tuple(tokenizer(f"{prompt} {target}")["input_ids"])
    if len(ids) <= n_prompt:
        raise DeferInputError(f"target {target!r} of prompt {prompt!r} adds no tokens after the prompt")
    return PromptTarget(ids=ids, n_prompt=n_prompt)


def generation_probe(tokenizer: PreTrainedTokenizerBase, prompt: str, target: str) -> GenerationProbe:
    target_ids = tuple(tokenizer.encode(target, add_special_tokens=False))
    if not target_ids:
        raise DeferInputError(f"target {target!r} of prompt {prompt!r} has no tokens")
    return GenerationProbe(prompt_ids=tuple(tokenizer(prompt)["input_ids"]), target_ids=target_ids)


def in_context(generation: GenerationProbe, teacher_forced: PromptTarget) -> GenerationProbe:
    """The generation prompt, compared with the target's tokens in context (scoring `genctx`)."""
    return GenerationProbe(prompt_ids=generation.prompt_ids, target_ids=teacher_forced.target_ids)


def eos_token_ids(model_config, generation_config, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Every id that ends greedy generation the way `model.generate` ends it."""
    ids: set[int] = set()
    for source in (getattr(generation_config, "eos_token_id", None), getattr(model_config, "eos_token_id", None), tokenizer.eos_token_id):
        if source is None:
            continue
        ids.update(source if isinstance(source, (list, tuple)) else [source])
    return frozenset(int(i) for i in ids)
