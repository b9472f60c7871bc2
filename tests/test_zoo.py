"""Real networks as suites (issue 26): the layers read off torchvision models on meta tensors, and the whole-network
sums over them."""

from __future__ import annotations

import math
import socket

import pandas as pd
import pytest
import torch

from bench.measure.models import ZOO, Layer, check_models, model_calls, model_layers, model_names
from bench.runs.network import shares, totals, totals_frame
from bench.runs.schema import parse_models


def _module_counts(name: str) -> dict[str, int]:
    import torchvision.models as tvm

    with torch.device("meta"):
        model = tvm.get_model(name, weights=None)
    kinds = {"conv2d": torch.nn.Conv2d, "max_pool2d": torch.nn.MaxPool2d, "avg_pool2d": torch.nn.AvgPool2d}
    return {op: sum(isinstance(m, cls) for m in model.modules()) for op, cls in kinds.items()}


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "convnext_tiny", "squeezenet1_1"])
def test_the_layer_counts_add_up_to_the_models_modules(name):
    """Models whose every conv and pool is a module call each once per forward: the counts add up to the modules."""
    layers = model_layers([name], image_size=64, batch=2)
    found = {op: sum(l.count for l in layers if l.problem.op == op) for op in ("conv2d", "max_pool2d", "avg_pool2d")}
    assert found == _module_counts(name)
    assert all(l.problem.N == 2 for l in layers) and len({l.problem for l in layers}) == len(layers)


def test_resnet18_at_224_has_its_known_layers():
    layers = model_layers(["resnet18"], 224, 1)
    stem = layers[0].problem
    assert (stem.C, stem.H, stem.K, stem.R, stem.stride, stem.padding) == (3, 224, 64, 7, (2, 2), (3, 3))
    assert layers[0].where == {"resnet18": "conv1"}
    pool = next(l.problem for l in layers if l.problem.op == "max_pool2d")
    assert (pool.H, pool.kernel, pool.stride, pool.padding) == (112, (3, 3), (2, 2), (1, 1))
    c3 = next(l for l in layers if l.problem.op == "conv2d" and l.problem.C == 64 and l.problem.R == 3)
    assert c3.count == 4 and c3.problem.H == 56  # layer1: two blocks of two 3×3 convs


@pytest.mark.parametrize("name,kind", [("mobilenet_v3_small", "depthwise"), ("convnext_tiny", "depthwise 7x7"),
                                       ("resnext50_32x4d", "grouped"), ("deeplabv3_mobilenet_v3_large", "dilated"),
                                       ("squeezenet1_1", "ceil-mode pool"), ("googlenet", "padded ceil-mode pool"),
                                       ("densenet121", "avg pool"), ("inception_v3", "functional avg pool")])
def test_the_layer_kinds_the_models_have_are_found(name, kind):
    size = 96 if name == "inception_v3" else 64
    ps = [l.problem for l in model_layers([name], size, 1)]
    convs = [p for p in ps if p.op == "conv2d"]
    found = {
        "depthwise": any(p.groups == p.C > 1 for p in convs),
        "depthwise 7x7": any(p.groups == p.C > 1 and p.R == 7 for p in convs),
        "grouped": any(1 < p.groups < p.C for p in convs),
        "dilated": any(max(p.dilation) > 1 for p in convs),
        "ceil-mode pool": any(p.op == "max_pool2d" and p.ceil_mode for p in ps),
        "padded ceil-mode pool": any(p.op == "max_pool2d" and p.ceil_mode and max(p.padding) > 0 for p in ps),
        "avg pool": any(p.op == "avg_pool2d" for p in ps),
        "functional avg pool": any(p.op == "avg_pool2d" and p.padding == (1, 1) for p in ps),
    }[kind]
    assert found, f"{name}: no {kind} layer in {ps}"


def test_extraction_uses_meta_tensors_only(monkeypatch):
    """No weights: nothing is downloaded (no socket opened) and the model's parameters never hold data."""
    def no_network(*a, **k):
        raise AssertionError("the layer extraction opened a socket")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    from bench.measure import models

    built = []
    real = models._build
    monkeypatch.setattr(models, "_build", lambda name: built.append(real(name)) or built[-1])
    models.model_calls.cache_clear()  # the models are built again here, not read from an earlier test's trace
    model_calls("regnet_x_400mf", 64, 1)  # a builder that computes with real tensors: parameters still on meta
    model_calls("resnet18", 64, 1)
    assert all(p.is_meta for m in built for p in m.parameters())


def test_several_models_share_layers_with_per_model_counts():
    layers = model_layers(["resnet18", "resnet34"], 64, 1)
    shared = [l for l in layers if set(l.counts) == {"resnet18", "resnet34"}]
    assert shared and all(l.count == sum(l.counts.values()) for l in layers)
    assert shared[0].models_text() == f"resnet18:{shared[0].counts['resnet18']};resnet34:{shared[0].counts['resnet34']}"


