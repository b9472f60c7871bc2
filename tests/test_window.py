"""The GPU window's own check set (``pytest -m window``): every GPU-specific risk once, sized to the window.

``bench gpu`` holds a GPU for minutes, and ``pytest -m gpu`` (~540 tests, most of them autotuning every launch)
cannot finish in the share it gets. This module checks each risk of the GPU code once, on small problems, with
autotuning off and nothing written to the tuned-config store:

- **Triton, every kernel × dtype × layout** (``test_triton_conv``, ``test_triton_pool``): the conv forward paths
  (gemm, gemm-flat, gemm-1x1, direct — each on a small problem that the policy sends down it) with the dgrad and
  wgrad paths of the same problem, plain and fused with bias+ReLU (its backward masks dy by y; its wgrad is forced
  to split-K, so the split reduction runs too; plain convs keep the policy's single split, which writes dw
  directly); max and avg pooling forward and backward; float32 (IEEE), tf32, float16, bfloat16; nchw and
  channels_last. Each is compared with the float64 oracle under the one tolerance table (``reference.check``).
  Every conv launch runs a forced config (``tuning.force(0)``: the first config that survives pruning, the untuned
  default) and the pooling autotuners are pinned to their first config, so no config is ever timed;
  ``test_triton_stored_configs_run_untuned`` runs the stored-config path (a store file, as
  ``kernels/triton/tuned/<device>-triton<version>.json`` holds them) and parses the device's real file if it has one.
  ``test_triton_every_kernel_has_a_window_case`` fails when an autotuned kernel has no case here.
- **The training step** (``test_train_step_bf16``): SimpleCNN, bf16, Adam, batch 32, two steps checked by
  ``reference.agreement.train_agreement`` through the step the bench times — triton's CUDA-graph step, cudnn's eager
  step, compile's compiled step.
- **The timing helpers on CUDA** (``test_timing_*``): SleepClock's calibration against CUDA events, take_sample's
  sleep covering the host work, enqueue_ms / back_to_back_ms, L2Flush.

The module-wide ``no_tuning`` fixture drops ``CONVBENCH_TUNED_OUT`` (the window's workers inherit it), reads no
stored file, and replaces the process's store with one that fails any test that would autotune; every test checks
that the CONVBENCH_TUNED_OUT file the run was given is untouched.

Without CUDA (here, CI, ``bench gpu --rehearse``) the same module is the window's stand-in: the Triton cases run
under the interpreter (conftest sets TRITON_INTERPRET=1; ~25 s on 2 cores, no xdist), the CUDA-only tests skip with
a reason.

On the GPU, sized for about a minute on one H100 with four workers (~180 small Triton compiles and one Inductor
compile; the slowest tests come first so that they start first)::

    python -m pytest tests/test_window.py -m window -n 4 --dist worksteal -p no:cacheprovider -q --timeout 300
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import time
from types import SimpleNamespace

import pytest
import torch
from conftest import HAS_CUDA, ORACLE, check_against_oracle, implementation

import kernels
from reference import ConvProblem, PoolProblem

pytestmark = pytest.mark.window

#: the Triton cases run on the GPU when there is one, else under the interpreter on the CPU
DEVICE = "cuda" if HAS_CUDA else "cpu"
HAS_TRITON = importlib.util.find_spec("triton") is not None


def cuda_only(what: str):
    """Mark a test as a GPU check (``gpu``) that skips, saying ``what`` it needs CUDA for, without a GPU."""
    def mark(fn):
        return pytest.mark.gpu(pytest.mark.skipif(not HAS_CUDA, reason=f"needs a CUDA device: {what}")(fn))
    return mark


def _triton():
    """(conv, pool, tuning): our Triton modules. Only a missing triton package skips; any other import error of
    kernels.triton fails the test loudly."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    from kernels.triton import conv, pool, tuning

    return conv, pool, tuning


def _autotuners(module) -> list:
    from triton.runtime.autotuner import Autotuner

    return [k for k in vars(module).values() if isinstance(k, Autotuner)]


def _file_state(path: str | None):
    """What would show a write to ``path``: (size, mtime) or None when absent."""
    if not path or not os.path.exists(path):
        return None
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


@functools.cache
def _never_tune(tuning) -> type:
    """A tuned-config store class (``tuning.Store``) that fails any launch that would autotune; built with
    ``out=None`` it writes nowhere."""

    class NeverTune(tuning.Store):
        def add(self, key, cfg):
            self.tuned += 1
            raise AssertionError(f"a launch autotuned in the window's checks (they run forced or stored configs "
                                 f"only): {key}")

    return NeverTune


