#!/usr/bin/env python
"""DEFER on a GPU, with a Llama-2-7B-shaped model of random weights (nothing to download):

(a) seconds per edit at one layer, plain (full forward) vs fast (suffix-only) path, medians;
(e) a T-edit stream scored tf + gen at T, plain vs fast: their wall times, and whether they
    give the same numbers on this device (the fast path claims exactly the plain path's);
peak GPU memory of each part.

Needs CUDA; not part of `make test`. Run: python benchmarks/gpu_random_llama.py --data FILE
(a ZsRE edit file; the first --T records are edited).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Callable

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from defer_core import DeferEditor, DeferHParams, TrialPlan, load_records, run_trial
from defer_core.evaluation import build_probes
from defer_core.models import LoadedModel, byte_tokenizer

LLAMA2_7B_SHAPE = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32}


def random_llama(device: str, seed: int = 0) -> LoadedModel:
    """Llama-2-7B's layer shapes in float32 (EasyEdit's DEFER dtype), random weights, a byte tokenizer."""
    tokenizer = byte_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                         tie_word_embeddings=False, **LLAMA2_7B_SHAPE)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, name="random-llama-2-7b-shape")


def synced_seconds(work: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    work()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def hparams_at(layer: int, n_iter: int) -> DeferHParams:
    return DeferHParams(model_name="random-llama-2-7b-shape", inner_params=(f"model.layers[{layer}].mlp.down_proj.weight",),
                        edit_lr=1e-3, n_iter=n_iter, threshold=0.5, device=0)


def seconds_per_edit(loaded: LoadedModel, probe, layer: int, n_iter: int, repeats: int) -> dict[str, float]:
    out = {}
    for path in ("plain", "fast"):
        editor = DeferEditor(loaded, hparams_at(layer, n_iter), seed=0, edit_path=path)
        try:
            editor.edit(probe)  # warm-up: kernels, allocator
            torch.cuda.reset_peak_memory_stats()
            out[f"{path}_s"] = statistics.median(synced_seconds(lambda: editor.edit(probe)) for _ in range(repeats))
            out[f"{path}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        finally:
            editor.detach()
    out["speedup"] = out["plain_s"] / out["fast_s"]
    return out


def stream_plain_vs_fast(loaded: LoadedModel, records, layer: int, n_iter: int, T: int) -> dict[str, object]:
    results, seconds = {}, {}
    for path in ("plain", "fast"):
        plan = TrialPlan(milestones=(T,), scorings=("tf", "gen"), edit_path=path)
        torch.cuda.reset_peak_memory_stats()
        seconds[path] = synced_seconds(lambda path=path, plan=plan: results.__setitem__(path, run_trial(loaded, records[:T], hparams_at(layer, n_iter), plan, seed=0)))
        seconds[f"{path}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    plain, fast = results["plain"], results["fast"]
    gate_diffs = [abs(a.gate - b.gate) for a, b in zip(plain.milestones[-1].gates, fast.milestones[-1].gates)]
    return {
        "T": T,
        "plain_s": seconds["plain"], "fast_s": seconds["fast"], "plain_peak_gib": seconds["plain_peak_gib"], "fast_peak_gib": seconds["fast_peak_gib"],
        "metrics_equal": plain.milestones[-1].metrics == fast.milestones[-1].metrics,
        "losses_equal": [e.final_loss for e in plain.edits] == [e.final_loss for e in fast.edits],
        "gates_equal": gate_diffs == [0.0] * len(gate_diffs),
        "gates_max_abs_diff": max(gate_diffs, default=0.0),
        "max_loss_abs_diff": max((abs(a.final_loss - b.final_loss) for a, b in zip(plain.edits, fast.edits)), default=0.0),
        "plain_metrics": plain.milestones[-1].metrics, "fast_metrics": fast.milestones[-1].metrics,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--layer", type=int, default=27)
    parser.add_argument("--n-iter", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--T", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_random_llama.py: needs CUDA")
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 as EasyEdit's DEFER runs it: no TF32 rounding
    torch.backends.cudnn.allow_tf32 = False
    started = time.perf_counter()
    loaded = random_llama("cuda")
    build_s = time.perf_counter() - started
    records = load_records(args.data, limit=args.T)
    probe = build_probes(loaded, records[0]).edit
    figures = {
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "python": platform.python_version(),
        "model": f"Llama-2-7B shape, random weights, float32, {sum(p.numel() for p in loaded.model.parameters()) / 1e9:.2f}B parameters",
        "build_s": build_s, "layer": args.layer, "n_iter": args.n_iter,
        "a_seconds_per_edit": seconds_per_edit(loaded, probe, args.layer, args.n_iter, args.repeats),
        "e_stream": stream_plain_vs_fast(loaded, records, args.layer, args.n_iter, args.T),
    }
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
