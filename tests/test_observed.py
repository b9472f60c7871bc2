"""The cudnn rows' backend is observed on the validation call, never a silent prediction (issue 23, item 9).

The label comes from what the call dispatched (the ATen op under ``aten::_convolution``, seen by the legacy autograd
profiler) and, on the CPU, from the primitives oneDNN says it executed (its verbose log); where nothing can be
observed it reads ``predicted:…`` and the row's provenance says why. Every case here runs through the bench's own
path (bench.measure.measure.prepare_case)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kernels
import kernels.cudnn as cudnn
from bench.measure.cases import Case
from bench.measure.measure import prepare_case
from bench.measure.suites import SMOKE_TIMING
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


# ---- instruction counts: nothing in the counted window depends on what the process did before it (item 10) -------
#: a process that allocates a 1 MiB buffer (a conv's output or workspace) after one of two histories and says
#: whether glibc mmapped it or carved it from the heap: two code paths of different length inside a counted window
ALLOCATOR_CHILD = r"""
import ctypes, sys
class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                               "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
libc.mallinfo2.restype = Mallinfo2
if sys.argv[1] == "big":  # one large block allocated and freed: glibc's dynamic mmap/trim thresholds rise to it
    libc.free(libc.malloc(8 << 20))
before = libc.mallinfo2().hblks
p = libc.malloc(1 << 20)
print("mmapped" if libc.mallinfo2().hblks > before else "heap")
libc.free(p)
"""


def _allocation_path(history: str, env: dict) -> str:
    got = subprocess.run([sys.executable, "-c", ALLOCATOR_CHILD, history], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr[-2000:]
    return got.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_the_counted_process_allocates_the_same_way_whatever_it_freed_before():
    """glibc moves its mmap threshold (and the trim threshold with it) up to the largest block freed so far, for the
    whole process: the same 1 MiB buffer is mmapped in one history and carved from the heap in another, two code
    paths of different length inside a window. The process under valgrind runs with both thresholds fixed
    (bench.measure.callgrind.ENV), so it takes one path whatever ran before."""
    from bench.measure import callgrind

    assert {_allocation_path(h, {"GLIBC_TUNABLES": ""}) for h in ("none", "big")} == {"mmapped", "heap"}  # the hazard
    assert {_allocation_path(h, callgrind.ENV) for h in ("none", "big")} == {"heap"}


def _fake_dump(out: Path) -> None:
    (out / f"callgrind.out.{os.getpid()}.1").write_text("events: Ir\ntotals: 2000\n")


@pytest.mark.skipif(not (Path("/usr/include/valgrind/callgrind.h").exists() and shutil.which("cc")),
                    reason="needs valgrind's callgrind.h and a C compiler (the client-request helper)")
def test_a_window_opens_after_as_many_uncounted_calls_as_it_counts(tmp_path):
    """The window's calls find the state its own calls leave (allocator, specialised bytecode, lazy caches), and
    nothing is looked up for the first time inside it."""
    from bench.measure.callgrind import Counter

    counter = Counter(tmp_path)
    events = []
    counter._begin, counter._end = (lambda: events.append("begin")), (lambda: events.append("end"))
    _fake_dump(tmp_path)
    assert counter.count(lambda: events.append("call"), 3) == 2000 / 3
    assert events == ["call"] * 3 + ["begin"] + ["call"] * 3 + ["end"]


def test_the_valgrind_peer_warms_up_by_a_count_not_a_time(tmp_path, monkeypatch):
    """bench.measure.timing.warm_up calls for ``warmup_ms`` (2–10 calls at valgrind's speed, as the machine allows):
    under valgrind the peer asks for exactly its 2 calls, so the heap a window finds does not depend on the clock."""
    import gc
    import threading
    from multiprocessing import Pipe

    import bench.measure.measure
    from bench.measure import peer

    seen = []
    monkeypatch.setattr(bench.measure.measure, "prepare_case",
                        lambda case, impls, timing, seed, report, public: seen.append(timing) or {})
    monkeypatch.setenv("CONVBENCH_CALLGRIND_OUT", str(tmp_path))
    monkeypatch.setattr("bench.measure.callgrind.Counter.__init__", lambda self, out: None)
    ours, theirs = Pipe()
    threads = torch.get_num_threads()
    server = threading.Thread(target=peer.serve, args=(theirs, "cpu", threads), daemon=True)
    try:
        server.start()
        assert ours.recv()[0] == "ok"  # the peer's hello
        ours.send(("prepare", Case("conv2d", ONEDNN_CONV), [], SMOKE_TIMING, 0, False))
        assert ours.recv()[0] == "ok"
        ours.send(("stop",))
        server.join(30)
    finally:
        gc.enable()  # serve() samples without the collector
    assert SMOKE_TIMING.warmup_ms > 0 and [t.warmup_ms for t in seen] == [0.0]


SYNTHETIC_DUMP = """# callgrind format
version: 1
positions: line
events: Ir
summary: 18446744073708441128

fl=(1) ???
fn=(10) conv_step
0 5000
cfl=(2) malloc.c
cfn=(11) malloc
calls=3 0
0 900
cfn=(12) free
calls=3 0
0 600
cfn=(13) operator new(unsigned long)
calls=1 0
0 350
cfn=(14) cg_begin
calls=1 0
0 18446744073695275678

fn=(13)
0 50
cfn=(11)
calls=1 0
0 300

fn=(11)
0 700
cfn=(15) _int_malloc
calls=4 0
0 500

fn=(16) realloc
0 40
cfn=(11)
calls=1 0
0 200

fn=(17) _int_memalign.constprop.0
0 10
cfn=(12)
calls=1 0
0 30

totals: 10000
"""


def test_a_window_splits_into_the_allocator_and_the_rest(tmp_path):
    """Calls from outside glibc's allocator into its entry points are the allocator's share (``operator new`` →
    ``malloc`` included); calls among the allocator's own functions are inside it already, and a wrapped-around
    cost (a client request's edge) is never added."""
    from bench.measure.callgrind import Window, split_window

    path = tmp_path / "callgrind.out.1.1"
    path.write_text(SYNTHETIC_DUMP)
    got = split_window(path)
    assert got == Window(total=10000, allocator=900 + 600 + 300, allocator_calls=3 + 3 + 1)
    assert got.counted == 10000 - 1800


@pytest.mark.skipif(not (Path("/usr/include/valgrind/callgrind.h").exists() and shutil.which("cc")),
                    reason="needs valgrind's callgrind.h and a C compiler (the client-request helper)")
def test_a_row_counts_the_window_without_the_allocator_and_keeps_the_split(tmp_path):
    from bench.measure.callgrind import Counter

    counter = Counter(tmp_path)
    counter._begin = counter._end = lambda: None
    (tmp_path / f"callgrind.out.{os.getpid()}.1").write_text(SYNTHETIC_DUMP)
    assert counter.count(lambda: None, 4, label="case impl") == (10000 - 1800) / 4
    line = json.loads((tmp_path / "windows.jsonl").read_text())
    assert line == {"dump": f"callgrind.out.{os.getpid()}.1", "label": "case impl", "calls": 4, "total": 10000,
                    "allocator": 1800, "allocator_calls": 7, "per_call": 2050.0}


#: a process under Callgrind that counts one call after one of two heap histories that the interpreter cannot tell
#: apart: 2000 blocks of random sizes allocated, then all freed (argv[1] == "0") or every other one kept ("1")
HISTORY_CHILD = r"""
import ctypes, random, sys
sys.path.insert(0, sys.argv[3])
from bench.measure.callgrind import Counter
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
keep, rng, blocks = sys.argv[1] == "1", random.Random(1), (ctypes.c_void_p * 2000)()
for i in range(2000):
    blocks[i] = libc.malloc(rng.randrange(16, 70000))
for i in range(2000):
    if not (keep and i % 2):
        libc.free(blocks[i])
SIZES = (16384, 4608, 8192, 300, 40000, 2048)
def call():  # a conv's buffers: allocated, written, freed
    bufs = [libc.malloc(n) for n in SIZES]
    for p, n in zip(bufs, SIZES):
        libc.memset(p, 0, n)
    for p in reversed(bufs):
        libc.free(p)
print(Counter(sys.argv[2]).count(call, 20))
"""


@pytest.mark.skipif(shutil.which("valgrind") is None or not Path("/usr/include/valgrind/callgrind.h").exists(),
                    reason="needs valgrind and its callgrind.h")
def test_a_count_does_not_depend_on_the_heap_the_process_built_before(tmp_path):
    """The same call counted after two heap histories (2000 blocks of random sizes, all freed or every other one
    kept): glibc's malloc/free execute different paths on the two heaps, the rest of the call does not — a row
    counts the rest (bench.measure.callgrind.split_window)."""
    from bench.measure import callgrind

    repo = Path(__file__).resolve().parent.parent
    counts = []
    for keep in ("0", "1"):
        out = tmp_path / f"history-{keep}"
        out.mkdir()
        cmd = [*callgrind.command(out), sys.executable, "-c", HISTORY_CHILD, keep, str(out), str(repo)]
        got = subprocess.run(cmd, env={**os.environ, **callgrind.ENV}, capture_output=True, text=True, timeout=600)
        assert got.returncode == 0, got.stderr[-2000:]
        counts.append(float(got.stdout.split()[-1]))
    assert abs(counts[1] / counts[0] - 1) < 1e-3, counts
