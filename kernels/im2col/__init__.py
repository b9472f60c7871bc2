"""im2col: lower the convolution to GEMMs over an explicit patch matrix (and pooling to a reduction over windows).

Two paths compute the same thing; the ``backend`` column says which ran.

Native (fp32 on the CPU; kernels/im2col/csrc/im2col_cpu.cpp, built with the machine's compiler on first use): the cols
matrix is built one L2-sized tile of output pixels at a time and handed straight to ATen's fp32 brgemm micro-kernel
(oneDNN's ukernel), so cols never reaches DRAM. Two layouts, picked per problem (``_native_layout``):
  NHWC  cols[m, (r, s, c)] (R·S runs of C channels per pixel)   y (pixels × K) = cols @ Wᵀ        — one GEMM/group
  NCHW  colsT[(c, r, s), m] (one run per output row)             y[n, group] (K/G × pixels) = W_g @ colsT
        with stride 1 the output is computed on the padded grid (W + pl + pr columns per row, the extra (S−1)·dw
        discarded), which makes each colsT row one contiguous run of a zero-padded copy of the input
Depthwise convs never build cols: each cols entry feeds exactly one R·S-tap product, so the products read the
strided view of the input in place (vectors along channels in NHWC, along output columns in NCHW); 1×1 stride-1
convs use the input as cols the same way.
Backward: with stride 1, grad_x is the forward conv of grad_y with the kernel flipped (padding (R−1)·dh − pt), run
by the same forward code, so its GEMM reduces over K/G·R·S and nothing is scattered; strided convs compute
grad_cols = grad_y @ W per tile, then col2im (adds back onto the input pixels it came from). grad_W += grad_yᵀ @ cols
with cols rebuilt in cache (NHWC), or, for NCHW, by a register-blocked micro-kernel that reads colsT in place (both of
its operands run along the pixels, and grouped convs have only K/G outputs); the bias gradient comes from the same
pass. NCHW input or gradient that an NHWC path needs is transposed by a 16×16 register-blocked kernel.
Memory traffic per tile: the input halo once, cols written and read once in cache, the output once.

Pure torch (every other dtype and device, or without a compiler):
Forward:  xpad = the input in NHWC memory, zero-padded (one copy; none for an unpadded channels_last input)
          cols[n·P·Q + p·Q + q, (r·S + s)·C + c] = xpad[n, p·sh + r·dh, q·sw + s·dw, c]   (one strided copy)
          out (N·P·Q × K) = cols (N·P·Q × R·S·C) @ Wmat (R·S·C × K) + bias               (one GEMM)
Backward: grad_W = grad_outᵀ @ cols,  grad_cols = grad_out @ Wmatᵀ,  grad_x = col2im(grad_cols) (R·S strided adds)
The GEMM writes the output in NHWC order (returned as N×K×P×Q in channels_last memory). Groups: one GEMM against a
block-diagonal Wmat when that matrix is small, else a batched GEMM per group. GEMM engine: oneDNN's inner product
on x86 CPUs (MKL's sgemm runs its AVX2 path on AMD), cuBLAS on GPUs. The batch is processed in chunks whose cols
block stays within ``CHUNK_BYTES``, built in one reused workspace.
"""

from __future__ import annotations

import ctypes
import functools
import threading

import torch
import torch.nn.functional as F

from reference import ConvProblem, PoolProblem

from .. import note, register
from .._common import accumulator_dtype, batch_slices, is_nchw, profiled
from ..base import Implementation
from . import native as _native

#: cols block built at once (bytes): about one core's L2 (measured best of 0.5/1/2/8/64 MB on a 2-core EPYC)
CHUNK_BYTES = 2 << 20
#: largest block-diagonal grouped weight (elements) used instead of a batched per-group GEMM
BLOCK_DIAGONAL_ELEMENTS = 1 << 18


@functools.cache
def _onednn_bf16() -> bool:
    """oneDNN has bf16 inner products only on CPUs with native bf16 (AVX-512 BF16 / AMX); elsewhere it refuses."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(probe and probe())


def _onednn_ok(a: torch.Tensor) -> bool:
    return (a.device.type == "cpu" and (a.dtype == torch.float32 or (a.dtype == torch.bfloat16 and _onednn_bf16()))
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def gemm_nt(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a (M × k) @ b (n × k)ᵀ (+ bias): oneDNN's inner product on CPU, else (cu)BLAS addmm/mm. The choice is
    ``_onednn_ok``'s, the same test ``backend`` reports from; a oneDNN failure is raised, never silently replaced
    by BLAS under the ``onednn-gemm`` label."""
    if _onednn_ok(a):
        note(backend="onednn-gemm")
        return torch.ops.mkldnn._linear_pointwise(a.contiguous(), b.contiguous(), bias, "none", [], "")
    note(backend="cublas-gemm" if a.is_cuda else "blas-gemm")
    return torch.addmm(bias, a, b.t()) if bias is not None else torch.mm(a, b.t())


