"""`defer-sweep export`: the best (or a Pareto-front) configuration written as EasyEdit YAML."""

from __future__ import annotations

import argparse
from pathlib import Path

from .console import ExitCode


def export(args: argparse.Namespace) -> ExitCode:
    """`defer-sweep export OUT_DIR [--objective NAME | --pareto-index K] [-o FILE]`."""
    from defer_core.editors import hparams_summary

    from ..export import export_best, mlflow_for
    from ..protocol import trial_named
    from ..sinks.layout import read_spec, require_sweep_dir

    layout = require_sweep_dir(args.output_dir)
    spec = read_spec(layout)
    output = Path(args.output).expanduser().resolve() if args.output else None
    target, chosen = export_best(layout, spec, output, args.objective, args.pareto_index, mlflow_for(layout), confirmed=args.confirmed)
    print(f"wrote {target}: trial {trial_named(chosen.row)}: {chosen.reason}")
    print(f"  {hparams_summary(chosen.hparams)}")
    return ExitCode.OK
