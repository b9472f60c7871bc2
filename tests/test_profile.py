"""``bench profile`` and ``run --profile``: the operator table, the breakdown, Chrome traces that hold the profiled
implementation's events, and timed samples that profiling never touches."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest
from helpers import bench

from bench.measure.cases import Case
from bench.measure.measure import measure_case
from bench.measure.profiler import case_slug, category, collect, profile_call
from bench.measure.suites import Timing
from bench.runs.schema import CATEGORIES
from reference import ConvProblem

ROOT = Path(__file__).resolve().parent.parent
SHAPE = "N=2,C=16,H=10,W=10,K=16,R=3,padding=1"


def _trace_names(path: Path) -> set[str]:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    trace = json.loads(raw)  # valid Chrome trace JSON: an object with a traceEvents list
    assert isinstance(trace["traceEvents"], list) and trace["traceEvents"]
    return {e.get("name", "") for e in trace["traceEvents"]}


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("profile") / "p"
    proc = bench("profile", "--op", "conv2d", "--impl", "im2col", "cudnn", "--device", "cpu", "--shape", SHAPE,
                 "--steps", "3", "--threads", "1", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_a_shape_profile_writes_the_table_the_breakdown_and_a_trace_per_implementation(profiled):
    out, proc = profiled
    bd = pd.read_csv(out / "breakdown.csv")
    assert list(bd["impl"]) == ["im2col", "cudnn"] and set(bd["status"]) == {"ok"}
    key = "conv2d|N2 C16 H10 W10|K16 R3 S3|s1 p1 d1 g1 bias|float32|nchw|cpu"
    assert set(bd["case_key"]) == {key} and set(bd["calls"]) == {3}
    for _, r in bd.iterrows():
        parts = sum(r[f"{c} ms"] for c in CATEGORIES)
        assert r["wall ms"] > 0 and parts == pytest.approx(r["wall ms"], rel=0.05)  # the categories cover the call
        assert r["compute ms"] > 0
        assert r["trace"] == f"traces/trace-{case_slug(key)}-{r['impl']}.json"
    ops = pd.read_csv(out / "profile.csv")
    assert {"case_key", "impl", "kind", "name", "input shapes", "calls", "self ms", "total ms"} <= set(ops.columns)
    assert set(ops["impl"]) == {"im2col", "cudnn"} and (ops["self ms"] > 0).all()
    md = (out / "profile.md").read_text()
    assert "top operators" in md and "most of the difference in" in md and "ms per call" in md
    assert "wrote" in proc.stdout and len(proc.stdout.splitlines()) >= 3


def test_each_trace_holds_the_events_of_the_implementation_it_names(profiled):
    out, _ = profiled
    bd = pd.read_csv(out / "breakdown.csv").set_index("impl")
    library = _trace_names(out / bd.loc["cudnn", "trace"])
    ours = _trace_names(out / bd.loc["im2col", "trace"])
    assert "aten::convolution" in library  # F.conv2d through ATen's convolution (oneDNN here)
    assert "aten::convolution" not in ours  # im2col never calls a library convolution
    assert any(n.startswith("native_conv_fwd") or n in ("aten::mm", "aten::addmm", "aten::bmm") for n in ours)


def test_breakdown_categories_follow_operator_names():
    assert category("aten::mkldnn_convolution") == "compute"
    assert category("native_conv_fwd_nhwc") == "compute"
    assert category("native_nchw_to_nhwc") == "layout & copies"
    assert category("aten::copy_") == "layout & copies"
    assert category("aten::im2col") == "im2col/col2im"
    assert category("aten::empty_strided") == "allocation & memset"
    assert category("aten::add_") == "other ops"
    assert category("Optimizer.step#SGD.step") == "Python & gaps"
    assert category("_Im2colConv") == "Python & gaps"  # an autograd Function's own (Python) time
    assert category("autograd::engine::evaluate_function: ConvolutionBackward0") == "other ops"
    assert category("Torch-Compiled Region: 0/0") == "compute"
    assert category("void cudnn::engines_precompiled::nchwToNhwcKernel<float>", kernel=True) == "layout & copies"
    assert category("sm90_xmma_fprop_implicit_gemm_bf16", kernel=True) == "compute"
    assert category("triton_poi_fused_relu_0", kernel=True) == "compute"
    assert category("Memset (Device)", kernel=True) == "allocation & memset"


def test_profiling_after_timing_leaves_the_timed_samples_unchanged(tmp_path):
    case = Case("conv2d", ConvProblem(N=1, C=8, H=8, W=8, K=8, R=3, S=3, padding=(1, 1)), "cpu")
    timing = Timing(min_samples=5, max_samples=5, max_seconds=5.0, target_sample_ms=1.0, warmup_ms=1.0,
                    rel_precision=0.5)

    def run(after=None):
        got = []
        measure_case(case, ["naive", "cudnn"], timing, report=got.append, after_timing=after)
        return {o.impl: o for o in got}

    def hook(c, timed):
        for name, p in timed.items():
            profile_call(c, name, p.sampler.fn, tmp_path, 4)

    plain, profiled_run = run(), run(hook)
    for name in ("naive", "cudnn"):
        assert plain[name].status == profiled_run[name].status == "ok"
        assert len(plain[name].times_ms) == len(profiled_run[name].times_ms) == 5
    summaries = collect(tmp_path)
    assert {s["impl"] for s in summaries} == {"naive", "cudnn"} and {s["calls"] for s in summaries} == {4}


def test_run_profile_profiles_every_timed_case_after_its_timing(tmp_path):
    out = tmp_path / "run"
    proc = bench("run", "--suite", "smoke", "--op", "max_pool2d", "--impl", "naive", "cudnn", "--max-seconds", "0.05",
                 "--profile", "--out", out, "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = pd.read_csv(out / "results.csv", keep_default_na=False)
    for _, r in rows.iterrows():
        assert int(r["samples"]) == len(str(r["times_ms"]).split())
    bd = pd.read_csv(out / "breakdown.csv")
    assert sorted(zip(bd["case_key"], bd["impl"])) == sorted(zip(rows["case_key"], rows["impl"]))
    assert all((out / t).exists() for t in bd["trace"])
    md = (out / "report.md").read_text()
    assert "Where the time goes" in md and "(traces/trace-" in md
    assert "profile_breakdown.png" in md


@pytest.mark.parametrize("args, message", [
    (["--shape", "N=2,C=3"], "--shape needs H, W"),
    (["--shape", "N=2,C=3,H=4,W=4,Q=3"], "--shape: unknown key 'Q'"),
    (["--shape", "N=2,C=3,H=4,W=4,K=4,R=9"], "--shape N=2,C=3,H=4,W=4,K=4,R=9:"),
    (["--op", "train_step", "--shape", "N=2,C=3,H=4,W=4"], "--op train_step has no shape"),
    (["--suite", "smoke", "--where", "batch=12345"], "no case matches the selection"),
])
def test_a_bad_selection_exits_2_with_a_one_line_reason_and_writes_nothing(tmp_path, capsys, args, message):
    from bench.cli import main

    code = main(["profile", *args, "--out", str(tmp_path / "never")])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err[-2000:]
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_profile_names_the_kernels_and_the_idle_time(tmp_path):
    out = tmp_path / "gpu"
    proc = bench("profile", "--device", "cuda", "--op", "conv2d", "--impl", "cudnn", "triton", "--dtype", "bfloat16",
                 "--layout", "channels_last", "--shape", "N=8,C=64,H=28,W=28,K=64,R=3,padding=1", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ops = pd.read_csv(out / "profile.csv")
    kernels = ops[ops["kind"] == "gpu kernel"]
    assert set(kernels["impl"]) == {"cudnn", "triton"} and (kernels["self ms"] > 0).all()
    assert kernels[kernels["impl"] == "triton"]["name"].str.contains("conv|gemm", case=False).any()
    bd = pd.read_csv(out / "breakdown.csv")
    assert (bd["compute ms"] > 0).all() and (bd["Python & gaps ms"] >= 0).all()
