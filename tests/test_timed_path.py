"""What the timed window holds: the implementation's own work, never the harness's (issue 24).

The public methods check their arguments on every call; ``Implementation.bind`` checks them once and returns the call
the bench times. Counters on the checks and on grad-mode switches must stay still while a bound call is sampled, the
bound call must return what the public method returns and refuse what it refuses, and ``bench selfcheck`` must set
the harness against an independent timer on the very same tensors.
"""

from __future__ import annotations

import functools
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import implementation

import kernels
import kernels.base
from bench import cli
from bench.measure import selfcheck
from bench.measure.cases import Case
from bench.measure.measure import PUBLIC_PATH, build_call, expected_for, grad_mode, measure_case, prepare_case
from bench.measure.suites import SMOKE_TIMING, SUITES
from bench.measure.timing import Sampler, take_sample, time_interleaved

SMOKE = SUITES["smoke"].cases("cpu")
CASES = {op: next(c for c in SMOKE if c.op == op) for op in ("conv2d", "conv2d_backward", "max_pool2d", "avg_pool2d")}
INDICES = next(c for c in SMOKE if c.op == "max_pool2d" and c.problem.return_indices)


class Counts:
    """Calls of the public methods' argument checks, and ``torch.no_grad`` blocks the harness (bench/) enters — an
    implementation may enter its own (naive's max-pool indices): that is its own work."""

    def __init__(self, monkeypatch) -> None:
        self.checks = self.no_grad = 0
        conv, pool, enter = kernels.base.checked_conv2d, kernels.base.checked_pool2d, torch.no_grad.__enter__

        def counted_conv(*a):
            self.checks += 1
            return conv(*a)

        def counted_pool(*a):
            self.checks += 1
            return pool(*a)

        def counted_enter(ctx):
            self.no_grad += f"{os.sep}bench{os.sep}" in sys._getframe(1).f_code.co_filename
            return enter(ctx)

        monkeypatch.setattr(kernels.base, "checked_conv2d", counted_conv)
        monkeypatch.setattr(kernels.base, "checked_pool2d", counted_pool)
        monkeypatch.setattr(torch.no_grad, "__enter__", counted_enter)

    def reset(self) -> None:
        self.checks = self.no_grad = 0


def _ops(name: str) -> list[str]:
    # compile compiles once per problem (seconds each): its conv forward stands for its other ops
    return ["conv2d"] if name.startswith("compile") else list(CASES)


@pytest.mark.parametrize("name,op", [(n, op) for n in kernels.default_names() for op in _ops(n)])
def test_the_timed_call_runs_no_check_and_no_grad_switch(monkeypatch, name, op):
    """The callable the bench times, after its untimed first call: the checks' counter and the no_grad counter stay
    at zero however often it runs, and it still returns the right answer."""
    impl = implementation(name, "cpu")
    case = CASES[op]
    counts = Counts(monkeypatch)
    with grad_mode(case):
        expected = expected_for(case, 0)
        call, verify = build_call(impl, case, 0, expected)
        first = call()  # the validation call: builds a backward row's graph (through the public, checked entry)
        assert verify(first).ok
        counts.reset()
        for _ in range(3):
            out = call()
    assert (counts.checks, counts.no_grad) == (0, 0)
    assert verify(out).ok


@pytest.mark.parametrize("name", [n for n in kernels.default_names() if not n.startswith("compile")])
def test_sampling_a_measured_case_keeps_the_counters_still(monkeypatch, name):
    """Through bench.measure as bench run drives it: between validation and the end of sampling nothing checks."""
    implementation(name, "cpu")
    counts = Counts(monkeypatch)
    during = {}
    real = time_interleaved

    def watched(samplers, device, timing, *a, **kw):
        counts.reset()
        real(samplers, device, timing, *a, **kw)
        during.update(checks=counts.checks, no_grad=counts.no_grad, samples=sum(len(s.samples_ms) for s in samplers))

    monkeypatch.setattr("bench.measure.measure.time_case",
                        lambda samplers, device, timing, phase: watched(samplers, device, timing) or False)
    outcomes = []
    measure_case(CASES["max_pool2d"], [name], SMOKE_TIMING, report=outcomes.append)
    if kernels.get(name).correctness_only("cpu"):
        assert [o.status for o in outcomes] == ["skipped"] and not during
        return
    assert [o.status for o in outcomes] == ["ok"]
    assert during["samples"] >= SMOKE_TIMING.min_samples
    assert (during["checks"], during["no_grad"]) == (0, 0)


