"""Rows say what really ran: the backend column comes from the call itself (kernels.recording / note), through the
same path ``bench run`` takes (bench.measure.measure.prepare_case), and compile rows fail rather than fall back."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import native_or_skip

import kernels
from bench.measure.cases import Case
from bench.measure.measure import prepare_case
from bench.measure.suites import SMOKE_TIMING
from reference import ConvProblem, PoolProblem, TrainProblem


def run_case(case: Case, impl: str):
    """(status, backend, provenance) of one implementation on one case, as a results row would have them."""
    reported = []
    ready = prepare_case(case, [impl], SMOKE_TIMING, report=reported.append)
    outcome = ready[impl].outcome if impl in ready else reported[0]
    return outcome.status, outcome.backend, outcome.provenance or {}, outcome.error


# Which branch of kernels/im2col/csrc/im2col_cpu.cpp each problem takes, written out from its dispatch rules (the
# independent expectation): NCHW input stays NCHW for grouped, 1×1 and stride-1 depthwise convs, else goes NHWC.
IM2COL_BRANCHES = [
    (ConvProblem(N=2, C=8, H=10, W=10, K=16, R=3, S=3, padding=(1, 1)), "conv2d", "native-nhwc:cols-brgemm"),
    (ConvProblem(N=2, C=8, H=10, W=10, K=16, R=3, S=3, padding=(1, 1)), "conv2d_backward",
     "native-nhwc:dgrad=flipped-kernel-forward,wgrad=cols-brgemm"),
    (ConvProblem(N=2, C=8, H=10, W=10, K=16, R=3, S=3, stride=(2, 2), padding=(1, 1)), "conv2d_backward",
     "native-nhwc:dgrad=brgemm-col2im,wgrad=cols-brgemm"),
    (ConvProblem(N=2, C=8, H=10, W=10, K=8, R=3, S=3, padding=(1, 1), groups=8), "conv2d",
     "native-nchw:depthwise-direct"),
    (ConvProblem(N=2, C=8, H=10, W=10, K=8, R=3, S=3, padding=(1, 1), groups=8, layout="channels_last"), "conv2d",
     "native-nhwc:depthwise-direct"),
    (ConvProblem(N=2, C=8, H=10, W=10, K=16, R=1, S=1), "conv2d", "native-nchw:pointwise-brgemm"),
    (ConvProblem(N=2, C=8, H=10, W=10, K=16, R=3, S=3, padding=(1, 1), groups=2), "conv2d",
     "native-nchw:grid-brgemm"),
    (ConvProblem(N=2, C=8, H=10, W=10, K=16, R=3, S=3, stride=(2, 2), padding=(1, 1), groups=8), "conv2d",
     "native-nhwc:depthwise-cols"),  # a channel multiplier: NHWC cols
    (ConvProblem(N=2, C=1, H=10, W=10, K=16, R=5, S=5, stride=(2, 2), padding=(2, 2)), "conv2d",
     "native-nchw:one-channel-small-gemm"),  # one input channel: NCHW is NHWC, strided → per-tile small GEMM
    (ConvProblem(N=2, C=8, H=10, W=10, K=16, R=3, S=3, stride=(2, 2), padding=(1, 1), groups=2), "conv2d_backward",
     "native-nchw:dgrad=brgemm-col2im,wgrad=cols-brgemm"),
    (ConvProblem(N=2, C=8, H=10, W=10, K=16, R=3, S=3, padding=(1, 1), groups=2), "conv2d_backward",
     "native-nchw:dgrad=flipped-kernel-forward,wgrad=wgrad-micro-kernel"),
    (ConvProblem(N=2, C=8, H=10, W=10, K=16, R=3, S=3, padding=(1, 1), dtype="float64"), "conv2d",
     "torch-unfold:cols+blas-gemm"),
]


@pytest.mark.parametrize("problem,op,expected", IM2COL_BRANCHES,
                         ids=[f"{op}-c{p.C}-{p.groups}g-{p.layout}-{p.dtype}-s{p.stride[0]}-k{p.R}"
                              for p, op, _ in IM2COL_BRANCHES])
def test_im2col_rows_name_the_branch_that_ran(problem, op, expected):
    if expected.startswith("native"):
        native_or_skip()
    status, backend, _, error = run_case(Case(op, problem), "im2col")
    assert status == "ok", error
    assert backend == expected


def test_im2col_backend_follows_the_call_not_a_probe(monkeypatch):
    """Switch the native library off for the call only (the availability probe would still say native): the row
    must report the pure-torch path that ran."""
    import kernels.im2col as im2col

    monkeypatch.setattr(im2col, "_native_lib", lambda x: None)
    status, backend, _, error = run_case(Case("conv2d", IM2COL_BRANCHES[0][0]), "im2col")
    assert status == "ok", error
    assert backend.startswith("torch-unfold:cols+")


def test_unsupported_rows_say_nothing_ran():
    name = "compile-max-autotune-no-cudagraphs"  # unsupported on every CPU (triton runs here, interpreted)
    assert kernels.get(name).unavailable_reason("cpu")
    status, backend, _, error = run_case(Case("conv2d", IM2COL_BRANCHES[0][0]), name)
    assert (status, backend) == ("unsupported", "none") and "CUDA graphs" in error


def test_cudnn_rows_carry_the_library_settings():
    status, backend, facts, error = run_case(Case("conv2d", IM2COL_BRANCHES[0][0]), "cudnn")
    assert status == "ok", error
    json.dumps(facts)  # a results cell
    assert backend == "onednn" and facts["cudnn"]["onednn"] is True
    # the label is observed on the validation call (tests/test_observed.py has the rest)
    assert "aten::mkldnn_convolution" in facts["cudnn"]["observed"]["aten_ops"]


def test_cudnn_train_step_rows_are_observed_and_say_their_backward_is_not():
    status, backend, facts, error = run_case(Case("train_step", TrainProblem(batch=4)), "cudnn")
    assert status == "ok", error
    json.dumps(facts)
    assert backend == "onednn", backend  # every layer's forward, observed
    assert facts["cudnn"]["backward"].startswith("not observed")


COMPILE_CASES = [
    Case("conv2d", ConvProblem(N=2, C=8, H=10, W=10, K=16, R=3, S=3, padding=(1, 1))),
    Case("conv2d_backward", ConvProblem(N=2, C=8, H=10, W=10, K=16, R=3, S=3, padding=(1, 1))),
    Case("max_pool2d", PoolProblem("max_pool2d", N=2, C=8, H=10, W=10, kernel=(2, 2), stride=(2, 2))),
    Case("avg_pool2d", PoolProblem("avg_pool2d", N=2, C=8, H=10, W=10, kernel=(3, 3), stride=(1, 1),
                                   padding=(1, 1))),
]


@pytest.mark.compile
@pytest.mark.parametrize("case", COMPILE_CASES, ids=[c.op for c in COMPILE_CASES])
def test_compile_rows_have_one_graph_no_break_and_say_which_kernels_ran(case):
    status, backend, facts, error = run_case(case, "compile")
    assert status == "ok", error
    json.dumps(facts)  # a results cell
    assert facts["compile"] == {"mode": "default"}
    assert all(d["fullgraph"] for d in facts["dynamo"]) and sum(d["graph_breaks"] for d in facts["dynamo"]) == 0
    assert sum(d["graphs"] for d in facts["dynamo"]) == 1, facts["dynamo"]
    if case.op.startswith("conv2d"):  # default mode on the CPU: Inductor hands the conv to oneDNN
        assert backend.startswith("inductor/extern:onednn"), backend
    else:  # pooling is generated C++, with no eager (aten) fallback inside the graph
        assert backend == "inductor/cpp", backend
    externs = [e for m in facts["inductor_code"] for e in m["extern"]]
    assert all(e.split(".")[-1] in ("convolution", "convolution_backward") for e in externs), externs


@pytest.mark.compile
def test_compile_modes_are_their_own_implementations_and_rows_say_the_mode():
    from bench.measure.impls import select_impls

    chosen = select_impls(None, ["default", "max-autotune"])
    assert [n for n in chosen if n.startswith("compile")] == ["compile", "compile-max-autotune"]
    assert "compile" not in select_impls(["naive", "compile"], ["max-autotune"])
    status, backend, facts, error = run_case(COMPILE_CASES[0], "compile-max-autotune")
    assert status == "ok", error
    assert facts["compile"] == {"mode": "max-autotune"} and backend.startswith("inductor/"), (backend, facts)


@pytest.mark.compile
def test_a_graph_break_fails_the_compile_row(monkeypatch):
    """fullgraph=True: a break is an error row, never a silently part-eager measurement."""
    import kernels.compile as compile_module

    def broken(kwargs):
        def avg_pool(x):
            torch._dynamo.graph_break()
            return torch.nn.functional.avg_pool2d(x, **kwargs)
        return avg_pool

    monkeypatch.setattr(compile_module, "_avg_pool_fn", broken)
    monkeypatch.setattr(kernels.get("compile"), "_cache", {})
    status, _, _, error = run_case(COMPILE_CASES[3], "compile")
    assert status == "error" and "graph_break" in error.lower().replace(" ", "_"), error


@pytest.mark.compile
def test_compile_train_step_forward_is_one_graph_and_optimizer_breaks_are_counted():
    status, backend, facts, error = run_case(Case("train_step", TrainProblem(batch=4)), "compile")
    assert status == "ok", error
    forward = [d for d in facts["dynamo"] if d["what"] == "forward+loss"]
    assert len(forward) == 1 and forward[0]["graphs"] == 1 and forward[0]["graph_breaks"] == 0, facts["dynamo"]
    assert forward[0]["fullgraph"], "forward and loss compile as one graph; only torch.optim's update may break"
    assert backend.startswith("inductor/"), backend


def test_recordings_nest_and_notes_outside_one_are_dropped():
    with kernels.recording() as outer:
        kernels.note(backend="a", facts={"x": 1})
        with kernels.recording() as inner:
            kernels.note(backend="b", facts={"y": 2})
        kernels.note(backend="a")
    kernels.note(backend="nobody listens")
    assert (outer.backend, outer.facts) == ("a", {"facts": {"x": 1}})
    assert (inner.backend, inner.facts) == ("b", {"facts": {"y": 2}})
