"""``bench host-overhead``: the Python cost of one ``triton`` call with its GPU launches stubbed out, measured by the
Triton package's own tool (kernels/triton/hostcost.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .options import count, out_file


def add_parser(sub) -> None:
    ho = sub.add_parser("host-overhead", help="Python cost of one triton call with its GPU launches stubbed out "
                                              "(targets: forward <= 15 us, dgrad/wgrad <= 20 us)")
    ho.add_argument("--calls", type=count("--calls"), default=2000, help="calls per timed block")
    ho.add_argument("--repeats", type=count("--repeats"), default=7, help="timed blocks per case")
    ho.add_argument("--json", type=out_file("--json"), metavar="FILE", help="also write the rows as JSON")


def main(args) -> int:
    import torch  # loaded when the command runs, never to parse the options

    from kernels.triton.hostcost import measure  # the Triton package's own tool (triton, torch)

    torch.set_num_threads(1)
    try:
        rows = measure(args.calls, args.repeats)
    except (ImportError, RuntimeError) as exc:
        print(f"convbench host-overhead: {exc}", file=sys.stderr)
        return 2
    for r in rows:  # one plain line per row (CI logs)
        print(f"{r['case']:<14} {r['part']:<8} {r['median_us']:8.2f} µs/call (min {r['min_us']:.2f}, max "
              f"{r['max_us']:.2f}; target ≤ {r['target_us']:g}) {'ok' if r['meets_target'] else 'OVER'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"calls": args.calls, "repeats": args.repeats, "rows": rows},
                                              indent=2))
    return 0