@pytest.fixture(scope="module", autouse=True)
def no_tuning():
    """For the whole module: CONVBENCH_TUNED_OUT unset (nothing can be appended to the window's tuned-config
    file), CONVBENCH_TUNED=off (no stored file is read behind a test's back), the store replaced by one that fails
    an autotuning launch, and the pooling autotuners pinned to their first config (they never consult the store;
    with one config the autotuner launches it without timing). Conv launches run inside ``tuning.force(0)``."""
    out = os.environ.get("CONVBENCH_TUNED_OUT")
    before = _file_state(out)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("CONVBENCH_TUNED_OUT", raising=False)
        mp.setenv("CONVBENCH_TUNED", "off")
        guard = None
        if HAS_TRITON:
            try:
                from kernels.triton import pool, tuning
            except ImportError:  # the Triton tests re-import and fail with the error; the others still run
                pass
            else:
                guard = _never_tune(tuning)(None, None)
                mp.setattr(tuning, "_STORE", guard)
                for kernel in _autotuners(pool):
                    mp.setattr(kernel, "configs", kernel.configs[:1])
        yield SimpleNamespace(out=out, before=before, guard=guard)
    assert _file_state(out) == before, f"CONVBENCH_TUNED_OUT ({out}) was written during the window's checks"


@pytest.fixture(autouse=True)
def store_untouched(no_tuning):
    yield
    assert "CONVBENCH_TUNED_OUT" not in os.environ
    assert _file_state(no_tuning.out) == no_tuning.before, f"CONVBENCH_TUNED_OUT ({no_tuning.out}) was written"
    if no_tuning.guard is not None:
        assert no_tuning.guard.tuned == 0, "a launch autotuned"


@contextlib.contextmanager
def fp32_math(dtype: str):
    """fp32 convolutions as TF32 for the 'tf32' cases, IEEE otherwise (triton follows cuDNN's flag)."""
    conv = torch.backends.cudnn.conv
    saved = conv.fp32_precision
    conv.fp32_precision = "tf32" if dtype == "tf32" else "ieee"
    try:
        yield
    finally:
        conv.fp32_precision = saved


# ---- the training step: SimpleCNN in bf16 through the step each implementation times (slowest first) ----------
@cuda_only("the bf16 training step is a GPU check (CUDA graphs, Inductor's GPU code); test_models covers the CPU")
@pytest.mark.parametrize("name", [pytest.param("compile", marks=pytest.mark.compile), "triton", "cudnn"])
def test_train_step_bf16(name):
    """SimpleCNN, bf16, Adam, batch 32: two steps through the implementation's wrapped step (the callable the
    bench times), each checked from the step's own state against the float64 reference."""
    from reference.agreement import train_agreement

    impl = implementation(name, "cuda")
    wrapped = []

    def wrap(step, model, optimizer):  # what bench.measure.train.TrainCall times: the implementation's wrapped step
        wrapped.append(impl.wrap_train_step(step, model, optimizer, "cuda"))
        return wrapped[-1]

    forced = _triton()[2].force(0) if name == "triton" else contextlib.nullcontext()
    with forced:
        agreement = train_agreement(impl.train_ops(), "simplecnn", "adam", steps=2, batch=32, dtype="bfloat16",
                                    device="cuda", seed=0, wrap=wrap,
                                    optimizer_options=impl.optimizer_options("cuda"))
    assert agreement.check.ok, agreement.check.detail
    assert len(agreement.losses) == 2 and bool(torch.isfinite(agreement.losses).all())
    if name == "triton":  # the step was captured once and replayed: what the bench times
        from kernels.triton import CudaGraphStep

        assert isinstance(wrapped[0], CudaGraphStep) and wrapped[0].graph is not None


# ---- the timing helpers on CUDA -------------------------------------------------------------------------------
timing_check = cuda_only("CUDA events and torch.cuda._sleep (tests/test_timing.py checks the logic with fakes)")


def _busy(ms: float) -> None:
    """Host work of ``ms`` milliseconds (a spin: no sleep the scheduler could stretch)."""
    end = time.perf_counter() + ms / 1e3
    while time.perf_counter() < end:
        pass


def _clock():
    """bench.measure.timing.SleepClock, the best of three calibrations: the window's other processes share the GPU, and
    a calibration they interrupt only ever reads too few cycles per microsecond."""
    from bench.measure.timing import SleepClock

    return max((SleepClock() for _ in range(3)), key=lambda c: c.cycles_per_us)


