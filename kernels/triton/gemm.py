"""A strided GEMM for the convolutions that are one: 1×1, stride 1, no padding, one group, on tensors whose
(n, h, w) pixels are evenly spaced in memory (channels_last and contiguous NHWC-like strides).

Then every part of the convolution is a plain matrix product over M = N·H·W pixel rows (15 of ResNet-50's 23 conv
layers):
  forward  y[m, k]  = Σ_c x[m, c] · w[k, c]             A = x (M×C),        B = wᵀ (C×K)
  dgrad    dx[m, c] = Σ_k dy[m, k] · w[k, c]            A = dy (M×K),       B = w (K×C)
  wgrad    dw[k, c] = Σ_m dy[m, k] · x[m, c]            A = dyᵀ (K×M),      B = x (M×C), split-K over M
so the gather kernels' per-element pixel decode, tap loop and halo masks disappear: an A tile is rows·stride +
columns, masked only at the matrix edges (and not at all along the reduction when it is a multiple of BLOCK_K).

Traffic: A read once per BLOCK_N column of tiles, B once per BLOCK_M row of tiles (L2-friendly grouped order), C
written once (split-K: partial tiles of fp32 reduced afterwards, deterministically). Epilogue: bias and ReLU in
registers; MASK_A (the fused conv+ReLU's backward) zeroes A where the saved output y ≤ 0, reading y with A's
strides; BIAS_SUM (wgrad): the programs of tile column 0 also row-sum A in a pass of their own — the bias gradient
for one more read of dy by 1/⌈C/BLOCK_N⌉ of the programs.
"""

from __future__ import annotations

import triton
import triton.language as tl


def pointwise(p, *tensors) -> bool:
    """Whether problem ``p`` on these activation tensors (x, y or dy: N×C×H×W views) is a plain GEMM here."""
    if (p.R, p.S, p.stride, p.groups) != (1, 1, (1, 1), 1) or any(p.pads):
        return False
    return all(flat_rows(t) is not None for t in tensors)


def flat_rows(t) -> int | None:
    """The element step between consecutive (n, h, w) pixels of an N×C×H×W tensor when it is uniform, else None."""
    N, _, H, W = t.shape
    sn, _, sh, sw = t.stride()
    step = sw if W > 1 else (sh if H > 1 else sn)
    if (W == 1 or sw == step) and (H == 1 or sh == W * step) and (N == 1 or sn == H * W * step):
        return step
    return None


@triton.jit
def _pointwise_gemm_kernel(
    a_ptr, b_ptr, m_ptr, c_ptr, bias_ptr,
    GEMM_M, GEMM_N, GEMM_RED, rows_per_split,
    sam, sak, sbk, sbn, scm, scn, s_split, sb_split,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, MASK_A: tl.constexpr, BIAS_SUM: tl.constexpr,
    EVEN_K: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # c[m, n] = Σ_{k in this split} a[m, k] · b[k, n]; program (tile, split). EVEN_K: the host made every
    # split's range a whole number of BLOCK_K steps (K and rows_per_split multiples of the largest BLOCK_K)
    M, N, K = GEMM_M, GEMM_N, GEMM_RED
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    band = GROUP_M * num_n
    first_m = (pid // band) * GROUP_M
    rows = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % band) % rows
    pid_n = (pid % band) // rows
    split = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    start = split * rows_per_split
    end = tl.minimum(start + rows_per_split, K)
    # row/column clamps instead of masks on the edges that do not move with k: out-of-range rows read row 0
    # (always valid) and are never stored, so only the reduction tail needs a mask
    a_rows = tl.where(m_ok, rm, 0) * sam  # int32: the host splits batches whose offsets would not fit
    b_cols = tl.where(n_ok, rn, 0) * sbn
    if BIAS_SUM:
        # the bias gradient (row sums of A = dyᵀ) in its own pass by the programs of tile column 0: summed inside
        # the main loop it keeps the A tile in registers next to the accumulator, which spills (sm90 check)
        if pid_n == 0:
            bacc = tl.zeros((BLOCK_M,), dtype=ACC)
            for k0 in range(start, end, BLOCK_K):
                k = k0 + rk
                offs = a_rows[:, None] + (k * sak)[None, :]
                ok = (k < end)[None, :] & m_ok[:, None]
                if MASK_A:
                    ok &= tl.load(m_ptr + offs, mask=ok, other=0.0).to(tl.float32) > 0
                bacc += tl.sum(tl.load(a_ptr + offs, mask=ok, other=0.0).to(ACC), axis=1)
            tl.store(bias_ptr + split * sb_split + rm, bacc.to(bias_ptr.dtype.element_ty), mask=m_ok)
    # int32 offsets rebuilt per step rather than advanced pointer tiles: a [BLOCK_M, BLOCK_K] tile of 64-bit
    # pointers (three with the mask) costs twice the registers and spilled on sm_90
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(start, end, BLOCK_K):
        k = k0 + rk
        a_offs = a_rows[:, None] + (k * sak)[None, :]
        b_offs = (k * sbk)[:, None] + b_cols[None, :]
        if EVEN_K:
            a = tl.load(a_ptr + a_offs)
            b = tl.load(b_ptr + b_offs)
            if MASK_A:
                a = tl.where(tl.load(m_ptr + a_offs).to(tl.float32) > 0, a, tl.zeros_like(a))
        else:
            k_ok = k < end
            a = tl.load(a_ptr + a_offs, mask=k_ok[None, :], other=0.0)
            b = tl.load(b_ptr + b_offs, mask=k_ok[:, None], other=0.0)
            if MASK_A:
                alive = tl.load(m_ptr + a_offs, mask=k_ok[None, :], other=0.0).to(tl.float32) > 0
                a = tl.where(alive, a, tl.zeros_like(a))
        if UPCAST:
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=PRECISION, out_dtype=ACC)
        else:
            acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(ACC)[None, :]
    if RELU:
        acc = tl.where(acc < 0, 0.0, acc)
    out = c_ptr + split * s_split + (rm * scm)[:, None] + (rn * scn)[None, :]
    tl.store(out, acc.to(c_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])
