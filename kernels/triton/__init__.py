"""triton: our own Triton kernels for conv2d (forward, dgrad, wgrad) and max/avg pooling (forward, backward).

The kernels live in ``conv`` and ``pool``; this package registers the implementation, wraps each op
in a ``torch.autograd.Function`` and picks operand layouts and math precision:

- conv2d: implicit GEMM (direct kernel for tiny groups) forward; backward = dgrad (stride-phase implicit GEMM) +
  wgrad (split-K implicit GEMM, deterministic reduction) with the bias gradient fused into wgrad. The fused
  conv+bias+ReLU (``conv2d_relu``) applies bias and ReLU in the GEMM epilogue and its backward masks dy by y > 0
  inside the dgrad/wgrad loads.
- fp32 runs as TF32 exactly when cuDNN would (``torch.backends.cudnn`` conv fp32 precision / allow_tf32), else
  IEEE; fp16/bf16 feed the tensor cores with fp32 accumulation; fp64 accumulates in fp64.
- On a GPU the conv operands are passed channels_last (NHWC activations, KRSC weights: the channel axis of every
  tile contiguous); outputs keep the input's memory format, as torch does. Under the interpreter the tensors go in
  with whatever strides they have, which exercises the kernels' stride handling.

On the CPU this runs only under Triton's interpreter (TRITON_INTERPRET=1 before triton is imported) and is for
correctness only.

Without the triton package (``ModuleNotFoundError`` naming ``triton``) the implementation is registered and
unavailable; any other import error fails the import of this package (see kernels/__init__.py).
"""

from __future__ import annotations

import functools

import torch
from torch.autograd.function import once_differentiable

from reference import ConvProblem, PoolProblem

from .. import register

try:
    from .conv import (
        INTERPRETED,
        conv2d_dgrad,
        conv2d_forward,
        conv2d_wgrad,
        conv_path,
        dgrad_path,
        precision,
        wgrad_path,
    )
    from .pool import (
        avg_pool2d_backward,
        avg_pool2d_forward,
        input_like,
        max_pool2d_backward,
        max_pool2d_forward,
    )
    MISSING = None
except ModuleNotFoundError as exc:
    # Only the triton package itself being absent (e.g. macOS, Windows) makes the implementation unavailable: it is
    # still registered, with this reason. Any other import error — a name or submodule this triton lacks, a bug in
    # our modules — propagates: kernels records it as a load error and the test suite fails on it.
    if exc.name != "triton":
        raise
    INTERPRETED, MISSING = False, f"triton cannot be imported ({exc}); pip install triton on Linux"
from ..base import Implementation, device_type


def _operand(t: torch.Tensor) -> torch.Tensor:
    """The layout a conv kernel reads fastest: channels_last on a GPU (a no-op when it already is); unchanged
    under the interpreter, where the strided path is what gets tested."""
    if INTERPRETED or t.device.type != "cuda":
        return t
    return t.contiguous(memory_format=torch.channels_last)


def _like_strides(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``t`` with exactly ``ref``'s strides (a copy only when they differ)."""
    return t if t.stride() == ref.stride() else torch.empty_like(ref).copy_(t)


class _Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, p: ConvProblem, relu: bool):
        y = conv2d_forward(_operand(x), _operand(weight), bias, p, relu=relu, out_format_of=x)
        ctx.p = p
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.save_for_backward(x, weight, y if relu else None)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, y = ctx.saved_tensors
        p: ConvProblem = ctx.p
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if y is not None:  # fused ReLU: the kernels read y next to dy, so dy takes y's strides
            y = _operand(y)
            dy = _like_strides(dy, y)
        else:
            dy = _operand(dy)
        dx = dw = db = None
        if need_x:
            dx = conv2d_dgrad(dy, _operand(weight), p, x, y=y)
        if need_w or need_b:  # the bias gradient comes out of the wgrad kernel
            dw, db = conv2d_wgrad(dy, _operand(x), p, weight.dtype, ctx.bias_dtype if need_b else None, y=y)
        return dx, (dw if need_w else None), db, None, None


class _MaxPool2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p: PoolProblem):
        values, indices = max_pool2d_forward(x, p, store_index=True)
        ctx.p = p
        ctx.like = input_like(x)
        ctx.mark_non_differentiable(indices)
        ctx.save_for_backward(indices)
        return values, indices

    @staticmethod
    @once_differentiable
    def backward(ctx, dv, _):
        (indices,) = ctx.saved_tensors
        return max_pool2d_backward(dv, indices, ctx.p, ctx.like), None


class _AvgPool2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p: PoolProblem):
        ctx.p = p
        ctx.like = input_like(x)
        return avg_pool2d_forward(x, p)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        return avg_pool2d_backward(dy, ctx.p, ctx.like), None


