"""Autotuning bookkeeping for the Triton kernels.

- **Stored configs.** The config the autotuner picks for a launch depends on the device and the Triton version, and
  finding it costs a compile and a timed run of every config. What a device found is kept in the repository,
  ``kernels/triton/tuned/<device>-triton<version>.json`` (one JSON object: launch key → config), and a launch with a
  stored config runs it directly: a second GPU window spends no time tuning. The launch key is the kernel's name, the
  tensors' dtypes, every scalar argument (sizes, strides, geometry) and the constexpr flags — what the autotuner
  keys on, plus the dtypes. Newly tuned configs are appended to ``CONVBENCH_TUNED_OUT`` (JSON lines, one writer per
  process, appends are atomic at this size) when that is set; ``merge`` folds such a file into the stored one.
  ``CONVBENCH_TUNED=off`` ignores stored configs (always tune); ``CONVBENCH_TUNED=FILE`` reads another file.
- **Forcing a config.** ``force(i)`` makes every autotuned launch run the i-th config that survives the kernel's
  pruning for its arguments, without tuning: ``bench gpu`` compiles every config the run can need in parallel
  worker processes this way (the JIT's own path, so the on-disk cache entries are the ones the timed run looks up),
  and checks every config's result against a reference, not only the winner's. ``force(i, clamp=True)`` forces a
  call of several launches (a backward, a training step) through every config of each.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path

STORE_DIR = Path(__file__).with_name("tuned")


def device_slug(name: str) -> str:
    """'NVIDIA H200' → 'nvidia-h200'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def store_path(device_name: str, version: str | None = None) -> Path:
    import triton

    return STORE_DIR / f"{device_slug(device_name)}-triton{version or triton.__version__}.json"


def _text(v) -> str:
    return str(v) if not isinstance(v, bool) else ("1" if v else "0")


def launch_key(kernel, tensors: tuple, scalars: tuple, meta: dict) -> str:
    """Identity of one autotuned launch: kernel name | tensor dtypes | scalar arguments | constexpr flags."""
    name = getattr(getattr(kernel, "fn", kernel), "__name__", str(kernel))
    dtypes = ",".join(str(t.dtype).removeprefix("torch.") for t in tensors)
    flags = ",".join(f"{k}={_text(meta[k])}" for k in sorted(meta))
    return f"{name}|{dtypes}|{','.join(map(str, scalars))}|{flags}"


