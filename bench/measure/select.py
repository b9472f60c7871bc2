"""Which cases a command measures: suite, filters (--op/--dtype/--layout/--where), shards (which implementations:
bench/measure/impls.py). Shared by ``run``, ``ab``, ``profile`` and the GPU window; a ``Selection`` says which
cases. Torch-free until the suite's cases are built."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..runs.schema import UsageError
from .suites import SUITES


@dataclass(frozen=True)
class Selection:
    """Which cases of a suite: on which device, filtered by op, dtype, layout and ``--where`` axis values, then one
    shard (K, N) of what is left."""

    suite: str = "quick"
    device: str = "cpu"
    ops: list[str] | None = None
    dtypes: list[str] | None = None
    layouts: list[str] | None = None
    where: dict[str, set[str]] = field(default_factory=dict)
    shard: tuple[int, int] | None = None
    #: torchvision models whose layers replace the suite's cases (run --model), at this image size and batch; their
    #: training steps too, unless --op leaves train_step out
    models: tuple[str, ...] = ()
    image_size: int = 224
    batch: int = 1

MACHINE_AXES = ("device_name",)
#: torch.compile's modes, each its own implementation (bench/measure/impls.py: compile_impl)
COMPILE_MODES = ("default", "max-autotune", "max-autotune-no-cudagraphs")
AXIS_ALIASES = {"kernel": "kernel_h", "n": "batch", "c": "in_channels", "k": "out_channels", "h": "height"}


def parse_where(items: list[str]) -> dict[str, set[str]]:
    where: dict[str, set[str]] = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"--where expects AXIS=VALUE[,VALUE...], got {item!r}")
        axis, values = item.split("=", 1)
        axis = AXIS_ALIASES.get(axis.strip().lower(), axis.strip().lower())
        kept = {v.strip() for v in values.split(",") if v.strip()}
        if not kept:  # else "no case matches", which hides the slip
            raise UsageError(f"--where {item}: no value after '='")
        where.setdefault(axis, set()).update(kept)
    return where


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard expects K/N with integers, got {text!r}") from None
    if not (n >= 1 and 1 <= k <= n):
        raise UsageError(f"--shard K/N needs 1 <= K <= N, got {text!r}")
    return k, n


def model_selection(opts: Selection) -> list:
    """``run --model``: the models' layers and training steps (bench/measure/models.py, sweeps.model_cases)."""
    from . import sweeps  # torchvision and torch: loaded when cases are built, never to parse the options
    from .models import check_models

    try:
        names = check_models(list(opts.models))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    dtypes = opts.dtypes or (["bfloat16"] if opts.device == "cuda" else ["float32"])
    layouts = opts.layouts or (["channels_last"] if opts.device == "cuda" else ["nchw"])
    try:
        train = not opts.ops or "train_step" in opts.ops  # a step the user filtered out is never built
        return sweeps.model_cases(names, opts.image_size, opts.batch, opts.device, dtypes, layouts,
                                  train_batch=opts.batch if train else None)
    except ValueError as exc:  # a model that cannot run at this size (its own message names the model)
        raise UsageError(f"--model at --image-size {opts.image_size}, --batch {opts.batch}: {exc}") from None


def select_cases(opts: Selection) -> list:
    """The suite's cases on the device, filtered by op / dtype / layout / --where, then this shard's part."""
    if opts.suite not in SUITES:
        raise UsageError(f"--suite must be one of {', '.join(SUITES)}, got {opts.suite!r}")
    cases = model_selection(opts) if opts.models else SUITES[opts.suite].cases(opts.device)
    if opts.ops:
        cases = [c for c in cases if c.op in opts.ops]
    if opts.dtypes:
        cases = [c for c in cases if c.dtype in opts.dtypes]
    if opts.layouts:
        cases = [c for c in cases if c.layout in opts.layouts]
    for axis, values in opts.where.items():
        if axis in MACHINE_AXES:  # which machine runs the cases (bench/commands/cluster.py), not which cases
            continue
        known = set(cases[0].columns()) if cases else set()
        if cases and axis not in known:
            raise UsageError(f"--where axis {axis!r} is not one of {', '.join(sorted(known))}")
        cases = [c for c in cases if str(c.columns()[axis]) in values]
    if opts.shard:
        k, n = opts.shard
        cases = [c for i, c in enumerate(cases) if i % n == k - 1]
    return cases
