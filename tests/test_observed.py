"""The cudnn rows' backend is observed on the validation call, never a silent prediction (issue 23, item 9).

The label comes from what the call dispatched (the ATen op under ``aten::_convolution``, seen by the legacy autograd
profiler) and, on the CPU, from the primitives oneDNN says it executed (its verbose log); where nothing can be
observed it reads ``predicted:…`` and the row's provenance says why. Every case here runs through the bench's own
path (bench.measure.prepare_case)."""

from __future__ import annotations

import os

import pytest
import torch

import kernels
import kernels.cudnn as cudnn
from bench.cases import Case
from bench.measure import prepare_case
from bench.suites import SMOKE_TIMING
from reference import ConvProblem

ONEDNN_CONV = ConvProblem(N=2, C=8, H=10, W=10, K=16, R=3, S=3, padding=(1, 1))  # float32: ATen hands it to oneDNN
SLOW_CONV = ConvProblem(N=2, C=8, H=10, W=10, K=16, R=3, S=3, padding=(1, 1), dtype="float64")  # thnn_conv2d
DILATED_CONV = ConvProblem(N=2, C=8, H=10, W=10, K=16, R=3, S=3, padding=(2, 2), dilation=(2, 2), dtype="float64")

needs_onednn = pytest.mark.skipif(not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled),
                                  reason="oneDNN is not available in this torch build")


def row(problem: ConvProblem, op: str = "conv2d"):
    """(status, backend, the row's ``cudnn`` provenance, error) as a results row of ``bench run`` has them."""
    reported = []
    ready = prepare_case(Case(op, problem), ["cudnn"], SMOKE_TIMING, report=reported.append)
    outcome = ready["cudnn"].outcome if "cudnn" in ready else reported[0]
    return outcome.status, outcome.backend, (outcome.provenance or {}).get("cudnn", {}), outcome.error


@needs_onednn
@pytest.mark.parametrize("op", ["conv2d", "conv2d_backward"])
def test_a_conv_onednn_runs_is_labelled_from_what_ran(op):
    status, backend, facts, error = row(ONEDNN_CONV, op)
    assert status == "ok", error
    assert backend == "onednn"
    assert "aten::mkldnn_convolution" in facts["observed"]["aten_ops"], facts
    convs = [p for p in facts["observed"]["onednn"] if p.startswith("convolution:")]
    assert convs and all("forward" in p for p in convs), facts  # oneDNN's own log names the primitive it ran
    assert "unobserved" not in facts
    if op == "conv2d_backward":  # the autograd engine runs the backward: the row says its label is the forward's
        assert facts["backward"].startswith("not observed"), facts
    else:
        assert "backward" not in facts


@pytest.mark.parametrize("problem,expected,op_seen", [
    (SLOW_CONV, "aten-slow2d", "aten::_slow_conv2d_forward"),  # float64: oneDNN does not take it
    (DILATED_CONV, "aten-slowdilated2d", "aten::slow_conv_dilated2d"),
], ids=["float64", "float64-dilated"])
def test_a_conv_onednn_does_not_run_is_labelled_from_what_ran(problem, expected, op_seen):
    status, backend, facts, error = row(problem)
    assert status == "ok", error
    assert backend == expected
    assert op_seen in facts["observed"]["aten_ops"] and "aten::mkldnn_convolution" not in facts["observed"]["aten_ops"]
    assert not [p for p in facts["observed"].get("onednn", []) if p.startswith("convolution:")], facts


@needs_onednn
def test_the_label_follows_the_call_not_atens_prediction(monkeypatch):
    """The private prediction API failing (it used to turn the row into a silent 'aten-cpu') or lying changes
    nothing: the label is what ran."""
    def broken(*args, **kwargs):
        raise RuntimeError("private API changed")

    monkeypatch.setattr(torch._C, "_select_conv_backend", broken)
    status, backend, facts, error = row(ONEDNN_CONV)
    assert (status, backend) == ("ok", "onednn"), error
    monkeypatch.setattr(cudnn, "conv_backend", lambda p, device: "aten-slow2d")
    assert row(ONEDNN_CONV)[1] == "onednn"


