"""The command layer: one module per `defer-sweep` subcommand (run and resume share sweep.py),
each a typed function that takes the parsed arguments, calls the domain code (which returns
values and logs) and prints what a person reads; `console` holds the exit codes and the sweep
console, `args` the flag-value parsers. Nothing below this package prints. Heavy imports
(torch, Ray, MLflow) happen inside the function that needs them, so `defer-sweep --help`
stays light.
"""

from __future__ import annotations

from .compare import compare
from .confirm import confirm
from .console import ExitCode
from .curve import CURVE_FORMATS, curve
from .export import export
from .report import report
from .sweep import resume, run
from .table import table
from .trial import trial

__all__ = ["CURVE_FORMATS", "ExitCode", "compare", "confirm", "curve", "export", "report", "resume", "run", "table", "trial"]
