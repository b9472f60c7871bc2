"""Regression tracking: the statistics of ``bench ab`` and ``bench compare``, their refusals, and both commands end
to end. The statistics are tested on synthetic samples with known effects; the commands on tiny selections."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import bench

from bench.commands import ab
from bench.runs.compare import compare_frames, compare_runs
from bench.runs.schema import UsageError, read_rows, write_csv
from bench.runs.stats import Ratio, Settled, classify, confirm, control_drift, paired_ratio, settle, unpaired_ratio

ROOT = Path(__file__).resolve().parent.parent
IMPLS = ("naive", "im2col", "cudnn", "compile")


# ---- paired statistics (bench ab) -----------------------------------------------------------------------------------
def paired(rng, scale=1.0, noise=0.03, rounds=30, drift=True):
    """Rounds of (base, new) samples: a machine speed shared by both samples of a round (drifting by up to 40%
    over the rounds, as this VM does), each sample with its own noise, and NEW ``scale`` times slower."""
    machine = np.exp(np.cumsum(rng.normal(0, 0.05, rounds))) if drift else np.ones(rounds)
    base = 2.0 * machine * np.exp(rng.normal(0, noise, rounds))
    new = 2.0 * scale * machine * np.exp(rng.normal(0, noise, rounds))
    return base, new


def test_paired_ratio_cancels_the_machine_drift_that_unpaired_samples_cannot():
    rng = np.random.default_rng(0)
    base, new = paired(rng, 1.0)
    r = paired_ratio(base, new, rng)
    assert 0.97 < r.ci_low <= r.ratio <= r.ci_high < 1.03 and classify(r, 0.05) == "same"
    assert classify(unpaired_ratio(base, new, rng), 0.05) != "same"  # the same samples, unpaired: wide


@pytest.mark.parametrize("seed", range(5))
def test_scaled_by_115_is_flagged_on_exactly_those_cases(seed):
    rng = np.random.default_rng(seed)
    slowed = set(rng.choice(40, 8, replace=False).tolist())
    verdicts = {i: classify(paired_ratio(*paired(rng, 1.15 if i in slowed else 1.0), rng), 0.05) for i in range(40)}
    assert {i for i, v in verdicts.items() if v == "slower"} == slowed
    assert all(v == "same" for i, v in verdicts.items() if i not in slowed)


def test_scaled_by_102_is_same_and_by_090_is_faster():
    rng = np.random.default_rng(7)
    verdicts = [classify(paired_ratio(*paired(rng, 1.02, rounds=40), rng), 0.05) for _ in range(20)]
    # never a verdict; an interval that reaches past 5% (sampling noise on a 2% change) is honestly ambiguous
    assert "slower" not in verdicts and verdicts.count("same") >= 18, verdicts
    assert all(classify(paired_ratio(*paired(rng, 0.90), rng), 0.05) == "faster" for _ in range(20))


def test_very_noisy_samples_are_ambiguous_not_a_verdict():
    rng = np.random.default_rng(3)
    got = [classify(paired_ratio(*paired(rng, 1.08, noise=0.4, rounds=12), rng), 0.05) for _ in range(200)]
    # an 8% change under 40% noise in 12 rounds: a lucky slower now and then, never same, faster at most once
    assert got.count("ambiguous") >= 190 and "same" not in got and got.count("faster") <= 1, got
    assert classify(paired_ratio(np.ones(3), np.ones(3) * 2, rng), 0.05) == "ambiguous"  # too few rounds


def test_paired_interval_is_the_exact_order_statistic_interval_of_the_median():
    d = np.linspace(-0.1, 0.1, 20)  # sorted log-ratios; n = 20: [d(6), d(15)], coverage 95.9%
    r = paired_ratio(np.ones(20), np.exp(d))
    assert r.ci_low == pytest.approx(np.exp(d[5])) and r.ci_high == pytest.approx(np.exp(d[14]))
    assert paired_ratio(np.ones(5), np.exp(d[:5])).ci_high == np.inf  # 5 rounds: no 95% interval exists
    rng = np.random.default_rng(1)  # coverage, skewed per-round ratios
    hits = sum(r.ci_low <= 1.0 <= r.ci_high for r in (
        paired_ratio(np.ones(15), np.exp(rng.exponential(0.05, 15) - 0.05 * np.log(2))) for _ in range(400)))
    assert hits >= 0.93 * 400


def test_confirmation_flags_only_what_two_measurements_agree_on():
    assert confirm("slower", "slower") == "slower"
    assert confirm("slower", "same") == "same"
    assert confirm("slower", "faster") == "ambiguous"
    assert confirm("ambiguous", "slower") == "ambiguous"
    assert confirm("faster", "ambiguous") == "ambiguous"
    assert confirm("slower", "broken") == "broken"  # NEW failed in the confirmation: a regression


def test_an_ambiguous_measurement_is_never_settled_on_pooled_rounds():
    """The rounds that made a pair a suspect are never pooled with the confirmation's: a slower sweep and an
    ambiguous confirmation, or two ambiguous ones, flag nothing (tests/test_verdicts.py simulates the whole gate)."""
    assert settle(["ambiguous", "slower"]) == Settled("ambiguous", False, "not settled yet (the sweep ambiguous, "
                                                                          "confirmation 1 slower)")
    assert settle(["slower", "ambiguous", "ambiguous"]).verdict == "ambiguous"
    assert settle(["ambiguous", "ambiguous", "ambiguous"]).verdict == "ambiguous"
    assert settle(["slower", "faster"]).verdict == "ambiguous"  # contradiction
    assert settle(["slower", "same"]) == Settled("same", True, "confirmation 1, in fresh processes, found no change")
    assert settle(["slower", "slower", "slower"]).verdict == "slower"  # three process pairs agree


# ---- the committed A/A measurements of this VM (results/cpu/epyc-2vcpu-2026-12-02-regression) ----------------------
CAMPAIGN = ROOT / "results" / "cpu" / "epyc-2vcpu-2026-12-02-regression"


def test_real_interleaved_aa_samples_are_not_a_regression():
    """The raw paired samples of ten `bench ab HEAD HEAD` smoke runs on this VM, judged again: no verdict at all."""
    verdicts = []
    for path in sorted(CAMPAIGN.glob("ab-aa/*/ab.json")):
        for r in json.loads(path.read_text()):
            if r["base_samples"]:
                base, new = (np.array(r[k].split(), float) for k in ("base_samples", "new_samples"))
                verdicts.append(classify(paired_ratio(base, new, np.random.default_rng(0)), 0.05))
    assert len(verdicts) >= 400
    assert verdicts.count("slower") + verdicts.count("faster") == 0
    assert verdicts.count("ambiguous") <= 0.10 * len(verdicts)


@pytest.mark.parametrize("normalize", ["auto", "none"])
def test_real_back_to_back_stored_runs_of_one_commit_compare_clean(normalize, capsys):
    """Five back-to-back smoke runs of one commit, compared pair by pair (`python -m bench compare runs-aa/K
    runs-aa/K+1`): no slower/faster verdict at all and exit 0 on every pair, normalised by the library (before: 3
    verdicts, one exit 1) and raw (before: 12 verdicts, one exit 1: whole cases jump between runs)."""
    runs = sorted(CAMPAIGN.glob("runs-aa/*/results.csv"))
    assert len(runs) == 5
    codes, judged, verdicts = [], 0, []
    for a, b in zip(runs, runs[1:]):
        codes.append(compare_runs(a.parent, b.parent, normalize=normalize))
        out = compare_frames(read_rows(a.parent), read_rows(b.parent), 0.10,
                             normalize="cudnn" if normalize == "auto" else "none")
        mine = out[~out["verdict"].isin(["control", "unsupported"])]
        judged += len(mine)
        verdicts += [v for v in mine["verdict"] if v in ("slower", "faster")]
    capsys.readouterr()
    assert codes == [0, 0, 0, 0] and verdicts == [] and judged >= 120, (codes, verdicts, judged)


# ---- stored runs (bench compare) -------------------------------------------------------------------------------------
def frame(times: dict, n=15, seed=0, machine=1.0, noise=0.03) -> pd.DataFrame:
    """A run's rows: one conv case per key, per implementation ``times[key][impl]`` ms (× a run-wide machine
    speed), ``n`` noisy samples each."""
    rng = np.random.default_rng(seed)
    rows = []
    for key, per_impl in times.items():
        for impl, ms in per_impl.items():
            t = ms * machine * np.exp(rng.normal(0, noise, n))
            rows.append(dict(op="conv2d", impl=impl, device="cpu", backend="", dtype="float32", layout="nchw", batch=2,
                             in_channels=4, out_channels=4, height=8, width=8, kernel_h=3, kernel_w=3, stride="1",
                             padding="1", dilation="1", groups="1", status="ok", error="",
                             median_ms=float(np.median(t)), samples=n, times_ms=" ".join(f"{v:.6g}" for v in t),
                             case_key=f"conv2d|{key}",
                             options="bias=1", threads=1))
    return pd.DataFrame(rows)


CASES = {f"c{i}": {impl: 1.0 + 0.3 * i + 0.1 * j for j, impl in enumerate(IMPLS)} for i in range(8)}


def test_normalising_by_the_library_removes_a_machine_that_is_12_percent_slower():
    base, new = frame(CASES, seed=1), frame(CASES, seed=2, machine=1.12)
    raw = compare_frames(base, new, 0.10, normalize="none")
    # raw times cannot tell a slower machine from slower code: the control's 12% drift widens every interval,
    # so no row is called slower (a false alarm) nor same (an unfounded all-clear)
    assert set(raw.loc[raw["impl"] != "cudnn", "verdict"]) == {"ambiguous"}
    norm = compare_frames(base, new, 0.10, normalize="cudnn")
    mine = norm[norm["impl"] != "cudnn"]
    assert set(mine["verdict"]) == {"same"} and set(norm.loc[norm["impl"] == "cudnn", "verdict"]) == {"control"}


def test_compare_flags_exactly_the_scaled_rows_and_not_the_scaled_by_102():
    slow = {k: dict(v) for k, v in CASES.items()}
    for k in ("c1", "c4"):
        slow[k]["im2col"] *= 1.15
    slow["c6"]["naive"] *= 1.02
    out = compare_frames(frame(CASES, seed=3), frame(slow, seed=4, machine=0.93), 0.10, normalize="cudnn")
    flagged = {(k.split("|")[1], i) for k, i, v in zip(out["case_key"], out["impl"], out["verdict"]) if v == "slower"}
    assert flagged == {("c1", "im2col"), ("c4", "im2col")}
    assert out.set_index(["case_key", "impl"]).loc[("conv2d|c6", "naive"), "verdict"] == "same"


def test_a_control_that_moved_unevenly_is_outvoted_by_the_cases_other_implementations():
    # the library moved unevenly between the runs (+25% on two cases of eight), im2col is 25% slower everywhere
    uneven = {k: {i: ms * (1.25 if n in (2, 5) and i == "cudnn" else 1.0) for i, ms in v.items()}
              for n, (k, v) in enumerate(CASES.items())}
    slow = {k: {i: ms * (1.25 if i == "im2col" else 1.0) for i, ms in v.items()} for k, v in uneven.items()}
    out = compare_frames(frame(CASES, seed=5), frame(slow, seed=6), 0.10, normalize="cudnn")
    # each case's shared factor is the median of cudnn, naive and compile (leaving the judged one out): the
    # control's jump cannot make naive or compile look faster, nor hide im2col's slowdown
    verdicts = out[out["impl"] != "cudnn"].groupby("impl")["verdict"].agg(set).to_dict()
    assert verdicts == {"im2col": {"slower"}, "naive": {"same"}, "compile": {"same"}}, verdicts
    # with nothing but the control to normalise by, its uneven move (+25% on every other case) is scatter between
    # the runs: im2col 15% slower cannot be told apart from it, never a regression
    scattered = {k: {i: ms * (1.25 if n % 2 and i == "cudnn" else 1.15 if i == "im2col" else 1.0)
                     for i, ms in v.items()} for n, (k, v) in enumerate(CASES.items())}
    only = {k: {i: ms for i, ms in v.items() if i in ("im2col", "cudnn")} for k, v in CASES.items()}
    only_slow = {k: {i: ms for i, ms in v.items() if i in ("im2col", "cudnn")} for k, v in scattered.items()}
    alone = compare_frames(frame(only, seed=5), frame(only_slow, seed=6), 0.10, normalize="cudnn")
    assert alone.attrs["scatter"] > 0.08
    assert set(alone.loc[alone["impl"] == "im2col", "verdict"]) == {"ambiguous"}
    assert control_drift(np.array([0.1, 0.1, 0.1]), normalized=True) == 0.0
    assert control_drift(np.array([0.1, -0.1, 0.1]), normalized=False) == pytest.approx(0.1)


def test_classify_treats_drift_as_uncertainty():
    r = Ratio(1.15, 1.12, 1.18, 1e-6, 20)
    assert classify(r, 0.10) == "slower" and classify(r, 0.10, drift=0.2) == "ambiguous"


def write_run(d: Path, rows: pd.DataFrame, threads=1) -> Path:
    d.mkdir(parents=True)
    write_csv(d / "results.csv", rows.to_dict("records"))
    (d / "env.json").write_text(json.dumps({"device": "cpu", "device_name": "cpu-x", "threads": threads,
                                            "torch": "2.x", "cpu_model": "cpu-x", "start": "t", "complete": True}))
    return d


def test_compare_cli_outputs_exit_codes_and_environment_mismatch(tmp_path, capsys):
    a = write_run(tmp_path / "a", frame(CASES, seed=1))
    slow = {k: {i: ms * (1.3 if i == "naive" else 1.0) for i, ms in v.items()} for k, v in CASES.items()}
    b = write_run(tmp_path / "b", frame(slow, seed=2))
    c = write_run(tmp_path / "c", frame(CASES, seed=3), threads=2)
    assert compare_runs(a, write_run(tmp_path / "a2", frame(CASES, seed=9))) == 0
    assert compare_runs(a, b, json_out=tmp_path / "o.json", markdown_out=tmp_path / "o.md") == 1
    rows = json.loads((tmp_path / "o.json").read_text())
    assert {"case", "impl", "ratio", "ci_low", "ci_high", "p_value", "verdict"} <= set(rows[0])
    assert {r["verdict"] for r in rows if r["impl"] == "naive"} == {"slower"}
    assert "| slower |" in (tmp_path / "o.md").read_text()
    assert compare_runs(a, c) == 3  # thread counts differ
    assert compare_runs(a, c, allow_env_mismatch=True) == 0, "the same code under another thread count, when allowed"
    assert compare_runs(a, b, threshold=1.5) == 2
    assert compare_runs(a, tmp_path / "nothing") == 2
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith(("same ", "slower ", "control "))]
    assert lines and all(len(line) < 200 for line in lines)  # one plain line per row, nothing folded


def test_compare_reads_instruction_counts(tmp_path):
    def runs(scale):
        f = frame(CASES, seed=1)
        f["instructions"] = [1e6 * (1 + i) * (scale if impl == "im2col" else 1) for i, impl in enumerate(f["impl"])]
        return f

    a, b = write_run(tmp_path / "a", runs(1.0)), write_run(tmp_path / "b", runs(1.05))
    assert compare_runs(a, b, metric="instructions", json_out=tmp_path / "o.json") == 1
    got = {(r["impl"], r["verdict"]) for r in json.loads((tmp_path / "o.json").read_text())}
    assert got == {("im2col", "slower"), ("naive", "same"), ("cudnn", "same"), ("compile", "same")}


def test_the_stored_run_tools_do_not_import_torch():
    code = ("import sys; import bench.cli, bench.runs.compare, bench.present.report, bench.runs.merge, "
            "bench.runs.history, bench.runs.baseline;"
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


# ---- bench ab: refusals ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["no-such-revision-xyz", "HEAD"], "neither a checkout directory nor a revision"),
    (["HEAD", "{tmp}"], "not a convbench checkout"),
    (["HEAD", "HEAD", "--threshold", "1.5"], "--threshold must be in (0, 1)"),
    (["HEAD", "HEAD", "--threshold", "0"], "--threshold must be in (0, 1)"),
    (["HEAD", "HEAD", "--op-threshold", "conv2d=2"], "--op-threshold conv2d"),
    (["HEAD"], "give BASE and NEW"),
    (["HEAD", "HEAD", "--where", "nonsense=1"], "--where axis"),
])
def test_ab_refuses_bad_arguments_with_exit_2_and_leaves_nothing_behind(tmp_path, args, message):
    cache, out = tmp_path / "cache", tmp_path / "out"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    got = bench("ab", *args, "--out", out, env={"CONVBENCH_CACHE_DIR": str(cache)})
    assert got.returncode == 2, got.stderr
    assert message in got.stderr and len(got.stderr.strip().splitlines()) == 1, got.stderr
    assert not out.exists() and not cache.exists()


def test_ab_refuses_head_of_a_tree_with_uncommitted_kernel_changes(tmp_path, monkeypatch):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--shared", str(ROOT), str(clone)], check=True)
    monkeypatch.setattr(ab, "ROOT", clone)
    assert ab.resolve("new", "HEAD").commit  # clean: fine
    with open(clone / "kernels" / "naive.py", "a") as f:
        f.write("\n# edited\n")
    with pytest.raises(UsageError, match="uncommitted changes"):
        ab.resolve("new", "HEAD")
    assert ab.resolve("new", str(clone)).commit is None  # the checkout path measures the tree as it is


# ---- bench ab: end to end -------------------------------------------------------------------------------------------
def test_ab_flags_a_slowed_implementation_and_only_that(tmp_path):
    """HEAD against a scratch checkout whose naive pooling is 30% slower (tests/slowdown.py): naive is flagged,
    the untouched library is not; the report files hold the raw paired samples."""
    sys.path.insert(0, str(ROOT / "tests"))
    from slowdown import make

    slow = make(tmp_path / "slow", "naive", 0.30)
    out = tmp_path / "ab"
    got = bench("ab", ROOT, slow, "--suite", "smoke", "--op", "avg_pool2d", "--impl", "naive", "cudnn",
                "--where", "kernel=2", "--out", out, "--json", tmp_path / "ab.json", "--markdown", tmp_path / "ab.md")
    assert got.returncode == 1, got.stdout + got.stderr
    rows = json.loads((tmp_path / "ab.json").read_text())
    verdicts = {r["impl"]: r["verdict"] for r in rows}
    assert verdicts["naive"] == "slower" and verdicts["cudnn"] != "slower", got.stdout
    naive = next(r for r in rows if r["impl"] == "naive")
    assert 1.15 < naive["ratio"] < 1.5 and len(naive["base_samples"].split()) == naive["rounds"]
    assert (out / "ab.csv").exists() and (out / "ab-env.json").exists()
    assert "slower" in (tmp_path / "ab.md").read_text()
    assert (out / "run.log").exists(), "the peers' own messages are kept in the A/B's directory"
    assert "W1206" not in got.stdout + got.stderr


def test_callgrind_totals_trust_the_totals_line_not_a_wrapped_summary(tmp_path):
    from bench.measure.callgrind import totals

    dump = tmp_path / "callgrind.out.1.2"
    # valgrind 3.19, second dump of a toggled process: summary wrapped around, totals right
    dump.write_text("events: Ir\nsummary: 18446744073709203628\ntotals: 3737207\n")
    assert totals(dump) == 3737207
    dump.write_text("events: Ir\nsummary: 18446744073709203628\n")
    with pytest.raises(RuntimeError, match="wrapped"):
        totals(dump)


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed (apt-get install valgrind)")
def test_run_metric_instructions_counts_one_case_in_one_valgrind_process(tmp_path):
    out = tmp_path / "run"  # given relative to the working folder: valgrind itself runs in the peer's own folder
    got = bench("run", "--suite", "smoke", "--op", "avg_pool2d", "--where", "kernel=2", "--impl", "cudnn", "naive",
                "--metric", "instructions", "--out", "run", "--no-progress", cwd=tmp_path,
                env={"PYTHONPATH": str(ROOT)})
    assert got.returncode == 0, got.stdout + got.stderr
    rows = pd.read_csv(out / "results.csv")
    ok = rows[rows["status"] == "ok"]
    assert set(ok["impl"]) == {"cudnn", "naive"} and ok["instructions"].between(1e4, 1e11).all()
    assert ok["timing_mode"].str.startswith("callgrind").all()
    assert len(list((out / "callgrind").glob("callgrind.out.*"))) >= 2  # one dump per measured window
