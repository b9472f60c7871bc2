"""im2col's two CPU paths: the cache-blocked native one (kernels/im2col/csrc/im2col_cpu.cpp) and the pure-torch
fallback.

test_kernels checks im2col on every case through whichever path runs; here every branch of the native code is
forced — NCHW and NHWC layouts, ungrouped, grouped, depthwise (with and without a channel multiplier, with a channel
count that leaves a vector tail), 1×1 pointwise, strided and dilated — with one and two threads (per-thread weight
gradient partials, parallel col2im), and the fallback is checked with the native library switched off.
"""

from __future__ import annotations

import platform
import shutil

import pytest
import torch
from cases import Case, make_tensors
from conftest import ORACLE, check_against_oracle, leaf
from helpers import native_or_skip

import kernels
import kernels.im2col as im2col_module
from kernels.im2col import native as _native

IM2COL = kernels.get("im2col")

SHAPES = [
    Case("basic", (2, 5, 9, 8), dict(padding=1), weight=(6, 5, 3, 3)),
    Case("strided-dilated", (2, 4, 13, 11), dict(stride=(2, 3), padding=(2, 1), dilation=(2, 1)), weight=(5, 4, 3, 3)),
    Case("grouped", (2, 8, 9, 9), dict(groups=4, padding=1), weight=(8, 2, 3, 3)),
    Case("grouped-strided-no-bias", (3, 6, 11, 7), dict(groups=3, stride=2, dilation=2), weight=(9, 2, 3, 3),
         bias=False),
    Case("depthwise-vector-tail", (2, 20, 8, 9), dict(groups=20, padding=1), weight=(20, 1, 3, 3)),
    Case("depthwise-multiplier", (2, 4, 8, 8), dict(groups=4, padding=2, dilation=2), weight=(12, 1, 3, 3)),
    # depthwise: NCHW rows longer than two vectors with a tail, dilation, asymmetric 'same' padding of an even kernel,
    # padding wider than the kernel (the flipped-kernel input gradient then crops), strided (scatter), 1×1
    Case("depthwise-wide-dilated", (2, 6, 9, 37), dict(groups=6, padding=(2, 3), dilation=(1, 2)), weight=(6, 1, 3, 3)),
    Case("depthwise-same-even", (2, 5, 6, 7), dict(groups=5, padding="same"), weight=(5, 1, 2, 4)),
    Case("depthwise-wide-padding", (1, 3, 5, 6), dict(groups=3, padding=3), weight=(3, 1, 3, 3), bias=False),
    Case("depthwise-strided", (2, 20, 9, 11), dict(groups=20, stride=(2, 1), padding=1), weight=(20, 1, 3, 3)),
    Case("depthwise-1x1", (2, 4, 5, 5), dict(groups=4), weight=(4, 1, 1, 1)),
    Case("pointwise", (2, 8, 6, 7), {}, weight=(6, 8, 1, 1)),
    Case("pointwise-grouped", (2, 8, 6, 7), dict(groups=2), weight=(6, 4, 1, 1)),
    Case("pointwise-strided", (2, 8, 7, 7), dict(stride=2), weight=(6, 8, 1, 1)),
    Case("one-channel-5x5", (3, 1, 12, 12), dict(padding=2), weight=(16, 1, 5, 5)),
    Case("tile-boundaries", (2, 3, 30, 31), dict(padding="same"), weight=(4, 3, 4, 3)),
]


def test_native_path_builds_where_a_compiler_exists():
    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        pytest.skip("no C++ compiler on this machine: im2col runs its pure-torch path")
    assert _native.load("im2col_cpu") is not None, _native.reason("im2col_cpu")
    assert IM2COL.backend("conv2d", "cpu") == "native"  # the prediction; rows carry the branch (test_provenance)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", SHAPES, ids=lambda c: c.id)
def test_native_paths_agree_with_the_oracle(case, layout, threads):
    native_or_skip()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        tensors = {k: leaf(v, "cpu", torch.float32, layout if k == "input" else "nchw")
                   for k, v in make_tensors("conv2d", case).items()}
        check_against_oracle(IM2COL.conv2d, ORACLE["conv2d"], tensors, case.kwargs, "float32")
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the portable build targets x86-64")
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", [c for c in SHAPES if c.kwargs.get("groups") == c.input[1]]
                         + [c for c in SHAPES if c.id in ("basic", "grouped", "one-channel-5x5", "tile-boundaries")],
                         ids=lambda c: c.id)
def test_portable_build_agrees_with_the_oracle(case, layout, monkeypatch):
    """The code a machine without AVX-512 runs (plain vector loops instead of masked loads), built for x86-64-v2."""
    lib = _native.load("im2col_cpu", arch="x86-64-v2")
    if lib is None:
        pytest.skip(f"portable build unavailable: {_native.reason('im2col_cpu', arch='x86-64-v2')}")
    monkeypatch.setattr(im2col_module, "_native_lib", lambda x: lib)
    tensors = {k: leaf(v, "cpu", torch.float32, layout if k == "input" else "nchw")
               for k, v in make_tensors("conv2d", case).items()}
    check_against_oracle(IM2COL.conv2d, ORACLE["conv2d"], tensors, case.kwargs, "float32")


@pytest.mark.parametrize("shape", [(2, 32, 28, 28), (3, 20, 5, 7), (1, 17, 33, 1), (2, 1, 4, 4), (1, 48, 1, 1)])
def test_native_channels_last_transpose_is_exact(shape):
    """The native NCHW → NHWC transpose (16×16 register blocks, element-wise edges) moves every value unchanged."""
    native_or_skip()
    x = torch.randn(shape)
    out = im2col_module._channels_last(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, x)


def test_native_output_keeps_a_layout_cudnn_would():
    """Grouped, 1×1 and stride-1 depthwise NCHW convs stay NCHW; the others compute (and return) channels_last, as
    documented."""
    native_or_skip()
    x = torch.randn(2, 8, 9, 9)
    assert IM2COL.conv2d(x, torch.randn(8, 2, 3, 3), groups=4).is_contiguous()
    assert IM2COL.conv2d(x, torch.randn(6, 8, 1, 1)).is_contiguous()
    assert IM2COL.conv2d(x, torch.randn(8, 1, 3, 3), groups=8).is_contiguous()
    strided = IM2COL.conv2d(x, torch.randn(8, 1, 3, 3), groups=8, stride=2)
    assert strided.is_contiguous(memory_format=torch.channels_last)
    out = IM2COL.conv2d(x, torch.randn(6, 8, 3, 3))
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("case", [SHAPES[0], SHAPES[2], SHAPES[4], SHAPES[6]], ids=lambda c: c.id)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_torch_fallback_agrees_with_the_oracle(case, layout, monkeypatch):
    monkeypatch.setattr(im2col_module, "_native_lib", lambda x: None)
    tensors = {k: leaf(v, "cpu", torch.float32, layout if k == "input" else "nchw")
               for k, v in make_tensors("conv2d", case).items()}
    check_against_oracle(IM2COL.conv2d, ORACLE["conv2d"], tensors, case.kwargs, "float32")


def test_native_switch_off_names_the_reason(monkeypatch):
    monkeypatch.setenv(_native.ENV_SWITCH, "0")
    monkeypatch.setattr(_native, "_loaded", {})
    monkeypatch.setattr(_native, "_reasons", {})
    assert _native.load("im2col_cpu") is None
    assert _native.ENV_SWITCH in _native.reason("im2col_cpu")
