"""``bench selfcheck``: the harness's timing of cudnn set against torch.utils.benchmark.Timer (and do_bench on a GPU)
on the same F.* calls (bench/measure/selfcheck.py); exit 1 when the median ratio is off by more than --tolerance."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict

from ..measure.suites import SUITE_NAMES, SUITES
from ..runs.schema import UsageError
from .options import DEVICES, count, out_file, positive


def add_parser(sub) -> None:
    sc = sub.add_parser("selfcheck", help="the harness's timing of cudnn against torch.utils.benchmark.Timer (and "
                                          "triton.testing.do_bench on a GPU) on the same F.* calls; exit 1 when the "
                                          "median ratio is off by more than --tolerance")
    sc.add_argument("--suite", default="smoke", choices=sorted(SUITE_NAMES), help="whose conv and pool cases "
                                                                                  "(default: smoke)")
    sc.add_argument("--device", default="cpu", choices=DEVICES)
    sc.add_argument("--rounds", type=count("--rounds", 6), default=21, help="paired rounds per case (default 21)")
    sc.add_argument("--tolerance", type=positive("--tolerance"), default=0.03,
                    help="how far from 1 the median ratio may be (default 0.03)")
    sc.add_argument("--threads", type=count("--threads"), help="intra-op CPU threads (default: as run)")
    sc.add_argument("--seed", type=count("--seed", 0), default=0, help="input data seed")
    sc.add_argument("--json", type=out_file("--json", parents=True), metavar="FILE", help="also write the rows as JSON")


def main(args) -> int:
    """``bench selfcheck``: one line per case and timer, then the median ratio and the sampler's loop cost."""
    # torch: loaded when the command runs, never to parse the options
    import torch

    import kernels

    from ..measure.env import default_threads, require_device, require_threads
    from ..measure.selfcheck import TIMER_OPS, check_case, loop_overhead_ns, selfcheck_cases, short

    require_device(args.device)
    require_threads(args.threads)
    if kernels.get("cudnn").unavailable_reason(args.device):
        raise UsageError(f"--device {args.device}: cudnn cannot run there")
    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    cases = selfcheck_cases(args.suite, args.device)
    if not cases:
        raise UsageError(f"--suite {args.suite}: no {'/'.join(TIMER_OPS)} case on {args.device}")
    overhead = loop_overhead_ns()
    print(f"selfcheck: {len(cases)} {args.suite} cases on {args.device}, {threads} thread(s), {args.rounds} paired "
          f"rounds each; the CPU sample loop costs {overhead:.0f} ns per call (an empty callable)", flush=True)
    rows = []
    failures = []
    for case in cases:
        try:
            found = check_case(case, SUITES[args.suite].timing, args.rounds, threads, args.seed)
        except Exception as exc:  # noqa: BLE001 — a case that cannot be checked is reported; the rest go on
            failures.append(f"{case.key}: {type(exc).__name__}: {exc}"[:300])
            print(f"{case.key}  FAILED  {failures[-1]}", flush=True)
            continue
        for a in found:
            rows.append(a)
            off = abs(a.ratio - 1) > args.tolerance
            print(f"{a.case}  convbench {a.convbench_us:9.2f} µs  {short(a.timer):7s} {a.timer_us:9.2f} µs  "
                  f"ratio {a.ratio:.3f} [{a.ci_low:.3f}, {a.ci_high:.3f}]{'  OFF' if off else ''}", flush=True)
    code = 0
    for timer in dict.fromkeys(a.timer for a in rows):
        ratios = [a.ratio for a in rows if a.timer == timer]
        med = statistics.median(ratios)
        off = sum(abs(r - 1) > args.tolerance for r in ratios)
        gate = any(a.gate for a in rows if a.timer == timer)
        bad = gate and abs(med - 1) > args.tolerance
        code = max(code, int(bad))
        print(f"{short(timer)}: median ratio {med:.3f} over {len(ratios)} cases (range {min(ratios):.3f}–"
              f"{max(ratios):.3f}); {len(ratios) - off}/{len(ratios)} within {args.tolerance:.0%}"
              + (f" — the median is off by more than {args.tolerance:.0%}" if bad else "")
              + ("" if gate else " (informational: wall time of back-to-back calls)"))
    if failures:
        code = 1
        print(f"{len(failures)} case(s) could not be checked")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"loop_overhead_ns": overhead, "threads": threads, "device": args.device,
                                         "rows": [asdict(a) for a in rows], "failures": failures}, indent=1))
    return code
