"""What one trial runs: its protocol(s), milestones, scorings, edit path, threshold grid and
thread count (TrialPlan), checked when it is made. Light (no torch): commands check a plan
before the model loads, and every editor's view reads it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import DeferInputError
from .results import DEFAULT_SCORINGS, GENERATION_SCORINGS, PROTOCOLS, SCORINGS, SHARED_STREAM
from .runtime import DEFAULT_THREADS

EDIT_PATHS = ("fast", "plain")  # fast: suffix-only edit steps (an editor without one runs plain); plain: the full forward
# Where GRACE reads its key in a teacher-forced evaluation forward (lifelong_view.RowPredictor):
# sticky: EasyEdit's key_id, left at the last edit's (or generation's) prompt position;
# prompt: the scored text's own last prompt token, where an edit of that text would put its key.
GRACE_KEYS = ("sticky", "prompt")
DEFAULT_GRACE_KEY = "sticky"  # EasyEdit's


def grace_key_note(key: str | None, lead: str = "") -> str:
    """How every output names GRACE's key position: nothing at EasyEdit's sticky one (or where
    no GRACE ran), else `lead` and this phrase."""
    return "" if key in (None, DEFAULT_GRACE_KEY) else f"{lead}GRACE keyed at each scored prompt (grace_key {key})"


@dataclass(frozen=True)
class TrialPlan:
    """`protocol`: one of PROTOCOLS, or ("stream", "immediate"): one edit stream scored both ways.
    `threshold_grid`: thresholds at which the generation scorings are also scored (GridPoint);
    `threshold_scores=False`: no scoring at the adaptor's own threshold (empty metrics and
    records), only gate rows and the grid. `threads`: torch's intra-op thread count for the
    trial (runtime.DEFAULT_THREADS, a sweep worker's default); it can move gates by an ulp.
    GRACE and WISE trials take neither a grid nor curve mode, and one protocol at a time
    (lifelong_view.check_lifelong_plan says why). `grace_key`: where GRACE keys a teacher-forced
    evaluation (GRACE_KEYS; sticky is EasyEdit's), refused for the other editors."""

    protocol: str | tuple[str, ...] = "stream"
    milestones: tuple[int, ...] = (1,)
    scorings: tuple[str, ...] = DEFAULT_SCORINGS
    edit_path: str = "fast"
    threshold_grid: tuple[float, ...] = ()
    threshold_scores: bool = True
    threads: int = DEFAULT_THREADS
    grace_key: str = DEFAULT_GRACE_KEY

    def __post_init__(self) -> None:
        protocols = self.protocols
        if not protocols or any(p not in PROTOCOLS for p in protocols) or len(set(protocols)) != len(protocols):
            raise DeferInputError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if len(protocols) > 1 and not set(protocols) <= set(SHARED_STREAM):
            raise DeferInputError(f"only {' and '.join(SHARED_STREAM)} share an edit stream; run the others on their own, got {list(protocols)}")
        if not self.milestones or list(self.milestones) != sorted(set(self.milestones)) or self.milestones[0] < 1:
            raise DeferInputError(f"milestones must be distinct positive edit counts in ascending order, got {list(self.milestones)}")
        unknown = [s for s in self.scorings if s not in SCORINGS]
        if not self.scorings or unknown:
            raise DeferInputError(f"scorings must be a non-empty subset of {', '.join(SCORINGS)}, got {list(self.scorings)}")
        if self.edit_path not in EDIT_PATHS:
            raise DeferInputError(f"edit_path must be one of {', '.join(EDIT_PATHS)}, got {self.edit_path!r}")
        grid = list(self.threshold_grid)
        numbers = all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and 0.0 <= t <= 1.0 for t in grid)
        if not numbers or len(set(grid)) != len(grid):
            raise DeferInputError(f"threshold_grid must be distinct numbers in [0, 1], got {grid}")
        object.__setattr__(self, "threshold_grid", tuple(float(t) for t in grid))
        if not isinstance(self.threshold_scores, bool):
            raise DeferInputError(f"threshold_scores must be true or false, got {self.threshold_scores!r}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise DeferInputError(f"threads must be a whole number >= 1, got {self.threads!r}")
        if self.grace_key not in GRACE_KEYS:
            raise DeferInputError(f"grace_key must be one of {', '.join(GRACE_KEYS)}, got {self.grace_key!r}")

    @property
    def protocols(self) -> tuple[str, ...]:
        return (self.protocol,) if isinstance(self.protocol, str) else tuple(self.protocol)

    @property
    def total_records(self) -> int:
        return self.milestones[-1]

    @property
    def grid_scorings(self) -> tuple[str, ...]:
        """The generation scorings scored at the grid thresholds (none without a grid)."""
        return tuple(s for s in self.scorings if s in GENERATION_SCORINGS) if self.threshold_grid else ()
