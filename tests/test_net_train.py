"""A torchvision network's training step: routing every conv/pool layer through an implementation, the problem's
validation and cost model, the float64 agreement check (and that it can fail), and the bench's timed callable.

Small on purpose (2-core CI): ResNet-18 at 64 px, batch 4, two checked steps. That is about the smallest problem
on which float32 is well conditioned: ResNet-18's last stage is 2×2 at 64 px, so its BatchNorms see 16 values per
channel (at 32 px, 1×1, a batch-2 BatchNorm maps any pair to ±1, and no relative tolerance holds; see
``net_train_agreement``).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import implementation
from torch import nn

from bench.measure.cases import Case
from bench.measure.net_train import net_train_call
from reference.net_agreement import net_train_agreement
from reference.net_problem import NetTrainProblem, synthetic_images
from reference.routed import ROUTED, routed, routed_layers, trace

SMALL = NetTrainProblem("resnet18", batch=4, image_size=64)


def _torchvision(name: str, seed: int = 0) -> nn.Module:
    import torchvision.models as tvm

    torch.manual_seed(seed)
    return tvm.get_model(name, weights=None, num_classes=10).eval()


class Counting:
    """Ops that count their calls per op and compute with torch.nn.functional."""

    def __init__(self) -> None:
        self.calls = {"conv2d": 0, "max_pool2d": 0, "avg_pool2d": 0}

    def conv2d(self, *args):
        self.calls["conv2d"] += 1
        return F.conv2d(*args)

    def max_pool2d(self, *args):
        self.calls["max_pool2d"] += 1
        return F.max_pool2d(*args)

    def avg_pool2d(self, *args):
        self.calls["avg_pool2d"] += 1
        return F.avg_pool2d(*args)


class Tiny(nn.Module):
    """Every layer option routing must carry: non-zero padding modes, bias-free, grouped, dilated, strided convs,
    ceil-mode and padded pools, an AvgPool2d without padding counted."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4, bias=False, padding_mode="circular"),
            nn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
            nn.Conv2d(8, 6, (3, 1), stride=(2, 1), padding="valid", padding_mode="replicate"),
            nn.AvgPool2d(3, 1, padding=1, ceil_mode=True, count_include_pad=False),
            nn.Conv2d(6, 4, 3, padding="same", padding_mode="reflect"))

    def forward(self, x):
        return self.layers(x)


class FunctionalPool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return F.avg_pool2d(self.conv(x), 2)


# ---- routing ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_routing_through_cudnn_leaves_the_output_unchanged(name):
    plain = _torchvision(name)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    model = routed(copy.deepcopy(plain), implementation("cudnn", "cpu"), (2, 3, 64, 64), name)
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))
    # the same Parameter objects, so state dicts and optimizers built before routing are unchanged
    assert list(model.state_dict()) == list(plain.state_dict())
    conv = dict(routed_layers(model))["conv1" if name == "resnet18" else "features.0.0"]
    assert conv.weight is dict(model.named_parameters())[("conv1" if name == "resnet18" else "features.0.0")
                                                          + ".weight"]


def test_routing_keeps_every_layer_option_and_parameter():
    plain = Tiny().eval()
    before = {n: p for n, p in plain.named_parameters()}
    x = torch.randn(2, 3, 17, 15, generator=torch.Generator().manual_seed(2))
    expected = plain(x)
    model = routed(plain, implementation("cudnn", "cpu"), (2, 3, 17, 15))
    assert all(isinstance(m, ROUTED) for m in model.layers if not isinstance(m, nn.ReLU))
    assert all(p is before[n] for n, p in model.named_parameters())
    assert torch.equal(model(x), expected)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "googlenet"])
def test_routing_covers_every_conv_and_pool_call(name):
    import torchvision.models as tvm

    with torch.device("meta"):  # layers and calls only: no weights, no compute
        plain = tvm.get_model(name, weights=None, **({"aux_logits": False, "init_weights": False}
                                                     if name == "googlenet" else {})).eval()
    seen = trace(plain, (2, 3, 64, 64)).calls  # every conv/pool call of the forward, by a TorchFunctionMode
    counting = Counting()
    model = routed(plain, counting, (2, 3, 64, 64), name)
    after = trace(model, (2, 3, 64, 64))
    assert after.unrouted == () and len(after.calls) == len(seen)
    with torch.no_grad():  # a real forward: every call reaches the ops
        model.to_empty(device="cpu")(torch.randn(2, 3, 64, 64))
    assert sum(counting.calls.values()) == len(seen) == len(routed_layers(model))  # each layer called once
    kinds = {op: sum(1 for p, _ in seen if getattr(p, "op", "conv2d") == op) for op in counting.calls}
    assert counting.calls == kinds


