"""Triton conv2d kernels: forward (implicit GEMM and direct), input gradient (dgrad) and weight gradient (wgrad).

Letters: input N×C×H×W, weight K×(C/G)×R×S, output N×K×P×Q, G groups, Cg = C/G and Kg = K/G channels per group.
Every kernel takes each tensor as a base pointer plus its four strides, so NCHW, channels_last (NHWC) and any other
strided layout run unchanged; NHWC is the fast path, where a tile's channel axis is contiguous (Triton specialises a
stride of 1 and vectorises those loads). Sums run in fp32 (fp64 for fp64 inputs); fp16/bf16 operands feed the
tensor cores directly, fp32 operands as TF32 or in full IEEE precision (``precision``), as cuDNN does.

Which kernel runs (``conv_path``):
- ``gemm``:   implicit GEMM, M = N·P·Q output pixels, N = Kg output channels, reduction R·S·Cg, one program per
              BLOCK_M×BLOCK_N output tile and group, one flat loop over (tap, BLOCK_K channel block).
- ``gemm-flat``: the same, reducing over the flattened (r, s, c) axis decoded per element: no channel padding
              when Cg is small or not a multiple of 16 (e.g. an RGB stem).
- ``gemm-1x1``: 1×1, stride 1, no padding, one group, channels_last: a plain strided GEMM (kernels/triton/gemm.py)
              over the N·H·W pixel rows — no pixel decode, tap loop or halo masks.
- ``direct``: Kg < 16 (depthwise, ResNeXt-style tiny groups): a GEMM tile would be mostly padding, so each program
              owns BLOCK_M pixels × BLOCK_N output channels of all groups and accumulates R·S·Cg outer products on
              the FMA units.
dgrad uses the same two shapes on the transposed problem and splits the input pixels by stride phase; wgrad splits
its long N·P·Q reduction across programs (split-K) into an fp32 buffer reduced deterministically afterwards.

Under the interpreter (TRITON_INTERPRET=1, CPU, correctness only) each autotuned kernel has one config with big
blocks: every Triton op there is a numpy call, so fewer, larger programs are faster.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import os

import torch
import triton
import triton.language as tl

from reference import ConvProblem

from .._common import batch_slices
from .._common import output_memory_format as memory_format
from .._provenance import active as _provenance_on
from .._provenance import note
from . import tuning
from .gemm import _pointwise_gemm_kernel, flat_rows

#: True when the kernels below are interpreted on the CPU (decided by TRITON_INTERPRET when triton was imported)
INTERPRETED = bool(triton.knobs.runtime.interpret)
#: backend label prefix of what these kernels ran ('triton-interpreter' rows are correctness-only)
LABEL = "triton-interpreter" if INTERPRETED else "triton"
#: more than one visible GPU: host functions must move their launches to their tensors' device
_MULTI_GPU = not INTERPRETED and torch.cuda.is_available() and torch.cuda.device_count() > 1

#: benchmark every config on a problem's first call (False: take the first config that fits — quick first calls,
#: e.g. for tests on a GPU; CONVBENCH_TRITON_AUTOTUNE=0 sets it at import)
AUTOTUNE = os.environ.get("CONVBENCH_TRITON_AUTOTUNE", "1") != "0"

#: tensor-core tile edge: a per-group channel count below it would leave most of a GEMM tile empty, so such
#: problems go to the direct kernels
MIN_DOT = 16
#: largest element offset a kernel computes in int32; bigger tensors are processed in batch chunks
INT32_LIMIT = 2**31 - 1


@contextlib.contextmanager
def _overflow_sanitizer_off():
    """The interpreter checks every int32 add/sub/mul for overflow (a cast to int64 and an assert each), which
    doubles its cost; compiled kernels never do this outside debug mode, and our offsets stay int32 by
    construction (batch_chunks). Switched off for the duration of our launches only, and restored after."""
    try:
        from triton.runtime import interpreter
        builder = interpreter.interpreter_builder
        saved = builder.options
        builder.options = dataclasses.replace(saved, sanitize_overflow=False)
    except (ImportError, AttributeError, TypeError):  # a triton without this internal: just run slower
        yield
        return
    try:
        yield
    finally:
        builder.options = saved


def launches(fn):
    """Decorator for the host functions that launch kernels. Triton launches on the current device, so with more
    than one GPU visible the launches are moved to the device of the first tensor argument (skipped when it is
    current already); under the interpreter see _overflow_sanitizer_off. With one GPU the function is returned
    as is: a wrapper would cost a microsecond per call for nothing."""
    if INTERPRETED:
        @functools.wraps(fn)
        def interpreted(*args, **kwargs):
            with _overflow_sanitizer_off():
                return fn(*args, **kwargs)
        return interpreted
    if not _MULTI_GPU:
        return fn

    @functools.wraps(fn)
    def run(*args, **kwargs):
        device = args[0].device
        if device.type == "cuda" and device.index is not None and device.index != torch.cuda.current_device():
            with torch.cuda.device(device):
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)
    return run


# ---- configs ------------------------------------------------------------------------------------------------------
def _cfg(bm, bn, bk, warps, stages, group_m=8):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m},
                         num_warps=warps, num_stages=stages)


# H100 (sm_90, 228 KB shared memory per SM): the matmul-tutorial shapes for 16-bit and TF32 tensor-core tiles,
# small ones for small problems (64 rows: wgmma works on 64-row warpgroup tiles, a 32-row tile falls back to mma.sync)
# and a 32-row one for the dots without wgmma (fp64, IEEE fp32); fits/_prune_gemm drop those that overflow shared
# memory, are too big for the register-bound paths or waste a tile on small channel counts. Every survivor is checked
# to compile to wgmma without spills by kernels/triton/sm90.py (tests/test_sm90.py). The first config that survives
# pruning is the untuned default (AUTOTUNE off).
GEMM_CONFIGS = [
    _cfg(128, 128, 32, 8, 4), _cfg(128, 64, 32, 4, 4), _cfg(64, 64, 32, 4, 3), _cfg(64, 32, 32, 4, 5),
    _cfg(128, 256, 64, 8, 3), _cfg(256, 128, 64, 8, 3), _cfg(128, 128, 64, 8, 3), _cfg(128, 64, 64, 4, 4),
    _cfg(64, 128, 64, 4, 4), _cfg(64, 64, 64, 4, 4), _cfg(64, 32, 16, 4, 3), _cfg(64, 64, 16, 4, 2),
    _cfg(64, 16, 32, 4, 3), _cfg(32, 32, 16, 4, 2),
]
# Direct tiles of at most 32 elements per thread, shaped so that neither triton 3.6 nor 3.8 lays them out with one
# thread on many channels of one pixel (64×64 on 4 warps, 128×64 on 8 and the like spill in their loops on 3.6).
DIRECT_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)
    for bm, bn, w, st in [(64, 32, 4, 3), (32, 64, 4, 3), (32, 128, 4, 3), (128, 16, 4, 3), (16, 128, 4, 3),
                          (32, 256, 8, 3), (64, 16, 2, 3), (32, 32, 2, 3)]
]
WGRAD_DIRECT_CONFIGS = [
    triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=st)
    for bn, bk, w, st in [(64, 64, 4, 3), (32, 128, 4, 3), (128, 32, 4, 3), (16, 256, 4, 3), (64, 128, 8, 3),
                          (64, 64, 8, 3)]
]
FWD_CONFIGS = DGRAD_CONFIGS = WGRAD_CONFIGS = GEMM_CONFIGS
if INTERPRETED:
    # One config each (autotuning the interpreter would time numpy), with big blocks: an interpreted op costs
    # ~50 µs of Python whatever its size, so fewer programs and loop trips win. wgrad's M is Kg, its K is N·P·Q.
    FWD_CONFIGS = DGRAD_CONFIGS = [_cfg(256, 32, 32, 1, 1)]
    WGRAD_CONFIGS = [_cfg(32, 64, 128, 1, 1)]
    DIRECT_CONFIGS = [triton.Config({"BLOCK_M": 256, "BLOCK_N": 16}, num_warps=1, num_stages=1)]
    WGRAD_DIRECT_CONFIGS = [triton.Config({"BLOCK_N": 16, "BLOCK_K": 256}, num_warps=1, num_stages=1)]


def fits(c, itemsize: int, precision: str = "tf32", flat: bool = False, wgrad: bool = False,
         mask: bool = False) -> bool:
    """Whether GEMM config ``c`` can run well for ``itemsize``-byte elements and dot ``precision``, whatever the
    problem: wgmma (16-bit, TF32) needs 64-row tiles; fp64 (DMMA) and IEEE fp32 (FMA) dots and the flat paths'
    per-element gathers are register-bound, so they get tiles of at most 64×64 (64×32 for fp64 and for both at
    once) and BLOCK_K 16 for those dots, 32 for the gathers; the stage buffers must fit shared memory (H100: 227 KB
    per block). The wgrad kernel (``wgrad``: A = dy read transposed) spills on sm_90 with triton 3.6
    (kernels/triton/sm90.py): inside its loop with IEEE fp32 tiles over 64×32 (64×64×16 w4 s2), and — 16 B outside
    the loop, which no tensor-core GEMM may do either — with A tiles over 128×64 under the fused ReLU's mask
    (``mask``: dy masked by y; 256×128×64 w8 s3)."""
    bm, bn, bk = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]
    no_wgmma = itemsize == 8 or (itemsize == 4 and precision == "ieee")
    if bm < 64 and not no_wgmma:
        return False
    if wgrad and (mask and bm * bk > 128 * 64 or no_wgmma and itemsize == 4 and bm * bn > 64 * 32):
        return False
    if no_wgmma or flat:
        area, depth = (64 * 32 if itemsize == 8 or no_wgmma and flat else 64 * 64), (16 if no_wgmma else 32)
        if bm * bn > area or bk > depth:
            return False
    return (c.num_stages + 1) * (bm + bn) * bk * itemsize <= 224 * 1024  # stage buffers (+1 measured on sm_90)


def _prune_gemm(configs, named_args, wgrad: bool = False, **kwargs):
    """Keep the tiles that fit this GEMM (``fits``) with block edges no wider than the (power-of-two rounded) sizes
    they tile; the smallest fitting tile when none is that narrow. ``wgrad``: the launch is the wgrad kernel's."""
    if len(configs) == 1:
        return configs
    itemsize = named_args["a_ptr"].element_size()
    fitting = [c for c in configs if fits(c, itemsize, kwargs.get("PRECISION", "tf32"),
                                          bool(kwargs.get("FLAT_K") or kwargs.get("FLAT")),
                                          wgrad, bool(kwargs.get("RELU_MASK")))]
    rows, cols, red = named_args["GEMM_M"], named_args["GEMM_N"], named_args["GEMM_RED"]
    m_cap = max(MIN_DOT, triton.next_power_of_2(rows))
    n_cap = max(MIN_DOT, triton.next_power_of_2(cols))
    k_cap = max(MIN_DOT, triton.next_power_of_2(red))
    kept = [c for c in fitting if c.kwargs["BLOCK_M"] <= m_cap and c.kwargs["BLOCK_N"] <= n_cap
            and c.kwargs["BLOCK_K"] <= k_cap]
    kept = kept or [min(fitting or configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]
    return kept if AUTOTUNE else kept[:1]


_prune_wgrad_gemm = functools.partial(_prune_gemm, wgrad=True)


def fits_direct(c, itemsize: int) -> bool:
    """Direct (FMA) tiles: at most 16 elements per thread for fp64, whose accumulators and operands take two
    registers each."""
    return itemsize < 8 or math.prod(c.kwargs.values()) <= 16 * 32 * c.num_warps


def _prune_direct(configs, named_args, **kwargs):
    """The direct tiles that fit the element size (the first pointer argument's); the first when AUTOTUNE is off."""
    if len(configs) == 1:
        return configs
    itemsize = next(v for k, v in named_args.items() if k.endswith("_ptr")).element_size()
    kept = [c for c in configs if fits_direct(c, itemsize)] or configs[:1]
    return kept if AUTOTUNE else kept[:1]


def _prune_untuned(configs, named_args, **kwargs):
    """No filtering; only the first config when AUTOTUNE is off."""
    return configs if AUTOTUNE else configs[:1]


TUNING = {"early_config_prune": _prune_untuned}


# ---- shared device helpers ----------------------------------------------------------------------------------------
@triton.jit
def _grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(tile row, tile column) of program ``pid`` in GROUP_M-row bands (the matmul tutorial's L2-friendly order)."""
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    band = GROUP_M * num_n
    first_m = (pid // band) * GROUP_M
    rows = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (pid % band) % rows, (pid % band) // rows


@triton.jit
def _mma(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc += a @ b. UPCAST (interpreter with bf16 only) widens the operands first: triton 3.9's interpreter
    computes garbage from bf16 dot operands, while bf16 → fp32 is exact, so the product is the same."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=acc.dtype)  # triton 3.6 wants fp64 said


def autotune(configs, **kwargs):
    """``triton.autotune`` keyed on every argument of the kernel except its pointers and the meta-parameters the
    configs set: shape, strides (layout), stride, padding, dilation, kernel size and the constexpr flags all change
    which config is best, so a long-lived process never reuses one problem's tuning for another."""
    meta = set().union(*(c.kwargs for c in configs))

    def decorate(fn):
        key = [a for a in fn.arg_names if not a.endswith("_ptr") and a not in meta]
        if _AUTOTUNE_BENCH:
            kwargs.setdefault("do_bench", _short_bench)
        return triton.autotune(configs=configs, key=key, **kwargs)(fn)
    return decorate


def _short_bench(kernel_call, quantiles):
    """Autotuning's timing of one config: 5 ms of warm-up and 25 ms of calls (Triton's default 25 + 100 ms spends
    ~1.6 s tuning one launch over 13 configs); enough to rank configs, which are then timed properly by the bench."""
    return triton.testing.do_bench(kernel_call, warmup=5, rep=25, quantiles=quantiles)


def _accepts_do_bench() -> bool:
    import inspect

    try:
        return "do_bench" in inspect.signature(triton.autotune).parameters
    except (TypeError, ValueError):
        return False


_AUTOTUNE_BENCH = _accepts_do_bench()


# ---- forward ------------------------------------------------------------------------------------------------------
# Implicit GEMM: y[m, k] = Σ_{r, s, c} x[n, g·Cg + c, p·sh − pt + r·dh, q·sw − pl + s·dw] · w[g·Kg + k, c, r, s] with
# m = (n, p, q). One program owns a BLOCK_M (pixels) × BLOCK_N (output channels of group g) tile; the A tile is
# gathered straight from the input (padding taps masked to 0, no im2col buffer), the B tile from the weight.
# Traffic: each input element is read once per tap that covers it and per BLOCK_N tile column (R·S·⌈Kg/BLOCK_N⌉
# times, mostly from L2), the weight once per BLOCK_M row of tiles, the output written once with the bias and
# ReLU applied in registers.
@autotune(FWD_CONFIGS, prune_configs_by={"early_config_prune": _prune_gemm})
@triton.jit
def _conv_fwd_gemm_kernel(
    a_ptr, w_ptr, b_ptr, y_ptr,
    GEMM_M, GEMM_N, GEMM_RED, H, W, P, Q, Cg,
    sxn, sxc, sxh, sxw, swk, swc, swr, sws, syn, syk, syp, syq,
    str_h, str_w, pad_h, pad_w, dil_h, dil_w,
    R: tl.constexpr, S: tl.constexpr, FLAT_K: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    g = tl.program_id(1)
    Kg = GEMM_N
    pid_m, pid_n = _grouped_tile(tl.program_id(0), GEMM_M, Kg, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < GEMM_M
    n_ok = rn < Kg
    n = rm // (P * Q)
    p = (rm // Q) % P
    q = rm % Q
    ih0 = p * str_h - pad_h
    iw0 = q * str_w - pad_w
    x_rows = a_ptr + n * sxn + (g * Cg) * sxc  # [BLOCK_M] row base pointers
    w_cols = w_ptr + (g * Kg + rn) * swk  # [BLOCK_N] column base pointers
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    # One flat loop over the whole reduction, so that Triton's software pipeliner (num_stages) overlaps the next
    # tiles' loads with this tile's MMA — nested tap/channel loops would leave only the short innermost one to it.
    if FLAT_K:
        # reduction index t = (r·S + s)·Cg + c, decoded per element: no channel padding when Cg is small
        for t0 in range(0, GEMM_RED, BLOCK_K):
            t = t0 + rk
            t_ok = t < GEMM_RED
            c = t % Cg
            r = t // (Cg * S)
            s = (t // Cg) % S
            # the A tile is gathered transposed (BLOCK_K × BLOCK_M): Triton then spreads the threads over the
            # pixels, so each holds the row state (pointer, ih0, iw0) of few pixels — [BLOCK_M, BLOCK_K] spills
            ih = ih0[None, :] + (r * dil_h)[:, None]
            iw = iw0[None, :] + (s * dil_w)[:, None]
            a_ok = m_ok[None, :] & t_ok[:, None] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a = tl.load(x_rows[None, :] + ih * sxh + iw * sxw + (c * sxc)[:, None], mask=a_ok, other=0.0)
            b = tl.load(w_cols[None, :] + (c * swc + r * swr + s * sws)[:, None],
                        mask=t_ok[:, None] & n_ok[None, :], other=0.0)
            acc = _mma(tl.trans(a), b, acc, PRECISION, UPCAST)
    else:
        # iteration = (tap r·S + s, channel block): the tap's row offsets and masks are BLOCK_M-vector work
        c_blocks = tl.cdiv(Cg, BLOCK_K)
        for it in range(R * S * c_blocks):
            r = it // (S * c_blocks)
            s = (it // c_blocks) % S
            c = (it % c_blocks) * BLOCK_K + rk
            c_ok = c < Cg
            ih = ih0 + r * dil_h
            iw = iw0 + s * dil_w
            row_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a = tl.load((x_rows + ih * sxh + iw * sxw)[:, None] + (c * sxc)[None, :],
                        mask=row_ok[:, None] & c_ok[None, :], other=0.0)
            b = tl.load(w_cols[None, :] + (r * swr + s * sws + c * swc)[:, None], mask=c_ok[:, None] & n_ok[None, :],
                        other=0.0)
            acc = _mma(a, b, acc, PRECISION, UPCAST)
    if HAS_BIAS:
        acc += tl.load(b_ptr + g * Kg + rn, mask=n_ok, other=0.0).to(ACC)[None, :]
    if RELU:
        acc = tl.where(acc < 0, 0.0, acc)  # NaN stays NaN, as torch.relu
    y = y_ptr + (n * syn + p * syp + q * syq)[:, None] + ((g * Kg + rn) * syk)[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


# Direct convolution for tiny per-group output counts (depthwise, channel multipliers, ResNeXt 4-wide groups):
# y[m, k] = Σ_{r, s, j < Cg} x[n, g(k)·Cg + j, ih, iw] · w[k, j, r, s], g(k) = k // Kg. One program owns BLOCK_M
# pixels × BLOCK_N output channels (any groups) and does R·S·Cg rank-1 updates on the FMA units — no tile padding
# to the tensor-core minimum of 16. Traffic: each input element read R·S times (L1/L2 hits after the first), the weight
# once per program, the output written once.
@autotune(DIRECT_CONFIGS, prune_configs_by={"early_config_prune": _prune_direct})
@triton.jit
def _conv_fwd_direct_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    M, K, H, W, P, Q, Cg, Kg,
    sxn, sxc, sxh, sxw, swk, swc, swr, sws, syn, syk, syp, syq,
    str_h, str_w, pad_h, pad_w, dil_h, dil_w,
    R: tl.constexpr, S: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    k = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < M
    k_ok = k < K
    n = rm // (P * Q)
    p = (rm // Q) % P
    q = rm % Q
    ih0 = p * str_h - pad_h
    iw0 = q * str_w - pad_w
    x_rows = n * sxn
    y_rows = n * syn + p * syp + q * syq  # before the loops: one live value per pixel, not n, p and q
    x_chan = ((k // Kg) * Cg) * sxc  # first input channel of each output channel's group
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for r in range(R):
        ih = ih0 + r * dil_h
        h_ok = m_ok & (ih >= 0) & (ih < H)
        for s in range(S):
            iw = iw0 + s * dil_w
            ok = (h_ok & (iw >= 0) & (iw < W))[:, None] & k_ok[None, :]
            # int32 offsets, not pointers: half the registers for the BLOCK_M×BLOCK_N gather
            a_offs = (x_rows + ih * sxh + iw * sxw)[:, None] + x_chan[None, :]
            w_offs = k * swk + r * swr + s * sws
            for j in range(Cg):
                a = tl.load(x_ptr + (a_offs + j * sxc), mask=ok, other=0.0).to(ACC)
                wv = tl.load(w_ptr + (w_offs + j * swc), mask=k_ok, other=0.0).to(ACC)
                acc += a * wv[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + k, mask=k_ok, other=0.0).to(ACC)[None, :]
    if RELU:
        acc = tl.where(acc < 0, 0.0, acc)
    y = y_ptr + y_rows[:, None] + (k * syk)[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & k_ok[None, :])


# ---- dgrad --------------------------------------------------------------------------------------------------------
@triton.jit
def _live_taps(phase, pad, dil, stride, step, T: tl.constexpr):
    """(first, count) of the taps t < T that reach input pixels of ``phase`` (≡ pixel mod stride), i.e. with
    (phase + pad − t·dil) divisible by stride: they are t = first + u·step, u < count, step = stride / gcd(stride,
    dil). Scalar work, once per program."""
    first = phase * 0 + T
    for t in range(step):
        hit = ((phase + pad - t * dil) % stride == 0) & (first == T)
        first = tl.where(hit, t, first)
    return first, (T - first + step - 1) // step


# dx[n, g·Cg + c, h, w] = Σ_{r, s, k} dy[n, g·Kg + k, p, q] · w[g·Kg + k, c, r, s] over the taps with
# p·sh = h + pt − r·dh and q·sw = w + pl − s·dw exactly. Stride decomposition: the input pixels are split into the
# sh·sw phases (h mod sh, w mod sw); inside one phase the taps (r, s) that can hit are the same for every pixel —
# an arithmetic progression per axis (_live_taps) — so a program loops over those only (a masked-tap version would
# load and discard (sh·sw−1)/(sh·sw) of the dy tiles) and p = i + (phase + pt − r·dh)/sh is an exact shift. Each
# phase is then an implicit GEMM, M = N·⌈H/sh⌉·⌈W/sw⌉ pixels, N = Cg input channels, reduction over live taps × Kg,
# in one flat (pipelinable) loop. One program owns a BLOCK_M×BLOCK_N tile of one phase and group. Traffic: dy read
# once per live tap and BLOCK_N column of tiles, the weight once per tile row, dx written once (no zero-fill, no
# atomics). RELU_MASK (the fused conv+ReLU's backward) zeroes dy where the saved output y ≤ 0, reading y alongside
# dy instead of materialising a masked copy of dy.
@autotune(DGRAD_CONFIGS, prune_configs_by={"early_config_prune": _prune_gemm})
@triton.jit
def _conv_dgrad_gemm_kernel(
    a_ptr, w_ptr, y_ptr, dx_ptr,
    GEMM_M, GEMM_N, GEMM_RED, N, H, W, P, Q, Kg,
    sdn, sdk, sdp, sdq, swk, swc, swr, sws, sxn, sxc, sxh, sxw,
    str_h, str_w, pad_h, pad_w, dil_h, dil_w, step_h, step_w,
    R: tl.constexpr, S: tl.constexpr, RELU_MASK: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    Cg = GEMM_N
    phases = str_h * str_w
    g = tl.program_id(1) // phases
    ph = (tl.program_id(1) % phases) // str_w  # this program's h mod sh
    pw = tl.program_id(1) % str_w
    Hc = (H - ph + str_h - 1) // str_h  # pixels of this phase per column / row
    Wc = (W - pw + str_w - 1) // str_w
    M = N * Hc * Wc
    pid_m, pid_n = _grouped_tile(tl.program_id(0), GEMM_M, Cg, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    c_ok = rn < Cg
    n = rm // tl.maximum(Hc * Wc, 1)
    i = (rm // tl.maximum(Wc, 1)) % tl.maximum(Hc, 1)
    j = rm % tl.maximum(Wc, 1)
    dy_rows = n * sdn + (g * Kg) * sdk  # [BLOCK_M] element offsets (y shares dy's strides)
    w_cols = w_ptr + (g * Kg) * swk + rn * swc
    r0, nr = _live_taps(ph, pad_h, dil_h, str_h, step_h, R)
    s0, ns = _live_taps(pw, pad_w, dil_w, str_w, step_w, S)
    k_blocks = tl.cdiv(Kg, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for it in range(nr * ns * k_blocks):
        r = r0 + (it // (ns * k_blocks)) * step_h
        s = s0 + ((it // k_blocks) % ns) * step_w
        k = (it % k_blocks) * BLOCK_K + rk
        k_ok = k < Kg
        p = i + (ph + pad_h - r * dil_h) // str_h  # exact divisions: r and s are live taps
        q = j + (pw + pad_w - s * dil_w) // str_w
        row_ok = m_ok & (p >= 0) & (p < P) & (q >= 0) & (q < Q)
        a_offs = (dy_rows + p * sdp + q * sdq)[:, None] + (k * sdk)[None, :]
        a_mask = row_ok[:, None] & k_ok[None, :]
        if RELU_MASK:  # a load mask, not a select: the dy tile can go straight to shared memory
            a_mask &= tl.load(y_ptr + a_offs, mask=a_mask, other=0.0).to(tl.float32) > 0
        a = tl.load(a_ptr + a_offs, mask=a_mask, other=0.0)
        b = tl.load(w_cols[None, :] + (r * swr + s * sws + k * swk)[:, None], mask=k_ok[:, None] & c_ok[None, :],
                    other=0.0)
        acc = _mma(a, b, acc, PRECISION, UPCAST)
    h = ph + i * str_h
    w = pw + j * str_w
    dx = dx_ptr + (n * sxn + h * sxh + w * sxw)[:, None] + ((g * Cg + rn) * sxc)[None, :]
    tl.store(dx, acc.to(dx_ptr.dtype.element_ty), mask=m_ok[:, None] & c_ok[None, :])


# Direct dgrad for tiny groups (the transpose of _conv_fwd_direct_kernel, same stride phases as the GEMM above):
# dx[m, c] = Σ_{live r, s} Σ_{j < Kg} dy[n, g(c)·Kg + j, p, q] · w[g(c)·Kg + j, c mod Cg, r, s]. One program owns
# BLOCK_M pixels of one phase × BLOCK_N input channels. Traffic: dy read once per live tap (cache hits after the first),
# the weight once per program, dx written once.
@autotune(DIRECT_CONFIGS, prune_configs_by={"early_config_prune": _prune_direct})
@triton.jit
def _conv_dgrad_direct_kernel(
    dy_ptr, w_ptr, y_ptr, dx_ptr,
    M, C, N, H, W, P, Q, Cg, Kg,
    sdn, sdk, sdp, sdq, swk, swc, swr, sws, sxn, sxc, sxh, sxw,
    str_h, str_w, pad_h, pad_w, dil_h, dil_w, step_h, step_w,
    R: tl.constexpr, S: tl.constexpr, RELU_MASK: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    ph = tl.program_id(2) // str_w
    pw = tl.program_id(2) % str_w
    Hc = (H - ph + str_h - 1) // str_h
    Wc = (W - pw + str_w - 1) // str_w
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rc = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < N * Hc * Wc
    c_ok = rc < C
    n = rm // tl.maximum(Hc * Wc, 1)
    i = (rm // tl.maximum(Wc, 1)) % tl.maximum(Hc, 1)
    j = rm % tl.maximum(Wc, 1)
    dx_rows = n * sxn + (ph + i * str_h) * sxh + (pw + j * str_w) * sxw  # before the loops, as in the forward
    k_first = (rc // Cg) * Kg  # first output channel of each input channel's group
    w_base = w_ptr + k_first * swk + (rc % Cg) * swc
    r0, nr = _live_taps(ph, pad_h, dil_h, str_h, step_h, R)
    s0, ns = _live_taps(pw, pad_w, dil_w, str_w, step_w, S)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for u in range(nr):
        r = r0 + u * step_h
        p = i + (ph + pad_h - r * dil_h) // str_h
        p_ok = m_ok & (p >= 0) & (p < P)
        for v in range(ns):
            s = s0 + v * step_w
            q = j + (pw + pad_w - s * dil_w) // str_w
            ok = (p_ok & (q >= 0) & (q < Q))[:, None] & c_ok[None, :]
            offs = (n * sdn + p * sdp + q * sdq)[:, None] + (k_first * sdk)[None, :]
            w_tap = w_base + r * swr + s * sws
            for kk in range(Kg):
                o = offs + kk * sdk  # int32 offsets, not a pointer tile: half the registers
                ok_k = ok
                if RELU_MASK:
                    ok_k = ok & (tl.load(y_ptr + o, mask=ok, other=0.0).to(tl.float32) > 0)
                a = tl.load(dy_ptr + o, mask=ok_k, other=0.0).to(ACC)
                wv = tl.load(w_tap + kk * swk, mask=c_ok, other=0.0).to(ACC)
                acc += a * wv[None, :]
    dx = dx_ptr + dx_rows[:, None] + (rc * sxc)[None, :]
    tl.store(dx, acc.to(dx_ptr.dtype.element_ty), mask=m_ok[:, None] & c_ok[None, :])


# ---- wgrad --------------------------------------------------------------------------------------------------------
# dw[g·Kg + k, c, r, s] = Σ_{l = (n, p, q)} dy[n, g·Kg + k, p, q] · x[n, g·Cg + c, p·sh − pt + r·dh, q·sw − pl + s·dw]:
# a GEMM with M = Kg, N = Cg per tap (or the flattened (r, s, c) axis when FLAT), reduction L = N·P·Q — long and
# thin, so it is split (split-K): program_id(2) sums rows [split·rows_per_split, (split+1)·rows_per_split) only and
# writes its BLOCK_M×BLOCK_N partial tile to its own slice of an fp32 buffer (fp64 for fp64), which
# _split_reduce_kernel then sums in split order — deterministic, no atomics. With one split the tile is stored
# straight into dw. HAS_BIAS: the programs of tile column 0 and tap 0 also row-sum the dy rows of their split, in a
# pass of their own before the main loop (summed inside it, the dy tile would sit in registers next to the
# accumulator: spills on the big tiles) — one more read of dy by 1/(column tiles · taps) of the programs. Traffic:
# dy read once per tile column and tap, x once per tile row, the partials written once and read once.
@autotune(WGRAD_CONFIGS, prune_configs_by={"early_config_prune": _prune_wgrad_gemm})
@triton.jit
def _conv_wgrad_gemm_kernel(
    a_ptr, x_ptr, y_ptr, dw_ptr, db_ptr,
    GEMM_M, GEMM_N, GEMM_RED, rows_per_split, H, W, P, Q, Cg,
    sdn, sdk, sdp, sdq, sxn, sxc, sxh, sxw,
    s_split, sok, soc, sor, sos, sb_split,
    str_h, str_w, pad_h, pad_w, dil_h, dil_w,
    R: tl.constexpr, S: tl.constexpr, FLAT: tl.constexpr, HAS_BIAS: tl.constexpr, RELU_MASK: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    Kg = GEMM_M
    if FLAT:
        g = tl.program_id(1)
        tap = 0
    else:
        g = tl.program_id(1) // (R * S)
        tap = tl.program_id(1) % (R * S)
    split = tl.program_id(2)
    pid_m, pid_n = _grouped_tile(tl.program_id(0), Kg, GEMM_N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < Kg
    n_ok = rn < GEMM_N
    if FLAT:  # column = (r·S + s)·Cg + c
        c = rn % Cg
        r = rn // (Cg * S)
        s = (rn // Cg) % S
    else:
        c = rn
        r = tap // S
        s = tap % S
    dy_cols = (g * Kg + rm) * sdk  # [BLOCK_M] offsets (y shares dy's strides)
    x_cols = x_ptr + (g * Cg + c) * sxc
    start = split * rows_per_split
    end = tl.minimum(start + rows_per_split, GEMM_RED)
    if HAS_BIAS:
        # the bias gradient in its own pass over the dy rows, by the programs of tile column 0 and tap 0 only:
        # summed inside the main loop it would need the dy tile in registers next to the accumulator (spills)
        if (pid_n == 0) & (tap == 0):
            bacc = tl.zeros((BLOCK_M,), dtype=ACC)
            for l0 in range(start, end, BLOCK_K):
                l = l0 + rk
                n = l // (P * Q)
                a_offs = dy_cols[:, None] + (n * sdn + ((l // Q) % P) * sdp + (l % Q) * sdq)[None, :]
                a_mask = m_ok[:, None] & (l < end)[None, :]
                if RELU_MASK:
                    a_mask &= tl.load(y_ptr + a_offs, mask=a_mask, other=0.0).to(tl.float32) > 0
                bacc += tl.sum(tl.load(a_ptr + a_offs, mask=a_mask, other=0.0).to(ACC), axis=1)
            tl.store(db_ptr + split * sb_split + g * Kg + rm, bacc.to(db_ptr.dtype.element_ty), mask=m_ok)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    # (n, p, q) of the rows: decoded once, then advanced BLOCK_K rows a step with two compare-and-carry steps
    # (BLOCK_K = dn·P·Q + dp·Q + dq with dp < P and dq < Q) — no integer division inside the loop
    l = start + rk
    n = l // (P * Q)
    p = (l // Q) % P
    q = l % Q
    dn = BLOCK_K // (P * Q)
    dp = (BLOCK_K % (P * Q)) // Q
    dq = BLOCK_K % Q
    for l0 in range(start, end, BLOCK_K):
        l_ok = (l0 + rk) < end
        a_offs = dy_cols[:, None] + (n * sdn + p * sdp + q * sdq)[None, :]
        a_mask = m_ok[:, None] & l_ok[None, :]
        if RELU_MASK:  # as in dgrad: a load mask
            a_mask &= tl.load(y_ptr + a_offs, mask=a_mask, other=0.0).to(tl.float32) > 0
        a = tl.load(a_ptr + a_offs, mask=a_mask, other=0.0)
        if FLAT:
            ih = (p * str_h - pad_h)[:, None] + (r * dil_h)[None, :]
            iw = (q * str_w - pad_w)[:, None] + (s * dil_w)[None, :]
            b_ok = l_ok[:, None] & n_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            b = tl.load(x_cols[None, :] + (n * sxn)[:, None] + ih * sxh + iw * sxw, mask=b_ok, other=0.0)
        else:
            ih = p * str_h - pad_h + r * dil_h
            iw = q * str_w - pad_w + s * dil_w
            row_ok = l_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            b = tl.load(x_cols[None, :] + (n * sxn + ih * sxh + iw * sxw)[:, None],
                        mask=row_ok[:, None] & n_ok[None, :], other=0.0)
        acc = _mma(a, b, acc, PRECISION, UPCAST)
        q += dq
        carry = q >= Q
        q = tl.where(carry, q - Q, q)
        p += dp + carry.to(tl.int32)
        carry = p >= P
        p = tl.where(carry, p - P, p)
        n += dn + carry.to(tl.int32)
    out = dw_ptr + split * s_split + ((g * Kg + rm) * sok)[:, None] + (c * soc + r * sor + s * sos)[None, :]
    tl.store(out, acc.to(dw_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


# Direct wgrad for tiny groups: dw[k, j, r, s] = Σ_l dy[l, k] · x[l @ tap (r, s), g(k)·Cg + j]. One program owns
# BLOCK_N output channels (any groups) of one (tap, j) pair and one split of the L = N·P·Q rows; it multiplies
# BLOCK_K×BLOCK_N tiles elementwise and reduces over the rows once at the end. Traffic: dy read R·S·Cg times, x
# once per tap, partials as in the GEMM version; program (tap 0, j 0) also sums dy for the bias gradient (in a pass
# of its own, as in the GEMM version).
@autotune(WGRAD_DIRECT_CONFIGS, prune_configs_by={"early_config_prune": _prune_direct})
@triton.jit
def _conv_wgrad_direct_kernel(
    dy_ptr, x_ptr, y_ptr, dw_ptr, db_ptr,
    L, K, rows_per_split, H, W, P, Q, Cg, Kg,
    sdn, sdk, sdp, sdq, sxn, sxc, sxh, sxw,
    s_split, sok, soc, sor, sos, sb_split,
    str_h, str_w, pad_h, pad_w, dil_h, dil_w,
    R: tl.constexpr, S: tl.constexpr, HAS_BIAS: tl.constexpr, RELU_MASK: tl.constexpr, ACC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    k = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    jj = tl.program_id(0) % Cg
    tap = tl.program_id(0) // Cg
    r = tap // S
    s = tap % S
    split = tl.program_id(2)
    k_ok = k < K
    x_chan = ((k // Kg) * Cg + jj) * sxc
    start = split * rows_per_split
    end = tl.minimum(start + rows_per_split, L)
    if HAS_BIAS:
        if tl.program_id(0) == 0:
            bacc = tl.zeros((BLOCK_K, BLOCK_N), dtype=ACC)
            for l0 in range(start, end, BLOCK_K):
                l = l0 + tl.arange(0, BLOCK_K)
                n = l // (P * Q)
                dy_offs = (n * sdn + ((l // Q) % P) * sdp + (l % Q) * sdq)[:, None] + (k * sdk)[None, :]
                dy_mask = (l < end)[:, None] & k_ok[None, :]
                if RELU_MASK:
                    dy_mask &= tl.load(y_ptr + dy_offs, mask=dy_mask, other=0.0).to(tl.float32) > 0
                bacc += tl.load(dy_ptr + dy_offs, mask=dy_mask, other=0.0).to(ACC)
            tl.store(db_ptr + split * sb_split + k, tl.sum(bacc, axis=0).to(db_ptr.dtype.element_ty), mask=k_ok)
    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=ACC)
    for l0 in range(start, end, BLOCK_K):
        l = l0 + tl.arange(0, BLOCK_K)
        l_ok = l < end
        n = l // (P * Q)
        p = (l // Q) % P
        q = l % Q
        dy_offs = (n * sdn + p * sdp + q * sdq)[:, None] + (k * sdk)[None, :]
        dy_mask = l_ok[:, None] & k_ok[None, :]
        if RELU_MASK:
            dy_mask &= tl.load(y_ptr + dy_offs, mask=dy_mask, other=0.0).to(tl.float32) > 0
        a = tl.load(dy_ptr + dy_offs, mask=dy_mask, other=0.0).to(ACC)
        ih = p * str_h - pad_h + r * dil_h
        iw = q * str_w - pad_w + s * dil_w
        row_ok = l_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        xv = tl.load(x_ptr + (n * sxn + ih * sxh + iw * sxw)[:, None] + x_chan[None, :],
                     mask=row_ok[:, None] & k_ok[None, :], other=0.0).to(ACC)
        acc += a * xv
    out = dw_ptr + split * s_split + k * sok + jj * soc + r * sor + s * sos
    tl.store(out, tl.sum(acc, axis=0).to(dw_ptr.dtype.element_ty), mask=k_ok)


# Split-K reduction: dst[i] = Σ_{split} src[split, i], summed in split order in ACC precision and cast to dst's
# dtype. One program owns BLOCK contiguous elements. Traffic: the partials read once, dst written once.
@triton.jit
def _split_reduce_kernel(src_ptr, dst_ptr, numel, splits, ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    acc = tl.zeros((BLOCK,), dtype=ACC)
    for i in range(splits):
        acc += tl.load(src_ptr + i * numel + offs, mask=ok, other=0.0).to(ACC)
    tl.store(dst_ptr + offs, acc.to(dst_ptr.dtype.element_ty), mask=ok)


def fits_pointwise(c, itemsize: int, precision: str = "tf32", mask: bool = False, *, a_m_major: bool = False,
                   b_n_major: bool = False, even: bool = True, bias_sum: bool = False) -> bool:
    """``fits`` for the 1×1 GEMM, minus the tiles that spill inside their loop on sm_90 (kernels/triton/sm90.py,
    with triton 3.6 — the GPU machine's — and 3.8). The layout flags are the unit strides the JIT specialises on:
    ``a_m_major`` (sam == 1: A = dyᵀ of wgrad, transposed on its way to the dot), ``b_n_major`` (sbn == 1: dgrad's
    w, wgrad's x); ``even``: EVEN_K (no masked reduction tail); ``mask``: MASK_A (the fused ReLU's backward reads
    y beside A); ``bias_sum``: BIAS_SUM (wgrad's bias gradient). Dropped:
    - with the mask, tiles over 128×128; on IEEE fp32 (FMA) dots, tiles over 64×32;
    - A M-major: A tiles over 128×64 (256×128×64 on 8 warps: 3.6 and 3.8); with the mask, more than 32 A elements
      per thread (128×64×64 on 4 warps: 3.6) and, on the k-tail path, BLOCK_K 64 (128×128×64 w8, 64×64×64 w4:
      3.6); fp64 with the bias sum, tiles under 64×32 (32×32×16 w4 s2: 3.6);
    - B N-major on the k-tail path: BLOCK_K 64 tiles over 128×128 (128×256×64 on 8 warps: 3.6)."""
    bm, bn, bk = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]
    if mask and bm * bn > 128 * 128 or itemsize == 4 and precision == "ieee" and bm * bn > 64 * 32:
        return False
    if a_m_major:
        if bm * bk > 128 * 64 or mask and (bm * bk > 32 * 32 * c.num_warps or not even and bk > 32):
            return False
        if itemsize == 8 and bias_sum and bm * bn < 64 * 32:
            return False
    if b_n_major and not even and bk > 32 and bm * bn > 128 * 128:
        return False
    return fits(c, itemsize, precision)


def pointwise_facts(named_args: dict, meta: dict) -> dict:
    """fits_pointwise's keyword facts of one launch of the 1×1 GEMM (its arguments and constexpr flags)."""
    return dict(mask=bool(meta.get("MASK_A")), a_m_major=named_args["sam"] == 1, b_n_major=named_args["sbn"] == 1,
                even=bool(meta.get("EVEN_K")), bias_sum=bool(meta.get("BIAS_SUM")))


def _prune_pointwise(configs, named_args, **kwargs):
    if len(configs) > 1:
        itemsize = named_args["a_ptr"].element_size()
        facts = pointwise_facts(named_args, kwargs)
        configs = [c for c in configs if fits_pointwise(c, itemsize, kwargs.get("PRECISION", "tf32"), **facts)] \
            or configs
    return _prune_gemm(configs, named_args, **kwargs)


# The 1×1 GEMM (kernels/triton/gemm.py) tuned as the forward/dgrad GEMMs are, and as wgrad (M = K, long reduction).
_pointwise_kernel = autotune(FWD_CONFIGS, prune_configs_by={"early_config_prune": _prune_pointwise})(
    _pointwise_gemm_kernel)
_pointwise_wgrad_kernel = autotune(WGRAD_CONFIGS, prune_configs_by={"early_config_prune": _prune_pointwise})(
    _pointwise_gemm_kernel)
#: rows_per_split and the reductions of EVEN_K launches are multiples of this (the largest BLOCK_K of any config)
K_ALIGN = 128


# ---- host side ----------------------------------------------------------------------------------------------------
def acc_dtype(dtype: torch.dtype):
    """Triton accumulator type: fp64 for fp64, fp32 otherwise."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def _tf32_reader():
    """A reader of cuDNN's conv fp32 precision flag: torch's own getter (what ``torch.backends.cudnn.conv.
    fp32_precision`` calls, minus two Python attribute hooks, ~1 µs per call), else the legacy allow_tf32."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    getter = getattr(torch._C, "_get_fp32_precision_getter", None)
    try:
        backend, op = conv.backend, conv.op
        getter(backend, op)
    except (AttributeError, TypeError, RuntimeError):  # torch without the fp32_precision API
        return lambda: bool(torch.backends.cudnn.allow_tf32)
    return lambda: getter(backend, op) == "tf32"


_read_tf32 = _tf32_reader()


def tf32_enabled() -> bool:
    """Whether cuDNN convolutions may use TF32 for fp32 now: torch's per-backend flag
    (torch.backends.cudnn.conv.fp32_precision), else the legacy torch.backends.cudnn.allow_tf32."""
    return _read_tf32()


def precision(dtype: torch.dtype) -> str:
    """tl.dot input_precision: 'tf32' for fp32 exactly when cuDNN would use TF32, else 'ieee' (fp16/bf16 products
    are exact in fp32 accumulation, fp64 has no reduced-precision mode)."""
    return "tf32" if dtype == torch.float32 and tf32_enabled() else "ieee"


def _upcast(dtype: torch.dtype) -> bool:
    return INTERPRETED and dtype == torch.bfloat16


def _pointwise_problem(p: ConvProblem) -> bool:
    return ((p.R, p.S, tuple(p.stride), p.groups) == (1, 1, (1, 1), 1) and not any(p.pads)
            and p.layout == "channels_last" and min(p.C, p.K) >= MIN_DOT)


def conv_path(p: ConvProblem) -> str:
    """'gemm-1x1' (a channels_last 1×1 stride-1 unpadded conv: a plain GEMM), 'direct' (Kg < 16), 'gemm-flat'
    (Cg < 32 or not a multiple of 16: reduce over flattened r, s, c) or 'gemm'. The host functions fall back from
    'gemm-1x1' to 'gemm' when the tensors' pixels are not evenly spaced (and the row says so)."""
    Cg, Kg = p.C // p.groups, p.K // p.groups
    if _pointwise_problem(p):
        return "gemm-1x1"
    if Kg < MIN_DOT:
        return "direct"
    return "gemm-flat" if Cg < 2 * MIN_DOT or Cg % MIN_DOT else "gemm"


def dgrad_path(p: ConvProblem) -> str:
    """'gemm-1x1' as for the forward; 'direct' when the per-tap reduction Kg is below the tensor-core minimum, else
    'gemm' (a small Cg only pads the tile's columns, which costs less than leaving the tensor cores for FMAs)."""
    if _pointwise_problem(p):
        return "gemm-1x1"
    return "direct" if p.K // p.groups < MIN_DOT else "gemm"


def _flat(path: str, *tensors) -> str:
    """'gemm-1x1' only when every activation tensor's pixels are evenly spaced (else the gather GEMM). Decided when
    a call is planned: the plan key holds the strides it depends on, so repeated calls skip it."""
    if path == "gemm-1x1" and any(flat_rows(t) is None for t in tensors):
        return "gemm"
    return path


def wgrad_path(p: ConvProblem) -> str:
    """Same split as the forward: 'direct' for Kg < 16, 'gemm-flat' for small Cg, else 'gemm'."""
    return conv_path(p)


def _max_offset(t: torch.Tensor) -> int:
    return sum((d - 1) * abs(s) for d, s in zip(t.shape, t.stride()) if d > 0)


def batch_chunks(N: int, *tensors: torch.Tensor) -> list[slice]:
    """Batch slices small enough that every element offset of every tensor fits int32 (one slice almost always)."""
    per_image = max([_max_offset(t) // max(1, t.shape[0]) + 1 for t in tensors] + [1])
    return batch_slices(N, 2 * per_image, INT32_LIMIT)


def num_sms(device) -> int:
    if torch.device(device).type == "cuda" and not INTERPRETED:
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def wgrad_splits(p: ConvProblem, device, path: str | None = None) -> int:
    """Split-K factor for wgrad: enough programs to cover every SM about twice, each split summing at least 1024
    rows of the N·P·Q reduction (so the partial-tile traffic stays small next to the loads), at most 64."""
    path = path or wgrad_path(p)
    Cg, Kg, L = p.C // p.groups, p.K // p.groups, p.N * p.P * p.Q
    if path == "direct":
        tiles = triton.cdiv(p.K, 64) * p.R * p.S * Cg
    elif path == "gemm-flat":
        tiles = triton.cdiv(Kg, 128) * triton.cdiv(p.R * p.S * Cg, 128) * p.groups
    else:
        tiles = triton.cdiv(Kg, 128) * triton.cdiv(Cg, 128) * p.R * p.S * p.groups
    want = math.ceil(2 * num_sms(device) / tiles)
    return max(1, min(want, L // 1024, 64))


def _conv_geometry(p: ConvProblem) -> tuple:
    top, _, left, _ = p.pads
    return (*p.stride, top, left, *p.dilation)


# ---- host functions -----------------------------------------------------------------------------------------------
# A host call's launches depend only on the problem, the operands' strides, dtypes and flags, so each distinct call
# is planned once: its first call computes the path, batch chunks, grids and scalar arguments and launches through
# the autotuner (which tunes on that first call); the plan keeps the tuned kernel's inner JITFunction with the
# winning config's meta-parameters. A repeated call is one dict lookup, the output allocation and the launches —
# no autotuner key hashing, no grid lambdas, no stride arithmetic (see ``bench host-overhead``).
@dataclasses.dataclass
class Plan:
    """The launches of one planned host call. ``steps``: (batch slice or None for the whole batch, kernel, grid,
    scalar arguments, meta kwargs) per launch; ``path``/``config``/``splits`` say what runs (row provenance)."""

    path: str
    steps: list
    config: dict
    splits: int = 1
    direct_out: bool = True
    out_shape: tuple = ()

    @functools.cached_property
    def single(self) -> tuple | None:
        """(kernel, grid, scalars, meta) when the plan is one launch on the whole batch, else None."""
        return self.steps[0][1:] if len(self.steps) == 1 and self.steps[0][0] is None else None


_PLANS: dict[tuple, Plan] = {}
PLAN_LIMIT = 4096  # distinct calls remembered (a long sweep sees a few hundred); past it the table starts over


def _tuned(kernel, grid, tensors: tuple, scalars: tuple, meta: dict) -> tuple:
    """Launch ``kernel`` (an autotuner) once and return the plan step that replays it: (inner JITFunction, grid
    tuple, scalars, meta with the chosen config's kwargs), plus that config. The config is, in order: the forced
    one (tuning.force), the one stored for this device (tuning.store), else the autotuner's pick — stored then."""
    cfg, source, key = None, "autotuned", None
    index = tuning.forced()
    if index is not None:
        configs = tuning.pruned(kernel, tensors, scalars, meta)
        if index >= len(configs) and not tuning.clamped():
            raise tuning.NoSuchConfig(f"{kernel.fn.__name__}: {len(configs)} configs")
        tuning.FRESH[0] += index < len(configs)
        cfg, source = configs[min(index, len(configs) - 1)], "forced"
    elif not INTERPRETED and AUTOTUNE and len(kernel.configs) > 1:
        store = tuning.store(tensors[0].device)
        key = tuning.launch_key(kernel, tensors, scalars, meta)
        cfg = store.lookup(key)
        source = "stored" if cfg is not None else source
    if cfg is None:
        kernel[grid](*tensors, *scalars, **meta)
        cfg = kernel.best_config
        if key is not None:
            tuning.store().add(key, cfg)
    full = {**meta, **cfg.all_kwargs()}
    grid_t = tuple(grid(full)) if callable(grid) else tuple(grid)
    if source != "autotuned":
        kernel.fn.run(*tensors, *scalars, grid=grid_t, warmup=False, **full)
    cfg = copy.copy(cfg)  # the autotuner's own Config objects stay unmarked
    cfg.source = source
    if index is not None:
        tuning.LAST.update(kernel=kernel.fn.__name__, config=_config_facts(cfg))
    return (kernel.fn, grid_t, scalars, full), cfg


def _config_facts(cfg) -> dict:
    facts = {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    if getattr(cfg, "source", None):
        facts["source"] = cfg.source  # autotuned / stored (kernels/triton/tuned) / forced
    return facts


def _remember(key: tuple, plan: Plan) -> Plan:
    if tuning.forced() is not None:  # a forced config is never the plan of later calls
        return plan
    if len(_PLANS) >= PLAN_LIMIT:
        _PLANS.clear()
    _PLANS[key] = plan
    return plan


def _replay(plan: Plan, tensors: tuple, batched: tuple[int, ...]) -> None:
    """Launch every step of ``plan`` on ``tensors``, slicing the ``batched`` ones to the step's batch chunk.
    (``fn.run(..., grid=, warmup=False)`` is what ``fn[grid](...)`` calls, minus building a lambda per launch.)"""
    for chunk, fn, grid, scalars, meta in plan.steps:
        args = tensors if chunk is None else tuple(t[chunk] if i in batched else t for i, t in enumerate(tensors))
        fn.run(*args, *scalars, grid=grid, warmup=False, **meta)


def _note(part: str, plan: Plan) -> None:
    """Tell a recording caller (the bench's validation call) which path and tuned config ran; timed calls check
    ``_provenance_on`` first and skip building the facts."""
    facts = {"path": plan.path, "config": plan.config}
    if part == "wgrad":
        facts["split_k"] = plan.splits
    note(backend=f"{LABEL}:{part}={plan.path}", triton={part: facts})


@launches
def conv2d_forward(x, weight, bias, p: ConvProblem, relu: bool = False, out_format_of=None) -> torch.Tensor:
    """y = conv2d(x, weight, bias) (then ReLU when ``relu``) in x's dtype, and in the memory format of
    ``out_format_of`` (default x: the caller may pass a channels_last copy of its input and still get torch's
    output format)."""
    fmt = memory_format(x if out_format_of is None else out_format_of)
    path = conv_path(p)
    key = ("forward", p, path, x.stride(), weight.stride(), fmt, bias is not None, relu, x.dtype, precision(x.dtype),
           x.device, AUTOTUNE)
    plan = _PLANS.get(key)
    y = torch.empty(p.output_shape if plan is None else plan.out_shape, dtype=x.dtype, device=x.device,
                    memory_format=fmt)
    if x.shape[0] == 0:
        return y
    b = bias if bias is not None else y  # never read when HAS_BIAS is False
    if plan is None:
        plan = _remember(key, _plan_forward(x, weight, b, y, p, relu, bias is not None, _flat(path, x, y)))
    elif plan.single is not None:  # the usual case: one launch on the whole batch
        fn, grid, scalars, meta = plan.single
        fn.run(x, weight, b, y, *scalars, grid=grid, warmup=False, **meta)
    else:
        _replay(plan, (x, weight, b, y), (0, 3))
    if _provenance_on():
        _note("forward", plan)
    return y


def _plan_forward(x, weight, b, y, p: ConvProblem, relu: bool, has_bias: bool, path: str) -> Plan:
    G = p.groups
    Cg, Kg = p.C // G, p.K // G
    chunks = batch_chunks(x.shape[0], x, y)
    steps, cfg = [], None
    for chunk in chunks:
        xc, yc = x[chunk], y[chunk]
        M = xc.shape[0] * p.P * p.Q
        args = (*xc.stride(), *weight.stride(), *yc.stride(), *_conv_geometry(p))
        if path == "gemm-1x1":  # A = x (M×C), B = wᵀ (C×K), C = y (M×K)
            grid = lambda META, M=M: (triton.cdiv(M, META["BLOCK_M"]) * triton.cdiv(p.K, META["BLOCK_N"]), 1)  # noqa: E731
            step, cfg = _tuned(_pointwise_kernel, grid, (xc, weight, xc, yc, b),
                               (M, p.K, p.C, p.C, flat_rows(xc), xc.stride(1), weight.stride(1), weight.stride(0),
                                flat_rows(yc), yc.stride(1), 0, 0),
                               dict(HAS_BIAS=has_bias, RELU=relu, MASK_A=False, BIAS_SUM=False,
                                    EVEN_K=p.C % K_ALIGN == 0, PRECISION=precision(x.dtype), UPCAST=_upcast(x.dtype),
                                    ACC=acc_dtype(x.dtype)))
        elif path == "direct":
            grid = lambda META, M=M: (triton.cdiv(M, META["BLOCK_M"]), triton.cdiv(p.K, META["BLOCK_N"]))  # noqa: E731
            step, cfg = _tuned(_conv_fwd_direct_kernel, grid, (xc, weight, b, yc),
                               (M, p.K, p.H, p.W, p.P, p.Q, Cg, Kg, *args),
                               dict(R=p.R, S=p.S, HAS_BIAS=has_bias, RELU=relu, ACC=acc_dtype(x.dtype)))
        else:
            flat = path == "gemm-flat"
            red = p.R * p.S * Cg if flat else Cg
            grid = lambda META, M=M: (triton.cdiv(M, META["BLOCK_M"]) * triton.cdiv(Kg, META["BLOCK_N"]), G)  # noqa: E731
            step, cfg = _tuned(_conv_fwd_gemm_kernel, grid, (xc, weight, b, yc),
                               (M, Kg, red, p.H, p.W, p.P, p.Q, Cg, *args),
                               dict(R=p.R, S=p.S, FLAT_K=flat, HAS_BIAS=has_bias, RELU=relu,
                                    PRECISION=precision(x.dtype), UPCAST=_upcast(x.dtype), ACC=acc_dtype(x.dtype)))
        steps.append((None if len(chunks) == 1 else chunk, *step))
    return Plan(path, steps, _config_facts(cfg), out_shape=tuple(y.shape))


@launches
def conv2d_dgrad(dy, weight, p: ConvProblem, x_like: torch.Tensor, y=None) -> torch.Tensor:
    """dx of conv2d in x_like's dtype and memory format; ``y`` (same strides as dy) masks dy where y ≤ 0."""
    N = dy.shape[0]
    fmt = memory_format(x_like)
    dx = torch.empty(x_like.shape, dtype=x_like.dtype, device=dy.device, memory_format=fmt)
    if N == 0:
        return dx
    yy = y if y is not None else dy
    path = dgrad_path(p)
    key = ("dgrad", p, path, dy.stride(), weight.stride(), fmt, x_like.dtype, y is not None, dy.dtype,
           precision(dy.dtype), dy.device, AUTOTUNE)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _remember(key, _plan_dgrad(dy, weight, yy, dx, p, y is not None, _flat(path, dy, dx)))
    elif plan.single is not None:
        fn, grid, scalars, meta = plan.single
        fn.run(dy, weight, yy, dx, *scalars, grid=grid, warmup=False, **meta)
    else:
        _replay(plan, (dy, weight, yy, dx), (0, 2, 3))
    if _provenance_on():
        _note("dgrad", plan)
    return dx


def _plan_dgrad(dy, weight, y, dx, p: ConvProblem, relu_mask: bool, path: str) -> Plan:
    G = p.groups
    Cg, Kg = p.C // G, p.K // G
    sh, sw = p.stride
    chunks = batch_chunks(dy.shape[0], dy, dx)
    steps, cfg = [], None
    for chunk in chunks:
        dyc, dxc, yc = dy[chunk], dx[chunk], y[chunk]
        n = dyc.shape[0]
        M = n * triton.cdiv(p.H, sh) * triton.cdiv(p.W, sw)  # pixels of the largest phase
        phase_steps = (sh // math.gcd(sh, p.dilation[0]), sw // math.gcd(sw, p.dilation[1]))
        args = (*dyc.stride(), *weight.stride(), *dxc.stride(), *_conv_geometry(p), *phase_steps)
        if path == "gemm-1x1":  # A = dy (M×K), B = w (K×C), C = dx (M×C); y shares dy's strides
            M = n * p.H * p.W
            grid = lambda META, M=M: (triton.cdiv(M, META["BLOCK_M"]) * triton.cdiv(p.C, META["BLOCK_N"]), 1)  # noqa: E731
            step, cfg = _tuned(_pointwise_kernel, grid, (dyc, weight, yc, dxc, dxc),
                               (M, p.C, p.K, p.K, flat_rows(dyc), dyc.stride(1), weight.stride(0), weight.stride(1),
                                flat_rows(dxc), dxc.stride(1), 0, 0),
                               dict(HAS_BIAS=False, RELU=False, MASK_A=relu_mask, BIAS_SUM=False,
                                    EVEN_K=p.K % K_ALIGN == 0, PRECISION=precision(dy.dtype),
                                    UPCAST=_upcast(dy.dtype), ACC=acc_dtype(dy.dtype)))
        elif path == "direct":
            grid = lambda META, M=M: (triton.cdiv(M, META["BLOCK_M"]), triton.cdiv(p.C, META["BLOCK_N"]),  # noqa: E731
                                      sh * sw)
            step, cfg = _tuned(_conv_dgrad_direct_kernel, grid, (dyc, weight, yc, dxc),
                               (M, p.C, n, p.H, p.W, p.P, p.Q, Cg, Kg, *args),
                               dict(R=p.R, S=p.S, RELU_MASK=relu_mask, ACC=acc_dtype(dy.dtype)))
        else:
            grid = lambda META, M=M: (triton.cdiv(M, META["BLOCK_M"]) * triton.cdiv(Cg, META["BLOCK_N"]),  # noqa: E731
                                      G * sh * sw)
            step, cfg = _tuned(_conv_dgrad_gemm_kernel, grid, (dyc, weight, yc, dxc),
                               (M, Cg, Kg, n, p.H, p.W, p.P, p.Q, Kg, *args),
                               dict(R=p.R, S=p.S, RELU_MASK=relu_mask, PRECISION=precision(dy.dtype),
                                    UPCAST=_upcast(dy.dtype), ACC=acc_dtype(dy.dtype)))
        steps.append((None if len(chunks) == 1 else chunk, *step))
    return Plan(path, steps, _config_facts(cfg))


@launches
def conv2d_wgrad(dy, x, p: ConvProblem, w_dtype: torch.dtype, b_dtype: torch.dtype | None = None, y=None,
                 splits: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(dw, db) of conv2d, contiguous, in dtypes w_dtype / b_dtype (db only when b_dtype is given).

    ``splits`` overrides the split-K policy (wgrad_splits); ``y`` (same strides as dy) masks dy where y ≤ 0."""
    dev = dy.device
    want_bias = b_dtype is not None
    if x.shape[0] == 0:
        dw = torch.zeros(p.weight_shape, dtype=w_dtype, device=dev)
        return dw, (torch.zeros(p.K, dtype=b_dtype, device=dev) if want_bias else None)
    yy = y if y is not None else dy
    path = wgrad_path(p)
    splits = splits or wgrad_splits(p, dev, path)
    key = ("wgrad", p, path, splits, dy.stride(), x.stride(), w_dtype, b_dtype, y is not None, dy.dtype,
           precision(dy.dtype), dev, AUTOTUNE)
    plan = _PLANS.get(key)
    acc_t = torch.float64 if dy.dtype == torch.float64 else torch.float32
    if plan is None:
        n_chunks = len(batch_chunks(x.shape[0], dy, x))
        direct_out = splits == 1 and n_chunks == 1  # several batch chunks are summed like extra splits
    else:
        direct_out, n_chunks = plan.direct_out, len(plan.steps)
    if direct_out:
        dw = torch.empty(p.weight_shape, dtype=w_dtype, device=dev)
        db = torch.empty(p.K, dtype=b_dtype, device=dev) if want_bias else dw
        parts, bparts = dw.unsqueeze(0), db.unsqueeze(0)
    else:
        parts = torch.empty((splits * n_chunks, *p.weight_shape), dtype=acc_t, device=dev)
        bparts = torch.empty((splits * n_chunks, p.K), dtype=acc_t, device=dev) if want_bias else parts
    if plan is None:
        plan = _remember(key, _plan_wgrad(dy, x, yy, parts, bparts, p, want_bias, y is not None,
                                          _flat(path, dy, x), splits, direct_out))
    else:
        for (chunk, fn, grid, scalars, meta), ci in zip(plan.steps, range(n_chunks)):
            dyc, xc, yc = (dy, x, yy) if chunk is None else (dy[chunk], x[chunk], yy[chunk])
            part, bpart = (parts, bparts) if ci == 0 else (parts[ci * splits:], bparts[ci * splits:])
            fn.run(dyc, xc, yc, part, bpart, *scalars, grid=grid, warmup=False, **meta)
    if _provenance_on():
        _note("wgrad", plan)
    if direct_out:
        return dw, (db if want_bias else None)
    dw = torch.empty(p.weight_shape, dtype=w_dtype, device=dev)
    split_reduce(parts, dw)
    db = None
    if want_bias:
        db = torch.empty(p.K, dtype=b_dtype, device=dev)
        split_reduce(bparts, db)
    return dw, db


def _plan_wgrad(dy, x, y, parts, bparts, p: ConvProblem, want_bias: bool, relu_mask: bool, path: str, splits: int,
                direct_out: bool) -> Plan:
    G = p.groups
    Cg, Kg = p.C // G, p.K // G
    chunks = batch_chunks(x.shape[0], dy, x)
    steps, cfg = [], None
    for ci, chunk in enumerate(chunks):
        dyc, xc, yc = dy[chunk], x[chunk], y[chunk]
        L = xc.shape[0] * p.P * p.Q
        rows = triton.cdiv(L, splits)
        part, bpart = parts[ci * splits:], bparts[ci * splits:]
        args = (*dyc.stride(), *xc.stride(), part.stride(0), *part.stride()[1:], bpart.stride(0),
                *_conv_geometry(p))
        if path == "gemm-1x1":  # A = dyᵀ (K×L), B = x (L×C), C = this split's dw (K×C); split-K over L
            rows = triton.cdiv(rows, K_ALIGN) * K_ALIGN  # whole BLOCK_K steps per split; empty splits store zeros
            grid = lambda META: (triton.cdiv(p.K, META["BLOCK_M"]) * triton.cdiv(p.C, META["BLOCK_N"]), splits)  # noqa: E731
            step, cfg = _tuned(_pointwise_wgrad_kernel, grid, (dyc, xc, yc, part, bpart),
                               (p.K, p.C, L, rows, dyc.stride(1), flat_rows(dyc), flat_rows(xc), xc.stride(1),
                                part.stride(1), part.stride(2), part.stride(0), bpart.stride(0)),
                               dict(HAS_BIAS=False, RELU=False, MASK_A=relu_mask, BIAS_SUM=want_bias,
                                    EVEN_K=L % K_ALIGN == 0, PRECISION=precision(dy.dtype),
                                    UPCAST=_upcast(dy.dtype), ACC=acc_dtype(dy.dtype)))
        elif path == "direct":
            grid = lambda META: (p.R * p.S * Cg, triton.cdiv(p.K, META["BLOCK_N"]), splits)  # noqa: E731
            step, cfg = _tuned(_conv_wgrad_direct_kernel, grid, (dyc, xc, yc, part, bpart),
                               (L, p.K, rows, p.H, p.W, p.P, p.Q, Cg, Kg, *args),
                               dict(R=p.R, S=p.S, HAS_BIAS=want_bias, RELU_MASK=relu_mask, ACC=acc_dtype(dy.dtype)))
        else:
            flat = path == "gemm-flat"
            cols = p.R * p.S * Cg if flat else Cg
            taps = 1 if flat else p.R * p.S
            grid = lambda META, cols=cols, taps=taps: (  # noqa: E731
                triton.cdiv(Kg, META["BLOCK_M"]) * triton.cdiv(cols, META["BLOCK_N"]), G * taps, splits)
            step, cfg = _tuned(_conv_wgrad_gemm_kernel, grid, (dyc, xc, yc, part, bpart),
                               (Kg, cols, L, rows, p.H, p.W, p.P, p.Q, Cg, *args),
                               dict(R=p.R, S=p.S, FLAT=flat, HAS_BIAS=want_bias, RELU_MASK=relu_mask,
                                    PRECISION=precision(dy.dtype), UPCAST=_upcast(dy.dtype), ACC=acc_dtype(dy.dtype)))
        steps.append((None if len(chunks) == 1 else chunk, *step))
    return Plan(path, steps, _config_facts(cfg), splits, direct_out)


@launches
def split_reduce(parts: torch.Tensor, out: torch.Tensor, block: int = 1024) -> None:
    """out = parts.sum(0) in split order (contiguous tensors), cast to out's dtype."""
    numel = out.numel()
    acc = tl.float64 if parts.dtype == torch.float64 else tl.float32
    _split_reduce_kernel[(triton.cdiv(numel, block),)](parts, out, numel, parts.shape[0], ACC=acc, BLOCK=block)