def test_an_observation_that_fails_is_labelled_predicted():
    """A profiler already running on the thread (a user's torch.profiler session) keeps the legacy profiler from
    starting; a float64 conv leaves no oneDNN line either, so nothing was observed: the row says so."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]):
        status, backend, facts, error = row(SLOW_CONV)
    assert status == "ok", error
    assert backend == "predicted:aten-slow2d"
    assert "observed" not in facts and "Profiler is already enabled" in facts["unobserved"], facts


@needs_onednn
def test_both_observers_failing_is_labelled_predicted_with_the_reasons(monkeypatch):
    from torch.autograd import profiler_legacy

    def no_profiler(*args, **kwargs):
        raise RuntimeError("no profiler today")

    monkeypatch.setattr(profiler_legacy, "profile", no_profiler)
    monkeypatch.setattr(torch._C._verbose, "mkldnn_set_verbose", lambda level: 0)
    status, backend, facts, error = row(ONEDNN_CONV)
    assert status == "ok", error
    assert backend == "predicted:onednn"
    assert "no profiler today" in facts["unobserved"] and "oneDNN refused verbose mode" in facts["unobserved"]


@needs_onednn
def test_one_observer_failing_is_reported_beside_the_observed_label(monkeypatch):
    monkeypatch.setenv("ONEDNN_VERBOSE", "1")  # the process's own oneDNN log: left alone, not captured
    status, backend, facts, error = row(ONEDNN_CONV)
    assert (status, backend) == ("ok", "onednn"), error
    assert "onednn" not in facts["observed"] and any("ONEDNN_VERBOSE" in p for p in facts["observation_problems"])


def test_a_row_without_a_note_says_its_label_is_predicted():
    impl = kernels.get("cudnn")
    assert impl.ran("conv2d", "cpu", SLOW_CONV, kernels.Record()) == "predicted:aten-slow2d"
    assert impl.ran("conv2d", "cpu", SLOW_CONV, kernels.Record(["aten-slow2d"])) == "aten-slow2d"


def test_only_the_validation_call_observes(monkeypatch):
    """Warm-up and timed calls run outside kernels.recording(): plain F.conv2d, no profiler, no oneDNN log."""
    calls = []
    real = cudnn.observe_conv

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cudnn, "observe_conv", counting)
    reported = []
    ready = prepare_case(Case("conv2d", ONEDNN_CONV), ["cudnn"], SMOKE_TIMING, report=reported.append)
    assert "cudnn" in ready, reported
    sampler = ready["cudnn"].sampler
    for _ in range(3):
        sampler.fn()
    assert len(calls) == 1
    assert not torch.autograd._profiler_enabled()


def test_the_observation_restores_stdout_and_the_verbose_mode_when_the_call_raises(capfd):
    before = os.fstat(1)
    x, w = torch.randn(1, 3, 5, 5), torch.randn(4, 2, 3, 3)  # channel mismatch: F.conv2d raises inside

    with pytest.raises(RuntimeError):
        cudnn.observe_conv(lambda: torch.nn.functional.conv2d(x, w), ONEDNN_CONV, "cpu")
    after = os.fstat(1)
    assert (before.st_dev, before.st_ino) == (after.st_dev, after.st_ino)
    assert not torch.autograd._profiler_enabled()
    capfd.readouterr()
    torch.nn.functional.conv2d(torch.randn(1, 2, 5, 5), w)  # oneDNN runs it: silent once verbose mode is off
    assert "onednn_verbose" not in capfd.readouterr().out


def test_onednn_verbose_lines_are_parsed_in_both_formats():
    log = "\n".join([
        "onednn_verbose,v1,info,oneDNN v3.12.0",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx2,forward_training,src:f32,,mb2,0.1",
        "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32,,16x8x3x3,0.01",
        "dnnl_verbose,exec,cpu,convolution,gemm:jit,backward_data,src:f32,,mb2,0.2",
        "some other line",
    ])
    assert cudnn.onednn_primitives(log) == ["convolution:brg_conv_fwd:avx2:forward_training", "reorder:jit:uni",
                                            "convolution:gemm:jit:backward_data"]
