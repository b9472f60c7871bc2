"""Refusals: whatever torch.nn.functional refuses, every implementation refuses — before any work, naming the
argument — and whatever torch accepts, every implementation accepts (checked on a table and by random search)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import ORACLE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernels
from reference import avg_pool2d_problem, conv2d_problem, max_pool2d_problem

x4 = torch.randn(2, 4, 8, 8)
w4 = torch.randn(6, 4, 3, 3)
b6 = torch.randn(6)


def conv(*args, **kw):
    return "conv2d", args, kw


def maxp(*args, **kw):
    return "max_pool2d", args, kw


def avgp(*args, **kw):
    return "avg_pool2d", args, kw


# (id, call, the argument the message must name) — every one of these is refused by torch as well.
REFUSED_BY_TORCH = [
    ("conv-stride-0", conv(x4, w4, stride=0), "stride"),
    ("conv-stride-negative", conv(x4, w4, stride=(1, -1)), "stride"),
    ("conv-stride-3-tuple", conv(x4, w4, stride=(1, 1, 1)), "stride"),
    ("conv-stride-empty", conv(x4, w4, stride=()), "stride"),
    ("conv-stride-float", conv(x4, w4, stride=1.0), "stride"),
    ("conv-stride-bool", conv(x4, w4, stride=True), "stride"),
    ("conv-padding-negative", conv(x4, w4, padding=-1), "padding"),
    ("conv-padding-3-tuple", conv(x4, w4, padding=(1, 2, 3)), "padding"),
    ("conv-padding-bad-string", conv(x4, w4, padding="SAME"), "padding"),
    ("conv-same-strided", conv(x4, w4, padding="same", stride=2), "padding"),
    ("conv-dilation-0", conv(x4, w4, dilation=0), "dilation"),
    ("conv-dilation-3-tuple", conv(x4, w4, dilation=(1, 2, 3)), "dilation"),
    ("conv-groups-0", conv(x4, w4, groups=0), "groups"),
    ("conv-groups-negative", conv(x4, w4, groups=-2), "groups"),
    ("conv-groups-float", conv(x4, torch.randn(4, 4, 1, 1), groups=1.0), "groups"),
    ("conv-groups-channel-mismatch", conv(x4, w4, groups=3), "input"),
    ("conv-groups-not-dividing-out", conv(x4, torch.randn(5, 2, 3, 3), groups=2), "weight"),
    ("conv-channel-mismatch", conv(x4, torch.randn(6, 3, 3, 3)), "input"),
    ("conv-kernel-larger-than-input", conv(x4, torch.randn(6, 4, 9, 9)), "weight"),
    ("conv-dilated-kernel-too-large", conv(x4, w4, dilation=4), "weight"),
    ("conv-valid-kernel-too-large", conv(x4, torch.randn(6, 4, 9, 9), padding="valid"), "weight"),
    ("conv-no-output-channels", conv(x4, w4[:0]), "weight"),
    ("conv-bias-wrong-size", conv(x4, w4, torch.randn(5)), "bias"),
    ("conv-bias-2d", conv(x4, w4, torch.randn(6, 1)), "bias"),
    ("conv-bias-dtype", conv(x4, w4, b6.double()), "bias"),
    ("conv-bias-not-tensor", conv(x4, w4, [0.0] * 6), "bias"),
    ("conv-weight-dtype", conv(x4, w4.double()), "weight"),
    ("conv-input-5d", conv(x4[None], w4), "input"),
    ("conv-input-2d", conv(x4[0, 0], w4), "input"),
    ("conv-weight-3d", conv(x4, w4[0]), "weight"),
    ("conv-input-not-tensor", conv(x4.tolist(), w4), "input"),
    ("conv-input-int-weight-float", conv(x4.long(), w4), "input"),
    ("conv-bool", conv(x4.bool(), w4.bool()), "input"),
    ("maxpool-kernel-0", maxp(x4, 0), "kernel_size"),
    ("maxpool-kernel-negative", maxp(x4, -1, stride=1), "kernel_size"),
    ("maxpool-kernel-3-tuple", maxp(x4, (2, 2, 2)), "kernel_size"),
    ("maxpool-kernel-float", maxp(x4, 2.0), "kernel_size"),
    ("maxpool-kernel-bool", maxp(x4, True), "kernel_size"),
    ("maxpool-stride-0", maxp(x4, 2, stride=0), "stride"),
    ("maxpool-stride-negative", maxp(x4, 2, stride=-1), "stride"),
    ("maxpool-stride-3-tuple", maxp(x4, 3, (1, 2, 3)), "stride"),
    ("maxpool-padding-negative", maxp(x4, 2, padding=-1), "padding"),
    ("maxpool-padding-over-half-kernel", maxp(x4, 2, padding=2), "padding"),
    ("maxpool-padding-over-half-dilated", maxp(x4, 2, padding=2, dilation=2), "padding"),
    ("maxpool-padding-string", maxp(x4, 2, padding="same"), "padding"),
    ("maxpool-dilation-0", maxp(x4, 2, dilation=0), "dilation"),
    ("maxpool-output-too-small", maxp(x4, 9), "input"),
    ("maxpool-input-2d", maxp(x4[0, 0], 2), "input"),
    ("maxpool-input-5d", maxp(x4[None], 2), "input"),
    ("maxpool-zero-channels", maxp(x4[:, :0], 2), "input"),
    ("maxpool-zero-height", maxp(x4[:, :, :0], 1), "input"),
    ("maxpool-ceil-mode-int", maxp(x4, 2, ceil_mode=1), "ceil_mode"),
    ("maxpool-bool-input", maxp(x4.bool(), 2), "input"),
    ("avgpool-kernel-0", avgp(x4, 0, 1), "kernel_size"),
    ("avgpool-kernel-3-tuple", avgp(x4, (2, 3, 4)), "kernel_size"),
    ("avgpool-stride-0", avgp(x4, 2, stride=0), "stride"),
    ("avgpool-stride-negative", avgp(x4, 3, -1), "stride"),
    ("avgpool-padding-negative", avgp(x4, 3, 1, -1), "padding"),
    ("avgpool-padding-over-half-kernel", avgp(x4, 3, padding=2), "padding"),
    ("avgpool-padding-3-tuple", avgp(x4, 3, 1, (1, 1, 1)), "padding"),
    ("avgpool-divisor-0", avgp(x4, 2, divisor_override=0), "divisor_override"),
    ("avgpool-divisor-float", avgp(x4, 2, divisor_override=1.5), "divisor_override"),
    ("avgpool-divisor-bool", avgp(x4, 2, divisor_override=True), "divisor_override"),
    ("avgpool-output-too-small", avgp(x4, 9), "input"),
    ("avgpool-input-2d", avgp(x4[0, 0], 2), "input"),
    ("avgpool-zero-channels", avgp(x4[:, :0], 2), "input"),
    ("avgpool-complex", avgp(x4.to(torch.complex64), 2), "input"),
]

# Calls torch's CPU kernels accept but convbench refuses on purpose (see reference/args.py): the benchmark's
# oracle and tolerance table are floating-point, and mixed devices are refused everywhere.
REFUSED_BY_CONVBENCH = [
    ("conv-int64", conv(x4.long(), w4.long()), "input"),
    ("conv-complex", conv(x4.to(torch.complex64), w4.to(torch.complex64)), "input"),
    ("conv-weight-on-other-device", conv(x4, w4.to("meta")), "weight"),
    ("conv-bias-on-other-device", conv(x4, w4, b6.to("meta")), "bias"),
    ("conv-zero-input-channels", conv(x4[:, :0], torch.randn(4, 0, 3, 3)), "input"),
    ("conv-dilation-0-empty-batch", conv(x4[:0], w4, dilation=0), "dilation"),
    ("maxpool-int64", maxp(x4.long(), 2), "input"),
    ("avgpool-int64", avgp(x4.long(), 2), "input"),
]

TORCH = {"conv2d": F.conv2d, "max_pool2d": F.max_pool2d, "avg_pool2d": F.avg_pool2d}
IMPLS = kernels.default_names()  # the compile modes share compile's checks (kernels.base)


def _ids(table):
    return [row[0] for row in table]


@pytest.mark.parametrize("case_id,call,arg", REFUSED_BY_TORCH, ids=_ids(REFUSED_BY_TORCH))
def test_torch_refuses_the_table(case_id, call, arg):
    op, args, kw = call
    with pytest.raises((ValueError, TypeError, RuntimeError, IndexError, NotImplementedError)):
        TORCH[op](*args, **kw)


@pytest.mark.parametrize("case_id,call,arg", REFUSED_BY_TORCH + REFUSED_BY_CONVBENCH,
                         ids=_ids(REFUSED_BY_TORCH + REFUSED_BY_CONVBENCH))
@pytest.mark.parametrize("name", ["oracle", *IMPLS])
def test_every_implementation_refuses_before_work_naming_the_argument(name, case_id, call, arg, monkeypatch):
    op, args, kw = call
    if name == "oracle":
        fn = ORACLE[op]
    else:
        impl = kernels.get(name)

        def started(*a, **k):
            raise AssertionError("the kernel ran before the arguments were checked")

        for hook in ("_conv2d", "_max_pool2d", "_avg_pool2d"):
            monkeypatch.setattr(impl, hook, started)
        fn = getattr(impl, op)
    with pytest.raises((ValueError, TypeError, RuntimeError)) as info:
        fn(*args, **kw)
    assert f"'{arg}'" in str(info.value), f"message does not name '{arg}': {info.value}"
    assert str(info.value).startswith(op), f"message does not name the op: {info.value}"


# ---- random search: accept/refuse parity with torch, and values for what is accepted --------------------------
ints = st.integers(min_value=-1, max_value=4)
pairish = st.one_of(ints, st.tuples(ints), st.tuples(ints, ints), st.tuples(ints, ints, ints), st.just(()))


def _outcome(fn):
    try:
        return True, fn()
    except (ValueError, TypeError, RuntimeError, IndexError, NotImplementedError) as exc:
        return False, exc


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(N=st.integers(0, 2), C=st.integers(1, 4), H=st.integers(0, 7), W=st.integers(1, 7),
       K=st.integers(1, 4), R=st.integers(1, 4), S=st.integers(1, 4), groups=st.integers(-1, 4), bias=st.booleans(),
       stride=pairish, dilation=pairish, padding=st.one_of(pairish, st.sampled_from(["same", "valid", "full"])),
       unbatched=st.booleans())
def test_conv_accepts_exactly_what_torch_accepts(N, C, H, W, K, R, S, groups, bias, stride, dilation, padding,
                                                 unbatched):
    gc = max(1, groups)
    x = torch.randn((C * gc, H, W) if unbatched else (N, C * gc, H, W), dtype=torch.float64)
    w = torch.randn(K * gc, C, R, S, dtype=torch.float64)
    b = torch.randn(K * gc, dtype=torch.float64) if bias else None
    args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    torch_ok, expected = _outcome(lambda: F.conv2d(x, w, b, **args))
    ours_ok, problem = _outcome(lambda: conv2d_problem(x, w, b, **args))
    if x.numel() == 0 and 0 in (dilation if isinstance(dilation, tuple) else (dilation,)):
        # torch skips its dilation > 0 check for empty inputs; convbench always refuses dilation 0
        # (see REFUSED_BY_CONVBENCH)
        assert not ours_ok
        return
    assert torch_ok == ours_ok, f"torch {'accepts' if torch_ok else 'refuses'}, convbench: {problem}"
    if torch_ok:
        for name in ("naive", "im2col"):
            got = kernels.get(name).conv2d(x, w, b, **args)
            torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@settings(max_examples=400, deadline=None)
@given(N=st.integers(0, 2), C=st.integers(1, 3), H=st.integers(1, 7), W=st.integers(1, 7), kernel=pairish,
       stride=st.one_of(st.none(), pairish), padding=pairish, dilation=pairish, ceil_mode=st.booleans(),
       count_include_pad=st.booleans(), divisor=st.sampled_from([None, 0, 2, -3]), op=st.sampled_from(["max", "avg"]),
       unbatched=st.booleans())
def test_pools_accept_exactly_what_torch_accepts(N, C, H, W, kernel, stride, padding, dilation, ceil_mode,
                                                 count_include_pad, divisor, op, unbatched):
    x = torch.randn((C, H, W) if unbatched else (N, C, H, W), dtype=torch.float64)
    if op == "max":
        args = dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode,
                    return_indices=True)
        torch_fn, check_fn, name = F.max_pool2d, max_pool2d_problem, "max_pool2d"
    else:
        args = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode,
                    count_include_pad=count_include_pad, divisor_override=divisor)
        torch_fn, check_fn, name = F.avg_pool2d, avg_pool2d_problem, "avg_pool2d"
    torch_ok, expected = _outcome(lambda: torch_fn(x, **args))
    ours_ok, problem = _outcome(lambda: check_fn(x, **args))
    assert torch_ok == ours_ok, f"torch {'accepts' if torch_ok else 'refuses'}, convbench: {problem}"
    if torch_ok:  # values, and for max_pool2d the indices (also of windows a dilation steps past the input)
        for impl in ["oracle", "naive", "im2col"]:
            fn = ORACLE[name] if impl == "oracle" else getattr(kernels.get(impl), name)
            torch.testing.assert_close(fn(x, **args), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("argv", [["run", "--suite", "smoke", "--out"], ["ab", "HEAD", "HEAD", "--out"],
                                  ["profile", "--out"], ["gpu", "--dry-run", "--out"], ["history", "plot", "--out"]])
def test_an_out_that_names_an_existing_file_is_refused_with_exit_2(tmp_path, capsys, argv):
    from bench import cli

    target = tmp_path / "a-file"
    target.write_text("keep me")
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, str(target)])
    assert exc.value.code == 2 and "is an existing file, not a directory" in capsys.readouterr().err
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("shape", ["N=0,C=4,H=8,W=8", "N=2,C=4,H=0,W=8"])
def test_a_zero_size_shape_has_nothing_to_profile_and_exits_2(tmp_path, capsys, shape):
    from bench import cli

    assert cli.main(["profile", "--shape", shape, "--impl", "cudnn", "--out", str(tmp_path / "p")]) == 2
    assert "zero-size problem" in capsys.readouterr().err and not (tmp_path / "p").exists()


# ---- the command line: what cannot work exits 2 with one line naming the argument, before anything is created ----
# {file}: an existing file; {dir}: an empty folder; {tmp}: the test's folder. Each command runs in {tmp}/cwd, with
# the ab cache in {tmp}/cache, so that a default output folder or a git worktree left behind shows up.
RUN = ["run", "--suite", "smoke", "--op", "max_pool2d", "--impl", "cudnn", "--max-seconds", "0.01", "--no-report",
       "--no-progress"]
SHAPE = ["--shape", "N=1,C=4,H=8,W=8", "--impl", "cudnn"]
BAD_USAGE = [
    # output paths that mkdir or open would refuse only after the work
    ("run-out-under-a-file", [*RUN, "--out", "{file}/sub"], "--out {file}/sub: {file} is a file, not a directory"),
    ("run-out-empty", [*RUN, "--out", ""], "--out needs a path"),
    ("report-out-under-a-file", ["report", "{dir}", "{dir}", "--out", "{file}/sub"], "--out {file}/sub: {file} is"),
    ("profile-out-under-a-file", ["profile", *SHAPE, "--out", "{file}/sub"], "--out {file}/sub: {file} is a file"),
    ("gpu-out-under-a-file", ["gpu", "--dry-run", "--out", "{file}/sub"], "--out {file}/sub: {file} is a file"),
    ("ab-out-under-a-file", ["ab", "HEAD", "HEAD", "--out", "{file}/sub"], "--out {file}/sub: {file} is a file"),
    ("ab-json-under-a-file", ["ab", "HEAD", "HEAD", "--json", "{file}/ab.json"], "--json {file}/ab.json: {file} is a"),
    ("ab-markdown-a-folder", ["ab", "HEAD", "HEAD", "--markdown", "{dir}"], "--markdown {dir} is a directory"),
    ("compare-out-a-folder", ["compare", "{dir}", "{dir}", "--out", "{dir}"], "--out {dir} is a directory, not a file"),
    ("compare-json-under-a-file", ["compare", "{dir}", "{dir}", "--json", "{file}/c.json"], "--json {file}/c.json:"),
    ("compare-markdown-no-folder", ["compare", "{dir}", "{dir}", "--markdown", "{tmp}/nowhere/c.md"],
     "--markdown {tmp}/nowhere/c.md: the folder {tmp}/nowhere does not exist"),
    ("merge-out-a-file", ["merge", "{file}", "{dir}"], "OUT {file} is an existing file"),
    ("merge-out-under-a-file", ["merge", "{file}/sub", "{dir}"], "OUT {file}/sub: {file} is a file"),
    ("baseline-root-a-file", ["baseline", "promote", "{dir}", "--root", "{file}"], "--root {file} is an existing file"),
    ("history-db-a-folder", ["history", "add", "{dir}", "--db", "{dir}"], "--db {dir} is a directory, not a file"),
    ("history-db-under-a-file", ["history", "add", "{dir}", "--db", "{file}/h.sqlite"], "--db {file}/h.sqlite:"),
    ("selfcheck-json-a-folder", ["selfcheck", "--json", "{dir}"], "--json {dir} is a directory, not a file"),
    ("host-overhead-json-under-a-file", ["host-overhead", "--json", "{file}/h.json"], "--json {file}/h.json:"),
    ("gpu-into-a-file", ["gpu", "--unpack", "{file}", "--into", "{file}"], "--into {file} is an existing file"),
    # numbers without a finite meaning, values that name nothing
    ("run-timeout-inf", [*RUN, "--timeout", "inf"], "--timeout must be positive and finite"),
    ("run-max-seconds-inf", [*RUN, "--max-seconds", "inf"], "--max-seconds must be positive and finite"),
    ("ab-budget-inf", ["ab", "HEAD", "HEAD", "--budget", "inf"], "--budget must be positive and finite"),
    ("gpu-budget-nan", ["gpu", "--dry-run", "--budget", "nan"], "--budget must be positive and finite"),
    ("compare-alpha-0", ["compare", "{dir}", "{dir}", "--alpha", "0"], "--alpha must be in (0, 1)"),
    ("compare-alpha-2", ["compare", "{dir}", "{dir}", "--alpha", "2"], "--alpha must be in (0, 1)"),
    ("ab-op-threshold-unknown-op", ["ab", "HEAD", "HEAD", "--op-threshold", "conv3d=0.1"], "--op-threshold conv3d=0.1"),
    ("run-where-no-value", [*RUN, "--where", "kernel="], "--where kernel=: no value"),
    ("run-impl-twice", [*RUN, "--impl", "cudnn", "cudnn"], "--impl cudnn is given twice"),
    ("ab-impl-unknown-no-worktree", ["ab", "HEAD", "HEAD", "--impl", "nosuch"], "--impl nosuch is not registered"),
    ("run-threads-over-cores", [*RUN, "--threads", "100000"], "--threads 100000 is more than the"),
    ("profile-threads-over-cores", ["profile", *SHAPE, "--threads", "100000"], "--threads 100000 is more than"),
    ("gpu-unpack-not-an-archive", ["gpu", "--unpack", "{file}"], "--unpack {file}: not a window archive"),
    ("merge-part-twice", ["merge", "{tmp}/merged", "{dir}", "{dir}"], "PART {dir} is given twice"),
    # options that contradict each other, or one that would be ignored without a word
    ("run-model-and-suite", [*RUN, "--model", "resnet18"], "--suite smoke and --model both choose the cases"),
    ("ab-model-and-suite", ["ab", "HEAD", "HEAD", "--model", "resnet18", "--suite", "zoo"], "--suite zoo and --model"),
    ("run-resume-and-another-out", [*RUN, "--resume", "{dir}", "--out", "{tmp}/other"],
     "--resume {dir} and --out {tmp}/other name different run directories"),
    ("run-profile-instructions", [*RUN, "--metric", "instructions", "--profile"], "--profile profiles timed calls"),
    ("profile-shape-and-suite", ["profile", *SHAPE, "--suite", "smoke"], "--shape is the one problem"),
    ("profile-shape-and-where", ["profile", *SHAPE, "--where", "kernel=3"], "--shape is the one problem"),
    ("gpu-into-without-unpack", ["gpu", "--dry-run", "--into", "{dir}"], "--into {dir} goes with --unpack"),
    ("gpu-unpack-and-dry-run", ["gpu", "--unpack", "{file}", "--dry-run"], "--unpack restores an archive"),
]


def _cli(argv, capsys) -> tuple[int, str]:
    """``python -m bench ARGV`` in this process: (exit code, stderr)."""
    from bench import cli

    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's refusals
        code = exc.code
    return code, capsys.readouterr().err


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("case_id,argv,message", BAD_USAGE, ids=_ids(BAD_USAGE))
def test_bad_usage_exits_2_with_one_line_naming_the_argument_and_creates_nothing(case_id, argv, message, tmp_path,
                                                                              capsys, monkeypatch):
    (tmp_path / "a-file").write_text("keep me")
    (tmp_path / "a-dir").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("CONVBENCH_CACHE_DIR", str(tmp_path / "cache"))

    def fill(text):
        return text.format(file=tmp_path / "a-file", dir=tmp_path / "a-dir", tmp=tmp_path)

    before = _files(tmp_path)
    code, err = _cli([fill(a) for a in argv], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert fill(message) in lines[-1] and lines[-1].startswith("convbench"), err  # argparse prints its usage above
    assert _files(tmp_path) == before and (tmp_path / "a-file").read_text() == "keep me"


def test_an_out_in_a_folder_that_cannot_be_written_is_refused(tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    if os.access(locked, os.W_OK):  # root writes anywhere: make the check see what another user would
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != locked and real(p, mode, **kw))
    code, err = _cli([*RUN, "--out", str(locked / "run")], capsys)
    assert code == 2 and f"--out {locked / 'run'}: {locked} is not writable" in err, err
    assert list(locked.iterdir()) == []


def test_an_out_that_cannot_be_created_is_refused_even_past_the_parse_check(tmp_path, capsys, monkeypatch):
    """What the check at parse time cannot see (here: a folder that vanishes into a file between parse and run)
    still ends in exit 2 and one line, from the run's own mkdir."""
    from bench.commands import runner

    target = tmp_path / "gone" / "run"
    real_capture = runner.envmod.capture

    def capture(*args, **kw):  # between the parse and the run's mkdir
        (tmp_path / "gone").write_text("now a file")
        return real_capture(*args, **kw)

    monkeypatch.setattr(runner.envmod, "capture", capture)
    code, err = _cli([*RUN, "--out", str(target)], capsys)
    assert code == 2 and err.strip() == f"convbench run: --out {target}: cannot create it (Not a directory)", err
