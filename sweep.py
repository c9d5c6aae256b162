#!/usr/bin/env python
"""`python sweep.py SPEC [--output-dir DIR]` is `defer-sweep run SPEC`.

Also the entry point for a cluster: `ray submit cluster/cluster.yaml sweep.py -- SPEC` runs it
on the head node, where ray.init() finds the running cluster (a workstation gets a local
Ray instance instead).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from orchestrator.cli import main  # noqa: E402


def _argv(args: list[str]) -> list[str]:
    """Global flags (-v) go before the subcommand."""
    flags = [a for a in args if a in ("-v", "--verbose")]
    rest = [a for a in args if a not in ("-v", "--verbose")]
    return [*flags, "run", *rest]


if __name__ == "__main__":
    sys.exit(main(_argv(sys.argv[1:])))
