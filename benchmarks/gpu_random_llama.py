#!/usr/bin/env python
"""DEFER, GRACE and WISE on a GPU, with a Llama-2-7B-shaped model of random weights (nothing to
download):

(a) DEFER: seconds per edit at one layer, plain (full forward) vs fast (suffix-only) path, medians;
(b) GRACE: the same, plain vs fast, and whether the fast path's losses equal the plain path's
    on this device; WISE: the same, with its steps taken (early stopping) and seconds per step.
    Each editor with EasyEdit's llama-7b hparams at the
    same layer, n_iter set to --n-iter so the editors' per-edit figures compare;
(e) DEFER: a T-edit stream scored tf + gen at T, plain vs fast: their wall times, and whether they
    give the same numbers on this device (the fast path claims exactly the plain path's);
peak GPU memory of each part.

Needs CUDA; not part of `make test`. Run: python benchmarks/gpu_random_llama.py --data FILE
--train FILE (a ZsRE edit file, the first --T records edited; WISE's irrelevant prompts from the
ZsRE train split). `--shape tiny --device cpu` runs the same code on a small model (a check of
the script, not a figure); `--model smollm2-135m --device cpu` on a real model (the embedded one)
instead of random weights, for CPU figures.
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

from pathlib import Path

from defer_core import DeferEditor, DeferHParams, TrialPlan, load_records, run_trial
from defer_core.evaluation import build_probes
from defer_core.grace import GraceEditor
from defer_core.grace_hparams import load_grace_hparams
from defer_core.models import LoadedModel, byte_tokenizer
from defer_core.wise import WiseEditor
from defer_core.wise_batch import read_irrelevant_prompts
from defer_core.wise_hparams import load_wise_hparams

LLAMA2_7B_SHAPE = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32}
TINY_SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4}
HPARAMS = Path(__file__).resolve().parents[1] / "hparams"


def random_llama(device: str, seed: int = 0, shape: dict[str, int] = LLAMA2_7B_SHAPE) -> LoadedModel:
    """Llama-2-7B's layer shapes in float32 (EasyEdit's DEFER dtype), random weights, a byte tokenizer."""
    tokenizer = byte_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                         tie_word_embeddings=False, **shape)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, name="random-llama-2-7b-shape")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def _reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def synced_seconds(work: Callable[[], object]) -> float:
    _sync()
    start = time.perf_counter()
    work()
    _sync()
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
            _reset_peak()
            out[f"{path}_s"] = statistics.median(synced_seconds(lambda: editor.edit(probe)) for _ in range(repeats))
            out[f"{path}_peak_gib"] = _peak_gib()
        finally:
            editor.detach()
    out["speedup"] = out["plain_s"] / out["fast_s"]
    return out


def plain_vs_fast(attach: Callable[[str], object], probes) -> dict[str, object]:
    """Each probe edited once per path by `attach(path)`'s editor (detached after): the median
    seconds (the first edit warms up kernels), seconds per step, peak memory, and whether the two
    paths' losses are equal on this device."""
    out: dict[str, object] = {}
    losses = {}
    for path in ("plain", "fast"):
        started = time.perf_counter()
        editor = attach(path)
        out[f"{path}_attach_s"] = time.perf_counter() - started
        try:
            _reset_peak()
            stats = []
            times = [synced_seconds(lambda probe=probe: stats.append(editor.edit(probe))) for probe in probes]
            steps = [len(s.losses) for s in stats]
            out[f"{path}_s"] = statistics.median(times[1:] or times)
            out[f"{path}_steps"] = steps
            out[f"{path}_s_per_step"] = statistics.median(t / n for t, n in zip(times[1:] or times, steps[1:] or steps))
            out[f"{path}_peak_gib"] = _peak_gib()
            losses[path] = [s.losses for s in stats]
        finally:
            editor.detach()
    out["speedup"] = out["plain_s"] / out["fast_s"]
    out["losses_equal"] = losses["plain"] == losses["fast"]
    out["max_loss_abs_diff"] = max((abs(a - b) for p, f in zip(losses["plain"], losses["fast"]) for a, b in zip(p, f)), default=0.0)
    return out


