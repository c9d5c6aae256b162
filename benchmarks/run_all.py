#!/usr/bin/env python
"""Speed of DEFER trials on the embedded model, each comparison measured side by side in one run.

(a) seconds per edit, plain (reference full forward) vs fast (suffix-only) path, per layer;
(b) one milestone evaluation over N edits, one row at a time vs padded batches;
(c) trials per hour with K trials packed into one forward pass;
(d) the lower bound: the suffix forward + backward alone for one step, vs the fast path's step.

Medians of --repeats runs. Not part of `make test`; run with `make bench`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from defer_core import DeferEditor, DeferHParams, TrialPlan, load_model, load_records, run_trials
from defer_core.editor import capture_layer_input
from defer_core.evaluation import Scorer, UneditedLocality, build_probes, evaluate


def hparams_at(model: str, layer: int, n_iter: int, edit_lr: float = 1e-3) -> DeferHParams:
    return DeferHParams(model_name=model, inner_params=(f"model.layers[{layer}].mlp.down_proj.weight",),
                        edit_lr=edit_lr, n_iter=n_iter, threshold=0.5, device="cpu")


def median_seconds(work, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_edit_paths(loaded, probes, layers, n_iter, repeats):
    rows = []
    for layer in layers:
        seconds = {}
        for path in ("plain", "fast"):
            editor = DeferEditor(loaded, hparams_at(loaded.name, layer, n_iter), seed=0, edit_path=path)
            try:
                seconds[path] = median_seconds(lambda: editor.edit(probes[0].edit), repeats)
            finally:
                editor.detach()
        rows.append({"layer": layer, "plain_s": seconds["plain"], "fast_s": seconds["fast"], "speedup": seconds["plain"] / seconds["fast"]})
    return rows


def bench_lower_bound(loaded, probes, layer, n_iter, repeats):
    """One optimisation step of the fast path vs the bare suffix forward+backward it contains."""
    editor = DeferEditor(loaded, hparams_at(loaded.name, layer, n_iter), seed=0, edit_path="fast")
    try:
        probe = probes[0].edit
        fast_step = median_seconds(lambda: editor.edit(probe), repeats) / n_iter
        model = loaded.model
        input_ids = torch.tensor([probe.ids])
        layers = model.get_decoder().layers
        hidden_in, kwargs = capture_layer_input(model, layers[layer], input_ids)
        norm, head = model.get_decoder().norm, model.get_output_embeddings()
        positions = torch.arange(probe.n_prompt - 1, len(probe.ids) - 1)
        targets = input_ids[0, probe.n_prompt :]
        editor.adaptor.untrained = False
        editor.adaptor.train(True)

        def bare_steps():
            for _ in range(n_iter):
                hidden = hidden_in
                for block in list(layers)[layer:]:
                    hidden = block(hidden, **kwargs)
                F.cross_entropy(head(norm(hidden[0, positions])).float(), targets).backward()

        bound = median_seconds(bare_steps, repeats) / n_iter
    finally:
        editor.adaptor.train(False)
        editor.detach()
    return {"layer": layer, "fast_step_s": fast_step, "suffix_fwd_bwd_s": bound, "ratio": fast_step / bound}


def bench_evaluation(loaded, records, n_records, repeats, batch_size, layer):
    """One row at a time re-running every layer per generated token (the reference), padded
    batches doing the same, and padded batches caching the layers below the adaptor."""
    probes = [build_probes(loaded, r) for r in records[:n_records]]
    editor = DeferEditor(loaded, hparams_at(loaded.name, layer, 2, edit_lr=1e-2), seed=0)
    variants = {"one_at_a_time": (1, False), "batched_no_prefix_cache": (batch_size, False), "batched": (batch_size, True)}
    try:
        for probe in probes[:3]:
            editor.edit(probe.edit)
        unedited = UneditedLocality()
        evaluate(Scorer(loaded), editor.adaptor, records[:n_records], probes, ("tf", "gen"), unedited)  # fill the shared cache

        results, seconds = {}, {}
        for name, (size, reuse_prefix) in variants.items():
            def run(size=size, reuse_prefix=reuse_prefix, name=name):
                scorer = Scorer(loaded, batch_size=size, reuse_prefix=reuse_prefix)
                results[name] = evaluate(scorer, editor.adaptor, records[:n_records], probes, ("tf", "gen"), unedited)

            seconds[name] = median_seconds(run, repeats)
        assert all(result == results["one_at_a_time"] for result in results.values()), "every variant must give the same metrics"
    finally:
        editor.detach()
    one = seconds["one_at_a_time"]
    return {"records": n_records, "layer": layer, "batch_size": batch_size, **{f"{k}_s": v for k, v in seconds.items()},
            "speedup": one / seconds["batched"], "speedup_no_prefix_cache": one / seconds["batched_no_prefix_cache"],
            "metrics": results["batched"]}


def bench_packing(loaded, records, packs, n_edits, n_iter, repeats):
    plan = TrialPlan(milestones=(n_edits,), scorings=("tf",))
    rows = []
    for k in packs:
        members = [hparams_at(loaded.name, 27, n_iter, edit_lr=1e-3 * (i + 1)) for i in range(k)]
        seconds = median_seconds(lambda: run_trials(loaded, records, members, plan, seeds=list(range(k))), repeats)
        rows.append({"K": k, "seconds": seconds, "trials_per_hour": k * 3600 / seconds})
    base = rows[0]["trials_per_hour"]
    for row in rows:
        row["vs_K1"] = row["trials_per_hour"] / base
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-iter", type=int, default=20)
    parser.add_argument("--layers", default="5,15,27")
    parser.add_argument("--eval-records", type=int, default=100)
    parser.add_argument("--eval-repeats", type=int, default=3, help="repeats of (b); its one-at-a-time side takes over 3 minutes a run")
    parser.add_argument("--packs", default="1,4,8")
    parser.add_argument("--pack-edits", type=int, default=3)
    parser.add_argument("--eval-layer", type=int, default=27, help="the adaptor's layer for (b); 27 is EasyEdit's default")
    parser.add_argument("--only", default="abcd", help="which comparisons to run, e.g. 'b' or 'ac'")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    records = load_records(None, limit=max(args.eval_records, args.pack_edits))
    probes = [build_probes(loaded, r) for r in records[:1]]
    layers = [int(x) for x in args.layers.split(",")]
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"model {args.model}  device {device}  torch {torch.__version__}  repeats {args.repeats} (medians)")

    figures = {}
    if "a" in args.only:
        figures["edit_paths"] = bench_edit_paths(loaded, probes, layers, args.n_iter, args.repeats)
        print(f"\n(a) seconds per edit, n_iter={args.n_iter}")
        for row in figures["edit_paths"]:
            print(f"  layer {row['layer']:>3}: plain {row['plain_s']:.3f}s  fast {row['fast_s']:.3f}s  speedup {row['speedup']:.2f}x")

    if "b" in args.only:
        figures["evaluation"] = bench_evaluation(loaded, records, args.eval_records, args.eval_repeats, 32, args.eval_layer)
        row = figures["evaluation"]
        print(f"\n(b) one milestone evaluation over {row['records']} edits (tf + gen scoring), adaptor at layer {row['layer']}")
        print(f"  one at a time (reference) {row['one_at_a_time_s']:.2f}s  batched(32) re-running every layer {row['batched_no_prefix_cache_s']:.2f}s"
              f" ({row['speedup_no_prefix_cache']:.2f}x)  batched(32) caching the layers below the adaptor {row['batched_s']:.2f}s ({row['speedup']:.2f}x)")

    if "c" in args.only:
        figures["packing"] = bench_packing(loaded, records[: args.pack_edits], [int(k) for k in args.packs.split(",")], args.pack_edits, args.n_iter, args.repeats)
        print(f"\n(c) trials per hour, {args.pack_edits} edits x n_iter {args.n_iter} at layer 27, tf milestone at the end")
        for row in figures["packing"]:
            print(f"  K={row['K']}: {row['seconds']:.2f}s per pack  {row['trials_per_hour']:.0f} trials/h  {row['vs_K1']:.2f}x K=1")

    if "d" in args.only:
        figures["lower_bound"] = bench_lower_bound(loaded, probes, max(layers), args.n_iter, args.repeats)
        row = figures["lower_bound"]
        print(f"\n(d) layer {row['layer']}: fast path {row['fast_step_s'] * 1000:.1f} ms/step, suffix fwd+bwd alone {row['suffix_fwd_bwd_s'] * 1000:.1f} ms/step, ratio {row['ratio']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "device": device, **figures}, indent=2))


if __name__ == "__main__":
    main()
