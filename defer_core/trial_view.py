"""What a trial's protocol loops (trial._Run) ask of an editor: edit every member, score a
member on some records, check one edit, roll back. One loop then serves DEFER (single or
packed, defer_core.defer_view) and the other lifelong editors (GRACE, WISE:
defer_core.lifelong_view), which differ in how they are scored, not in the protocols."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

from .data import EditRecord
from .editor import EditStats
from .evaluation import RecordProbes
from .results import GateRow


@dataclass
class Scored:
    """One member's evaluation of some records: each record's scores at the member's threshold
    (none when the plan skips them), gate rows, and per grid threshold each record's
    generation scores (gates and grid: DEFER only)."""

    rows: list[dict[str, float]] = field(default_factory=list)
    gates: list[GateRow] = field(default_factory=list)
    grid: list[list[dict[str, float]]] = field(default_factory=list)

    def extend(self, other: "Scored") -> None:
        self.rows += other.rows
        self.gates += other.gates
        self.grid = [mine + theirs for mine, theirs in zip(self.grid, other.grid)] if self.grid else [list(g) for g in other.grid]


@dataclass(frozen=True)
class EditCheck:
    """An edit's success (the edit prompt's tf Rel straight after it) and, for DEFER, the gate
    and the accuracies forced on / off that give it at any threshold (None for other editors)."""

    success: float
    gate: float | None = None
    on: float | None = None
    off: float | None = None


class EditorView(Protocol):
    """One editor (K members edited together) as the protocol loops use it."""

    size: int

    def edit(self, record: EditRecord, probe: RecordProbes) -> list[EditStats]:
        """One edit of every member (of `record`, whose tokens are `probe.edit`), in member order."""
        ...

    def reset(self) -> None:
        """Every member back to the unedited model (chunks: before each chunk)."""
        ...

    def evaluate(self, k: int, records: Sequence[EditRecord], probes: Sequence[RecordProbes], chunk: int = 0, after_edit: bool = False) -> Scored:
        """Member k's scores of `records` on the model as it is now. `after_edit`: the evaluation
        EasyEdit HEAD runs straight after each edit (immediate), whose side effects on the editor
        (GRACE's random stream, WISE-Merge's folding) belong to the stream; otherwise (a stream
        milestone, a chunk) the evaluation leaves the editor as it found it, so later edits are
        those of a run that never evaluated in between (EasyEdit's run on the first n records)."""
        ...

    def check_edit(self, k: int, record: EditRecord, probe: RecordProbes, immediate: Scored | None) -> EditCheck:
        """Member k's success on the record just edited; `immediate` is its evaluation of that
        record right after the edit, when the protocol made one."""
        ...
