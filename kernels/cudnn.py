"""cudnn: PyTorch's built-in ops (``F.conv2d`` / ``F.max_pool2d`` / ``F.avg_pool2d``) — the library baseline.

On a GPU convolutions run in cuDNN, on a CPU in oneDNN (or ATen's own kernels where oneDNN does not apply); pooling
runs in ATen's native kernels. A conv row's backend is **observed** on the bench's untimed validation call (the only
call made inside ``kernels.recording()``): the ATen op the dispatcher ran under ``_convolution``
(``aten::mkldnn_convolution`` → ``onednn``, ``aten::_slow_conv2d_forward`` → ``aten-slow2d``, …, seen by the legacy
autograd profiler, which starts no Kineto/CUPTI) and, on the CPU, the primitives oneDNN says it executed (its verbose
log, read from file descriptor 1 for that one call). Where neither can be observed the label is ATen's own
prediction, marked ``predicted:`` and the reason kept in the row's provenance — never passed off as observed.
Timed calls are plain ``F.conv2d``: none of this runs outside a recording.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
import tempfile
from collections.abc import Callable

import torch
import torch.nn.functional as F

from reference import ConvProblem, PoolProblem

from . import register
from ._provenance import active, note
from .base import Implementation, device_type

_BACKEND_NAMES = {"mkldnn": "onednn", "cudnn": "cudnn", "miopen": "miopen", "slow2d": "aten-slow2d",
                  "slowdilated2d": "aten-slowdilated2d", "cudadepthwise2d": "aten-cuda-depthwise",
                  "overrideable": "overrideable", "empty": "empty", "mps": "mps", "nnpackspatial": "nnpack"}
#: the ATen ops ``aten::_convolution`` dispatches to, per backend (the names the profiler records)
OBSERVED_OPS = {"aten::mkldnn_convolution": "onednn", "aten::thnn_conv2d": "aten-slow2d",
                "aten::_slow_conv2d_forward": "aten-slow2d", "aten::slow_conv_dilated2d": "aten-slowdilated2d",
                "aten::_nnpack_spatial_convolution": "nnpack", "aten::cudnn_convolution": "cudnn",
                "aten::_conv_depthwise2d": "aten-cuda-depthwise", "aten::miopen_convolution": "miopen",
                "aten::miopen_depthwise_convolution": "miopen", "aten::mps_convolution": "mps",
                "aten::_convolution_depthwise3x3_winograd": "aten-winograd-depthwise"}
#: the prefix of a label that was predicted, not observed
PREDICTED = "predicted:"
#: what a conv2d_backward row's provenance says of its backward
BACKWARD_UNOBSERVED = ("not observed: the label is the forward's (ATen's convolution_backward selects its backend "
                       "with the forward's rule, on the same tensors)")


def conv_backend(p: ConvProblem, device) -> str:
    """ATen's *prediction* of the convolution backend for this problem on this device (``unknown`` when the private
    API cannot be asked). The probe allocates real, uninitialised tensors of the problem's shapes on the device
    (ATen's choice depends on the device, dtype and memory format, which meta tensors would not show) and computes
    nothing with them. Rows that ran carry what was observed instead (``observe_conv``)."""
    dt = torch.float32 if p.dtype == "tf32" else getattr(torch, p.dtype)
    fmt = torch.channels_last if p.layout == "channels_last" else torch.contiguous_format
    try:
        x = torch.empty(p.input_shape, dtype=dt, device=device).contiguous(memory_format=fmt)
        w = torch.empty(p.weight_shape, dtype=dt, device=device)
        top, bottom, left, right = p.pads
        if top != bottom or left != right:  # asymmetric 'same': ATen pads explicitly, then runs an unpadded conv
            x = F.pad(x, (0, right - left, 0, bottom - top))
        chosen = torch._C._select_conv_backend(x, w, None, list(p.stride), [top, left], list(p.dilation), False,
                                               [0, 0], p.groups, None)
    except (AttributeError, RuntimeError, TypeError):  # private API: say so rather than guess
        return "unknown"
    name = str(chosen).rsplit(".", 1)[-1].lower()
    return _BACKEND_NAMES.get(name, name)


def library_settings(device) -> dict:
    """The settings that decide which cuDNN / oneDNN kernels run: on a GPU the cuDNN version, cudnn.benchmark
    (autotuned algorithm search), deterministic mode and whether fp32 convs may use TF32; on the CPU whether
    oneDNN is enabled. (torch does not expose the algorithm cuDNN picks; under ``run --profile`` the bench lists
    the kernels a steady call launched, from torch.profiler after every measurement, under ``gpu_kernels``.)"""
    if device_type(device) == "cuda":
        try:
            tf32 = torch.backends.cudnn.conv.fp32_precision == "tf32"
        except AttributeError:
            tf32 = bool(torch.backends.cudnn.allow_tf32)
        return {"cudnn_version": torch.backends.cudnn.version(), "benchmark": torch.backends.cudnn.benchmark,
                "deterministic": torch.backends.cudnn.deterministic, "tf32": tf32}
    return {"onednn": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled}


# ---- observation ---------------------------------------------------------------------------------------------------
def _problem(seen: dict, observer: str, why) -> None:
    """Note why an observer saw nothing (an exception or a sentence) in ``seen["problems"]``."""
    text = f"{type(why).__name__}: {str(why)[:160]}" if isinstance(why, BaseException) else why
    seen.setdefault("problems", []).append(f"{observer}: {text}")


@contextlib.contextmanager
def _best_effort(seen: dict, observer: str, start: Callable[[], object], finish: Callable[[object], dict]):
    """Run the block between ``start()`` and ``finish(handle)`` (which returns what was seen, merged into ``seen``):
    observation is best effort — a failure of either is noted in ``seen["problems"]`` under ``observer``, never
    raised, and the block runs either way."""
    try:
        handle = start()
    except Exception as exc:  # noqa: BLE001 — observation is best effort; its failure is reported, not raised
        _problem(seen, observer, exc)
        yield
        return
    try:
        yield
    finally:
        try:
            seen.update(finish(handle))
        except Exception as exc:  # noqa: BLE001
            _problem(seen, observer, exc)


def _start_profiler():
    from torch.autograd import profiler_legacy

    prof = profiler_legacy.profile()
    prof.__enter__()
    return prof


def _read_profiler(prof) -> dict:
    prof.__exit__(None, None, None)
    return {"aten_ops": [e.name for e in prof.function_events]}


def aten_ops(seen: dict):
    """Record the names of the ATen ops dispatched inside the block into ``seen["aten_ops"]`` (the legacy autograd
    profiler: RecordFunction callbacks on this thread only, no Kineto, no CUPTI). A profiler that cannot start (one
    already runs on this thread) or cannot be read leaves ``seen["problems"]`` a reason; the block runs either way."""
    return _best_effort(seen, "aten ops", _start_profiler, _read_profiler)


def _onednn_env_verbose() -> bool:
    return any(os.environ.get(k, "0") not in ("", "0") for k in ("ONEDNN_VERBOSE", "DNNL_VERBOSE", "MKLDNN_VERBOSE"))


def _start_verbose() -> tuple[contextlib.ExitStack, object]:
    """oneDNN's verbose mode on, file descriptor 1 pointed at a temporary file; (what undoes both, the file)."""
    stack = contextlib.ExitStack()  # undoes the redirection and the verbose mode, last step first
    sink = None
    try:
        libc = ctypes.CDLL(None)
        sink = tempfile.TemporaryFile()
        sys.stdout.flush()
        libc.fflush(None)
        saved = os.dup(1)
        stack.callback(os.close, saved)
        os.dup2(sink.fileno(), 1)
        stack.callback(os.dup2, saved, 1)
        stack.callback(libc.fflush, None)  # runs first: what oneDNN printed reaches the file before fd 1 is back
        if not torch._C._verbose.mkldnn_set_verbose(1):
            raise RuntimeError("oneDNN refused verbose mode (built without it?)")
        stack.callback(torch._C._verbose.mkldnn_set_verbose, 0)
    except BaseException:
        stack.close()
        if sink is not None:
            sink.close()
        raise
    return stack, sink


def _read_verbose(started) -> dict:
    stack, sink = started
    try:
        stack.close()
        sink.seek(0)
        return {"onednn": onednn_primitives(sink.read().decode(errors="replace"))}
    finally:
        sink.close()


def onednn_log(seen: dict):
    """Record the primitives oneDNN executes inside the block into ``seen["onednn"]`` (``kind:implementation``,
    e.g. ``convolution:brg_conv_fwd:avx2``): oneDNN's verbose mode, switched on for the block, prints one line per
    executed primitive to the C ``stdout``, which is pointed at a temporary file meanwhile (file descriptor 1: a
    line another thread prints then lands there too). Skipped, with a reason, when oneDNN is not available or the
    process asked for oneDNN's verbose output itself (ONEDNN_VERBOSE: its lines are the user's, and switching it
    off afterwards would end them)."""
    if not torch.backends.mkldnn.is_available():
        _problem(seen, "onednn log", "oneDNN is not available")
        return contextlib.nullcontext()
    if _onednn_env_verbose():
        _problem(seen, "onednn log", "ONEDNN_VERBOSE is set by the process, not captured")
        return contextlib.nullcontext()
    return _best_effort(seen, "onednn log", _start_verbose, _read_verbose)


def onednn_primitives(log: str) -> list[str]:
    """``kind:implementation[:prop_kind]`` of every ``exec`` line of a oneDNN verbose log (formats v1 of oneDNN 3.x,
    ``onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx2,forward_training,…``, and the older
    ``onednn_verbose,exec,cpu,…``)."""
    found = []
    for line in log.splitlines():
        if not line.startswith(("onednn_verbose,", "dnnl_verbose,")):
            continue
        fields = line.split(",")
        if "exec" not in fields[:4]:
            continue
        i = fields.index("exec")
        if len(fields) > i + 4:
            kind, impl, prop = fields[i + 2], fields[i + 3], fields[i + 4]
            found.append(f"{kind}:{impl}" + (f":{prop}" if prop and prop != "undef" else ""))
    return found


def label_from(seen: dict) -> str | None:
    """The backend label of what was observed: the backends of the ATen conv ops that ran, joined with '+' in
    order, else ``onednn`` when oneDNN's log shows a convolution primitive; None when nothing tells."""
    labels = [OBSERVED_OPS[n] for n in seen.get("aten_ops", ()) if n in OBSERVED_OPS]
    if not labels and any(p.startswith("convolution:") for p in seen.get("onednn", ())):
        labels = ["onednn"]
    return "+".join(dict.fromkeys(labels)) or None


def observe_conv(run, p: ConvProblem, device):
    """Call ``run()`` once, watching what it dispatches; returns (its result, the backend label, facts). The label
    is observed (``seen`` holds the evidence: the conv-related ATen ops, oneDNN's primitives) or, when nothing could
    be observed, ``predicted:<ATen's prediction>`` with ``unobserved`` saying why."""
    seen: dict = {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(aten_ops(seen))
        if device_type(device) == "cpu":
            stack.enter_context(onednn_log(seen))
        out = run()
    label = label_from(seen)
    evidence = {k: v for k, v in (("aten_ops", [n for n in seen.get("aten_ops", ()) if "conv" in n]),
                                  ("onednn", seen.get("onednn"))) if v}
    facts = {"observed": evidence} if evidence else {}
    if label is None:
        label = PREDICTED + conv_backend(p, device)
        facts["unobserved"] = "; ".join(seen.get("problems", [])) or "no convolution op or primitive was seen"
    elif seen.get("problems"):
        facts["observation_problems"] = seen["problems"]
    return out, label, facts


@register
class Cudnn(Implementation):
    name = "cudnn"
    summary = "torch.nn.functional (cuDNN on GPU, oneDNN on CPU); the library baseline"

    def backend(self, op: str, device, problem: ConvProblem | None = None) -> str:
        """ATen's prediction (a row that never ran); rows that ran carry the observed backend."""
        if op.startswith("conv2d"):
            if problem is not None:
                return conv_backend(problem, device)
            if device_type(device) == "cuda":
                return "cudnn" if torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled else "aten-cuda"
            return "onednn" if torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled else "aten-cpu"
        return f"aten-{device_type(device)}"

    def ran(self, op: str, device, problem, record) -> str:
        """What the validation call observed; a conv row without a note is labelled as a prediction, never passed
        off as observed."""
        if record.backend or not op.startswith("conv2d"):
            return record.backend or self.backend(op, device, problem)
        return PREDICTED + self.backend(op, device, problem)

    def _observe_conv(self, run, p: ConvProblem, device):
        """``run()`` (one F.conv2d call) observed, its backend and the library's settings noted."""
        out, label, facts = observe_conv(run, p, device)
        if out.requires_grad:  # a backward row's label is this forward's: its backward runs in the autograd
            facts["backward"] = BACKWARD_UNOBSERVED  # engine, outside any call of ours
        note(backend=label, cudnn={**library_settings(device), **facts})
        return out

    def observed_call(self, op: str, call, problem, device):
        """A bound conv is plain ``F.conv2d``: its validation call is observed from outside (``observe_conv``)."""
        if op == "conv2d" and active():
            return self._observe_conv(call, problem, device)
        return call()

    # the timed calls: exactly the torch.nn.functional call, arguments bound
    def _bind_conv2d(self, x, weight, bias, p: ConvProblem):
        return functools.partial(F.conv2d, x, weight, bias, **p.kwargs())

    def _bind_max_pool2d(self, x, p: PoolProblem):
        return functools.partial(F.max_pool2d, x, **p.kwargs())

    def _bind_avg_pool2d(self, x, p: PoolProblem):
        return functools.partial(F.avg_pool2d, x, **p.kwargs())

    def _conv2d(self, x, weight, bias, p: ConvProblem):
        if active():  # a recorded call (a backward row's forward, a training step's validation): observe it
            return self._observe_conv(lambda: F.conv2d(x, weight, bias, **p.kwargs()), p, x.device)
        return F.conv2d(x, weight, bias, **p.kwargs())

    def _max_pool2d(self, x, p: PoolProblem):
        if p.return_indices:
            return F.max_pool2d(x, **p.kwargs())
        return F.max_pool2d(x, **p.kwargs()), None

    def _avg_pool2d(self, x, p: PoolProblem):
        return F.avg_pool2d(x, **p.kwargs())
