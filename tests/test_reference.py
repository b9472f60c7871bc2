"""The oracle is only trusted because it agrees with torch's own float64 ops; this file checks that, and the math
the problems know (output size, FLOPs, bytes) and the tolerance check."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from cases import CASES, make_tensors
from conftest import ORACLE, check_against_oracle

from reference import TOLERANCES, ConvProblem, PoolProblem, check, check_exact, combine, conv2d_problem, tolerance

TORCH = {"conv2d": F.conv2d, "max_pool2d": F.max_pool2d, "avg_pool2d": F.avg_pool2d}


@pytest.mark.parametrize("op,case", [(op, c) for op, cases in CASES.items() for c in cases],
                         ids=[f"{op}-{c.id}" for op, cases in CASES.items() for c in cases])
def test_oracle_matches_torch_float64(op, case):
    """Oracle forward, indices and gradients equal torch's float64 results to float64 rounding."""
    tensors = {k: (v.requires_grad_(True) if v is not None else None) for k, v in make_tensors(op, case).items()}
    kwargs = dict(case.kwargs, return_indices=True) if op == "max_pool2d" else case.kwargs
    check_against_oracle(ORACLE[op], TORCH[op], tensors, kwargs, "float64")


def test_max_pool_ties_pick_the_first_maximum_like_torch():
    x = torch.randint(0, 3, (2, 3, 9, 9)).double()  # many ties per window
    for kw in [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=(2, 3), dilation=2, ceil_mode=True)]:
        v, i = ORACLE["max_pool2d"](x, return_indices=True, **kw)
        tv, ti = F.max_pool2d(x, return_indices=True, **kw)
        assert torch.equal(v, tv) and torch.equal(i, ti), kw


def test_nan_propagates_through_max_pool():
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    x[0, 0, 1, 2] = float("nan")
    assert torch.isnan(ORACLE["max_pool2d"](x, 2)[0, 0, 0, 1])


