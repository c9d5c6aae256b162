"""What a Tune experiment directory holds, as far as Tuner.restore is concerned.

Both stages keep one (the search in OUT/tune, each protocol's confirm experiment in
OUT/tune-confirm/<protocol>; on a storage_uri beside its Parquet dataset); stage.py restores
it when it is RESTORABLE, starts over when it is UNSAVED and refuses a DAMAGED one.
"""

from __future__ import annotations

import enum
import fnmatch
import json
import pickletools

import pyarrow.fs as pafs
from ray import tune

from ..storage import Location, one_line, read_bytes

TUNER_PKL = "tuner.pkl"  # what Tuner() writes first and Tuner.restore unpickles (ray/tune/impl/tuner_internal.py)
EXPERIMENT_STATE = "experiment_state-*.json"  # Tune's snapshots (TuneController.CKPT_FILE_TMPL); restore reads the newest


class TuneSaved(enum.Enum):
    """What a Tune experiment directory holds, as far as Tuner.restore is concerned."""

    NOTHING = "nothing"  # no Tune experiment
    UNSAVED = "unsaved"  # a start that stopped before Tune's first snapshot: an empty, cut-short or lone tuner.pkl
    DAMAGED = "damaged"  # snapshots, but tuner.pkl or the newest snapshot cannot be read
    RESTORABLE = "restorable"


def tune_saved(at: Location) -> tuple[TuneSaved, str]:
    """Whether Tuner.restore can restore the experiment in `at` (any pyarrow filesystem), and
    if not, why. Tune's own can_restore only asks whether tuner.pkl exists, but Tuner() opens
    that file before pickling into it, so a start that failed there (e.g. a searcher that
    cannot be pickled) leaves it empty and Tuner.restore fails with EOFError; and one that
    stopped before the first snapshot (experiment_state-*.json) has nothing for restore to read.
    Restorable: can_restore, tuner.pkl a whole pickle (its opcodes read to the end, none run)
    and the newest snapshot valid JSON."""
    entries = at.filesystem.get_file_info(pafs.FileSelector(at.path, allow_not_found=True))
    snapshots = sorted(fnmatch.filter((e.base_name for e in entries if e.type == pafs.FileType.File), EXPERIMENT_STATE))
    pickled = tune.Tuner.can_restore(at.path, storage_filesystem=at.filesystem)
    tuner_ok = pickled and _whole_pickle(read_bytes(at, TUNER_PKL))
    if not snapshots:
        if not entries:
            return TuneSaved.NOTHING, "no Tune experiment"
        return TuneSaved.UNSAVED, f"no Tune snapshot ({EXPERIMENT_STATE}) in {at}" + ("" if tuner_ok else f"; {TUNER_PKL} {'empty or cut short' if pickled else 'missing'}")
    if not tuner_ok:
        return TuneSaved.DAMAGED, f"{at.child(TUNER_PKL)}: {'not a whole pickle (empty or cut short)' if pickled else 'missing'}"
    newest = at.child(snapshots[-1])
    try:
        json.loads(read_bytes(at, snapshots[-1]) or b"")
    except ValueError as error:
        return TuneSaved.DAMAGED, f"{newest}: not valid JSON ({one_line(error)})"
    return TuneSaved.RESTORABLE, f"Tune state in {at}"


def _whole_pickle(data: bytes | None) -> bool:
    """The pickle's opcodes parse up to its STOP (pickletools reads them, runs none)."""
    if not data:
        return False
    try:
        for _ in pickletools.genops(data):
            pass
    except ValueError:  # what genops raises for a pickle that ends early or has an unknown opcode
        return False
    return True


def delete_dir(at: Location) -> bool:
    """Remove directory `at` with everything in it; False when there is none."""
    if at.filesystem.get_file_info(at.path).type == pafs.FileType.NotFound:
        return False
    at.filesystem.delete_dir(at.path)
    return True


def damaged_message(at: Location, why: str) -> str:
    return f"{why}: Ray Tune cannot restore the experiment in {at}; restore that file, or start the sweep over in a new output_dir"