class CudaGraphStep:
    """A whole training step captured once in a CUDA graph and replayed: one graph launch instead of ~100 kernel
    launches per step, which is what small-batch training is bound by on a GPU.

    Capture needs warm-up (allocator pools, cuBLAS handles, Triton autotuning, none of which can happen inside a
    capture), and warm-up steps are real updates. So the first call snapshots the parameters and the optimizer
    state, warms up, restores both in place, and only then captures; the optimizer's first update equals its
    steady-state formula applied to zero state (SGD: μ·0 + g; Adam: zero moments, step 0 with capturable=True),
    so a graph captured in steady state is exact from the first call on. Every call is exactly one update."""

    WARMUP = 2

    def __init__(self, step, model, optimizer) -> None:
        self.step, self.model, self.optimizer = step, model, optimizer
        self.graph = None

    def _state_tensors(self):
        return [(p, k, v) for p, st in self.optimizer.state.items() for k, v in st.items() if torch.is_tensor(v)]

    def _capture(self, x, y) -> None:
        params = [p for p in self.model.parameters()]
        saved = [p.detach().clone() for p in params]
        saved_state = {(id(p), k): v.clone() for p, k, v in self._state_tensors()}
        self.static_x, self.static_y = x.clone(), y.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP):
                self.step(self.static_x, self.static_y)
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
            for p, k, v in self._state_tensors():  # back to the state before warm-up (zero if there was none)
                v.copy_(saved_state[(id(p), k)]) if (id(p), k) in saved_state else v.zero_()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_loss = self.step(self.static_x, self.static_y)

    def __call__(self, x, y):
        if self.graph is None:
            self._capture(x, y)
        else:
            self.static_x.copy_(x)
            self.static_y.copy_(y)
        self.graph.replay()
        return self.static_loss


@functools.cache
def _capability(index: int | None) -> tuple[int, int]:
    """A GPU's compute capability (asked once per device: every call checks availability)."""
    return torch.cuda.get_device_capability(index)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


@register
class Triton(Implementation):
    name = "triton"
    summary = ("our own Triton kernels: implicit-GEMM conv (direct for tiny groups), stride-phase dgrad, split-K "
               "wgrad, fused bias+ReLU; tiled max/avg pooling with gather backward")
    jit = True

    def unavailable_reason(self, device) -> str | None:
        if MISSING:
            return MISSING
        kind = device_type(device)
        if kind == "cpu":
            if INTERPRETED:
                return None
            return ("Triton compiles for GPUs; on the CPU it runs only under its interpreter — set TRITON_INTERPRET=1 "
                    "before triton is imported")
        if kind == "cuda":
            if not torch.cuda.is_available():
                return "CUDA is not available"
            if not INTERPRETED and _capability(torch.device(device).index) < (8, 0):
                return "the kernels use bf16/TF32 tensor-core dots, which need compute capability 8.0 (Ampere) or newer"
            return None
        return f"Triton kernels run on CUDA GPUs (or the CPU interpreter), not on {kind}"

    def correctness_only(self, device) -> str | None:
        return "the Triton CPU interpreter is for correctness only" if INTERPRETED else None

    def backend(self, op: str, device, problem=None) -> str:
        return "triton-interpreter" if INTERPRETED else "triton"

    @staticmethod
    def kernel_paths(p: ConvProblem) -> dict[str, str]:
        """Which kernel computes each part of this conv: 'gemm', 'gemm-flat' or 'direct' (see kernels.triton.conv)."""
        return {"forward": conv_path(p), "dgrad": dgrad_path(p), "wgrad": wgrad_path(p)}

    @staticmethod
    def dot_precision(dtype: torch.dtype) -> str:
        """tl.dot input precision used for ``dtype`` now: 'tf32' for fp32 when TF32 is allowed, else 'ieee'."""
        return precision(dtype)

    # ---- the training step ---------------------------------------------------------------------------------------
    def optimizer_options(self, device) -> dict:
        return {"capturable": True} if device_type(device) == "cuda" else {}

    def wrap_train_step(self, step, model, optimizer, device):
        """On a GPU the whole step is captured in a CUDA graph (see CudaGraphStep); the convs inside already use the
        fused conv+bias+ReLU epilogue. The interpreter runs the step as is."""
        if device_type(device) == "cuda" and not INTERPRETED:
            return CudaGraphStep(step, model, optimizer)
        return step

    # ---- hooks ----------------------------------------------------------------------------------------------------
    def _conv2d(self, x, weight, bias, p: ConvProblem):
        # inference: no autograd node to build (a few µs of host time)
        if not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                             or (bias is not None and bias.requires_grad))):
            return conv2d_forward(_operand(x), _operand(weight), bias, p, relu=False, out_format_of=x)
        return _Conv2d.apply(x, weight, bias, p, False)

    def _conv2d_relu(self, x, weight, bias, p: ConvProblem):
        if not _needs_grad(x, weight, bias):
            return conv2d_forward(_operand(x), _operand(weight), bias, p, relu=True, out_format_of=x)
        return _Conv2d.apply(x, weight, bias, p, True)

    def _max_pool2d(self, x, p: PoolProblem):
        if _needs_grad(x):
            values, indices = _MaxPool2d.apply(x, p)
            return values, indices
        return max_pool2d_forward(x, p, store_index=p.return_indices)

    def _avg_pool2d(self, x, p: PoolProblem):
        return _AvgPool2d.apply(x, p) if _needs_grad(x) else avg_pool2d_forward(x, p)