def _args(op: str, x3: bool = False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 9, 9, generator=g)
    if x3:
        x = x[0]
    if op == "conv2d":
        return (x, torch.randn(6, 4, 3, 3, generator=g)), dict(bias=torch.randn(6, generator=g), stride=2,
                                                                padding="valid")
    if op == "max_pool2d":
        return (x, 3), dict(stride=2, padding=1, return_indices=True)
    return (x, (2, 3)), dict(ceil_mode=True, count_include_pad=False)


@pytest.mark.parametrize("x3", [False, True], ids=["4d", "3d"])
@pytest.mark.parametrize("op", kernels.OPS)
@pytest.mark.parametrize("name", ["naive", "im2col", "cudnn", "triton"])
def test_bind_returns_what_the_public_method_returns(name, op, x3):
    impl = implementation(name, "cpu")
    args, kw = _args(op, x3)
    with torch.no_grad():
        want = getattr(impl, op)(*args, **kw)
        got = impl.bind(op, *args, **kw)()
    for w, g in zip(want if isinstance(want, tuple) else (want,), got if isinstance(got, tuple) else (got,)):
        assert g.shape == w.shape and torch.equal(g, w)


@pytest.mark.parametrize("name", ["naive", "im2col", "cudnn", "triton"])
def test_bind_refuses_at_once_what_the_public_method_refuses(name):
    impl = implementation(name, "cpu")
    x, w = torch.randn(1, 4, 8, 8), torch.randn(6, 4, 3, 3)
    with pytest.raises(ValueError, match="stride"):
        impl.bind("conv2d", x, w, stride=0)
    with pytest.raises(TypeError):
        impl.bind("conv2d", x, w, strid=1)
    with pytest.raises(ValueError, match="kernel_size"):
        impl.bind("max_pool2d", x, 0)
    with pytest.raises(ValueError, match="'op'"):
        impl.bind("conv3d", x, w)


def test_cudnn_times_exactly_the_functional_call():
    cudnn = kernels.get("cudnn")
    x, w = torch.randn(1, 4, 8, 8), torch.randn(6, 4, 3, 3)
    for call, fn in ((cudnn.bind("conv2d", x, w, None, 1, 1), F.conv2d), (cudnn.bind("max_pool2d", x, 2), F.max_pool2d),
                     (cudnn.bind("avg_pool2d", x, 2), F.avg_pool2d)):
        assert isinstance(call, functools.partial) and call.func is fn and call.args[0] is x


def test_the_public_path_is_timed_only_when_asked_and_then_says_so(monkeypatch):
    """bench ab times both sides through the public methods when one side's kernels predate bind: the checks then
    run per call, and the row's provenance says which path was timed."""
    counts = Counts(monkeypatch)
    case = CASES["conv2d"]
    with grad_mode(case):
        ready = prepare_case(case, ["cudnn"], SMOKE_TIMING, public=True)
        counts.reset()
        ready["cudnn"].sampler.fn()
    assert counts.checks == 1
    assert ready["cudnn"].outcome.provenance["timed"] == PUBLIC_PATH
    with grad_mode(case):
        ready = prepare_case(case, ["cudnn"], SMOKE_TIMING)
    assert "timed" not in (ready["cudnn"].outcome.provenance or {})


def test_the_sample_loop_costs_tens_of_nanoseconds_per_call():
    assert 1 < selfcheck.loop_overhead_ns(samples=3) < 5_000
    s = Sampler("empty", lambda: None, loops=100)
    assert take_sample(s, "cpu", None) > 0


