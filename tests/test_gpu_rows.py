"""GPU rows time what they claim (issue 22, items 5, 8 and 9), shown on the CPU with fakes where a GPU is needed:
a backward row's dy has the output's layout; a GPU training step is wall time of back-to-back steps and its rows say
so; host_us is measured before any torch.profiler session, and GPU kernels are profiled only under run --profile;
compile-max-autotune marks its inputs static for CUDA graphs; each checked training step is a watchdog phase, and
fewer are checked at large batches; NVML telemetry finds the GPU by its UUID."""

from __future__ import annotations

import sys
import time
import types

import pytest
import torch

import kernels
from bench.measure.cases import Case
from bench.measure.measure import GRAD_SEED, Outcome, Prepared, build_call, expected_for
from bench.measure.suites import QUICK_TIMING, SMOKE_TIMING
from bench.measure.timing import Sampler, take_sample
from reference import ConvProblem, TrainProblem

CL = torch.channels_last


def _backward_case(layout: str) -> Case:
    return Case("conv2d_backward", ConvProblem(N=2, C=3, H=5, W=6, K=4, R=3, S=3, padding=(1, 1), layout=layout))


# ---- 8b: dy in the output's memory format --------------------------------------------------------------------
def test_a_channels_last_backward_case_gets_a_channels_last_dy_with_the_same_values():
    case = _backward_case("channels_last")
    expected = expected_for(case, 0)
    dy = expected.grad_out
    assert dy.is_contiguous(memory_format=CL) and not dy.is_contiguous()
    gen = torch.Generator().manual_seed(GRAD_SEED)
    assert torch.equal(dy, torch.randn(case.problem.output_shape, generator=gen, dtype=torch.float64).float())
    # what the timed call hands every implementation is that dy, as is
    call, _ = build_call(kernels.get("cudnn"), case, 0, expected)
    assert call.grad_out is dy


def test_make_grad_out_builds_the_timed_dy_without_the_oracle():
    from bench.measure.measure import make_grad_out

    for layout in ("channels_last", "nchw"):
        case = _backward_case(layout)
        tensors = case.problem.make_inputs(case.device, 0)
        dy = make_grad_out(case, tensors)
        assert dy.dtype == tensors["input"].dtype and dy.device == tensors["input"].device
        assert dy.shape == case.problem.output_shape
        assert dy.is_contiguous(memory_format=CL if layout == "channels_last" else torch.contiguous_format)
        assert torch.equal(dy, make_grad_out(case, case.problem.make_inputs(case.device, 7)))  # GRAD_SEED only
        assert torch.equal(dy, expected_for(case, 0).grad_out)
    half = Case("conv2d_backward", _backward_case("channels_last").problem.replace(dtype="bfloat16"))
    assert make_grad_out(half, half.problem.make_inputs("cpu", 0)).dtype == torch.bfloat16


# ---- 8c: a GPU training step is wall time of back-to-back steps ------------------------------------------------
class _Never:
    def __init__(self, *a, **k):
        raise AssertionError("a wall-timed sample needs no CUDA event, L2 flush or sleep clock")


@pytest.fixture
def fake_cuda(monkeypatch):
    log: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: log.append("sync"))
    monkeypatch.setattr(torch.cuda, "_sleep", lambda cycles: log.append("sleep"))
    monkeypatch.setattr(torch.cuda, "Event", _Never)
    return log


def _train_case(device: str = "cuda", batch: int = 8) -> Case:
    return Case("train_step", TrainProblem("simplecnn", batch, "sgd", "float32"), device)


def test_a_gpu_train_sample_is_wall_time_of_back_to_back_steps_synchronised_at_the_end(fake_cuda):
    log = fake_cuda

    def step():
        log.append("step")
        time.sleep(0.002)

    s = Sampler("eager", step, loops=4, host_ms=0.5, wall=True)
    flush = lambda: log.append("flush")  # noqa: E731

    class Clock:
        def cycles(self, us):
            return int(us)

    ms = take_sample(s, "cuda", flush, Clock())
    assert log == ["sync", "step", "step", "step", "step", "sync"]  # no sleep, no flush, one sync at each end
    assert 2.0 <= ms < 50  # per step, the host's time included


