"""`defer-sweep` command line: the only place that prints. Library errors become one line + exit 2."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from defer_core.errors import DeferInputError


def _trial(args: argparse.Namespace) -> int:
    from .trial_command import run_trial_command

    return run_trial_command(args)


def _run(args: argparse.Namespace) -> int:
    from .sweep import run_sweep_command

    return run_sweep_command(args)


def _resume(args: argparse.Namespace) -> int:
    from .sweep import resume_sweep_command

    return resume_sweep_command(args)


def _export(args: argparse.Namespace) -> int:
    from .export import export_command

    return export_command(args)


def _report(args: argparse.Namespace) -> int:
    from .report import report_command

    return report_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="defer-sweep", description="Sweep DEFER hyperparameters for lifelong model editing.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)

    trial = sub.add_parser("trial", help="run one DEFER continual-editing trial and print its milestone table")
    trial.add_argument("hparams", help="EasyEdit DEFER hparams YAML (e.g. EasyEdit's hparams/DEFER/llama-7b.yaml)")
    trial.add_argument("--data", default=None, help="ZsRE/EasyEdit JSON file or data directory (default: $DEFER_SWEEP_DATA_DIR or ../shared/data)")
    trial.add_argument("--T", type=int, required=True, dest="T", help="number of edit records in the stream")
    trial.add_argument("--milestones", default=None, help="comma-separated edit counts to evaluate at (default: 1,10,100,... up to T, and T)")
    trial.add_argument("--protocol", choices=("stream", "chunks"), default="stream")
    trial.add_argument("--scoring", default="tf,gen", help="comma-separated scorings: tf (teacher-forced), gen (generation)")
    trial.add_argument("--model", default=None, help="smollm2-135m (default), tiny-llama, a Hugging Face id or a local directory")
    trial.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    trial.add_argument("--device", default=None, help="cpu, cuda, cuda:0, ... (default: cuda if available, else cpu)")
    trial.add_argument("--seed", type=int, default=0, help="seed for the adaptor's initial weights")
    trial.add_argument("--edit-path", choices=("fast", "plain"), default="fast", help="fast: suffix-only edit steps; plain: the reference's full forward")
    trial.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    trial.set_defaults(handler=_trial)

    run = sub.add_parser("run", help="run a sweep from a spec YAML (see search_spaces/)")
    run.add_argument("spec", help="sweep spec YAML")
    run.add_argument("--output-dir", default=None, help="override the spec's output_dir")
    run.add_argument("--verbose-ray", action="store_true", help="show Ray Tune's own progress tables")
    run.set_defaults(handler=_run)

    resume = sub.add_parser("resume", help="continue an interrupted sweep from its output directory")
    resume.add_argument("output_dir")
    resume.add_argument("--verbose-ray", action="store_true", help="show Ray Tune's own progress tables")
    resume.set_defaults(handler=_resume)

    export = sub.add_parser("export", help="write the best (or a Pareto-front) configuration as an EasyEdit DEFER YAML")
    export.add_argument("output_dir")
    choice = export.add_mutually_exclusive_group()
    choice.add_argument("--objective", default=None, help="objective name to rank by (default: the spec's first objective)")
    choice.add_argument("--pareto-index", type=int, default=None, help="K-th point of the Pareto front (multi-objective sweeps)")
    export.add_argument("-o", "--output", default=None, help="YAML file to write (default: OUTPUT_DIR/best.yaml)")
    export.set_defaults(handler=_export)

    report = sub.add_parser("report", help="write PNG plots and an HTML report for a sweep")
    report.add_argument("output_dir")
    report.set_defaults(handler=_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except DeferInputError as error:
        print(f"defer-sweep: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("defer-sweep: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
