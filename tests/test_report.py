"""The report a run writes: made by the run itself, self-contained, and checked in a real browser (headless
Chromium: every image decoded, nothing fetched from the network, no console errors); bad input exits 2 and
writes nothing."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import bench

ROOT = Path(__file__).resolve().parents[1]
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  const fetched = performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith('data:'));
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({images: imgs.length, broken: broken, fetched: fetched});
  document.body.appendChild(out);
});
</script>"""


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    proc = bench("run", "--suite", "smoke", "--impl", "naive", "im2col", "cudnn", "--out", out, "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "report.html" in proc.stdout + proc.stderr, "the run prints where its report is"
    return out


def test_the_run_writes_its_report_with_charts_and_tables(reported_run):
    for name in ("report.md", "report.html"):
        assert (reported_run / name).stat().st_size > 0
    pngs = sorted(p.name for p in (reported_run / "plots").glob("*.png"))
    # the smoke suite varies many axes per case, so it has no per-axis curves (test_axis_sweeps covers them)
    assert {"roofline.png", "speedup_heatmap.png", "pct_peak.png", "timing_spread.png"} <= set(pngs), pngs
    md = (reported_run / "report.md").read_text()
    for heading in ("What ran", "Worst agreement error", "Environment", "measured GEMM peak"):
        assert heading in md, heading
    env = json.loads((reported_run / "env.json").read_text())
    assert env["peaks"]["gemm_flops"]["float32"] > 0 and env["peaks"]["copy_bytes_per_s"] > 0
    import pandas as pd

    rows = pd.read_csv(reported_run / "results.csv")
    ok = rows[rows["status"] == "ok"]
    assert ok["pct_peak"].notna().all() and (ok["pct_peak"] > 0).all()


def test_the_html_is_self_contained(reported_run):
    page = (reported_run / "report.html").read_text()
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "nothing may come from the network"
    assert page.count("data:image/png;base64,") == len(list((reported_run / "plots").glob("*.png")))


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def test_the_report_renders_in_a_real_browser(reported_run, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium where it can)")
    page = (reported_run / "report.html").read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    flags = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0",
             "--virtual-time-budget=10000"]
    dom = subprocess.run([*flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stderr[-2000:]
    result = json.loads(found.group(1).replace("&quot;", '"'))
    assert result["images"] == len(list((reported_run / "plots").glob("*.png"))) and result["broken"] == 0, result
    assert result["fetched"] == [], result
    console = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln and ("ERROR" in ln or "Uncaught" in ln)]
    assert not console, console
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,3000", (reported_run / "report.html").as_uri()],
                   capture_output=True, text=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000, "a screenshot of the rendered page"


@pytest.mark.parametrize("make", ["missing", "empty", "truncated"])
def test_a_bad_report_argument_exits_2_and_writes_nothing(reported_run, tmp_path, make):
    target = tmp_path / "bad"
    if make != "missing":
        target.mkdir()
    if make == "truncated":
        shutil.copy(reported_run / "env.json", target)
        text = (reported_run / "results.csv").read_text()
        cut = len(text) * 2 // 3
        cut -= text[cut - 1] == "\n"  # always inside a row (a cut at a row boundary leaves a smaller valid table)
        (target / "results.csv").write_text(text[:cut])
    before = sorted(p.name for p in target.iterdir()) if target.exists() else None
    proc = bench("report", target)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert (sorted(p.name for p in target.iterdir()) if target.exists() else None) == before


def test_axis_sweeps_find_the_cases_that_differ_in_one_axis_only(tmp_path):
    import pandas as pd

    from bench.present import charts

    base = dict(op="conv2d", status="ok", layout="nchw", dtype="float32", batch=8, in_channels=32, out_channels=32,
                height=28, width=28, kernel_h=3, kernel_w=3, stride="1", padding="1", dilation="1", groups="1",
                options="bias=1", gflops=50.0, case_key="k", backend="x", median_ms=1.0)
    rows = [dict(base, impl=impl, batch=n, gflops=10.0 * n, case_key=f"b{n}") for n in (2, 8, 32)
            for impl in ("cudnn", "im2col")]
    rows += [dict(base, impl=impl, kernel_h=k, kernel_w=k, case_key=f"k{k}") for k in (1, 5) for impl in ("cudnn",)]
    frame = pd.DataFrame(rows)
    sweeps = charts.axis_sweeps(frame, "conv2d")
    assert set(sweeps) == {"batch", "kernel_h"}
    assert sorted(sweeps["batch"]["batch"].unique()) == [2, 8, 32]
    assert charts.plot_axis_curves(frame, "conv2d", tmp_path / "axes.png") and (tmp_path / "axes.png").stat().st_size


def test_several_runs_get_a_side_by_side_report(reported_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(reported_run, other)
    out = tmp_path / "both"
    proc = bench("report", reported_run, other, "--out", out)
    assert proc.returncode == 0, proc.stderr
    md = (out / "report.md").read_text()
    assert f"{reported_run.name} vs other" in md and "geomean speedup vs cudnn" in md
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4 and "<script" not in page
    bad = bench("report", reported_run, tmp_path / "missing", "--out", tmp_path / "never")
    assert bad.returncode == 2 and not (tmp_path / "never").exists()