def test_a_gpu_train_case_is_sampled_by_wall_clock_with_calibrated_loops(fake_cuda, monkeypatch):
    from bench.measure import timing
    from bench.measure.measure import make_sampler

    monkeypatch.setattr(timing, "L2Flush", _Never)
    monkeypatch.setattr(timing, "SleepClock", _Never)
    calls = []
    s = make_sampler("eager", lambda: calls.append(1), _train_case(), 1.0, QUICK_TIMING)
    assert s.wall and s.loops == 10 and s.host_ms == 0 and not calls  # ~10 ms a sample; no enqueue probe
    assert make_sampler("x", lambda: None, _train_case(), 500.0, QUICK_TIMING).loops == 3  # at least 3 steps
    timing.time_interleaved([s], "cuda", SMOKE_TIMING)
    assert s.samples_ms and "sleep" not in fake_cuda and len(calls) == 10 * len(s.samples_ms)
    assert make_sampler("x", lambda: None, _train_case("cpu"), 1.0, QUICK_TIMING).wall is False


def test_gpu_train_rows_say_they_are_wall_time_and_other_rows_keep_the_runs_mode():
    from bench.measure.results import make_row

    ok = Outcome("compile", "ok", times_ms=(2.0, 2.1, 2.2), loops=5)
    assert make_row(_train_case(), ok, "cuda-events,l2-flush,sleep-prefix", 1)["timing_mode"] == \
        "wall-clock,back-to-back,cuda-sync-at-end,loops=5"
    conv = Case("conv2d", ConvProblem(N=1, C=2, H=4, W=4, K=2, R=1, S=1), "cuda")
    assert make_row(conv, ok, "cuda-events,l2-flush,sleep-prefix", 1)["timing_mode"] == \
        "cuda-events,l2-flush,sleep-prefix,loops=5"
    assert make_row(_train_case("cpu"), ok, "perf_counter,threads=1", 1)["timing_mode"] == \
        "perf_counter,threads=1,loops=5"


# ---- 8d: host_us first; GPU kernels profiled only under --profile ------------------------------------------------
def _fake_measure(monkeypatch, case: Case, impls=("cudnn", "naive")):
    from bench.measure import measure

    log: list[tuple[str, str]] = []

    def prepare(case, names, timing, seed, phase, report):
        ready = {}
        for n in names:
            fn = lambda n=n: log.append(("call", n))  # noqa: E731
            s = Sampler(n, fn)
            s.wall = getattr(measure, "wall_timed", lambda op, device: False)(case.op, case.device)
            ready[n] = Prepared(s, Outcome(n, "ok", backend="b"), first_s=0.1, call_ms=1.0)
        return ready

    def time_case(samplers, device, timing, phase):
        for s in samplers:
            s.samples_ms = [1.0, 1.0, 1.0]
        return False

    def host(fn, device, calls):
        log.append(("host", fn.__defaults__[0]))
        return 1.5

    def profile(fn, top=8):
        log.append(("profile", fn.__defaults__[0]))
        return [{"name": "kernel", "us": 1.0, "calls": 1}]

    monkeypatch.setattr(measure, "prepare_case", prepare)
    monkeypatch.setattr(measure, "time_case", time_case)
    monkeypatch.setattr(measure, "back_to_back_ms", host)
    monkeypatch.setattr(measure, "gpu_kernels", profile)
    monkeypatch.setattr(measure, "synchronize", lambda device: None)
    return log


def test_gpu_rows_measure_host_us_and_run_no_profiler_without_profile(monkeypatch):
    from bench.measure.measure import measure_case

    case = Case("conv2d", ConvProblem(N=1, C=2, H=4, W=4, K=2, R=1, S=1), "cuda")
    log = _fake_measure(monkeypatch, case)
    got = []
    measure_case(case, ["cudnn", "naive"], QUICK_TIMING, report=got.append)
    assert [e[0] for e in log if e[0] != "call"] == ["host", "host"]
    assert all(o.status == "ok" and o.host_us == pytest.approx(500.0) for o in got)
    assert not any("gpu_kernels" in (o.provenance or {}) for o in got)