def config_dict(cfg) -> dict:
    return {"kwargs": dict(cfg.kwargs), "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}


def config_from(d: dict):
    import triton

    return triton.Config(dict(d["kwargs"]), num_warps=d["num_warps"], num_stages=d["num_stages"])


class Store:
    """Stored configs of one device (read once), and the newly tuned ones of this process."""

    def __init__(self, path: Path | None, out: Path | None = None) -> None:
        self.path, self.out = path, out
        self.configs: dict[str, dict] = {}
        if path is not None and path.exists():
            self.configs = json.loads(path.read_text()).get("configs", {})
        self.hits = self.tuned = 0

    def lookup(self, key: str):
        d = self.configs.get(key)
        if d is None:
            return None
        self.hits += 1
        return config_from(d)

    def add(self, key: str, cfg) -> None:
        self.tuned += 1
        self.configs[key] = config_dict(cfg)
        if self.out is not None:
            with open(self.out, "a") as f:
                f.write(json.dumps({"key": key, "config": config_dict(cfg)}) + "\n")


_STORE: Store | None = None


def store(device=None) -> Store:
    """This process's store for ``device`` (the current CUDA device): CONVBENCH_TUNED decides which file."""
    global _STORE
    if _STORE is None:
        choice = os.environ.get("CONVBENCH_TUNED", "")
        out = Path(os.environ["CONVBENCH_TUNED_OUT"]) if os.environ.get("CONVBENCH_TUNED_OUT") else None
        if choice == "off":
            path = None
        elif choice:
            path = Path(choice)
        else:
            import torch

            path = store_path(torch.cuda.get_device_name(device)) if torch.cuda.is_available() else None
        _STORE = Store(path, out)
    return _STORE


def merge(lines: Path, device_name: str, target: Path | None = None) -> tuple[Path, int]:
    """Fold a CONVBENCH_TUNED_OUT file into the stored configs of ``device_name``; returns (file, configs added)."""
    import triton

    target = target or store_path(device_name)
    data = json.loads(target.read_text()) if target.exists() else {}
    configs = data.get("configs", {})
    added = 0
    if lines.exists():
        for line in lines.read_text().splitlines():
            try:
                item = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a killed writer
                continue
            added += item["key"] not in configs
            configs[item["key"]] = item["config"]
    target.parent.mkdir(parents=True, exist_ok=True)
    doc = {"device": device_name, "triton": triton.__version__, "configs": dict(sorted(configs.items()))}
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(target)
    return target, added


# ---- forcing one config --------------------------------------------------------------------------------------------
_FORCE: int | None = None
_CLAMP = False
#: launches of the current forced call that ran a config of their own (index < their pruned count); see force()
FRESH = [0]


class NoSuchConfig(LookupError):
    """force(i) on a launch whose pruned config list is shorter than i + 1."""


def forced() -> int | None:
    return _FORCE


def clamped() -> bool:
    return _CLAMP


@contextlib.contextmanager
def force(index: int, clamp: bool = False):
    """Every autotuned launch inside runs its ``index``-th pruned config (no tuning, nothing remembered). A launch
    with fewer configs raises NoSuchConfig; with ``clamp`` it runs its last one instead, and only launches that ran
    a config of their own count in ``FRESH`` — so a call of several launches (a backward: dgrad and wgrad; a train
    step) is forced through every config of each until ``FRESH`` stays 0."""
    global _FORCE, _CLAMP
    from . import conv

    saved, _FORCE, saved_clamp, _CLAMP = _FORCE, index, _CLAMP, clamp
    FRESH[0] = 0
    conv._PLANS.clear()
    try:
        yield
    finally:
        _FORCE, _CLAMP = saved, saved_clamp
        conv._PLANS.clear()


def pruned(kernel, tensors: tuple, scalars: tuple, meta: dict) -> list:
    """The configs the autotuner would try for these arguments (its early_config_prune applied)."""
    named = dict(zip(kernel.fn.arg_names, (*tensors, *scalars)))
    prune = getattr(kernel, "early_config_prune", None)
    return list(prune(kernel.configs, named, **meta) if prune else kernel.configs)


LAST: dict = {}  # the config the latest forced launch ran (read by check_configs)


# ---- every config: compiled ahead, and checked against a reference ------------------------------------------------
def conv_parts(p, device, relu: bool = False, seed: int = 0) -> tuple[dict, tuple]:
    """The three host calls of a conv problem on fresh inputs ({'forward'|'dgrad'|'wgrad': () → outputs}) and the
    operands (x, w, b, dy, y). ``relu``: the fused conv+ReLU of a training step (dgrad and wgrad mask by y).

    The operands are made exactly as the implementation's autograd path makes them (``_operand``: channels_last on
    a GPU; dy with y's strides under the fused ReLU), because Triton specialises a binary on unit strides and
    divisibility by 16: a config checked or compiled on other strides is another binary than the one timed."""
    import torch

    from . import _like_strides, _operand
    from .conv import conv2d_dgrad, conv2d_forward, conv2d_wgrad

    t = p.make_inputs(device, seed)
    b = t["bias"]
    x, w = _operand(t["input"]), _operand(t["weight"])
    fmt = torch.channels_last if p.layout == "channels_last" else torch.contiguous_format
    g = torch.Generator().manual_seed(seed + 1)
    dy = torch.randn(p.output_shape, generator=g).to(device=device, dtype=x.dtype).contiguous(memory_format=fmt)
    y = conv2d_forward(x, w, b, p, relu=True, out_format_of=t["input"]) if relu else None
    dy = _like_strides(dy, _operand(y)) if relu else _operand(dy)
    y = _operand(y) if relu else None
    parts = {"forward": lambda: (conv2d_forward(x, w, b, p, relu=relu, out_format_of=t["input"]),),
             "dgrad": lambda: (conv2d_dgrad(dy, w, p, x, y=y),),
             "wgrad": lambda: tuple(o for o in conv2d_wgrad(dy, x, p, w.dtype, b.dtype if b is not None else None,
                                                            y=y) if o is not None)}
    return parts, (x, w, b, dy, y)


def conv_reference(p, x, w, b, dy, y=None) -> dict[str, tuple]:
    """fp32 results of the same operands (TF32 off): forward, dgrad, (dw[, db])."""
    import torch
    import torch.nn.functional as F

    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        xf, wf = x.float().requires_grad_(), w.float().requires_grad_()
        bf = b.float().requires_grad_() if b is not None else None
        out = F.conv2d(xf, wf, bf, **p.kwargs())
        g = dy.float()
        if y is not None:  # conv+ReLU: the forward is relu'd and the gradient masked where y ≤ 0
            g = torch.where(y.float() > 0, g, torch.zeros_like(g))
            out_fwd = torch.relu(out)
        else:
            out_fwd = out
        out.backward(g)
    finally:
        torch.backends.cudnn.allow_tf32 = saved
    wgrad = (wf.grad,) + ((bf.grad,) if bf is not None else ())
    return {"forward": (out_fwd.detach(),), "dgrad": (xf.grad,), "wgrad": wgrad}


def each_config(call, limit: int = 64, clamp: bool = False):
    """Yield (index, config facts, outputs or exception) for every pruned config of the autotuned launch in ``call``
    (``clamp``: of every launch in ``call``, each running its last config once it has no more; see force)."""
    for i in range(limit):
        LAST.clear()
        try:
            with force(i, clamp):
                out = call()
                fresh = FRESH[0]
        except NoSuchConfig:
            return
        except Exception as exc:  # noqa: BLE001 — a config that fails to compile or launch is a finding
            yield i, dict(LAST), exc
            continue
        if clamp and not fresh:
            return
        yield i, dict(LAST), out


def check_configs(problems, device, parts=("forward", "dgrad", "wgrad"), limit: int = 64) -> list[dict]:
    """Every pruned config (the first ``limit``) of every part of every problem, run and compared with the fp32
    reference under the tolerance of the problem's dtype: one row each (status ok / mismatch / error)."""
    from reference.tolerance import check

    rows = []
    for p in problems:
        calls, operands = conv_parts(p, device)
        ref = conv_reference(p, *operands)
        for part in parts:
            for i, cfg, out in each_config(calls[part], limit):
                row = {"problem": str(p), "part": part, "index": i,
                       "config": cfg.get("config"), "kernel": cfg.get("kernel")}
                if isinstance(out, Exception):
                    row.update(status="error", error=f"{type(out).__name__}: {out}"[:300])
                else:
                    checks = [check(a, e, p.dtype) for a, e in zip(out, ref[part])]
                    worst = max(checks, key=lambda c: c.max_rel_err)
                    ok = all(checks)
                    row.update(status="ok" if ok else "mismatch", max_abs_err=worst.max_abs_err,
                               max_rel_err=worst.max_rel_err, error="" if ok else worst.detail)
                rows.append(row)
    return rows


def precompile(p, device, relu: bool = False, parts=("forward", "dgrad", "wgrad")) -> dict:
    """Compile (and run once) every pruned config of each part of ``p``: on a GPU this fills Triton's on-disk cache
    with exactly the binaries the timed run will look up. Returns {'configs': n, 'errors': [...]}."""
    calls, _ = conv_parts(p, device, relu=relu)
    n, errors = 0, []
    for part in parts:
        for i, cfg, out in each_config(calls[part]):
            n += 1
            if isinstance(out, Exception):
                errors.append(f"{part} config {i} {cfg.get('config')}: {type(out).__name__}: {out}"[:300])
    return {"configs": n, "errors": errors}
