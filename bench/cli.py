"""``python -m bench`` / ``convbench``: run, ab, report, compare, baseline, history, merge, profile,
host-overhead, list, gpu, selfcheck — a table of commands, each a module of bench/commands/ with ``add_parser(sub)``
and ``main(args)``.

Exit codes (../shared/CONTRACT.md): run — 0 every case ok/skipped/unsupported, 1 some mismatch/error/timeout,
2 bad usage; compare — 0 no regression, 1 regression, 2 bad usage or unreadable input, 3 environments differ.
"""

from __future__ import annotations

import argparse
import sys

from .commands import (
    ab,
    baseline,
    compare,
    gpu,
    history,
    host_overhead,
    listing,
    merge,
    profile,
    report,
    run,
    selfcheck,
)
from .runs.schema import UsageError

#: command name → its module, in the order ``--help`` lists them
COMMANDS = {"run": run, "report": report, "gpu": gpu, "ab": ab, "compare": compare, "baseline": baseline,
            "history": history, "merge": merge, "profile": profile, "host-overhead": host_overhead,
            "selfcheck": selfcheck, "list": listing}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convbench", description=__doc__.split(" — ")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].main(args)
    except UsageError as exc:
        print(f"convbench {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