def grace_seconds_per_edit(loaded: LoadedModel, probes, layer: int, n_iter: int) -> dict[str, object]:
    """GRACE with EasyEdit's llama-7b hparams at `layer`, plain vs fast (a new key per edit)."""
    hparams = load_grace_hparams(HPARAMS / "GRACE" / "llama-7b.yaml").replace(inner_params=(f"model.layers[{layer}].mlp.down_proj.weight",), n_iter=n_iter)
    return plain_vs_fast(lambda path: GraceEditor(loaded, hparams, seed=0, edit_path=path), probes)


def wise_seconds_per_edit(loaded: LoadedModel, probes, irrelevant: list[str], layer: int, n_iter: int) -> dict[str, object]:
    """WISE with EasyEdit's llama-7b hparams at `layer` (WISE-Retrieve, as that file sets), plain vs
    fast, a fresh memory per path (attach: its context templates, generations of the unedited
    model); early stopping may end an edit before n_iter."""
    hparams = load_wise_hparams(HPARAMS / "WISE" / "llama-7b.yaml").replace(inner_params=(f"model.layers[{layer}].mlp.down_proj.weight",), n_iter=n_iter)

    def attach(path: str) -> WiseEditor:
        editor = WiseEditor(loaded, hparams, seed=42, edit_path=path, irrelevant=irrelevant)
        # A random model's templates are noise and may hold braces str.format cannot fill (EasyEdit
        # would fail there too): drop them, keeping each template's one "{}" slot.
        editor.templates = [t[:-2].replace("{", "").replace("}", "") + "{}" for t in editor.templates]
        return editor

    return plain_vs_fast(attach, probes)


def stream_plain_vs_fast(loaded: LoadedModel, records, layer: int, n_iter: int, T: int) -> dict[str, object]:
    results, seconds = {}, {}
    for path in ("plain", "fast"):
        plan = TrialPlan(milestones=(T,), scorings=("tf", "gen"), edit_path=path)
        _reset_peak()
        seconds[path] = synced_seconds(lambda path=path, plan=plan: results.__setitem__(path, run_trial(loaded, records[:T], hparams_at(layer, n_iter), plan, seed=0)))
        seconds[f"{path}_peak_gib"] = _peak_gib()
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
    parser.add_argument("--train", default=None, help="ZsRE train split (WISE's irrelevant prompts); without it WISE is skipped")
    parser.add_argument("--parts", default="a,b,e", help="comma-separated parts to run (a, b, e)")
    parser.add_argument("--shape", choices=("7b", "tiny"), default="7b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default=None, help="a real model (defer_core.load_model name) instead of the random Llama-2-7B shape")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_random_llama.py: needs CUDA")
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 as EasyEdit's editors run it: no TF32 rounding
    torch.backends.cudnn.allow_tf32 = False
    parts = set(args.parts.split(","))
    started = time.perf_counter()
    if args.model:
        from defer_core.models import load_model

        loaded = load_model(args.model, dtype="float32", device=args.device)
    else:
        loaded = random_llama(args.device, shape=LLAMA2_7B_SHAPE if args.shape == "7b" else TINY_SHAPE)
    build_s = time.perf_counter() - started
    records = load_records(args.data, limit=args.T)
    probes = [build_probes(loaded, record).edit for record in records]
    figures: dict[str, object] = {
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device, "torch": torch.__version__, "python": platform.python_version(),
        "model": (args.model or f"Llama-2-7B shape ({args.shape}), random weights") + f", float32, {sum(p.numel() for p in loaded.model.parameters()) / 1e9:.3f}B parameters",
        "threads": torch.get_num_threads(),
        "build_s": build_s, "layer": args.layer, "n_iter": args.n_iter,
    }
    if "a" in parts:
        figures["a_defer_seconds_per_edit"] = seconds_per_edit(loaded, probes[0], args.layer, args.n_iter, args.repeats)
    if "b" in parts:
        figures["b_grace_seconds_per_edit"] = grace_seconds_per_edit(loaded, probes, args.layer, args.n_iter)
        if args.train:
            figures["b_wise_seconds_per_edit"] = wise_seconds_per_edit(loaded, probes, read_irrelevant_prompts(len(probes), args.train), args.layer, args.n_iter)
    if "e" in parts:
        figures["e_defer_stream"] = stream_plain_vs_fast(loaded, records, args.layer, args.n_iter, args.T)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