def test_conv_problem_shape_flops_bytes():
    p = ConvProblem(N=8, C=16, H=28, W=30, K=32, R=5, S=3, stride=(2, 1), padding=(2, 1), dilation=(1, 2))
    # H_out = ⌊(H + 2P − D(K−1) − 1)/S⌋ + 1
    assert (p.P, p.Q) == ((28 + 4 - 4 - 1) // 2 + 1, (30 + 2 - 4 - 1) // 1 + 1)
    assert p.macs == 8 * 32 * p.P * p.Q * 16 * 5 * 3
    assert p.flops() == 2 * p.macs + 8 * 32 * p.P * p.Q
    assert p.bytes_moved() == 4 * (8 * 16 * 28 * 30 + 32 * 16 * 5 * 3 + 8 * 32 * p.P * p.Q + 32)
    assert p.backward_flops() == 4 * p.macs + 8 * 32 * p.P * p.Q
    x = torch.empty(p.input_shape)
    assert F.conv2d(x, torch.empty(p.weight_shape), **p.kwargs()).shape == p.output_shape


def test_same_padding_puts_the_odd_element_at_the_end():
    p = ConvProblem(N=1, C=1, H=7, W=8, K=1, R=4, S=2, padding="same", dilation=(1, 3))
    assert p.pads == (1, 2, 1, 2) and (p.P, p.Q) == (7, 8)


@pytest.mark.parametrize("size,k,s,pad,d,ceil", [(7, 2, 2, 0, 1, True), (5, 2, 2, 1, 1, True), (10, 3, 2, 1, 2, True),
                                                 (9, 3, 2, 1, 1, False), (8, 3, 3, 1, 1, True), (6, 1, 4, 0, 1, True)])
def test_pool_problem_output_size_matches_torch(size, k, s, pad, d, ceil):
    p = PoolProblem("max_pool2d", 1, 1, size, size, kernel=(k, k), stride=(s, s), padding=(pad, pad),
                    dilation=(d, d), ceil_mode=ceil)
    out = F.max_pool2d(torch.empty(1, 1, size, size), k, s, pad, d, ceil_mode=ceil)
    assert p.output_shape == tuple(out.shape)


def test_pool_problem_cost_model():
    mp = PoolProblem("max_pool2d", 4, 8, 16, 16, kernel=(3, 3), stride=(2, 2), padding=(1, 1), return_indices=True)
    assert mp.flops() == 4 * 8 * 8 * 8 * 8
    assert mp.bytes_moved() == 4 * (4 * 8 * 16 * 16 + 4 * 8 * 8 * 8) + 8 * 4 * 8 * 8 * 8
    ap = mp.replace(op="avg_pool2d", return_indices=False)
    assert ap.flops() == 4 * 8 * 8 * 8 * 9


@pytest.mark.parametrize("kwargs,arg", [
    (dict(stride=(0, 1)), "stride"), (dict(padding=(-1, 0)), "padding"), (dict(dilation=(1, 0)), "dilation"),
    (dict(groups=0), "groups"), (dict(groups=3), "groups"), (dict(padding="same", stride=(2, 1)), "padding"),
    (dict(padding="full"), "padding"), (dict(R=40), "weight"), (dict(C=0), "input"), (dict(dtype="int8"), "dtype"),
])
def test_conv_problem_refuses_bad_values_naming_the_argument(kwargs, arg):
    base = dict(N=1, C=4, H=8, W=8, K=4, R=3, S=3)
    with pytest.raises(ValueError, match=f"'{arg}'"):
        ConvProblem(**{**base, **kwargs})


def test_problem_built_from_a_call_describes_it():
    x, w = torch.empty(2, 6, 9, 9).contiguous(memory_format=torch.channels_last), torch.empty(4, 3, 3, 1)
    p = conv2d_problem(x, w, None, stride=[2], padding=(1,), dilation=1, groups=2)
    assert (p.N, p.C, p.K, p.R, p.S, p.stride, p.padding, p.groups, p.bias, p.layout) == (
        2, 6, 4, 3, 1, (2, 2), (1, 1), 2, False, "channels_last")


def test_inputs_are_identical_on_every_call_and_scaled():
    p = ConvProblem(N=2, C=64, H=8, W=8, K=8, R=3, S=3, dtype="float64")
    a, b = p.make_inputs(seed=3), p.make_inputs(seed=3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    out = F.conv2d(a["input"], a["weight"], a["bias"])
    assert 0.5 < out.std().item() < 2.0  # w ~ N(0, 1/fan_in) keeps outputs O(1)


def test_tolerance_table_covers_every_dtype_and_orders_them():
    assert set(TOLERANCES) == {"float64", "float32", "tf32", "float16", "bfloat16"}
    order = ["float64", "float32", "float16", "tf32", "bfloat16"]
    assert [TOLERANCES[d].rtol for d in order] == sorted(TOLERANCES[d].rtol for d in order)
    assert tolerance(torch.float16) == TOLERANCES["float16"]
    with pytest.raises(ValueError, match="dtype"):
        tolerance("int8")


def test_check_verdicts():
    e = torch.linspace(-2, 2, 101, dtype=torch.float64)
    assert check(e.float(), e, "float32").ok
    bumped = e.clone()
    bumped[7] += 1e-2
    bad = check(bumped, e, "float32")
    assert not bad.ok and bad.verdict == "mismatch" and math.isclose(bad.max_abs_err, 1e-2, rel_tol=1e-6)
    assert "1 of 101" in bad.detail
    assert check(bumped, e, "bfloat16").ok  # 1e-2 is inside bf16's tolerance
    assert not check(e[:50], e, "float32").ok  # shape mismatch
    nan = e.clone()
    nan[3] = float("nan")
    assert check(nan, nan, "float32").ok and not check(nan, e, "float32").ok
    assert check_exact(torch.arange(5), torch.arange(5)).ok and not check_exact(torch.arange(5), torch.zeros(5)).ok
    assert not combine(check(e, e, "float64"), bad).ok