def _event_ms(fn) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


@timing_check
def test_timing_sleep_clock_sizes_sleeps_the_events_measure():
    clock = _clock()
    assert 100 < clock.cycles_per_us < 10_000, clock.cycles_per_us  # a 0.1–10 GHz SM clock
    want_ms = 2.0
    took = [_event_ms(lambda: torch.cuda._sleep(clock.cycles(want_ms * 1e3))) for _ in range(3)]
    # the shortest of three: a GPU shared with the window's other processes only ever stretches a sample
    assert 0.5 * want_ms <= min(took) <= 2 * want_ms, took


@timing_check
def test_timing_take_sample_times_the_device_not_the_host():
    """A call of 3 ms host work then a 1 ms kernel: enqueue_ms sees the host work, and the sample — the GPU asleep
    while the host enqueues, then the events — sees the kernel only: without the sleep every sample would be
    ≥ 4 ms, so the shortest of five is below 3 ms only if the sleep covered the host work."""
    from bench.measure.timing import L2Flush, Sampler, enqueue_ms, take_sample

    clock, flush = _clock(), L2Flush()
    host_ms, device_ms = 3.0, 1.0

    def call():
        _busy(host_ms)
        torch.cuda._sleep(clock.cycles(device_ms * 1e3))

    sampler = Sampler("host-then-kernel", call, host_ms=enqueue_ms(call))
    assert sampler.host_ms >= host_ms
    samples = sorted(take_sample(sampler, "cuda", flush, clock) for _ in range(5))
    assert 0.5 * device_ms <= samples[0] < host_ms, samples


@timing_check
def test_timing_enqueue_is_host_time_and_back_to_back_is_wall_time():
    from bench.measure.timing import back_to_back_ms, enqueue_ms

    clock = _clock()
    kernel_ms = 5.0

    def call():
        torch.cuda._sleep(clock.cycles(kernel_ms * 1e3))

    host = min(enqueue_ms(call) for _ in range(3))
    assert 0 < host < kernel_ms / 2, host  # back as soon as the kernel is enqueued, not when it has run
    wall = back_to_back_ms(call, "cuda", 4)
    assert 0.5 * kernel_ms <= wall <= 4 * kernel_ms, wall  # the device time of every call counts


@timing_check
def test_timing_l2_flush_writes_twice_the_l2():
    from bench.measure.timing import L2Flush

    flush = L2Flush()
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    assert flush.buffer.is_cuda and flush.buffer.numel() >= max(2 * l2, 64 << 20)
    flush.buffer.fill_(1)
    flush()
    torch.cuda.synchronize()
    assert not bool(flush.buffer.any())


# ---- Triton: one small problem per conv path; the stored-config path -----------------------------------------
#: path → a small problem that the policy sends down that path (asserted in the test); H, W and N keep M = N·P·Q
#: within one interpreter program (BLOCK_M = 256)
CONV_PROBLEMS = {
    "gemm": dict(N=2, C=32, H=8, W=8, K=32, R=3, S=3, padding=(1, 1)),
    "gemm-flat": dict(N=2, C=3, H=9, W=9, K=16, R=3, S=3, stride=(2, 2), padding=(1, 1)),  # an RGB stem
    "gemm-1x1": dict(N=2, C=32, H=8, W=8, K=48, R=1, S=1),
    "direct": dict(N=2, C=16, H=8, W=8, K=16, R=3, S=3, padding=(1, 1), groups=16),  # depthwise
}
#: the dgrad path of each forward path's problem (dgrad has no flat variant: it pads the tile's columns)
DGRAD_PATH = {"gemm": "gemm", "gemm-flat": "gemm", "gemm-1x1": "gemm-1x1", "direct": "direct"}
DTYPES = ("float32", "tf32", "float16", "bfloat16")
LAYOUTS = ("nchw", "channels_last")