def test_under_profile_every_host_us_is_measured_before_the_first_profiler_session(monkeypatch):
    from bench.measure.measure import measure_case

    case = Case("conv2d", ConvProblem(N=1, C=2, H=4, W=4, K=2, R=1, S=1), "cuda")
    log = _fake_measure(monkeypatch, case)
    got, hooked = [], []
    measure_case(case, ["cudnn", "naive"], QUICK_TIMING, report=got.append,
                 after_timing=lambda c, timed: hooked.append((sorted(timed), len(got))))
    steps = [e for e in log if e[0] != "call"]
    assert steps == [("host", "cudnn"), ("host", "naive"), ("profile", "cudnn"), ("profile", "naive")]
    assert all(o.provenance["gpu_kernels"][0]["name"] == "kernel" for o in got)
    assert hooked == [(["cudnn", "naive"], 2)]  # run --profile's hook once every row is final


def test_a_gpu_train_row_has_no_host_us_to_subtract(monkeypatch):
    from bench.measure.measure import measure_case

    case = _train_case()
    log = _fake_measure(monkeypatch, case)
    got = []
    measure_case(case, ["cudnn"], QUICK_TIMING, report=got.append)
    assert [e[0] for e in log if e[0] != "call"] == [] and got[0].status == "ok" and got[0].host_us is None


# ---- 8a: compile-max-autotune's CUDA graphs read the inputs in place ---------------------------------------------
@pytest.fixture
def no_compile(monkeypatch):
    import torch._dynamo

    marked = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)  # nothing compiles: the marking is under test
    monkeypatch.setattr(torch._dynamo, "mark_static_address", lambda t, guard=True: marked.append((t, guard)))
    return marked


def _conv_operands():
    p = ConvProblem(N=1, C=2, H=4, W=4, K=2, R=3, S=3, padding=(1, 1))
    t = p.make_inputs("cpu", 0)
    return p, t["input"], t["weight"], t["bias"]


def test_compile_max_autotune_on_a_gpu_marks_the_first_calls_inputs_static(no_compile, monkeypatch):
    from kernels import compile as kc

    monkeypatch.setattr(kc, "device_type", lambda device: "cuda")  # the tensors pass for CUDA ones
    impl = kc.CompiledMaxAutotune()
    p, x, w, b = _conv_operands()
    fn = impl.compiled(kc._conv_fn, p, x, w, b)
    assert [id(t) for t, _ in no_compile] == [id(x), id(w), id(b)]  # before the first (lazy) compile
    assert {g for _, g in no_compile} == {False}  # unguarded: another tensor re-records, never recompiles
    with kernels.recording() as rec:
        fn(x, w, b)
    assert "static_inputs" in rec.facts["compile"] and rec.facts["compile"]["mode"] == "max-autotune"
    impl.compiled(kc._conv_fn, p, x, w, b)
    assert len(no_compile) == 3  # once per compiled callable, before its first compile


def test_no_static_marking_in_default_mode_or_on_the_cpu(no_compile, monkeypatch):
    from kernels import compile as kc

    assert kc.uses_cudagraphs("max-autotune", "cuda") and not kc.uses_cudagraphs("max-autotune", "cpu")
    assert not kc.uses_cudagraphs(None, "cuda") and not kc.uses_cudagraphs("max-autotune-no-cudagraphs", "cuda")
    p, x, w, b = _conv_operands()
    kc.CompiledMaxAutotune().compiled(kc._conv_fn, p, x, w, b)  # the CPU: no CUDA graphs
    monkeypatch.setattr(kc, "device_type", lambda device: "cuda")
    impl = kc.Compiled()
    with kernels.recording() as rec:
        impl.compiled(kc._conv_fn, p, x, w, b)(x, w, b)
    assert no_compile == [] and "static_inputs" not in rec.facts["compile"]


