"""Edit orders: the same records edited in another sequence, as a repeat of a measurement.

Continual editing depends on the order of the edits (a later edit retrains the gate an earlier
one trained), so one order is one sample. Order 0 is the file's order (what every trial used
before orders existed); order k > 0 is a fixed shuffle of the same records.

The shuffle must be the same on every run, process, machine and Python version, so a result
can be reproduced from its order number alone. It is a Fisher-Yates shuffle written out here,
drawing from `random.Random(k).random()`: the one part of the `random` module whose output
Python guarantees across versions for an int seed (`shuffle` and `randrange` are not
guaranteed). numpy's and torch's generators are not used, so a global seed never moves it.
"""

from __future__ import annotations

import random
from typing import Sequence

from .data import EditRecord
from .errors import DeferInputError


def permutation(size: int, order: int) -> list[int]:
    """Positions 0..size-1 in edit order `order`: identity for 0, else a seeded Fisher-Yates."""
    if isinstance(order, bool) or not isinstance(order, int) or order < 0:
        raise DeferInputError(f"order must be an integer >= 0, got {order!r}")
    positions = list(range(size))
    if order == 0:
        return positions
    draw = random.Random(order).random
    for i in range(size - 1, 0, -1):
        j = int(draw() * (i + 1))  # random() < 1, so j <= i
        positions[i], positions[j] = positions[j], positions[i]
    return positions


def ordered_records(records: Sequence[EditRecord], order: int, total: int) -> list[EditRecord]:
    """The first `total` records in edit order `order` (0: file order)."""
    if isinstance(total, bool) or not isinstance(total, int) or total < 0 or total > len(records):
        raise DeferInputError(f"total must be between 0 and the {len(records)} records given, got {total!r}")
    first = list(records[:total])
    return [first[i] for i in permutation(total, order)]
