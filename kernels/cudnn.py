"""cudnn: PyTorch's built-in ops (``F.conv2d`` / ``F.max_pool2d`` / ``F.avg_pool2d``) — the library baseline.

On a GPU convolutions run in cuDNN, on a CPU in oneDNN (or ATen's own kernels where oneDNN does not apply); pooling
runs in ATen's native kernels. ``backend()`` asks ATen which convolution backend it selects, so results rows say
what actually ran rather than what the implementation is called.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reference import ConvProblem, PoolProblem

from . import register
from ._provenance import active, note
from .base import Implementation, device_type

_BACKEND_NAMES = {"mkldnn": "onednn", "cudnn": "cudnn", "miopen": "miopen", "slow2d": "aten-slow2d",
                  "slowdilated2d": "aten-slowdilated2d", "cudadepthwise2d": "aten-cuda-depthwise",
                  "overrideable": "overrideable", "empty": "empty", "mps": "mps"}


def conv_backend(p: ConvProblem, device) -> str:
    """Ask ATen which convolution backend it picks for this problem on this device. The probe allocates real,
    uninitialised tensors of the problem's shapes on the device (ATen's choice depends on the device, dtype and
    memory format, which meta tensors would not show) and computes nothing with them."""
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
        return f"aten-{device_type(device)}"
    name = str(chosen).rsplit(".", 1)[-1].lower()
    return _BACKEND_NAMES.get(name, name)


def library_settings(device) -> dict:
    """The settings that decide which cuDNN / oneDNN kernels run: on a GPU the cuDNN version, cudnn.benchmark
    (autotuned algorithm search), deterministic mode and whether fp32 convs may use TF32; on the CPU whether
    oneDNN is enabled. Nothing here profiles: a torch.profiler session per row would run inside the measured
    process before host_us. (torch does not expose the algorithm cuDNN picks; under ``run --profile`` the bench
    lists the kernels a steady call launched, from torch.profiler after every measurement, under ``gpu_kernels``.)"""
    if device_type(device) == "cuda":
        try:
            tf32 = torch.backends.cudnn.conv.fp32_precision == "tf32"
        except AttributeError:
            tf32 = bool(torch.backends.cudnn.allow_tf32)
        return {"cudnn_version": torch.backends.cudnn.version(), "benchmark": torch.backends.cudnn.benchmark,
                "deterministic": torch.backends.cudnn.deterministic, "tf32": tf32}
    return {"onednn": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled}


@register
class Cudnn(Implementation):
    name = "cudnn"
    summary = "torch.nn.functional (cuDNN on GPU, oneDNN on CPU); the library baseline"

    def backend(self, op: str, device, problem: ConvProblem | None = None) -> str:
        if op.startswith("conv2d"):
            if problem is not None:
                return conv_backend(problem, device)
            if device_type(device) == "cuda":
                return "cudnn" if torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled else "aten-cuda"
            return "onednn" if torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled else "aten-cpu"
        return f"aten-{device_type(device)}"

    def _conv2d(self, x, weight, bias, p: ConvProblem):
        if active():  # the bench's validation call: say which library and with which settings
            note(backend=conv_backend(p, x.device), cudnn=library_settings(x.device))
        return F.conv2d(x, weight, bias, **p.kwargs())

    def _max_pool2d(self, x, p: PoolProblem):
        if p.return_indices:
            return F.max_pool2d(x, **p.kwargs())
        return F.max_pool2d(x, **p.kwargs()), None

    def _avg_pool2d(self, x, p: PoolProblem):
        return F.avg_pool2d(x, **p.kwargs())