# ---- 5: train validation, one watchdog phase per checked step, fewer at large batches ----------------------------
def test_each_checked_training_step_is_its_own_watchdog_phase():
    from bench.measure.measure import prepare_case

    phases = []
    ready = prepare_case(_train_case("cpu", batch=4), ["cudnn"], SMOKE_TIMING,
                         phase=lambda impl, stage: phases.append((impl, stage)))
    assert "cudnn" in ready
    steps = [s for i, s in phases if s.startswith("validate step")]
    assert steps == [f"validate step {k}/5" for k in range(1, 6)]
    assert phases.index(("cudnn", "validate")) < phases.index(("cudnn", "validate step 1/5"))


def test_fewer_steps_are_checked_above_batch_256():
    from bench.measure.train import train_check_steps

    assert [train_check_steps(b) for b in (1, 64, 256, 257, 512, 4096)] == [5, 5, 5, 2, 2, 2]


# ---- 9: NVML telemetry finds the GPU by its UUID -----------------------------------------------------------------
RAW = bytes.fromhex("8d3c0e2f5a6b4c7d9e0f112233445566")
NVML_UUID = "GPU-8d3c0e2f-5a6b-4c7d-9e0f-112233445566"


class _Uuid:  # torch._C._CUuuid: raw bytes, str() without a prefix
    def __init__(self, raw: bytes | None):
        self.raw = raw

    @property
    def bytes(self):
        if self.raw is None:
            raise AttributeError("bytes")
        return list(self.raw)

    def __str__(self):
        return NVML_UUID[4:]


def _fake_nvml(monkeypatch, uuid):
    looked_up = []
    nv = types.ModuleType("pynvml")
    nv.NVML_CLOCK_SM, nv.NVML_CLOCK_MEM, nv.NVML_TEMPERATURE_GPU = 1, 2, 0
    nv.nvmlInit = lambda: None

    def by_uuid(u):
        looked_up.append(("uuid", u))
        if u != NVML_UUID:
            raise RuntimeError("NVML_ERROR_NOT_FOUND")
        return "handle"

    def by_index(i):
        looked_up.append(("index", i))
        return "handle"

    nv.nvmlDeviceGetHandleByUUID, nv.nvmlDeviceGetHandleByIndex = by_uuid, by_index
    nv.nvmlSystemGetDriverVersion = lambda: "580.1"
    nv.nvmlDeviceGetClockInfo = lambda h, kind: 1980 if h == "handle" else None
    nv.nvmlDeviceGetMaxClockInfo = lambda h, kind: 1980
    nv.nvmlDeviceGetPowerUsage = lambda h: 300_000
    nv.nvmlDeviceGetEnforcedPowerLimit = lambda h: 700_000
    nv.nvmlDeviceGetTemperature = lambda h, kind: 40
    nv.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=0)
    nv.nvmlDeviceGetCurrentClocksEventReasons = lambda h: 0
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    props = types.SimpleNamespace(total_memory=80 << 30, uuid=uuid)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=0: props)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (9, 0))
    return looked_up


@pytest.mark.parametrize("raw", [RAW, None], ids=["uuid-bytes", "uuid-str"])
def test_nvml_telemetry_finds_the_gpu_by_its_uuid_when_cuda_visible_devices_is_a_uuid(monkeypatch, raw):
    from bench.measure.env import gpu_telemetry

    looked_up = _fake_nvml(monkeypatch, _Uuid(raw))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", NVML_UUID)
    info = gpu_telemetry()
    assert "nvml_error" not in info, info["nvml_error"]
    assert info["sm_clock_mhz"] == 1980 and info["power_w"] == 300 and info["driver"] == "580.1"
    assert looked_up == [("uuid", NVML_UUID)]


def test_nvml_telemetry_uses_the_index_only_without_a_uuid(monkeypatch):
    from bench.measure.env import gpu_telemetry

    looked_up = _fake_nvml(monkeypatch, None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    info = gpu_telemetry()
    assert "nvml_error" not in info and looked_up == [("index", 3)]