@cuda_only("the interpreter never reads stored configs (it has one config per kernel)")
def test_triton_stored_configs_run_untuned(monkeypatch, tmp_path):
    """The path a timed run takes when kernels/triton/tuned has the launch: the config comes from the store file,
    keyed as tuning.launch_key keys it, and nothing is tuned. The store is built from what force(0) ran, asked
    for by the launches themselves, written to a file and read back."""
    tc, tp, tuning = _triton()
    impl = implementation("triton", "cuda")
    p = ConvProblem(**CONV_PROBLEMS["gemm"], dtype="bfloat16", layout="channels_last")
    monkeypatch.setattr(tc, "AUTOTUNE", True)  # the store is consulted on the autotuning path only
    monkeypatch.setattr(tc, "_PLANS", {})
    tensors = p.make_inputs("cuda", requires_grad=True)

    def run() -> dict:
        tc._PLANS.clear()
        with kernels.recording() as rec:
            check_against_oracle(impl.conv2d, ORACLE["conv2d"], tensors, p.kwargs(), p.dtype)
        return {part: facts["config"] for part, facts in rec.facts["triton"].items()}

    with tuning.force(0):
        forced = run()
    kernel_of = {tc._conv_fwd_gemm_kernel.fn.__name__: "forward", tc._conv_dgrad_gemm_kernel.fn.__name__: "dgrad",
                 tc._conv_wgrad_gemm_kernel.fn.__name__: "wgrad"}
    NeverTune = _never_tune(tuning)

    class AskedFor(NeverTune):
        """Holds, under the key each launch asks for, the config force(0) ran for that part."""

        def lookup(self, key):
            part = kernel_of.get(key.split("|", 1)[0])
            if part is not None and key not in self.configs:
                facts = dict(forced[part])
                self.configs[key] = {"kwargs": {k: v for k, v in facts.items()
                                                if k not in ("num_warps", "num_stages", "source")},
                                     "num_warps": facts["num_warps"], "num_stages": facts["num_stages"]}
            return super().lookup(key)

    asked = AskedFor(None, None)
    monkeypatch.setattr(tuning, "_STORE", asked)
    first = run()
    assert asked.hits == 3 and len(asked.configs) == 3, sorted(asked.configs)
    path = tmp_path / "stored.json"
    path.write_text(json.dumps({"device": torch.cuda.get_device_name(), "configs": asked.configs}))
    from_file = NeverTune(path, None)
    monkeypatch.setattr(tuning, "_STORE", from_file)
    second = run()
    assert from_file.hits == 3, "every launch found its stored config under the same key"
    want = {part: {**cfg, "source": "stored"} for part, cfg in forced.items()}  # the configs force(0) ran
    assert first == want and second == want
    real = tuning.store_path(torch.cuda.get_device_name())
    if real.exists():  # the device's committed configs: every entry names one of our kernels and loads
        names = {k.fn.__name__ for k in _autotuners(tc) + _autotuners(tp)}
        stored = NeverTune(real, None)
        for key, d in stored.configs.items():
            assert key.split("|", 1)[0] in names, key
            tuning.config_from(d)


# ---- Triton: every kernel × dtype × layout against the float64 oracle ---------------------------------------------
def _conv_cases():
    for path, shape in CONV_PROBLEMS.items():
        for layout in LAYOUTS:
            if path == "gemm-1x1" and layout != "channels_last":
                continue  # a 1×1 conv is a plain GEMM on channels_last pixels only (nchw takes the gemm path)
            for dtype in DTYPES:
                yield pytest.param(path, ConvProblem(**shape, dtype=dtype, layout=layout),
                                   id=f"{path}-{layout}-{dtype}")


@pytest.mark.parametrize("fused", [False, True], ids=["conv", "conv+bias+relu"])
@pytest.mark.parametrize("path,p", list(_conv_cases()))
def test_triton_conv(path, p, fused, monkeypatch):
    """Forward, dgrad and wgrad of one problem per path, dtype and layout with the first pruned config of each
    launch (force(0)); the fused conv+bias+ReLU masks its backward by y and splits its wgrad in two."""
    tc, _, tuning = _triton()
    impl = implementation("triton", DEVICE)
    paths = impl.kernel_paths(p)
    assert paths == {"forward": path, "dgrad": DGRAD_PATH[path], "wgrad": path}, "the problem must select the path"
    if path == "gemm-1x1" and not fused and tc.INTERPRETED:
        # check_against_oracle's dy is NCHW: on a GPU the backward makes it channels_last (_operand) and runs the
        # 1×1 GEMM; the interpreter takes it as is, so the 1×1 backward falls back to the gather GEMM (and says
        # so). The fused case, whose dy takes y's strides, runs the 1×1 backward here too.
        paths = {**paths, "dgrad": "gemm", "wgrad": "gemm"}
    splits = 2 if fused else tc.wgrad_splits(p, DEVICE, path)
    if fused:
        monkeypatch.setattr(tc, "wgrad_splits", lambda *a, **k: 2)
    tensors = p.make_inputs(DEVICE, requires_grad=True)
    fn, oracle = impl.conv2d, ORACLE["conv2d"]
    if fused:
        fn, oracle = impl.conv2d_relu, (lambda **kw: torch.relu(ORACLE["conv2d"](**kw)))
    with fp32_math(p.dtype), tuning.force(0), kernels.recording() as rec:
        assert impl.dot_precision(torch.float32) == ("tf32" if p.dtype == "tf32" else "ieee")
        check_against_oracle(fn, oracle, tensors, p.kwargs(), p.dtype)
    ran = rec.facts["triton"]
    assert {part: facts["path"] for part, facts in ran.items()} == paths
    assert {part: facts["config"].get("source") for part, facts in ran.items()} == dict.fromkeys(paths, "forced")
    assert ran["wgrad"]["split_k"] == splits


