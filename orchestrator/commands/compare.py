"""`defer-sweep compare`: one configuration per editor under every protocol × scoring × dtype, as a table."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from defer_core.errors import DeferInputError

from .args import parse_choices, parse_int_list, parse_seeds, require_orders
from .console import ExitCode


def compare(args: argparse.Namespace) -> ExitCode:
    """`defer-sweep compare HPARAMS... --T 1,10,100 ...` (or `--editors defer,grace,wise`): each
    configuration under every protocol × scoring × dtype asked (an editor given several files
    is labelled "editor (file)" in the table); progress on stderr,
    the table on stdout, the table and the per-record Parquet in --output. Run again with the
    same --output, it reads the passes finished before instead of running them."""
    from defer_core.runtime import EMBEDDED_MODEL, require_device, stay_offline_by_default

    stay_offline_by_default()  # before transformers is imported
    from defer_core.data import load_records, resolve_data_path
    from defer_core.files import require_writable_dir
    from defer_core.editors import EDITORS, editor_of, load_editor_hparams

    from ..spec.trial_config import easyedit_hparams_file
    from defer_core.results import DTYPE_CHOICES, PROTOCOLS, SCORINGS, dtype_name

    from ..compare import ComparePlan, render, run_comparison, write_outputs  # light: torch is imported when it runs
    from ..compare_passes import PASSES_DIR

    require_device(args.device, "--device")
    milestones = parse_int_list(args.T, "--T")
    if not milestones or milestones[0] < 1 or list(milestones) != sorted(set(milestones)):
        raise DeferInputError(f"--T: expected distinct positive edit counts in ascending order, got {args.T!r}")
    seeds, orders = parse_seeds(args.seeds, "--seeds"), require_orders(args.orders, "--orders")
    dtypes = tuple(dict.fromkeys(dtype_name(d) for d in parse_choices(args.dtypes, "--dtypes", DTYPE_CHOICES)))
    if bool(args.hparams) == (args.editors is not None):
        raise DeferInputError("give HPARAMS files or --editors (EasyEdit's llama-7b files for each), one of the two")
    files = args.hparams or [easyedit_hparams_file(editor) for editor in parse_choices(args.editors, "--editors", EDITORS)]
    repeated = next((str(path) for k, path in enumerate(files) if str(path) in map(str, files[:k])), None)
    if repeated:
        raise DeferInputError(f"HPARAMS: {repeated} came twice; give each configuration once")
    hparams = tuple(load_editor_hparams(path) for path in files)
    editors = [editor_of(h) for h in hparams]
    labels = tuple(editor if editors.count(editor) == 1 else f"{editor} ({path})" for editor, path in zip(editors, files))
    data_path = resolve_data_path(args.data)
    plan = ComparePlan(
        hparams=hparams, model=args.model or EMBEDDED_MODEL, milestones=milestones,
        protocols=parse_choices(args.protocols, "--protocols", PROTOCOLS), scorings=parse_choices(args.scorings, "--scorings", SCORINGS),
        dtypes=dtypes, seeds=seeds, orders=orders, device=args.device, strip=args.strip, data=str(data_path), threads=args.threads,
        error_bars=len(seeds) * orders > 1, labels=labels, grace_key=args.grace_key,
    )
    records = load_records(data_path, limit=plan.total_records, strip=args.strip)
    output = Path(args.output or f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}").expanduser().resolve()
    require_writable_dir(output, "the comparison's output directory")  # before hours of editing, not after
    print(f"compare: {plan.model}, {', '.join(f'{c} {h.module_path}' for c, _, h in plan.configs())}, T {list(milestones)}, protocols {','.join(plan.protocols)}, "
          f"scorings {','.join(plan.scorings)}, dtypes {','.join(dtypes)}, seeds {list(seeds)}"
          + (f", edit orders 0..{orders - 1}" if orders > 1 else "") + f", {plan.threads} torch thread(s), data {data_path}", file=sys.stderr, flush=True)
    comparison = run_comparison(plan, records, on_progress=lambda line: print(line, file=sys.stderr, flush=True), passes_from=output)
    table, per_record = write_outputs(comparison, args.format, output)
    print(render(comparison, args.format))
    reused = f"; {comparison.reused_passes} pass(es) read from {output / PASSES_DIR}, finished before" if comparison.reused_passes else ""
    print(f"wrote {table} and {per_record} (wall {comparison.seconds:.0f}s{reused})", file=sys.stderr, flush=True)
    return ExitCode.OK
