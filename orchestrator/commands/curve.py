"""`defer-sweep curve`: a recorded trial's metrics against the threshold (the exact tf curve, the
gen grid, in curve mode its chosen point) as md, csv or json, from the Parquet dataset alone."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from defer_core.results import METRICS, metric_key

from .console import ExitCode

if TYPE_CHECKING:
    from defer_core.curve import SafeThreshold

    from ..sinks.layout import SweepLayout
    from ..results.curve import Reading, TrialCurve
    from ..spec import SweepSpec

CURVE_FORMATS = ("md", "csv", "json")
_TF_COLUMNS = tuple(metric_key(metric, "tf") for metric in METRICS)


def curve(args: argparse.Namespace) -> ExitCode:
    """`defer-sweep curve OUT_DIR TRIAL [--n-edits N] [--threshold T] [--format md|csv|json]`:
    a recorded trial's exact tf curve, its gen grid, in curve mode its chosen point (its best at
    that milestone, at the threshold export writes: off the knife edge), and with --threshold
    its metrics there; read from the Parquet dataset alone (no model, no torch)."""
    from ..sinks.layout import read_spec, require_sweep_dir
    from ..results.curve import load_trial_curve, read_at

    layout = require_sweep_dir(args.output_dir)
    spec = read_spec(layout)
    found = load_trial_curve(layout, spec, args.trial, args.n_edits)
    reading = read_at(found, args.threshold) if args.threshold is not None else None
    chosen = chosen_point(layout, spec, found)
    print({"md": _curve_md, "csv": _curve_csv, "json": _curve_json}[args.format](found, reading, chosen), end="")
    return ExitCode.OK


def chosen_point(layout: "SweepLayout", spec: "SweepSpec", found: "TrialCurve") -> "ChosenPoint | None":
    """Curve mode: the point the trial reported as its best at the curve's milestone (the
    milestones table's threshold), read at the threshold `defer-sweep export` would write for it
    (results/curve_points.point_margin: a tf breakpoint moved to the middle of the thresholds with
    its metrics). None outside curve mode or when the milestone recorded no threshold."""
    from ..protocol import THRESHOLD
    from ..results.curve import read_at
    from ..results.query import milestone
    from ..results.rows import TRIAL_ID
    from ..results.curve_points import kept_text, point_margin

    if not spec.curve_mode:
        return None
    row = milestone(layout, found.trial[TRIAL_ID], found.n_edits)
    point = row.get(THRESHOLD) if row else None
    if point is None:
        return None
    margin = point_margin(spec, point, found.gates, found.dtype)
    return ChosenPoint(read_at(found, point if margin is None else margin.threshold), point, margin, kept_text(spec, point) if margin is None else None)


@dataclass(frozen=True)
class ChosenPoint:
    """A trial's chosen point at one milestone, read at the threshold handed on."""

    reading: "Reading"  # at `reading.threshold`: the threshold export writes
    point: float  # the point's own threshold (a tf breakpoint, or a grid threshold)
    margin: "SafeThreshold | None"  # how `reading.threshold` was found; None: `point` kept (`kept` says why)
    kept: str | None

    def describe(self) -> str:
        """Where the threshold comes from, in words."""
        from ..results.best import held_on

        margin, threshold = self.margin, self.reading.threshold
        if margin is None:
            return f"threshold {_threshold_text(threshold)}, {self.kept}"
        if margin.breakpoint <= 0.0:
            return "threshold 0: every row fires at 0 and no gate lies below it (no knife edge)"
        if not margin.margin:
            return (f"threshold {_threshold_text(threshold)}, the breakpoint itself, without margin: no {margin.dtype} value lies far enough "
                    f"inside {held_on(margin)}, the thresholds with its metrics (a gate one {margin.dtype} step lower elsewhere changes a record)")
        return (f"threshold {_threshold_text(threshold)}, the middle of {held_on(margin)}, where the metrics of the point's own threshold "
                f"{_threshold_text(margin.breakpoint)} hold (a breakpoint: a gate value or the curve's end, a knife edge); what defer-sweep export writes for this point")


def _curve_rows(found: "TrialCurve", reading: "Reading | None", chosen: "ChosenPoint | None" = None) -> tuple[list[str], list[dict[str, object]]]:
    """(columns, rows) of the curve's one table: `section` curve (exact tf breakpoints), grid
    (the generation scorings at the spec's grid thresholds), chosen (curve mode: the trial's
    best point at the threshold export writes) or at (the --threshold reading)."""
    from ..protocol import THRESHOLD

    columns = ["section", THRESHOLD, *_TF_COLUMNS, *found.grid_columns]
    rows: list[dict[str, object]] = [{"section": "curve", THRESHOLD: p.threshold, **p.metrics} for p in found.tf]
    rows += [{"section": "grid", **point} for point in found.grid]
    if reading is not None or chosen is not None:
        columns.append("edit_success")
    if chosen is not None:
        at = chosen.reading
        rows.append({"section": "chosen", THRESHOLD: at.threshold, **at.tf, **(at.grid or {}), "edit_success": at.edit_success})
    if reading is not None:
        rows.append({"section": "at", THRESHOLD: reading.threshold, **reading.tf, **(reading.grid or {}), "edit_success": reading.edit_success})
    return columns, rows