def test_an_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="--model: unknown torchvision model.*resnet18"):
        check_models(["resnet1000"])
    assert set(ZOO) <= set(model_names())


# ---- whole-network sums ---------------------------------------------------------------------------------------------
def _row(key, op, impl, median, models, status="ok", half=0.1):
    return dict(case_key=f"{op}|{key}", op=op, impl=impl, status=status, error="" if status == "ok" else "no depthwise",
                median_ms=median, ci_low_ms=median - half, ci_high_ms=median + half, iqr_ms=half, models=models)


def _run():
    rows = []
    for impl, f in (("cudnn", 1.0), ("im2col", 2.0)):
        rows += [_row("a", "conv2d", impl, 1.0 * f, "net:3;other:1"), _row("b", "max_pool2d", impl, 0.5 * f, "net:1"),
                 _row("a", "conv2d_backward", impl, 2.0 * f, "net:3;other:1")]
    rows.append(_row("c", "conv2d", "cudnn", 4.0, "other:2"))
    rows.append(_row("c", "conv2d", "im2col", math.nan, "other:2", status="unsupported"))
    return pd.DataFrame(rows)


def test_whole_network_totals_are_count_weighted_sums_with_their_uncertainty():
    t = {(x.model, x.impl, x.passes): x for x in totals(_run())}
    fwd = t["net", "cudnn", "forward"]
    assert fwd.ms == pytest.approx(3 * 1.0 + 0.5) and fwd.calls == 4 and fwd.layers == 2
    assert fwd.halfwidth_ms == pytest.approx(math.sqrt((3 * 0.1) ** 2 + 0.1 ** 2))
    assert t["net", "cudnn", "forward+backward"].ms == pytest.approx(3.5 + 3 * 2.0)
    slow = t["net", "im2col", "forward"]
    assert slow.ms == pytest.approx(7.0) and slow.vs_control == pytest.approx(0.5)
    assert slow.vs_control_halfwidth == pytest.approx(0.5 * math.hypot(fwd.halfwidth_ms / 3.5, slow.halfwidth_ms / 7))


def test_a_network_with_a_layer_not_measured_has_no_total():
    t = {(x.model, x.impl, x.passes): x for x in totals(_run())}
    other = t["other", "im2col", "forward"]
    assert other.ms is None and other.missing.startswith("1 of 2 layers not measured (1 unsupported)")
    assert t["other", "cudnn", "forward"].ms == pytest.approx(1.0 + 2 * 4.0)


def test_shares_rank_the_layers_and_add_up_to_one():
    s = shares(_run(), "net", "cudnn")
    assert list(s["case_key"]) == ["conv2d|a", "max_pool2d|b"] and s["share"].sum() == pytest.approx(1.0)
    assert s["share"].iloc[0] == pytest.approx(3 / 3.5)
    assert parse_models("") == {} and parse_models("x:2") == {"x": 2}
    assert set(totals_frame(_run())["passes"]) == {"forward", "forward+backward"}


def test_layer_is_hashable_by_its_problem_only():
    from reference import ConvProblem

    p = ConvProblem(N=1, C=3, H=8, W=8, K=4, R=3, S=3)
    assert Layer(p, {"a": 1}) == Layer(p, {"b": 2}) and len({Layer(p), Layer(p)}) == 1


def test_the_report_tabulates_and_draws_every_model(tmp_path):
    from bench.present.network import layer_kind, network_sections

    run = _run().assign(groups="1", in_channels=16, kernel_h=3, kernel_w=3, stride="1", dilation="1")
    run.loc[run["case_key"] == "conv2d|c", ["groups", "in_channels"]] = ("16", 16)
    sections = network_sections(run, tmp_path)
    headings = [h for h, _ in sections]
    assert [h.split(":")[0] for h in headings if h] == ["net", "net", "other", "other"]
    table = sections[0][1]
    assert table.loc["im2col", "fwd ×cudnn"] == "0.50 ± 0.05" and table.loc["cudnn", "layers (calls)"] == "2 (4)"
    assert "not measured" in network_sections(run, tmp_path)[3][1].loc["im2col", "fwd ms"]
    assert (tmp_path / "network_net.png").stat().st_size > 0 and (tmp_path / "network_other.png").exists()
    kinds = {k: layer_kind(r) for k, r in run.drop_duplicates("case_key").set_index("case_key").iterrows()}
    assert kinds == {"conv2d|a": "dense k×k", "max_pool2d|b": "max pool", "conv2d_backward|a": "backward",
                     "conv2d|c": "depthwise"}


