"""What every command shares on the console: the exit codes, the progress sinks a sweep prints
through (plain lines, or a live block redrawn in place on a terminal) and the libraries quieted."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from enum import IntEnum
from typing import TYPE_CHECKING, Callable, Sequence, TextIO

from defer_core.errors import DeferInputError

if TYPE_CHECKING:
    from ..sinks.progress import LiveOutput


class ExitCode(IntEnum):
    OK = 0
    ALL_FAILED = 1  # a finished sweep in which every trial failed (the reasons are printed)
    BAD_INPUT = 2  # a spec, path, data file or flag the user can fix (one line on stderr)
    INTERRUPTED = 130  # Ctrl-C, or a sweep that stopped before every trial ended: resumable


TTY_REFRESH_S = 1.0  # a terminal's live block is redrawn this often


def print_line(line: str) -> None:
    """The progress sink sweeps print through."""
    print(line, flush=True)


def print_lines(lines: Sequence[str]) -> None:
    """Live progress in a log (stdout not a terminal): plain lines, every --progress-every seconds."""
    if lines:
        print("\n".join(lines), flush=True)


class Terminal:
    """Trial lines scroll; the live block stays under them, redrawn in place (ANSI: cursor up,
    clear to the end), each line cut to the terminal's width so the count of lines to move up
    holds. No progress-bar library: the block is a few text lines that change every second,
    which rich or tqdm would only wrap, and both would be one more dependency."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._block: list[str] = []

    def line(self, text: str) -> None:
        self._clear()
        self.stream.write(text + "\n")
        self._draw(self._block)

    def status(self, lines: Sequence[str]) -> None:
        self._clear()
        self._draw(list(lines))

    def _draw(self, lines: list[str]) -> None:
        width = max(20, shutil.get_terminal_size().columns - 1)
        self._block = [line[:width] for line in lines]
        self.stream.write("".join(f"{line}\n" for line in self._block))
        self.stream.flush()

    def _clear(self) -> None:
        if self._block:
            self.stream.write(f"\x1b[{len(self._block)}F\x1b[J")


def quiet_libraries(verbose_ray: bool) -> None:
    import optuna

    # with an http tracking URI MLflow prints "View run ... at ..." for every run it ends
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if not verbose_ray:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        # on resume, Tune warns about trials that had not written results yet: expected here
        logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


def sweep_console(args: argparse.Namespace) -> tuple[Callable[[str], None], "LiveOutput | None"]:
    """Where a sweep's lines go and whether (and how) live edit counts show: none with --quiet,
    a block redrawn in place on a terminal, plain lines every --progress-every seconds in a log."""
    from ..sinks.progress import LiveOutput

    if args.progress_every <= 0:
        raise DeferInputError(f"--progress-every: expected seconds > 0, got {args.progress_every:g}")
    if args.quiet:
        return print_line, None
    if sys.stdout.isatty():
        terminal = Terminal(sys.stdout)
        return terminal.line, LiveOutput(terminal.status, TTY_REFRESH_S)
    return print_line, LiveOutput(print_lines, args.progress_every)
