"""The smoke suite as pytest-benchmark tests, for people who live in pytest:

    pytest tests/test_benchmarks.py --benchmark-only            # time every (case, implementation)
    pytest tests/test_benchmarks.py --benchmark-only --benchmark-json=out.json

Each case is checked against the float64 oracle before pytest-benchmark times it, exactly as ``bench run`` does;
FLOPs and bytes go into extra_info so throughput can be derived. In an ordinary test run benchmarks are disabled:
every case runs once and is checked (implementations that compile per problem are left to --benchmark-only).
"""

from __future__ import annotations

import pytest
import torch
from conftest import HAS_CUDA

import kernels
from bench.measure.measure import build_call, expected_for, grad_mode, set_precision
from bench.measure.suites import SUITES

DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])
CASES = [c for d in DEVICES for c in SUITES["smoke"].cases(d)]


@pytest.mark.parametrize("name", kernels.default_names())
@pytest.mark.parametrize("case", CASES, ids=[c.key for c in CASES])
def test_smoke_case(benchmark, request, case, name):
    impl = kernels.get(name)
    why = impl.unavailable_reason(case.device) or impl.correctness_only(case.device)
    if why:
        pytest.skip(f"{name} on {case.device}: {why}")
    if impl.jit and request.config.getoption("benchmark_disable"):
        pytest.skip(f"{name} compiles every problem; its smoke cases run under --benchmark-only")
    set_precision(case.dtype)
    with grad_mode(case):  # as bench run: the call bound once, the grad mode set around it, not per call
        call, verify = build_call(impl, case, 0, expected_for(case, 0))
        result = verify(call())
        assert result.ok, result.detail
        benchmark.group = case.key
        benchmark.extra_info.update(op=case.op, impl=name, flops=case.flops(), bytes=case.bytes_moved(),
                                    max_abs_err=result.max_abs_err,
                                    backend=impl.backend(case.op, case.device, case.problem))
        if case.device == "cuda":
            benchmark.pedantic(lambda: (call(), torch.cuda.synchronize()), rounds=50, warmup_rounds=5)
        else:
            benchmark(call)
