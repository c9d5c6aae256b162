"""`defer-sweep` command line: the argument parser and the entry point. The handlers live in
commands/ (one module per subcommand); a library error becomes one line on stderr and exit 2."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, NoReturn, Sequence

from defer_core.errors import DeferInputError
from defer_core.plan import DEFAULT_GRACE_KEY, GRACE_KEYS
from defer_core.results import DEFAULT_DTYPE, DEFAULT_SCORINGS, DTYPE_CHOICES, PROTOCOLS, SCORINGS
from defer_core.runtime import DEFAULT_THREADS

from . import commands
from .compare import FORMATS as COMPARE_FORMATS
from .table import FORMATS as TABLE_FORMATS, INTERVAL_KINDS as TABLE_INTERVALS
from .commands import ExitCode
from .commands.args import thread_count
from .spec.sections import ConfirmSpec

CONFIRM_DEFAULTS = ConfirmSpec()  # what `confirm` runs without a `confirm:` section (written once, on the spec model)


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line, like every other bad input (argparse prints its usage block
    first); `--help` still prints the usage. Subcommands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(int(ExitCode.BAD_INPUT), f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="defer-sweep", description="Sweep DEFER hyperparameters for lifelong model editing.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)

    trial = sub.add_parser("trial", help="run one DEFER continual-editing trial and print its milestone table")
    trial.add_argument("hparams", help="EasyEdit DEFER hparams YAML (e.g. EasyEdit's hparams/DEFER/llama-7b.yaml)")
    trial.add_argument("--data", default=None, help="ZsRE/EasyEdit JSON file or data directory (default: $DEFER_SWEEP_DATA_DIR or ../shared/data)")
    trial.add_argument("--T", type=int, required=True, dest="T", help="number of edit records in the stream")
    trial.add_argument("--milestones", default=None, help="comma-separated edit counts to evaluate at (default: 1,10,100,... up to T, and T)")
    trial.add_argument("--protocol", choices=PROTOCOLS, default="stream", help=_PROTOCOL_HELP)
    trial.add_argument("--scoring", default=",".join(DEFAULT_SCORINGS), help=_SCORING_HELP)
    trial.add_argument("--model", default=None, help="smollm2-135m (default), tiny-llama, a Hugging Face id or a local directory")
    trial.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help=_DTYPE_HELP)
    trial.add_argument("--strip", action="store_true", help=_STRIP_HELP)
    trial.add_argument("--device", default=None, help="cpu, cuda, cuda:0, ... (default: cuda if available, else cpu)")
    trial.add_argument("--seed", type=int, default=None, help="seed for the adaptor's initial weights (default 0)")
    trial.add_argument("--seeds", default=None, help="comma-separated adaptor seeds, instead of --seed; with several runs (seeds x orders) each milestone shows mean ± Student t 95%% half-width")
    trial.add_argument("--orders", type=int, default=1, help="edit orders 0..N-1 (0: file order; k: a fixed shuffle of the same records), each run with every seed (default 1)")
    trial.add_argument("--edit-path", choices=("fast", "plain"), default="fast", help="fast: suffix-only edit steps; plain: the reference's full forward")
    trial.add_argument("--threads", type=thread_count, default=DEFAULT_THREADS, help=_THREADS_HELP)
    trial.add_argument("--grace-key", choices=GRACE_KEYS, default=DEFAULT_GRACE_KEY, help=_GRACE_KEY_HELP)
    trial.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    trial.set_defaults(handler=commands.trial)

    compare = sub.add_parser("compare", help="run one configuration per editor under every protocol x scoring x dtype asked and print a WISE-style table")
    compare.add_argument("hparams", nargs="*", help="EasyEdit hparams YAML of DEFER, GRACE or WISE (by its alg_name); several of one editor are labelled \"editor (file)\" in the table")
    compare.add_argument("--editors", default=None, help="comma-separated editors (defer, grace, wise) run with EasyEdit's own llama-7b hparams files in hparams/, instead of HPARAMS")
    compare.add_argument("--T", required=True, dest="T", help="comma-separated edit counts, the table's columns (e.g. 1,10,100)")
    compare.add_argument("--protocols", default=",".join(PROTOCOLS), help=f"comma-separated, default all: {_PROTOCOL_HELP}")
    compare.add_argument("--scorings", default=",".join(SCORINGS), help=f"comma-separated, default all: {_SCORING_HELP}")
    compare.add_argument("--dtypes", default=DEFAULT_DTYPE, help=f"comma-separated model dtypes, e.g. float32,bfloat16 (default {DEFAULT_DTYPE}, EasyEdit's)")
    compare.add_argument("--seeds", default="0", help="comma-separated adaptor seeds; cells are the mean over seeds x orders, with a Student t 95%% half-width when several (default 0)")
    compare.add_argument("--orders", type=int, default=1, help="edit orders 0..N-1 (0: file order; k: a fixed shuffle of the same records), each run with every seed (default 1)")
    compare.add_argument("--data", default=None, help="ZsRE/EasyEdit JSON file or data directory (default: $DEFER_SWEEP_DATA_DIR or ../shared/data)")
    compare.add_argument("--model", default=None, help="smollm2-135m (default), tiny-llama, a Hugging Face id or a local directory")
    compare.add_argument("--device", default=None, help="cpu, cuda, cuda:0, ... (default: cuda if available, else cpu)")
    compare.add_argument("--strip", action="store_true", help=_STRIP_HELP)
    compare.add_argument("--threads", type=thread_count, default=DEFAULT_THREADS, help=_THREADS_HELP)
    compare.add_argument("--grace-key", choices=GRACE_KEYS, default=DEFAULT_GRACE_KEY, help=_GRACE_KEY_HELP)
    compare.add_argument("--format", choices=COMPARE_FORMATS, default="md", help="table format on stdout and in OUTPUT (default md)")
    compare.add_argument("--output", default=None, help="directory for the table, records.parquet and each finished pass (default runs/compare-DATE-TIME); run again with the same --output to read the passes finished before instead of running them")
    compare.set_defaults(handler=commands.compare)

    run = sub.add_parser("run", help="run a sweep from a spec YAML (see search_spaces/)")
    run.add_argument("spec", help="sweep spec YAML")
    run.add_argument("--output-dir", default=None, help="override the spec's output_dir")
    run.add_argument("--force", action="store_true", help="start in an existing folder that holds no sweep; its files stay, and one the sweep would write refuses the start")
    run.add_argument("--verbose-ray", action="store_true", help="show Ray Tune's own progress tables")
    _progress_flags(run)
    run.set_defaults(handler=commands.run)

    resume = sub.add_parser("resume", help="continue an interrupted sweep from its output directory")
    resume.add_argument("output_dir")
    resume.add_argument("--verbose-ray", action="store_true", help="show Ray Tune's own progress tables")
    _progress_flags(resume)
    resume.set_defaults(handler=commands.resume)

    export = sub.add_parser("export", help="write the best (or a Pareto-front) configuration as the editor's EasyEdit hparams YAML")
    export.add_argument("output_dir")
    choice = export.add_mutually_exclusive_group()
    choice.add_argument("--objective", default=None, help="objective name to rank by (default: the spec's first objective)")
    choice.add_argument("--pareto-index", type=int, default=None, help="K-th point of the Pareto front (multi-objective sweeps)")
    export.add_argument("-o", "--output", default=None, help="YAML file to write (default: OUTPUT_DIR/best.yaml)")
    export.add_argument("--no-confirmed", dest="confirmed", action="store_false",
                        help="rank the search stage's trials even when a confirm stage has confirmed results (which export prefers)")
    export.set_defaults(handler=commands.export)

    confirm = sub.add_parser("confirm", help="run the sweep's best configurations again at full T, without early stopping, with more seeds and edit orders")
    confirm.add_argument("output_dir")
    picks = confirm.add_mutually_exclusive_group()
    picks.add_argument("--top", type=int, default=None, help=f"the K best by the first objective (default: the spec's confirm.top, else {CONFIRM_DEFAULTS.top})")
    picks.add_argument("--pareto", action="store_true", help="every point of the Pareto front")
    picks.add_argument("--trials", default=None, help="comma-separated trial ids or Optuna numbers (#007 or 7)")
    confirm.add_argument("--seeds", default=None, help=f"comma-separated adaptor seeds (default: the spec's confirm.seeds, else {','.join(map(str, CONFIRM_DEFAULTS.seeds))})")
    confirm.add_argument("--orders", type=int, default=None, help=f"edit orders 0..N-1 per seed (default: the spec's confirm.orders, else {CONFIRM_DEFAULTS.orders})")
    confirm.add_argument("--T", type=int, default=None, dest="T", help="edits per confirm run (default: the spec's confirm.T, else its T)")
    confirm.add_argument("--protocols", default=None, help=f"comma-separated, each its own confirm run (default: the spec's confirm.protocols, else its protocol): {_PROTOCOL_HELP}")
    confirm.add_argument("--verbose-ray", action="store_true", help="show Ray Tune's own progress tables")
    _progress_flags(confirm)
    confirm.set_defaults(handler=commands.confirm)

    report = sub.add_parser("report", help="write PNG plots and an HTML report for a sweep")
    report.add_argument("output_dir")
    report.set_defaults(handler=commands.report)

    curve = sub.add_parser("curve", help="print a recorded trial's metrics against the threshold (exact tf curve, gen grid), from the Parquet dataset alone")
    curve.add_argument("output_dir")
    curve.add_argument("trial", help="a DEFER trial id, or its Optuna number: #007 or 7")
    curve.add_argument("--n-edits", type=int, default=None, help="the milestone to read (default: the trial's last)")
    curve.add_argument("--threshold", type=float, default=None, help="also print the metrics at this threshold (tf exact; gen only on the spec's grid) and the edit success there")
    curve.add_argument("--format", choices=commands.CURVE_FORMATS, default="md", help="md (tables, default), csv (one table with a section column: curve, grid, at) or json")
    curve.set_defaults(handler=commands.curve)

    table = sub.add_parser("table", help="print chosen configurations as a paper table (md, LaTeX or csv) with 95%% intervals, from the Parquet dataset alone")
    table.add_argument("output_dir", nargs="+", metavar="OUT_DIR", help="a sweep's folder; several (e.g. one sweep per editor) make one table with a sweep column")
    table.add_argument("--trials", default=None, help="best, pareto, confirmed (each sweep's), or comma-separated trial ids / Optuna numbers (#007 or 7; one OUT_DIR); default: confirmed if a confirm stage ran, else pareto")
    table.add_argument("--format", choices=TABLE_FORMATS, default="md", help="md (pipe table and a caption line, default), latex (booktabs table with \\caption) or csv (mean, low, high, half_width, n per cell)")
    table.add_argument("--interval", choices=TABLE_INTERVALS, default="t", help="t: Student t over repeat members (a row with one member falls back to the bootstrap, marked); bootstrap: over the records scored at each milestone (default t)")
    table.add_argument("--scorings", default=None, help="comma-separated scorings to show, e.g. tf,gen (default: the spec's scorings with values)")
    table.add_argument("--milestones", default=None, help="comma-separated numbers of edits to show (default: every recorded milestone)")
    table.set_defaults(handler=commands.table)
    return parser


def _progress_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="print only a line per finished trial and the summary (no live edit counts)")
    parser.add_argument("--progress-every", type=float, default=60.0, metavar="SECONDS",
                        help="when stdout is not a terminal, print the running trials' edit counts this often (default 60; a terminal redraws them every second)")


_PROTOCOL_HELP = "stream (score all after n edits; WISE paper, EasyEdit before 3c21b20), chunks (edit n, score, roll back), immediate (score each right after its edit; EasyEdit from 3c21b20)"
_SCORING_HELP = "tf (teacher-forced, EasyEdit's DEFER metric), gen (generation vs EasyEdit's target tokens), genctx (generation vs the target's tokens in context)"
_DTYPE_HELP = f"auto: {DEFAULT_DTYPE}, as EasyEdit runs DEFER; bfloat16 is faster on a GPU and changes the numbers"
_STRIP_HELP = "strip surrounding whitespace from every text field (default: as written, as EasyEdit reads it)"
_GRACE_KEY_HELP = ("where GRACE reads its key in a teacher-forced evaluation: sticky (default, EasyEdit's: the last edited prompt's position) "
                   "or prompt (each scored text's own last prompt token); GRACE only")
_THREADS_HELP = f"torch's intra-op thread count (default {DEFAULT_THREADS}, what a sweep worker with resources_per_trial.cpu 1 uses; it can move a gate by one ulp)"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    handler: Callable[[argparse.Namespace], ExitCode] = args.handler
    try:
        return int(handler(args))
    except DeferInputError as error:
        print(f"defer-sweep: error: {error}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    except KeyboardInterrupt:
        print("defer-sweep: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