def test_routing_refuses_conv_and_pool_calls_outside_modules():
    with pytest.raises(ValueError, match=r"FunctionalPool makes 1 conv/pool call.*avg_pool2d.*top-level forward"):
        routed(FunctionalPool(), F, (1, 3, 8, 8))
    import torchvision.models as tvm

    with torch.device("meta"):
        inception = tvm.inception_v3(weights=None, aux_logits=False, init_weights=False)
    with pytest.raises(ValueError, match=r"inception_v3 makes 11 conv/pool call\(s\).*avg_pool2d.*Mixed_5b"):
        routed(inception, F, (2, 3, 299, 299), "inception_v3")
    with pytest.raises(TypeError, match="object lacks conv2d, max_pool2d, avg_pool2d"):
        routed(Tiny(), object())


# ---- the problem -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"batch": 0}, "'batch' must be an int ≥ 1, got 0"),
    ({"batch": True}, "'batch' must be an int"),
    ({"image_size": 2.5}, "'image_size' must be an int"),
    ({"classes": 1}, "'classes' must be an int ≥ 2"),
    ({"model": "resnet19"}, "'model' must be a torchvision classification model, one of .*resnet18.*got 'resnet19'"),
    ({"model": "inception_v3", "image_size": 299}, "inception_v3 makes 11 conv/pool call"),
    ({"batch": 1, "image_size": 32}, "resnet18 cannot train on 'batch' 1 of 'image_size' 32"),
    ({"model": "squeezenet1_1", "image_size": 8}, "squeezenet1_1 cannot train on 'batch' 4 of 'image_size' 8"),
    ({"optimizer": "lbfgs"}, "'optimizer' must be one of sgd, adam"),
    ({"dtype": "bfloat16"}, "'dtype' must be one of float64, float32, tf32"),
    ({"layout": "nhwc"}, "'layout' must be"),
])
def test_problem_validates_its_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SMALL.replace(**kwargs)


def test_problem_cost_model_and_data():
    p = SMALL
    convs = p.convs()
    assert len(convs) == 20 and convs[0].R == 7 and convs[0].H == 64  # the stem at the full image size
    linear = 4 * (2 * 512 * 10 + 10)
    assert p.forward_flops() == sum(c.flops() for c in convs) + linear and p.flops() == 3 * p.forward_flops()
    assert p.num_parameters() == sum(t.numel() for t in p.reference_model().parameters())
    assert p.bytes_moved() > (5 + 2) * p.num_parameters() * 4
    assert p.replace(batch=8).activation_elements() == 2 * p.activation_elements()
    (x1, y1), (x2, y2) = p.make_batches(2, seed=3)
    again = p.make_batches(2, seed=3)[1]
    assert x1.shape == (4, 3, 64, 64) and x1.dtype == torch.float32 and torch.equal(x2, again[0])
    assert torch.equal(y2, again[1]) and not torch.equal(x1, x2)
    x, y = synthetic_images(4, 32, 10, seed=0, dtype=torch.float64)
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.int64 and 0.5 < float(x.std()) < 2


def test_build_is_deterministic_and_routed():
    a, b = SMALL.build(F, seed=5), SMALL.build(implementation("naive", "cpu"), seed=5)
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.training and all(m.ops is F for _, m in routed_layers(a))
    assert not torch.equal(a.conv1.weight, SMALL.build(F, seed=6).conv1.weight)


# ---- the agreement ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cudnn", "im2col", "naive"])
def test_agreement_passes_for_correct_implementations(name):
    a = net_train_agreement(implementation(name, "cpu").train_ops(), SMALL, steps=2)
    assert a.check.ok, a.check.detail
    assert a.gradients_check.max_abs_err > 0 and len(a.losses) == 2  # really compared, not skipped


class Perturbed:
    """cudnn with each conv output off by 1e-3 of its largest magnitude, in a checkerboard (so BatchNorm cannot
    normalise it away)."""

    def __init__(self, ops) -> None:
        self.ops = ops

    def conv2d(self, *args):
        out = self.ops.conv2d(*args)
        P, Q = out.shape[-2:]
        sign = (torch.arange(P)[:, None] + torch.arange(Q)) % 2 * 2 - 1
        return out + 1e-3 * out.detach().abs().amax() * sign.to(out)

    def max_pool2d(self, *args):
        return self.ops.max_pool2d(*args)

    def avg_pool2d(self, *args):
        return self.ops.avg_pool2d(*args)


def test_agreement_fails_for_a_wrong_conv():
    a = net_train_agreement(Perturbed(implementation("cudnn", "cpu")), SMALL, steps=1)
    assert not a.check.ok and not a.gradients_check.ok
    assert "grad of" in a.check.detail


# ---- the bench's timed callable --------------------------------------------------------------------------------------
def test_net_train_call_runs_checked_steps():
    phases = []
    call, verify = net_train_call(implementation("cudnn", "cpu"), Case("train_step", SMALL, "cpu"), seed=0,
                                  phase=phases.append)
    assert phases == ["validate step 1/3", "validate step 2/3", "validate step 3/3"]
    assert call.first_step_s > 0 and verify(None).ok
    params = list(call.agreement.model.parameters())
    before = [p.detach().clone() for p in params]
    loss = call()
    assert torch.isfinite(loss) and loss.dim() == 0
    assert all(p.grad is not None for p in params)
    assert sum(not torch.equal(b, p) for b, p in zip(before, params)) == len(params)  # every parameter stepped
