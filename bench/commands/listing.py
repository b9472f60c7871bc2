"""``bench list``: the implementations and their availability, the suites and their case counts."""

from __future__ import annotations

from ..measure.suites import SUITE_NAMES, SUITES
from .options import DEVICES


def add_parser(sub) -> None:
    ls = sub.add_parser("list", help="implementations and their availability, suites and their case counts")
    ls.add_argument("--suite", choices=sorted(SUITE_NAMES), help="also list that suite's cases")
    ls.add_argument("--device", default="cpu", choices=DEVICES)
    ls.add_argument("--models", action="store_true", help="also list the torchvision models run --model takes")


def main(args) -> int:
    import kernels  # torch: loaded when the command runs, never to parse the options

    print("implementations:")
    for name in kernels.names():
        impl = kernels.get(name)
        why = impl.unavailable_reason(args.device) or impl.correctness_only(args.device)
        print(f"  {name:10s} {impl.summary}" + (f"  [{args.device}: {why}]" if why else ""))
    for name, err in kernels.load_errors().items():
        print(f"  ({name}: not registered — {err})")
    print("suites:")
    for suite in SUITES.values():
        print(f"  {suite.name:10s} {len(suite.cases(args.device)):4d} cases on {args.device}: {suite.description}")
    if args.suite:
        for case in SUITES[args.suite].cases(args.device):
            print(f"    {case.key}")
    if args.models:
        from ..measure.models import model_names  # torchvision: only when asked

        print("models (run --model NAME[,NAME…]):")
        print("  " + " ".join(model_names()))
    return 0
