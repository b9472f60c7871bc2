"""GPU sampling logic tested on the CPU with fakes: the sleep that keeps the device busy while the host enqueues a
call comes before the start event and is sized from that call's host time; host overhead is reported apart."""

from __future__ import annotations

import time

import pytest
import torch

from bench.measure import timing
from bench.measure.timing import Sampler, host_overhead_us, sleep_cycles, take_sample


class FakeEvent:
    def __init__(self, log, **_):
        self.log = log

    def record(self):
        self.log.append(("record", self))

    def synchronize(self):
        self.log.append(("sync", self))

    def elapsed_time(self, other):
        return 0.25


class FakeClock:
    cycles_per_us = 1000.0

    def cycles(self, us):
        return int(self.cycles_per_us * us)


@pytest.fixture
def fake_cuda(monkeypatch):
    log = []
    monkeypatch.setattr(torch.cuda, "Event", lambda **kw: FakeEvent(log, **kw))
    monkeypatch.setattr(torch.cuda, "_sleep", lambda cycles: log.append(("sleep", cycles)))
    return log


def test_the_device_sleeps_through_the_host_work_before_the_start_event(fake_cuda):
    log = fake_cuda
    flush = lambda: log.append(("flush",))  # noqa: E731
    s = Sampler("impl", fn=lambda: log.append(("call",)), host_ms=0.1)  # 100 µs of host work per call
    assert take_sample(s, "cuda", flush, FakeClock()) == 0.25
    kinds = [e[0] for e in log]
    assert kinds == ["flush", "sleep", "record", "call", "record", "sync"]
    assert log[1][1] == sleep_cycles(FakeClock(), 0.1) == 1000 * (100 * 1.5 + timing.SLEEP_MARGIN_US)


def test_no_sleep_without_a_measured_host_time(fake_cuda):
    s = Sampler("impl", fn=lambda: None)
    take_sample(s, "cuda", None, FakeClock())
    assert [e[0] for e in fake_cuda] == ["record", "record", "sync"]


def test_host_overhead_is_wall_time_beyond_the_device_time():
    assert host_overhead_us(0.5, 0.3) == pytest.approx(200.0)
    assert host_overhead_us(0.2, 0.3) == 0.0  # host work hidden behind the kernels costs nothing extra


def test_cpu_samples_time_the_wall_clock_and_never_sleep(fake_cuda):
    calls = []

    def two_ms():
        calls.append(1)
        time.sleep(0.002)
    s = Sampler("impl", fn=two_ms, loops=5, host_ms=1.0)
    ms = take_sample(s, "cpu", None, None)
    assert 2.0 <= ms < 50 and len(calls) == 5 and fake_cuda == [], f"{ms} ms per call: the wall time of each call"


SPIN = "import time\nt = time.time()\nwhile time.time() - t < 20: pass"


def test_noise_warnings_leave_out_the_runs_own_processes_and_name_a_neighbour(tmp_path):
    import subprocess
    import sys
    import time
    from pathlib import Path

    from bench.measure.env import busy_processes

    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc (Linux)")
    child = subprocess.Popen([sys.executable, "-c", SPIN])  # our own worker-like child: not a neighbour
    pidfile = tmp_path / "pid"
    # a neighbour: started through a shell that exits at once, so it belongs to init, not to this process tree
    subprocess.run(["sh", "-c", f'{sys.executable} -c "{SPIN}" >/dev/null 2>&1 & echo $! > {pidfile}'], check=True)
    try:
        time.sleep(0.3)
        neighbour = int(pidfile.read_text())
        busy = " ".join(busy_processes(limit=20, threshold=10.0))
        assert f"pid {child.pid}," not in busy, busy
        assert f"pid {neighbour}," in busy, busy
    finally:
        child.kill()
        subprocess.run(["kill", pidfile.read_text().strip()], check=False)