_workspace = threading.local()


def _cols_buffer(numel: int, like: torch.Tensor) -> torch.Tensor:
    """A reused flat buffer for cols blocks. Allocating a fresh multi-megabyte block every call costs a page fault
    per 4 KiB (the allocator returns large blocks to the OS), and a reused block is still in cache."""
    key = (like.device, like.dtype)
    pool = getattr(_workspace, "pool", None)
    if pool is None:
        pool = _workspace.pool = {}
    buf = pool.get(key)
    if buf is None or buf.numel() < numel:
        buf = pool[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
    return buf[:numel]


def _chunks(N: int, bytes_per_image: int) -> list[tuple[int, int]]:
    """Batch blocks whose cols fit CHUNK_BYTES; one empty block for N = 0 (the output is still allocated)."""
    return [(s.start, s.stop) for s in batch_slices(N, bytes_per_image, CHUNK_BYTES)] or [(0, 0)]


def _pointwise(p: ConvProblem) -> bool:
    return (p.R, p.S, p.stride, p.pads) == (1, 1, (1, 1), (0, 0, 0, 0))


def _padded_nhwc(x: torch.Tensor, p: ConvProblem) -> torch.Tensor:
    """(n, Hp, Wp, C) contiguous padded input; free when x is channels_last and unpadded."""
    top, bottom, left, right = p.pads
    nhwc = x.permute(0, 2, 3, 1)
    if top or bottom or left or right:
        return F.pad(nhwc, (0, 0, left, right, top, bottom))
    return nhwc.contiguous()


def _cols(xp: torch.Tensor, p: ConvProblem) -> torch.Tensor:
    """(n·P·Q, R·S·C) patch matrix of a padded NHWC chunk, in the reused workspace (a view of the input itself for
    a pointwise conv). Valid until the next call: consume it before building the next block."""
    N = xp.shape[0]
    if _pointwise(p):
        return xp.reshape(N * p.P * p.Q, p.C)
    sN, sH, sW, sC = xp.stride()
    (sh, sw), (dh, dw) = p.stride, p.dilation
    shape = (N, p.P, p.Q, p.R, p.S, p.C)
    view = xp.as_strided(shape, (sN, sh * sH, sw * sW, dh * sH, dw * sW, sC))
    buf = _cols_buffer(N * p.P * p.Q * p.R * p.S * p.C, xp).view(shape)
    buf.copy_(view)
    return buf.view(N * p.P * p.Q, p.R * p.S * p.C)


def _block_diagonal(p: ConvProblem) -> bool:
    return p.groups == 1 or p.K * p.R * p.S * p.C <= BLOCK_DIAGONAL_ELEMENTS


def _wmat_t(weight: torch.Tensor, p: ConvProblem) -> torch.Tensor:
    """(K, R·S·C) weight in the cols column order; grouped convs get zeros outside each group's block."""
    w = weight.permute(0, 2, 3, 1)  # (K, R, S, C/G)
    if p.groups == 1:
        return w.reshape(p.K, -1)
    G, Kg, Cg = p.groups, p.K // p.groups, p.C // p.groups
    dense = weight.new_zeros((G, Kg, p.R, p.S, G, Cg))
    idx = torch.arange(G, device=weight.device)
    dense[idx, :, :, :, idx, :] = w.reshape(G, Kg, p.R, p.S, Cg)
    return dense.reshape(p.K, -1)


def _grouped_cols(cols: torch.Tensor, p: ConvProblem) -> torch.Tensor:
    """(G, rows, R·S·C/G): each group's columns of a cols matrix (a copy)."""
    G = p.groups
    return cols.view(-1, p.R * p.S, G, p.C // G).permute(2, 0, 1, 3).reshape(G, cols.shape[0], -1)


def _grouped_wmat(weight: torch.Tensor, p: ConvProblem) -> torch.Tensor:
    """(G, R·S·C/G, K/G) per-group weight matrices."""
    G = p.groups
    return weight.reshape(G, p.K // G, p.C // G, p.R, p.S).permute(0, 3, 4, 2, 1).reshape(G, -1, p.K // G)


def _forward(x, weight, bias, p: ConvProblem) -> torch.Tensor:
    N, PQ = x.shape[0], p.P * p.Q
    note(backend="torch-unfold:cols")
    xp = _padded_nhwc(x, p)
    dense = _block_diagonal(p)
    w = _wmat_t(weight, p) if dense else _grouped_wmat(weight, p)
    parts = []
    for lo, hi in _chunks(N, PQ * p.R * p.S * p.C * x.element_size()):
        cols = _cols(xp[lo:hi], p)
        if dense:
            parts.append(gemm_nt(cols, w, bias))
        else:
            note(backend=f"{'cublas' if x.is_cuda else 'blas'}-bmm-per-group")
            out = torch.bmm(_grouped_cols(cols, p), w).transpose(0, 1).reshape(-1, p.K)
            parts.append(out + bias if bias is not None else out)
    out = torch.cat(parts) if len(parts) > 1 else parts[0]
    return out.view(N, p.P, p.Q, p.K).permute(0, 3, 1, 2)  # N×K×P×Q in channels_last memory


def _backward(x, weight, grad, p: ConvProblem, need_x: bool, need_w: bool):
    N, G, Cg, Kg, PQ = x.shape[0], p.groups, p.C // p.groups, p.K // p.groups, p.P * p.Q
    note(backend="torch-unfold:" + ",".join(part for part, wanted in (("dgrad=col2im", need_x),
                                                                        ("wgrad=mm", need_w)) if wanted))
    go = grad.permute(0, 2, 3, 1).reshape(-1, p.K)  # (N·P·Q, K): free when grad is channels_last
    dense = _block_diagonal(p)
    xp = _padded_nhwc(x, p) if need_w else None
    w = _wmat_t(weight, p) if dense else _grouped_wmat(weight, p)
    top, bottom, left, right = p.pads
    gxp = grad.new_zeros((N, p.H + top + bottom, p.W + left + right, p.C)) if need_x else None
    gw = None
    for lo, hi in _chunks(N, PQ * p.R * p.S * p.C * x.element_size()):
        g = go[lo * PQ:hi * PQ]
        if need_w:  # grad_W += grad_outᵀ @ cols, block by block
            cols = _cols(xp[lo:hi], p)
            part = (torch.mm(g.t(), cols) if dense
                    else torch.bmm(_grouped_cols(cols, p).transpose(1, 2), g.reshape(-1, G, Kg).transpose(0, 1)))
            gw = part if gw is None else gw.add_(part)
        if need_x:  # grad_cols = grad_out @ Wmat, then col2im into the padded input gradient
            if dense:
                gcols = gemm_nt(g, w.t())  # (rows, R·S·C)
            else:
                gcols = torch.bmm(g.reshape(-1, G, Kg).transpose(0, 1), w.transpose(1, 2))
                gcols = gcols.view(G, -1, p.R * p.S, Cg).permute(1, 2, 0, 3)
            _col2im(gcols.reshape(hi - lo, p.P, p.Q, p.R, p.S, p.C), gxp[lo:hi], p)
    grad_w = None
    if need_w:
        if dense:  # (K, R·S·C): keep each group's diagonal block
            gw = gw.view(G, Kg, p.R, p.S, G, Cg)[torch.arange(G), :, :, :, torch.arange(G), :]
        else:  # (G, R·S·C/G, K/G)
            gw = gw.view(G, p.R, p.S, Cg, Kg).permute(0, 4, 1, 2, 3)
        grad_w = gw.reshape(p.K, p.R, p.S, Cg).permute(0, 3, 1, 2).contiguous()
    grad_x = gxp[:, top:top + p.H, left:left + p.W].permute(0, 3, 1, 2) if need_x else None
    return grad_x, grad_w


def _col2im(gcols: torch.Tensor, gxp: torch.Tensor, p: ConvProblem) -> None:
    """Scatter-add each tap's column block back onto the input pixels it was read from (R·S strided adds)."""
    (sh, sw), (dh, dw) = p.stride, p.dilation
    for r in range(p.R):
        for s in range(p.S):
            rows = slice(r * dh, r * dh + (p.P - 1) * sh + 1, sh)
            gxp[:, rows, s * dw:s * dw + (p.Q - 1) * sw + 1:sw] += gcols[:, :, :, r, s]


# ---- the cache-blocked native path (fp32 on the CPU): csrc/im2col_cpu.cpp -------------------------------------------
#: cols tile built and consumed at once by the native path (bytes): within L2, so the GEMM reads it from cache
TILE_BYTES = 64 << 10

#: the branch codes csrc/im2col_cpu.cpp's entry points return (its FWD_* / DX_* / DW_* enums), as backend labels
FWD_BRANCHES = {1: "depthwise-direct", 2: "pointwise-brgemm", 3: "depthwise-cols", 4: "cols-brgemm",
                5: "grid-brgemm", 6: "one-channel-small-gemm"}
DX_BRANCHES = {1: "depthwise-direct", 2: "flipped-kernel-forward", 3: "depthwise-col2im", 4: "pointwise-brgemm",
               5: "brgemm-col2im", 6: "one-channel-small-gemm-col2im"}
DW_BRANCHES = {1: "depthwise-direct", 2: "depthwise-cols", 3: "pointwise-brgemm", 4: "cols-brgemm",
               5: "wgrad-micro-kernel", 6: "one-channel-dot"}


def _native_label(layout: str, code: int, backward: bool) -> str:
    """The backend label of a native call from the branch code it returned; an unknown code is an error, never
    papered over with a guess."""
    if not backward:
        parts = [FWD_BRANCHES.get(code)]
    else:
        dx, dw = divmod(code, 16)
        parts = [f"dgrad={DX_BRANCHES.get(dx)}" if dx else "", f"wgrad={DW_BRANCHES.get(dw)}" if dw else ""]
        parts = [s for s in parts if s] or [None]
    if None in parts or any("None" in s for s in parts):
        raise RuntimeError(f"im2col native library returned an unknown branch code {code} "
                           f"({'backward' if backward else 'forward'}): rebuild it (kernels/im2col/csrc)")
    return f"native-{layout}:{','.join(parts)}"


def _native_lib(x: torch.Tensor):
    return _native.load("im2col_cpu") if x.device.type == "cpu" and x.dtype == torch.float32 else None


def _depthwise(p: ConvProblem) -> bool:
    return p.groups > 1 and p.groups == p.C


def _geometry(p: ConvProblem, N: int):
    top, _, left, _ = p.pads
    g = (N, p.C, p.H, p.W, p.K, p.R, p.S, p.P, p.Q, *p.stride, top, left, *p.dilation, p.groups)
    return (ctypes.c_int64 * 16)(*g)


def _tile_rows(p: ConvProblem, nchw: bool) -> int:
    """Output pixels per tile: a TILE_BYTES cols block (one group's for NCHW), a multiple of 16 pixels (the GEMM's
    vector width); NCHW tiles are the GEMM's N dimension, which wants at least 64."""
    row = 4 * p.R * p.S * (p.C // p.groups if nchw else p.C)
    return max(64 if nchw else 16, min(512, TILE_BYTES // row // 16 * 16))


def _native_weight(weight: torch.Tensor, p: ConvProblem, transposed: bool) -> torch.Tensor:
    """The weight as the NHWC GEMMs read it: (G, R, S, C/G, K/G) for the forward (``transposed``), (G, K/G, R, S,
    C/G) for the backward; (R·S, K) for depthwise convs either way."""
    if _depthwise(p):
        return weight.reshape(p.K, p.R * p.S).t().contiguous()
    G, Kg, Cg = p.groups, p.K // p.groups, p.C // p.groups
    w = weight.reshape(G, Kg, Cg, p.R, p.S)
    return (w.permute(0, 3, 4, 2, 1) if transposed else w.permute(0, 1, 3, 4, 2)).contiguous()


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """t in channels_last memory; an NCHW float32 CPU tensor is transposed by the native library (register-blocked,
    about 4× faster than torch's strided copy)."""
    lib = _native_lib(t)
    if lib is None or t.dim() != 4 or not t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last):
        return t.contiguous(memory_format=torch.channels_last)
    N, C, H, W = t.shape
    out = torch.empty_like(t, memory_format=torch.channels_last)
    with profiled("native_nchw_to_nhwc"):
        lib.nchw_to_nhwc(_native.ptr(t), _native.ptr(out), ctypes.c_int64(N), ctypes.c_int64(C),
                         ctypes.c_int64(H * W), ctypes.c_int(torch.get_num_threads()))
    return out


def _native_layout(x: torch.Tensor, p: ConvProblem) -> torch.Tensor:
    """x in the memory format the native path computes in: channels_last input stays NHWC; NCHW input stays NCHW
    for grouped (not depthwise) and 1×1 convs, whose NCHW cols rows are long and whose per-group GEMMs are wide
    there, and for stride-1 depthwise convs without a channel multiplier, whose products read each plane's rows in
    place; it is converted to NHWC otherwise (measured faster: R·S runs of C channels per pixel instead of one run
    per output row and (c, r, s))."""
    stays = ((p.groups > 1 and not _depthwise(p)) or _pointwise(p)
             or (_depthwise(p) and p.K == p.C and p.stride == (1, 1)))
    if is_nchw(x) and stays:
        return x.contiguous()
    return _channels_last(x)


def _native_forward(lib, x: torch.Tensor, weight, bias, p: ConvProblem) -> torch.Tensor:
    """conv on the native path, in the input's own memory format; x is contiguous in it."""
    N, nchw = x.shape[0], is_nchw(x)
    b = bias.contiguous() if bias is not None else None
    threads = ctypes.c_int(torch.get_num_threads())
    if nchw:
        y = x.new_empty((N, p.K, p.P, p.Q))
        w = weight.contiguous()  # held here: the C code gets raw pointers
        with profiled("native_conv_fwd_nchw"):
            code = lib.conv_fwd_nchw(_geometry(p, N), _native.ptr(x), _native.ptr(w), _native.ptr(b),
                                     _native.ptr(y), ctypes.c_int64(_tile_rows(p, True)), threads)
        note(backend=_native_label("nchw", code, False))
        return y
    xh = x.permute(0, 2, 3, 1)
    y = x.new_empty((N, p.P, p.Q, p.K))
    wt = _native_weight(weight, p, True)
    with profiled("native_conv_fwd_nhwc"):
        code = lib.conv_fwd(_geometry(p, N), _native.ptr(xh), _native.ptr(wt), _native.ptr(b), _native.ptr(y),
                            ctypes.c_int64(_tile_rows(p, False)), threads)
    note(backend=_native_label("nhwc", code, False))
    return y.permute(0, 3, 1, 2)  # N×K×P×Q in channels_last memory


def _native_backward(lib, x, weight, grad, p: ConvProblem, need_x: bool, need_w: bool, need_b: bool):
    N, nchw, G, Kg, Cg = x.shape[0], is_nchw(x), p.groups, p.K // p.groups, p.C // p.groups
    threads = ctypes.c_int(torch.get_num_threads())
    gb = grad.new_empty(p.K) if need_b else None
    if nchw:
        gy = grad.contiguous()
        gx = torch.empty_like(x) if need_x else None
        wT = weight.reshape(G, Kg, -1).transpose(1, 2).contiguous()
        gw = x.new_empty((G, Cg * p.R * p.S, Kg)) if need_w else None
        with profiled("native_conv_bwd_nchw"):
            code = lib.conv_bwd_nchw(_geometry(p, N), _native.ptr(x), _native.ptr(wT), _native.ptr(gy),
                                     _native.ptr(gx), _native.ptr(gw), _native.ptr(gb),
                                     ctypes.c_int64(_tile_rows(p, True)), threads)
        note(backend=_native_label("nchw", code, True))
        if gw is not None:
            gw = gw.transpose(1, 2)
        return gx, (gw.reshape(weight.shape).contiguous() if gw is not None else None), gb
    xh = x.permute(0, 2, 3, 1)
    gy = _channels_last(grad).permute(0, 2, 3, 1)  # free when grad is channels_last
    gx = x.new_empty((N, p.H, p.W, p.C)) if need_x else None
    w = _native_weight(weight, p, False)
    gw = torch.empty_like(w) if need_w else None
    with profiled("native_conv_bwd_nhwc"):
        code = lib.conv_bwd(_geometry(p, N), _native.ptr(xh), _native.ptr(w), _native.ptr(gy), _native.ptr(gx),
                            _native.ptr(gw), _native.ptr(gb), ctypes.c_int64(_tile_rows(p, False)), threads)
    note(backend=_native_label("nhwc", code, True))
    if gw is not None:
        if _depthwise(p):
            gw = gw.t().reshape(p.K, 1, p.R, p.S)
        else:
            gw = gw.reshape(p.K, p.R, p.S, Cg).permute(0, 3, 1, 2)
        gw = gw.contiguous()
    return (gx.permute(0, 3, 1, 2) if gx is not None else None), gw, gb


class _Im2colConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, p: ConvProblem):
        ctx.p, ctx.has_bias = p, bias is not None
        lib = ctx.native = _native_lib(x)
        if lib is None:
            ctx.save_for_backward(x, weight)
            return _forward(x, weight, bias, p)
        x = _native_layout(x, p)
        ctx.save_for_backward(x, weight)
        return _native_forward(lib, x, weight, bias, p)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        p: ConvProblem = ctx.p
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if ctx.native is not None:
            return (*_native_backward(ctx.native, x, weight, grad, p, need_x, need_w, ctx.has_bias and need_b), None)
        grad_x, grad_w = _backward(x, weight, grad, p, need_x, need_w)
        grad_b = grad.sum(dim=(0, 2, 3)) if ctx.has_bias and need_b else None
        return grad_x, grad_w, grad_b, None


def _windows(x: torch.Tensor, p: PoolProblem, fill: float) -> torch.Tensor:
    """(N, C, kh·kw, P, Q) pooling windows via F.unfold of the ``fill``-padded input (backward: F.fold)."""
    top, bottom, left, right = p.pads
    xp = F.pad(x, (left, right, top, bottom), value=fill) if (top or bottom or left or right) else x
    cols = F.unfold(xp, p.kernel, dilation=p.dilation, stride=p.stride)  # (N, C·kh·kw, P·Q)
    return cols.view(x.shape[0], p.C, p.kernel[0] * p.kernel[1], p.P, p.Q)


@register
class Im2col(Implementation):
    name = "im2col"
    summary = "unfold to a patch matrix, then one GEMM per group; col2im for the input gradient"

    def backend(self, op: str, device, problem=None) -> str:
        """The path a call would take, for rows that never ran (unsupported, skipped); rows that ran carry the
        label the call itself noted: the native library's branch code, or the pure-torch path and its GEMM."""
        if not op.startswith("conv2d"):
            return "torch-unfold"
        dtype = getattr(torch, problem.dtype) if problem is not None and problem.dtype != "tf32" else torch.float32
        on_cpu = not str(device).startswith("cuda")
        return "native" if on_cpu and _native_lib(torch.empty(0, dtype=dtype)) is not None else "torch-unfold"

    def _conv2d(self, x, weight, bias, p: ConvProblem):
        return _Im2colConv.apply(x, weight, bias, p)

    def _max_pool2d(self, x, p: PoolProblem):
        # max over the unfolded window axis (torch.max keeps the first maximum). The windows are built without
        # autograd: the output is gathered from the input at the winners, so the backward is one scatter of
        # N·C·P·Q gradients instead of col2im over the kh·kw-times larger window matrix.
        note(backend="torch-unfold")
        with torch.no_grad():
            values, t = _windows(x, p, float("-inf")).max(dim=2)
        (kh, kw), (sh, sw), (dh, dw) = p.kernel, p.stride, p.dilation
        rows = torch.arange(p.P, device=x.device)[:, None] * sh - p.pads[0] + (t // kw) * dh
        cols = torch.arange(p.Q, device=x.device)[None, :] * sw - p.pads[2] + (t % kw) * dw
        flat = rows * p.W + cols
        in_image = (p.pads[0] == p.pads[2] == 0 and (p.P - 1) * sh + (kh - 1) * dh < p.H
                    and (p.Q - 1) * sw + (kw - 1) * dw < p.W)  # no window reaches the padding
        if torch.is_grad_enabled() and x.requires_grad:  # a winner in the padding is −inf and gets no gradient
            if in_image:
                values = x.flatten(2).gather(2, flat.flatten(2)).view_as(values)
            else:
                inside = (rows >= 0) & (rows < p.H) & (cols >= 0) & (cols < p.W)
                picked = x.flatten(2).gather(2, torch.where(inside, flat, 0).flatten(2)).view_as(values)
                values = torch.where(inside, picked, values)
        if in_image:  # an all −inf window's first maximum is its first tap: already ATen's index
            return values, flat
        start = p.first_tap_index(x.device)
        # nothing beats −inf: report the window's first in-range tap, as ATen does
        return values, torch.where(values == float("-inf"), start, flat)

    def _avg_pool2d(self, x, p: PoolProblem):
        note(backend="torch-unfold")
        acc = accumulator_dtype(x.dtype)
        sums = _windows(x, p, 0.0).sum(dim=2, dtype=acc)
        return (sums / p.divisor(x.device).to(acc)).to(x.dtype)