def test_a_conv_without_its_backward_row_leaves_the_forward_backward_total_open():
    t = {(x.model, x.impl, x.passes): x for x in totals(_run())}
    assert t["other", "cudnn", "forward+backward"].ms is None
    assert "1 absent" in t["other", "cudnn", "forward+backward"].missing


def test_a_layer_an_implementation_cannot_run_is_unsupported_with_its_reason(monkeypatch):
    import torch.nn.functional as F

    import kernels
    from bench.measure.cases import Case
    from bench.measure.measure import measure_case
    from bench.measure.suites import SMOKE_TIMING
    from reference import PoolProblem

    class ConvOnly(kernels.Implementation):
        name, summary = "conv-only", "a conv2d and nothing else"

        def _conv2d(self, x, weight, bias, p):
            return F.conv2d(x, weight, bias, **p.kwargs())

    kernels.names()  # the registry is loaded before the stand-in joins it
    monkeypatch.setitem(kernels._REGISTRY, "conv-only", ConvOnly())
    out = []
    measure_case(Case("max_pool2d", PoolProblem("max_pool2d", 1, 2, 8, 8, kernel=(2, 2))), ["conv-only"], SMOKE_TIMING,
                 report=out.append)
    assert [(o.status, o.error, o.backend) for o in out] == [
        ("unsupported", "conv-only does not implement max_pool2d", "none")]
    assert ConvOnly().unsupported("train_step") == "conv-only does not implement max_pool2d"


# ---- run --model, the zoo suite -------------------------------------------------------------------------------------
def test_an_unknown_model_is_refused_before_anything_is_written(tmp_path, capsys):
    from bench import cli

    out = tmp_path / "run"
    assert cli.main(["run", "--model", "resnet18,resnet1000", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "resnet1000" in err and "resnet18" in err.split("choose from", 1)[1] and not out.exists()


def test_a_model_selection_is_its_layers_forward_and_backward_and_its_training_step():
    from bench.measure.select import Selection, select_cases

    cases = select_cases(Selection(models=("resnet18",), image_size=64, batch=4))
    layers = model_layers(["resnet18"], 64, 4)
    convs = [layer for layer in layers if layer.problem.op == "conv2d"]
    assert len(cases) == len(layers) + len(convs) + 1
    assert {c.op for c in cases} == {"conv2d", "conv2d_backward", "max_pool2d", "train_step"}
    step = cases[-1]
    assert step.key == "train_step|N4 C3 H64 W64|resnet18|model=resnet18 optimizer=sgd|float32|nchw|cpu"
    assert step.columns()["in_channels"] == 3 and step.columns()["height"] == 64 and step.count is None
    stem = cases[0]
    assert stem.models == "resnet18:1" and stem.count == 1 and stem.columns()["kernel_h"] == 7
    only = select_cases(Selection(models=("resnet18",), image_size=64, batch=4, ops=["max_pool2d"]))
    assert [c.models for c in only] == ["resnet18:1"]


def test_the_zoo_suite_covers_its_layer_kinds():
    from bench.measure.suites import SUITES

    cases = SUITES["zoo"].cases("cpu")
    convs = [c.problem for c in cases if c.op == "conv2d"]
    assert any(p.groups == p.C > 1 for p in convs) and any(1 < p.groups < p.C for p in convs)
    assert any(max(p.dilation) > 1 for p in convs) and any(c.problem.ceil_mode for c in cases if c.op == "max_pool2d")
    assert {m.split(":")[0] for c in cases for m in c.models.split(";")} == set(ZOO)


def test_a_filtered_model_run_gives_no_whole_network_total():
    t = {(x.model, x.impl, x.passes): x for x in totals(_run(), expected={"net": {"layers": 3, "convs": 1}})}
    assert t["net", "cudnn", "forward"].ms is None
    assert t["net", "cudnn", "forward"].missing == "only 2 of the model's 3 layers are in this run (filtered)"
    t = {(x.model, x.impl, x.passes): x for x in totals(_run(), expected={"net": {"layers": 2, "convs": 1}})}
    assert t["net", "cudnn", "forward+backward"].ms == pytest.approx(9.5)


def test_a_model_run_writes_counts_and_the_whole_network_report(tmp_path):
    from helpers import bench

    out = tmp_path / "r18"
    proc = bench("run", "--model", "resnet18", "--image-size", "32", "--batch", "2", "--impl", "cudnn",
                 "--op", "max_pool2d", "--out", out, "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = pd.read_csv(out / "results.csv")
    assert list(rows[["count", "models"]].itertuples(index=False, name=None)) == [(1, "resnet18:1")]
    env = __import__("json").loads((out / "env.json").read_text())
    assert env["models"] == {"resnet18": {"layers": 12, "convs": 11}} and env["suite"].startswith("models resnet18")
    report = (out / "report.md").read_text()
    assert "resnet18: whole-network" in report and "only 1 of the model's 12 layers" in report
