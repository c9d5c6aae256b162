#!/usr/bin/env python
"""Threshold curves (issue 12), each comparison measured side by side in one run.

(1) one milestone's exact tf curve over every threshold vs one tf evaluation at a single
    threshold, on the embedded model after --edits edits;
(2) search efficiency: Pareto hypervolume of (rel_tf, loc_tf) at T after k trainings, curve
    mode vs sampled-threshold mode, real sweeps (`defer-sweep run`) on the curve demo's setting,
    medians over --seeds sweep seeds;
(3) from the same sweeps: the best rel_tf among points with loc_tf >= the constraint after k
    trainings, both modes.

A training is a trial that trained (not a reuse of another). Not part of `make test`:
`.venv/bin/python benchmarks/threshold_curves.py [--only 1|23]`.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "search_spaces" / "smollm2-zsre-curve.yaml"


def median_seconds(work, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# -- (1) ------------------------------------------------------------------------------------------


def bench_curve_cost(model: str, edits: int, layer: int, repeats: int) -> dict[str, Any]:
    """After `edits` edits: score_records at one threshold (tf) vs the gate rows (one forced-on
    pass; the unedited model's answers are cached, as in a sweep) plus the exact curve."""
    import torch

    from defer_core import DeferEditor, DeferHParams, load_model, load_records
    from defer_core.curve import exact_curve, tf_metrics_at
    from defer_core.evaluation import Scorer, UneditedLocality, build_probes, ensure_unedited_tf, gate_rows, score_records

    loaded = load_model(model, dtype="auto", device="cpu")
    records = load_records(None, limit=edits)
    probes = [build_probes(loaded, r) for r in records]
    hparams = DeferHParams(model_name=model, inner_params=(f"model.layers[{layer}].mlp.down_proj.weight",), edit_lr=1e-2, n_iter=10, threshold=0.5, device="cpu")
    editor = DeferEditor(loaded, hparams, seed=0)
    try:
        for probe in probes:
            editor.edit(probe.edit)
        scorer, unedited = Scorer(loaded), UneditedLocality()
        single = score_records(scorer, editor.adaptor, records, probes, ("tf",), unedited)  # fills the unedited caches
        ensure_unedited_tf(scorer, editor.adaptor, records, probes, unedited)  # a sweep computes these once per model
        rows = gate_rows(scorer, editor.adaptor, records, probes, ("tf",), unedited)
        one = median_seconds(lambda: score_records(scorer, editor.adaptor, records, probes, ("tf",), unedited), repeats)
        curve_points: list = []

        def whole_curve() -> None:
            curve_points[:] = exact_curve(gate_rows(scorer, editor.adaptor, records, probes, ("tf",), unedited), "float32")

        curve = median_seconds(whole_curve, repeats)
        from statistics import fmean

        at_half = {k: fmean(r[k] for r in single) for k in single[0]}
        assert tf_metrics_at(rows, 0.5, "float32") == at_half, "the curve at the adaptor's threshold must equal the evaluation"
    finally:
        editor.detach()
    return {"edits": edits, "layer": layer, "single_threshold_s": one, "exact_curve_s": curve, "ratio": curve / one,
            "curve_points": len(curve_points), "threads": torch.get_num_threads()}


# -- (2) and (3) -----------------------------------------------------------------------------------


def hypervolume(points: Sequence[tuple[float, float]]) -> float:
    """Area dominated by (rel, loc) points, both maximised, above the reference point (0, 0)."""
    area, best_loc = 0.0, 0.0
    for rel, loc in sorted(points, key=lambda p: (-p[0], -p[1])):
        if loc > best_loc:
            area += rel * (loc - best_loc)
            best_loc = loc
    return area


def sweep_spec(mode: str, seed: int, trainings: int, output_dir: Path) -> dict[str, Any]:
    spec = copy.deepcopy(yaml.safe_load(DEMO.read_text()))
    spec.update(name=f"bench-{mode}-{seed}", seed=seed, num_trials=trainings, output_dir=str(output_dir))
    if mode == "sampled":
        spec["search_space"]["threshold"] = {"low": 0.0, "high": 1.0}
        spec.pop("curve", None)
        for point in spec.get("initial_points", []):
            point.setdefault("threshold", 0.5)
    return spec


def run_sweep(spec: dict[str, Any], workdir: Path) -> float:
    path = workdir / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    start = time.perf_counter()
    subprocess.run([str(ROOT / ".venv" / "bin" / "defer-sweep"), "run", str(path)], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def points_by_training(output_dir: Path, mode: str, total: int) -> list[list[tuple[float, float]]]:
    """For each training in Optuna order, its (rel_tf, loc_tf) points at T: one per complete
    trial in sampled mode, its curve's points in curve mode; none for a pruned training."""
    from orchestrator.results import query
    from orchestrator.results.rows import POINTS
    from orchestrator.sinks.layout import require_sweep_dir

    layout = require_sweep_dir(output_dir)
    trials = [r for r in query.trials(layout, skip_unreadable=False) if not r.get("reuse_of")]
    trials.sort(key=lambda r: r["optuna_trial"])
    points: dict[str, list[tuple[float, float]]] = {r["trial_id"]: [] for r in trials}
    if mode == "curve":
        for row in query.read(layout, (POINTS,), skip_unreadable=False).rows(POINTS, n_edits=total):
            if row["trial_id"] in points and row.get("rel_tf") is not None:
                points[row["trial_id"]].append((row["rel_tf"], row["loc_tf"]))
    else:
        for row in trials:
            if row["status"] == "complete":
                points[row["trial_id"]].append((row["rel_tf"], row["loc_tf"]))
    complete = {r["trial_id"] for r in trials if r["status"] == "complete"}
    return [points[r["trial_id"]] if r["trial_id"] in complete else [] for r in trials]


def after_each(per_training: list[list[tuple[float, float]]], min_loc: float) -> tuple[list[float], list[float | None]]:
    """Hypervolume and best feasible rel_tf after 1, 2, ... trainings."""
    seen: list[tuple[float, float]] = []
    volumes, best = [], []
    for points in per_training:
        seen.extend(points)
        volumes.append(hypervolume(seen))
        feasible = [rel for rel, loc in seen if loc >= min_loc]
        best.append(max(feasible) if feasible else None)
    return volumes, best


def bench_search(seeds: Sequence[int], trainings: int, workdir: Path) -> dict[str, Any]:
    spec = yaml.safe_load(DEMO.read_text())
    total = int(spec["T"])
    min_loc = next(c["min"] for c in spec.get("constraints", []) if c["metric"] == "loc_tf")
    runs: dict[str, list[dict[str, Any]]] = {"curve": [], "sampled": []}
    for seed in seeds:
        for mode in ("sampled", "curve"):
            output_dir = workdir / f"{mode}-{seed}"
            seconds = run_sweep(sweep_spec(mode, seed, trainings, output_dir), workdir)
            volumes, best = after_each(points_by_training(output_dir, mode, total), min_loc)
            runs[mode].append({"seed": seed, "seconds": seconds, "hypervolume": volumes, "best_feasible_rel": best})
            print(f"  seed {seed} {mode:>7}: {seconds:.0f}s, {len(volumes)} trainings, final HV {volumes[-1]:.4f}, best feasible rel_tf {best[-1]}", flush=True)
    needed = []
    for sampled, curve in zip(runs["sampled"], runs["curve"]):
        target = sampled["hypervolume"][-1]
        reach = next((k + 1 for k, v in enumerate(curve["hypervolume"]) if v >= target), None)
        needed.append(reach)
    return {"trainings": trainings, "seeds": list(seeds), "T": total, "min_loc": min_loc, "runs": runs, "curve_trainings_to_reach_sampled_final_hv": needed}


def median_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if len(present) == len(values) else None


def best_after(values: Sequence[float | None], k: int) -> float | None:
    """The best feasible rel_tf after k trainings (the run's last value when it trained fewer)."""
    return values[min(k, len(values)) - 1] if values else None


def print_search(row: dict[str, Any]) -> None:
    runs, trainings = row["runs"], row["trainings"]
    final = {mode: statistics.median(r["hypervolume"][-1] for r in runs[mode]) for mode in runs}
    counts = {mode: [len(r["hypervolume"]) for r in runs[mode]] for mode in runs}
    print(f"(2) median final hypervolume of (rel_tf, loc_tf) at T: sampled {final['sampled']:.4f} (trainings per seed {counts['sampled']}),"
          f" curve {final['curve']:.4f} (trainings {counts['curve']})")
    needed = row["curve_trainings_to_reach_sampled_final_hv"]
    print(f"    curve-mode trainings to reach the sampled mode's final hypervolume, per seed: {needed}, median {median_or_none(needed)}"
          f" (target: at most a third of the sampled mode's trainings, {statistics.median(counts['sampled']) / 3:.1f})")
    for k in sorted({max(1, trainings // 4), trainings // 2, trainings}):
        values = {mode: [best_after(r["best_feasible_rel"], k) for r in runs[mode]] for mode in runs}
        print(f"(3) after {k:>2} trainings, best rel_tf with loc_tf >= {row['min_loc']}: sampled {values['sampled']}, curve {values['curve']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="123")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--edits", type=int, default=100, help="(1): edits before the milestone")
    parser.add_argument("--layer", type=int, default=27)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--trainings", type=int, default=18)
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench-threshold-curves")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--from-json", type=Path, default=None, help="(2)/(3): print the figures a previous --json run saved")
    args = parser.parse_args()
    print(f"machine {platform.processor() or platform.machine()}  python {sys.version.split()[0]}")
    figures: dict[str, Any] = {}
    if "1" in args.only:
        row = figures["curve_cost"] = bench_curve_cost(args.model, args.edits, args.layer, args.repeats)
        print(f"\n(1) {args.model}, {row['edits']} edits at layer {row['layer']}, {row['threads']} threads, medians of {args.repeats}:"
              f" tf evaluation at one threshold {row['single_threshold_s']:.2f}s, exact tf curve over all thresholds"
              f" ({row['curve_points']} breakpoints) {row['exact_curve_s']:.2f}s, ratio {row['ratio']:.2f}x")
    if "2" in args.only or "3" in args.only:
        if args.from_json:
            row = figures["search"] = json.loads(args.from_json.read_text())["search"]
        else:
            args.workdir.mkdir(parents=True, exist_ok=True)
            print(f"\n(2)/(3) sweeps of {args.trainings} trainings, seeds {args.seeds}, both modes ({DEMO.name}):", flush=True)
            row = figures["search"] = bench_search([int(s) for s in args.seeds.split(",")], args.trainings, args.workdir)
        print_search(row)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
