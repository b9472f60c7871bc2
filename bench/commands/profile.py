"""``bench profile``: where each selected case's time goes, per implementation (the capture: bench/measure/profiler.py;
the tables: bench/present/profile_tables.py)."""

from __future__ import annotations

import time
from pathlib import Path

from ..measure.select import Selection, parse_where, select_cases
from ..measure.suites import QUICK_TIMING, SUITE_NAMES, SUITES
from ..present.profile_tables import write_profile
from ..runs import runlog
from ..runs.schema import CASE_OPS, CATEGORIES, UsageError
from .options import DEVICES, DTYPES, LAYOUTS, count, out_dir


def add_parser(sub) -> None:
    pr = sub.add_parser("profile", help="where each selected case's time goes, per implementation: operator "
                                        "table, breakdown, Chrome traces (torch.profiler)",
                        description="Validate and warm up each selected case as bench run does, then profile it per "
                                    "implementation. Selection: --shape; else the run filters (--suite/--op/--dtype/"
                                    "--layout/--where); else one training step (--model/--batch/--optimizer).")
    pr.add_argument("--suite", choices=sorted(SUITE_NAMES), help="which cases (as run; default quick when a filter "
                                                                 "is given)")
    pr.add_argument("--op", nargs="+", choices=CASE_OPS, help="operations (with --shape: default conv2d)")
    pr.add_argument("--dtype", nargs="+", choices=DTYPES)
    pr.add_argument("--layout", nargs="+", choices=LAYOUTS)
    pr.add_argument("--where", action="append", metavar="AXIS=V[,V]", help="as run --where")
    pr.add_argument("--shape", metavar="KEY=V,...",
                    help="one explicit problem instead of a suite: N, C, H, W and optionally K, R, S, stride, "
                         "padding, dilation (int or HxW), groups, bias=0|1; e.g. N=8,C=256,H=14,W=14,K=256,R=3,"
                         "padding=1 (pools: R is the window)")
    pr.add_argument("--model", default="simplecnn", metavar="NAME",
                    help="simplecnn or basiccnn (the reference CNNs), or a torchvision model: with --where/--op its "
                         "layers (as run --model), else its training step (default simplecnn)")
    pr.add_argument("--image-size", type=count("--image-size"), default=224, metavar="N",
                    help="a torchvision model's input images N×N (default 224)")
    pr.add_argument("--batch", type=count("--batch"), default=64)
    pr.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    pr.add_argument("--device", default="cpu", choices=DEVICES)
    pr.add_argument("--impl", nargs="+", metavar="NAME")
    pr.add_argument("--steps", type=count("--steps"), help="profiled calls per case and implementation (default: "
                                                            "about 100 ms of calls, 3 to 50)")
    pr.add_argument("--threads", type=count("--threads"))
    pr.add_argument("--out", type=out_dir(), help="directory for profile.md/csv, breakdown.csv and traces/ (default "
                                             "results/runs/profile-<utc-time>)")


#: the reference CNNs a training step is profiled on; any other --model is a torchvision network
REFERENCE_MODELS = ("simplecnn", "basiccnn")


def select(args) -> list:
    """The cases ``bench profile`` profiles: --shape; else the run selection (--suite/--op/--dtype/--layout/
    --where); else, with none of them, one training step (--model, --batch, --optimizer)."""
    from ..measure.shapes import parse_shape, train_case  # reference (torch): loaded when the command runs

    if args.shape:
        if args.suite or args.where:  # they would be ignored without a word
            raise UsageError("--shape is the one problem to profile: drop --suite and --where")
        return parse_shape(args.shape, args.op or ["conv2d"], args.dtype or ["float32"], args.layout or ["nchw"],
                           args.device)
    network = args.model not in REFERENCE_MODELS
    if args.suite or args.op or args.where or args.layout:
        opts = Selection(suite=args.suite or "quick", device=args.device, ops=args.op, dtypes=args.dtype,
                         layouts=args.layout, where=parse_where(args.where), models=(args.model,) if network else (),
                         image_size=args.image_size, batch=args.batch)
        cases = select_cases(opts)
        if not cases:
            raise UsageError("no case matches the selection (--suite/--op/--dtype/--layout/--where)")
        return cases
    if network:
        return [c for c in select_cases(Selection(device=args.device, ops=["train_step"], models=(args.model,),
                                                  image_size=args.image_size, batch=args.batch))]
    return [train_case(args.model, args.batch, args.optimizer, (args.dtype or ["float32"])[0], args.device)]


def main(args) -> int:
    # torch: loaded when the command runs, never to parse the options
    import torch

    from ..measure.env import default_threads, require_device, require_threads
    from ..measure.impls import select_impls
    from ..measure.profiler import profile_cases

    require_device(args.device)
    require_threads(args.threads)
    impls = select_impls(args.impl)
    cases = select(args)
    out = args.out or Path("results") / "runs" / f"profile-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    if (out / "breakdown.csv").exists():
        raise UsageError(f"--out {out} already holds a profile; choose another directory")
    torch.set_num_threads(args.threads or default_threads())
    timing = SUITES[args.suite].timing if args.suite else QUICK_TIMING
    out.mkdir(parents=True, exist_ok=True)
    with runlog.stderr_to(out / runlog.NAME) as console:  # torch's, Kineto's and the compilers' own lines
        summaries = profile_cases(cases, impls, out, timing, calls=args.steps,
                                  log=lambda line: print(line, file=console, flush=True))
    table = write_profile(out, summaries)
    cats = [c for c in ("wall ms", *[f"{c} ms" for c in CATEGORIES]) if c in table]
    print(table[["impl", "status", *cats]].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"wrote {out}/profile.md, profile.csv, breakdown.csv and traces/")
    said = runlog.mention(out / runlog.NAME, "torch, profiler and compiler messages")
    if said:
        print(said)
    return 0 if (table["status"] == "ok").any() else 1