def test_selfcheck_hands_the_timer_the_very_tensors_the_row_is_bound_to():
    case = CASES["conv2d_backward"]
    with grad_mode(case):
        inputs = selfcheck.fresh_inputs(case, 0, True)
        ready = prepare_case(case, ["cudnn"], SMOKE_TIMING, inputs=inputs)
        stmt, env = selfcheck.timer_statement(case, ready["cudnn"], inputs)
    assert stmt.startswith("torch.autograd.grad(") and env["leaves"][0] is inputs["input"]
    stmt, env = selfcheck.timer_statement(INDICES, None, {"input": inputs["input"]})
    assert stmt == ("F.max_pool2d(x, kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode, "
                    "dilation=dilation, return_indices=return_indices)") and env["x"] is inputs["input"]


def test_selfcheck_measures_a_case_in_paired_rounds():
    (a,) = selfcheck.check_case(CASES["avg_pool2d"], SMOKE_TIMING, rounds=6, threads=1)
    assert a.timer == "torch.utils.benchmark.Timer" and a.rounds == 6 and a.convbench_us > 0 and a.timer_us > 0
    assert a.gate, "on the CPU, Timer is the timer the exit code follows"
    assert a.ci_low <= a.ratio <= a.ci_high


@pytest.mark.parametrize("ratio,code", [(1.0, 0), (1.02, 0), (1.05, 1), (0.95, 1)])
def test_selfcheck_fails_when_the_median_ratio_is_off(monkeypatch, capsys, tmp_path, ratio, code):
    def fake(case, timing, rounds, threads, seed=0):
        return [selfcheck.Agreement(case.key, "torch.utils.benchmark.Timer", 10 * ratio, 10.0, ratio, ratio, ratio,
                                    rounds, 1, gate=True)]

    monkeypatch.setattr(selfcheck, "check_case", fake)
    monkeypatch.setattr(selfcheck, "loop_overhead_ns", lambda: 25.0)
    assert cli.main(["selfcheck", "--json", str(tmp_path / "s.json")]) == code
    out = capsys.readouterr().out
    assert f"median ratio {ratio:.3f}" in out and "25 ns per call" in out
    assert (tmp_path / "s.json").exists()


def test_selfcheck_refuses_what_cannot_work(capsys):
    if not torch.cuda.is_available():
        assert cli.main(["selfcheck", "--device", "cuda"]) == 2
        assert "--device cuda" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["selfcheck", "--rounds", "2"])
    assert exc.value.code == 2


def test_a_case_cudnn_cannot_run_is_reported_not_raised(monkeypatch, capsys):
    def broken(case, timing, rounds, threads, seed=0):
        raise RuntimeError("cudnn did not run")

    monkeypatch.setattr(selfcheck, "check_case", broken)
    monkeypatch.setattr(selfcheck, "loop_overhead_ns", lambda: 25.0)
    monkeypatch.setattr(selfcheck, "selfcheck_cases", lambda suite, device: [Case("conv2d", CASES["conv2d"].problem)])
    assert cli.main(["selfcheck"]) == 1
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.parametrize("bind,public", [((True, True), False), ((True, False), True), ((False, True), True)])
def test_ab_times_both_sides_through_the_same_path(bind, public):
    """A BASE revision whose kernels predate bind is timed through its public methods; NEW then is too, so the
    harness's path never differs between the sides."""
    from types import SimpleNamespace

    from bench.measure.paired import ABRun

    sent = []

    class Peer:
        def request(self, msg, timeout, what):
            sent.append(msg)
            return {"failed": [], "ready": {}}

    me = SimpleNamespace(timing=SMOKE_TIMING, seed=0, timeout=1.0)
    info = {"base": {"bind": bind[0]}, "new": {"bind": bind[1]}}
    ABRun._prepare(me, {"base": Peer(), "new": Peer()}, info, CASES["conv2d"], ["cudnn"])
    assert [m[-1] for m in sent] == [public, public]