def _curve_csv(found: "TrialCurve", reading: "Reading | None", chosen: "ChosenPoint | None" = None) -> str:
    import csv
    import io

    columns, rows = _curve_rows(found, reading, chosen)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _curve_json(found: "TrialCurve", reading: "Reading | None", chosen: "ChosenPoint | None" = None) -> str:
    from ..protocol import THRESHOLD

    data: dict[str, object] = {
        "trial_id": found.trial["trial_id"], "optuna_trial": found.trial.get("optuna_trial"), "n_edits": found.n_edits,
        "milestones": list(found.milestones), "dtype": found.dtype, "protocol": found.trial.get("protocol"),
        "curve": [{THRESHOLD: p.threshold, **p.metrics} for p in found.tf],
        "grid": [dict(point) for point in found.grid],
    }
    if chosen is not None:
        at, margin = chosen.reading, chosen.margin
        data["chosen"] = {THRESHOLD: at.threshold, "point_threshold": chosen.point, "below": None if margin is None else margin.below,
                          "margin": None if margin is None else margin.margin, "note": chosen.describe(),
                          **at.tf, "on_grid": at.grid is not None, **(at.grid or {}), "edit_success": at.edit_success}
    if reading is not None:
        data["at"] = {THRESHOLD: reading.threshold, **reading.tf, "on_grid": reading.grid is not None, **(reading.grid or {}), "edit_success": reading.edit_success}
    return json.dumps(data, indent=2) + "\n"


def _md_table(columns: Sequence[str], rows: Sequence[dict[str, object]]) -> list[str]:
    def cell(value: object) -> str:
        return "–" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    return [f"| {' | '.join(columns)} |", f"|{'---|' * len(columns)}", *(f"| {' | '.join(cell(row.get(c)) for c in columns)} |" for row in rows)]


def _curve_md(found: "TrialCurve", reading: "Reading | None", chosen: "ChosenPoint | None" = None) -> str:
    from ..protocol import THRESHOLD

    trial = found.trial
    lines = [
        f"trial {found.label} ({trial['trial_id']}) at {found.n_edits} edits (milestones with gate rows: {', '.join(map(str, found.milestones))}); "
        f"{trial.get('protocol')} protocol, gates in {found.dtype}",
        "",
        "exact tf curve: each row holds for thresholds above the previous row's, up to its own",
        "",
        *_md_table([THRESHOLD, *_TF_COLUMNS], [{THRESHOLD: _threshold_text(p.threshold), **p.metrics} for p in found.tf]),
    ]
    if chosen is not None:
        at = chosen.reading
        tf = " ".join(f"{key}={value:.4f}" for key, value in at.tf.items())
        gen = "".join(f" {key}={value:.4f}" for key, value in (at.grid or {}).items())
        lines += ["", f"chosen point (the trial's best at {found.n_edits} edits): {tf} (tf, exact){gen}; {chosen.describe()}"]
    if found.grid:
        lines += ["", "generation scorings on the threshold grid", "",
                  *_md_table([THRESHOLD, *found.grid_columns], [{**point, THRESHOLD: _threshold_text(point[THRESHOLD])} for point in found.grid])]
    if reading is not None:
        tf = " ".join(f"{key}={value:.4f}" for key, value in reading.tf.items())
        if reading.grid is not None:
            gen = " ".join(f"{key}={value:.4f}" for key, value in reading.grid.items())
        elif found.grid:
            gen = f"generation scorings: {reading.threshold:g} is not on the grid ({', '.join(f'{p[THRESHOLD]:g}' for p in found.grid)})"
        else:
            gen = "no generation scorings recorded"
        success = "edit success: not recorded" if reading.edit_success is None else f"edit success={reading.edit_success:.4f} (mean over {len(found.edits)} edits)"
        lines += ["", f"at threshold {_threshold_text(reading.threshold)}: {tf} (tf, exact); {gen}; {success}"]
    return "\n".join(lines) + "\n"


def _threshold_text(threshold: float) -> str:
    """Nine significant digits: enough to tell float32 gates apart (0.99999994 is not 1)."""
    return f"{threshold:.9g}"
