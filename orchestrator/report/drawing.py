"""What every report figure shares: one fixed size (1000x600 px) on matplotlib's Agg canvas,
the colours and labels, constraint lines, error bars, and the pixel positions of points that
the page gives hover titles.

Figures are built with the object API and an explicit Agg canvas, never pyplot: no display
is needed and the process's global backend (e.g. in the sweep driver) is left alone.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from defer_core.results import TF

from ..intervals import Interval
from ..protocol import OPTUNA_TRIAL, THRESHOLD, trial_label as label_of
from ..results.ranking import Bound

WIDTH_PX, HEIGHT_PX, DPI = 1000, 600, 100
COMPLETE_COLOR = "#4c72b0"
PRUNED_COLOR = "#9a9a9a"
FAILED_COLOR = "#8c564b"
FRONT_COLOR = "#dd8452"
BEST_COLOR = "#c44e52"
INFEASIBLE_COLOR = "#b0b0b0"
CONSTRAINT_COLOR = "#2ca02c"
TRAINING_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974")

LABELLED_CURVES = 5  # curves named at their end: best.yaml's trial and the top trials (the page's order)
Row = Mapping[str, Any]
METRIC_LABELS = {"rel": "Rel (edit prompts)", "gen": "Gen (rephrased prompts)", "loc": "Loc (unrelated prompts)"}
SCORING_LABELS = {TF: "teacher-forced", "gen": "generation", "genctx": "generation, in-context target"}


def new_figure() -> Figure:
    """A figure of exactly WIDTH_PX x HEIGHT_PX pixels (never saved with bbox_inches='tight',
    which would change the size)."""
    figure = Figure(figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def trial_label(row: Row) -> str:
    """`#007`, as the console and MLflow run names print it (protocol.trial_label)."""
    return label_of(row.get(OPTUNA_TRIAL), str(row.get("trial_id", "?")))


def point_label(row: Row, curve_mode: bool) -> str:
    """A candidate's label: its trial's, in curve mode with its threshold (`#007@0.73`)."""
    return f"{trial_label(row)}@{row[THRESHOLD]:.2f}" if curve_mode and row.get(THRESHOLD) is not None else trial_label(row)


SHARED_LABELS = 3  # trials named in one label of equal points; the rest are counted


def shared_label(rows: Sequence[Row], curve_mode: bool) -> str:
    """One label for points with the same values: `#1, #4`; in curve mode a trial's several
    thresholds as a range, `#000@0.10–0.47 (8)`; past SHARED_LABELS trials, `+N more`."""
    by_trial: dict[str, list[Row]] = {}
    for r in rows:
        by_trial.setdefault(trial_label(r), []).append(r)
    names = []
    for name, ours in by_trial.items():
        thresholds = sorted(r[THRESHOLD] for r in ours if r.get(THRESHOLD) is not None)
        if not curve_mode or not thresholds:
            names.append(name)
        elif len(thresholds) == 1:
            names.append(f"{name}@{thresholds[0]:.2f}")
        else:
            names.append(f"{name}@{thresholds[0]:.2f}–{thresholds[-1]:.2f} ({len(thresholds)})")
    more = f" +{len(names) - SHARED_LABELS} more" if len(names) > SHARED_LABELS else ""
    return ", ".join(names[:SHARED_LABELS]) + more


def constraint_lines(ax: Any, constraints: Sequence[Bound], x_metric: str | None, y_metric: str | None) -> None:
    """Draws each bound on the axes' metrics as a dashed line (vertical for x, horizontal for y)."""
    for bound in constraints:
        for value, side in ((bound.min, ">="), (bound.max, "<=")):
            if value is None:
                continue
            label = f"constraint {bound.metric} {side} {value:g}"
            if bound.metric == x_metric:
                ax.axvline(value, color=CONSTRAINT_COLOR, linestyle="--", linewidth=1.3, label=label, zorder=1)
            if bound.metric == y_metric:
                ax.axhline(value, color=CONSTRAINT_COLOR, linestyle="--", linewidth=1.3, label=label, zorder=1)


@dataclass(frozen=True)
class Hotspot:
    """A point of a figure, in image pixels (origin top left), that the page gives a hover title."""

    x: float
    y: float
    title: str


Mark = tuple[Any, float, float, str]  # (axes, x, y in data units, title)


def hotspots(figure: Figure, marks: Iterable[Mark]) -> tuple[Hotspot, ...]:
    """Data points → image pixels. Draws the figure first, so constrained layout has placed
    the axes exactly where the PNG (same size and dpi) will have them."""
    figure.canvas.draw()
    spots = []
    for ax, x, y, title in marks:
        px, py = ax.transData.transform((x, y))
        spots.append(Hotspot(round(float(px), 1), round(HEIGHT_PX - float(py), 1), title))
    return tuple(spots)


def scoring_title(scoring: str) -> str:
    return f"{scoring} ({SCORING_LABELS.get(scoring, scoring)})"


def unit_axes(ax: Any) -> None:
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.grid(True, alpha=0.3)


ErrorBars = Mapping[str, tuple[Interval | None, Interval | None]]  # trial id -> (Rel interval, Loc interval) at T


def error_bars(ax: Any, rows: Sequence[Row], bars: ErrorBars, x_key: str, y_key: str) -> int:
    """Draws each row's intervals as error bars around its point (thin, under the points);
    returns how many rows had one."""
    drawn = 0
    for r in rows:
        x_interval, y_interval = bars.get(str(r["trial_id"]), (None, None))
        if x_interval is None and y_interval is None:
            continue
        x, y = r[x_key], r[y_key]
        xerr = None if x_interval is None else [[max(0.0, x - x_interval.low)], [max(0.0, x_interval.high - x)]]
        yerr = None if y_interval is None else [[max(0.0, y - y_interval.low)], [max(0.0, y_interval.high - y)]]
        ax.errorbar([x], [y], xerr=xerr, yerr=yerr, fmt="none", ecolor="#555555", elinewidth=0.9, capsize=2.5, alpha=0.7, zorder=1.5,
                    label=None if drawn else "95% interval")
        drawn += 1
    return drawn
