#!/usr/bin/env python
"""How much torch's intra-op thread count moves DEFER's numbers: the same trial (same model,
records, hparams, seed) run at 1 and at N threads, side by side in one process.

Prints, per thread count pair: how many gates differ and by how many float32 steps, how many
records change at each milestone's threshold, and the largest difference of any metric. Not
part of `make test`: `.venv/bin/python benchmarks/thread_count.py [--model smollm2-135m] [--T 36]`.
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def float32_steps(a: float, b: float) -> int:
    """How many float32 values lie between a and b (0: equal), for values of one sign."""
    bits = [struct.unpack("<i", struct.pack("<f", x))[0] for x in (a, b)]
    return abs(bits[0] - bits[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--T", type=int, default=36, dest="T")
    parser.add_argument("--layer", type=int, default=27)
    parser.add_argument("--edit-lr", type=float, default=1e-2)
    parser.add_argument("--n-iter", type=int, default=10)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts; each is compared with the first")
    parser.add_argument("--scorings", default="tf,gen")
    args = parser.parse_args()

    from defer_core import DeferHParams, TrialPlan, load_model, load_records, run_trial
    from defer_core.curve import tf_metrics_at

    loaded = load_model(args.model, dtype="auto", device="cpu")
    records = load_records(None, limit=args.T)
    hparams = DeferHParams(model_name=args.model, inner_params=(f"model.layers[{args.layer}].mlp.down_proj.weight",), edit_lr=args.edit_lr,
                           n_iter=args.n_iter, threshold=0.5, device="cpu")
    counts = [int(part) for part in args.threads.split(",")]
    milestones = tuple(sorted({1, min(10, args.T), args.T}))
    results = {}
    for threads in counts:
        plan = TrialPlan(milestones=milestones, scorings=tuple(args.scorings.split(",")), threads=threads)
        results[threads] = run_trial(loaded, records, hparams, plan, seed=0)
    base = results[counts[0]]
    report = []
    for threads in counts[1:]:
        other = results[threads]
        for mine, theirs in zip(base.milestones, other.milestones):
            steps = [float32_steps(a.gate, b.gate) for a, b in zip(mine.gates, theirs.gates)]
            # a row whose gate moved fires in one run and not the other at a threshold equal to
            # the larger of its two gates (the knife edge); it changes a metric where on != off
            flips = sum(a.gate != b.gate and a.on != a.off for a, b in zip(mine.gates, theirs.gates))
            metric_gap = max(abs(mine.metrics[k] - theirs.metrics[k]) for k in mine.metrics)
            at_gate = max((abs(tf_metrics_at(mine.gates, g.gate, "float32")[k] - tf_metrics_at(theirs.gates, g.gate, "float32")[k])
                           for g in mine.gates for k in ("rel_tf", "gen_tf", "loc_tf")), default=0.0)
            report.append({
                "threads": f"{counts[0]} vs {threads}", "n_edits": mine.n_edits, "gates": len(steps), "gates_differ": sum(s > 0 for s in steps),
                "max_float32_steps": max(steps), "records_flipping_at_a_moved_gate": flips,
                "max_metric_difference_at_threshold_0.5": metric_gap, "max_tf_difference_at_a_gate_threshold": at_gate,
                "edit_losses_differ": sum(a.final_loss != b.final_loss for a, b in zip(base.edits, other.edits)),
            })
    print(json.dumps({"model": args.model, "T": args.T, "layer": args.layer, "edit_lr": args.edit_lr, "n_iter": args.n_iter, "rows": report}, indent=2))


if __name__ == "__main__":
    main()