POOL_PROBLEMS = {  # overlapping windows (the backward gathers from several), padding; avg: ceil mode, exact divisors
    "max_pool2d": dict(kernel=(3, 3), stride=(2, 2), padding=(1, 1), return_indices=True),
    "avg_pool2d": dict(kernel=(3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=True, count_include_pad=False),
}
POOL_DTYPES = ("float32", "float16", "bfloat16")  # tf32 changes no pooling arithmetic


def _pool_cases():
    for op, kw in POOL_PROBLEMS.items():
        for layout in LAYOUTS:
            for dtype in POOL_DTYPES:
                yield pytest.param(PoolProblem(op, N=2, C=16, H=10, W=10, **kw, dtype=dtype, layout=layout),
                                   id=f"{op}-{layout}-{dtype}")


@pytest.mark.parametrize("p", list(_pool_cases()))
def test_triton_pool(p):
    """Forward (max: values and int64 indices) and backward of one pooling problem per op, dtype and layout, with
    each kernel's first config (pinned by no_tuning)."""
    _, tp, _ = _triton()
    impl = implementation("triton", DEVICE)
    tensors = p.make_inputs(DEVICE, requires_grad=True)
    with kernels.recording() as rec:
        check_against_oracle(getattr(impl, p.op), ORACLE[p.op], tensors, p.kwargs(), p.dtype)
    kernel = {"max_pool2d": tp._max_pool_fwd_kernel, "max_pool2d_backward": tp._max_pool_bwd_kernel,
              "avg_pool2d": tp._avg_pool_fwd_kernel, "avg_pool2d_backward": tp._avg_pool_bwd_kernel}
    ran = rec.facts["triton"]
    assert set(ran) == {p.op, f"{p.op}_backward"}
    for part, facts in ran.items():
        (cfg,) = kernel[part].configs  # pinned by no_tuning: launched without timing
        assert facts["config"] == {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}, part


#: every autotuned Triton kernel → the cases above that launch it (plus _split_reduce_kernel, not autotuned: the
#: conv+bias+relu cases' split-K wgrad)
KERNEL_CASES = {
    "_conv_fwd_gemm_kernel": "test_triton_conv[gemm-*, gemm-flat-*]",
    "_conv_fwd_direct_kernel": "test_triton_conv[direct-*]",
    "_conv_dgrad_gemm_kernel": "test_triton_conv[gemm-*, gemm-flat-*]",
    "_conv_dgrad_direct_kernel": "test_triton_conv[direct-*]",
    "_conv_wgrad_gemm_kernel": "test_triton_conv[gemm-*, gemm-flat-*]",
    "_conv_wgrad_direct_kernel": "test_triton_conv[direct-*]",
    "_pointwise_kernel": "test_triton_conv[gemm-1x1-*] (forward, dgrad)",
    "_pointwise_wgrad_kernel": "test_triton_conv[gemm-1x1-*] (wgrad)",
    "_max_pool_fwd_kernel": "test_triton_pool[max_pool2d-*]",
    "_max_pool_bwd_kernel": "test_triton_pool[max_pool2d-*]",
    "_avg_pool_fwd_kernel": "test_triton_pool[avg_pool2d-*]",
    "_avg_pool_bwd_kernel": "test_triton_pool[avg_pool2d-*]",
}


def test_triton_every_kernel_has_a_window_case():
    """A new Triton kernel needs a case here: the window is the only place its GPU binary is checked in time."""
    tc, tp, _ = _triton()
    kernels_now = {name for module in (tc, tp) for name, k in vars(module).items() if k in _autotuners(module)}
    assert kernels_now == set(KERNEL_CASES), f"new: {sorted(kernels_now - set(KERNEL_CASES))}, " \
                                             f"gone: {sorted(set(KERNEL_CASES) - kernels_now)}"
