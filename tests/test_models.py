"""The CNN models, the training step and the float64 reference training.

The reference is trusted because it equals a plain torch float64 model trained with torch.optim; every implementation
is then checked step by step against it (decisions, loss, gradients, update), on a covering set — both models, both
optimizers — and must really learn the synthetic digits as well as torch itself does.
"""

from __future__ import annotations

import contextlib
import math
import os
import time

import pytest
import torch
import torch.nn.functional as F
from conftest import implementation
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import kernels
from bench.measure.train import FirstCallTimer, make_train_step
from reference import (
    ARCHITECTURES,
    OPTIMIZERS,
    BasicCNN,
    ConvProblem,
    SimpleCNN,
    TrainProblem,
    build_model,
    check,
    make_optimizer,
    oracle,
    reference_training,
    synthetic_mnist,
    train_agreement,
)
from reference.agreement import plain_train_step
from reference.cnn import initial_parameters
from reference.data import class_templates

#: built-ins a run takes by default; an unregistered one skips with the import error as its reason
IMPLS = tuple(n for n in kernels.ORDER if not n.startswith("compile-"))
#: one batch size for the agreement and learning tests: `compile` compiles each conv/pool problem (shape) of the step
#: once (~20 s on 2 cores) and every later test at this batch reuses that code
BATCH = 16
STEPS = 5
INTERPRETED_BATCH = 2  # triton under its CPU interpreter runs each program in Python: correctness only, tiny
#: the covering set: both models, both optimizers (the optimizer is torch.optim for everyone; the model decides
#: which conv problems run, so BasicCNN once is enough)
COVERING = [("simplecnn", "sgd"), ("simplecnn", "adam"), ("basiccnn", "adam")]
INTERPRETED_COVERING = {("simplecnn", "sgd"), ("basiccnn", "adam")}


def interpreted(name: str, device: str) -> bool:
    return name == "triton" and device == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The steps here are small (batch 16): a second thread saves little, and on shared cores a descheduled OpenMP
    thread stalls every parallel region — 40 SimpleCNN steps took 0.3 s on one thread, 0.5–11 s on two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- architecture and initial weights -----------------------------------------------------------------------------
class CountingOps:
    """torch.nn.functional, counting the calls the model makes (``fused`` adds conv2d_relu)."""

    def __init__(self, fused: bool) -> None:
        self.calls: dict[str, int] = {}
        if fused:
            self.conv2d_relu = self._counted("conv2d_relu", lambda *a, **kw: torch.relu(F.conv2d(*a, **kw)))

    def _counted(self, name, fn):
        def call(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return fn(*args, **kwargs)
        return call

    def __getattr__(self, name):
        if name in ("conv2d", "max_pool2d"):
            return self._counted(name, getattr(F, name))
        raise AttributeError(name)


@pytest.mark.parametrize("name,cls,params", [
    ("simplecnn", SimpleCNN, 1 * 16 * 25 + 16 + 16 * 32 * 25 + 32 + 1568 * 10 + 10),
    ("basiccnn", BasicCNN, 1 * 16 * 9 + 16 + 16 * 32 * 9 + 32 + 1568 * 128 + 128 + 128 * 10 + 10),
])
def test_architecture_shapes_and_parameter_counts(name, cls, params):
    model = build_model(name, F)
    assert type(model) is cls and ARCHITECTURES[name].num_parameters() == params
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert [n for n, _ in model.named_parameters()][:4] == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]
    assert model.conv1.weight.shape[-1] == (5 if name == "simplecnn" else 3)


@pytest.mark.parametrize("fused", [True, False], ids=["conv2d_relu", "relu-of-conv2d"])
def test_convs_and_pools_go_through_ops_forward_and_backward(fused):
    ops = CountingOps(fused)
    model = build_model("simplecnn", ops)
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    conv = "conv2d_relu" if fused else "conv2d"
    assert ops.calls == {conv: 2, "max_pool2d": 2}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_initial_weights_are_identical_for_every_implementation_and_seeded():
    reference = {n: p.detach().clone() for n, p in build_model("simplecnn", oracle).named_parameters()}
    f64 = initial_parameters("simplecnn", seed=0)
    for n, p in reference.items():
        assert torch.equal(p, f64[n].float()), f"{n}: float32 weights are the float64 draw rounded"
    for name in kernels.names():
        model = build_model("simplecnn", kernels.get(name))  # building needs no device support
        assert all(torch.equal(p, reference[n]) for n, p in model.named_parameters()), name
    assert all(torch.equal(initial_parameters("basiccnn", 7)[n], p)
               for n, p in initial_parameters("basiccnn", 7).items())
    assert not torch.equal(initial_parameters("simplecnn", 1)["conv1.weight"], f64["conv1.weight"])


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_initial_weights_follow_torch_default_scheme(name):
    """U(−b, b) with b = kaiming_uniform_(a=√5)'s bound = 1/√fan_in, for weights and biases alike."""
    params = initial_parameters(name, seed=3)
    for pname, p in params.items():
        fan_in = math.prod(params[pname.replace("bias", "weight")].shape[1:])
        bound = nn.init.calculate_gain("leaky_relu", math.sqrt(5)) * math.sqrt(3 / fan_in)
        assert bound == pytest.approx(fan_in ** -0.5)
        assert p.dtype == torch.float64 and p.abs().max() <= bound
        if p.numel() > 1000:  # uniform: standard deviation b/√3
            assert p.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)


def test_reset_parameters_restarts_a_model_in_place():
    model = build_model("basiccnn", F, seed=4).to(memory_format=torch.channels_last)
    fresh = build_model("basiccnn", F, seed=4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1)
    model.reset_parameters(4)
    assert all(torch.equal(p, fresh.get_parameter(n)) for n, p in model.named_parameters())
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="'name'"):
        build_model("resnet", F)
    with pytest.raises(TypeError, match="'ops'"):
        build_model("simplecnn", object())
    with pytest.raises(TypeError, match="'dtype'"):
        build_model("simplecnn", F, dtype=torch.int32)
    with pytest.raises(ValueError, match="'name'"):
        make_optimizer("rmsprop", [])
    with pytest.raises(ValueError, match="'lr'"):
        make_optimizer("sgd", [torch.zeros(1, requires_grad=True)], lr=0.1)
    for field, value in [("model", "lenet"), ("batch", 0), ("optimizer", "lbfgs"), ("dtype", "float16"),
                         ("layout", "strided")]:
        with pytest.raises(ValueError, match=f"'{field}'"):
            TrainProblem(**{field: value})
    with pytest.raises(ValueError, match="'steps'"):
        TrainProblem().make_batches(0)
    with pytest.raises(ValueError, match="'n'"):
        synthetic_mnist(-1)


# ---- problem, data, step ------------------------------------------------------------------------------------------
def test_train_problem_cost_model():
    p = TrainProblem("simplecnn", batch=2, optimizer="adam")
    conv1 = 2 * 16 * 28 * 28 * 1 * 25  # MACs: N·K·P·Q·C·R·S
    conv2 = 2 * 32 * 14 * 14 * 16 * 25
    forward = 2 * conv1 + 2 * 16 * 28 * 28 + 2 * conv2 + 2 * 32 * 14 * 14 + 2 * (2 * 1568 * 10 + 10)
    assert p.forward_flops() == forward and p.flops() == 3 * forward
    assert p.images == 2 and p.input_shape == (2, 1, 28, 28)
    assert p.convs()[1] == ConvProblem(N=2, C=16, H=14, W=14, K=32, R=5, S=5, padding=(2, 2))
    activations = 2 * (2 * 16 * 28 * 28 + 16 * 14 * 14 + 2 * 32 * 14 * 14 + 32 * 7 * 7 + 10)
    assert p.activation_elements() == activations
    params = 28938
    assert p.bytes_moved() == 4 * ((5 + 2 * 2) * params + 5 * activations + 2 * 2 * 784) + 8 * 2
    sgd = p.replace(optimizer="sgd", dtype="float64")
    assert sgd.bytes_moved() == 8 * ((5 + 2) * params + 5 * activations + 2 * 2 * 784) + 8 * 2
    basic = TrainProblem("basiccnn", batch=1)
    assert basic.forward_flops() == (2 * 16 * 784 * 9 + 16 * 784 + 2 * 32 * 196 * 144 + 32 * 196
                                     + 2 * 1568 * 128 + 128 + 2 * 128 * 10 + 10)


def test_make_batches_and_build_follow_dtype_and_layout():
    p = TrainProblem("simplecnn", batch=4, dtype="float64", layout="channels_last")
    batches = p.make_batches(3, seed=2)
    assert len(batches) == 3
    x, y = batches[0]
    assert x.shape == (4, 1, 28, 28) and x.dtype == torch.float64 and y.dtype == torch.int64
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, p.make_batches(3, seed=2)))
    model = p.build(F)
    assert model.conv2.weight.dtype == torch.float64
    assert model.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    assert model(x).shape == (4, 10)


def test_synthetic_mnist_is_deterministic_and_balanced():
    x, y = synthetic_mnist(2000, seed=5)
    assert x.shape == (2000, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x, synthetic_mnist(2000, seed=5)[0]) and not torch.equal(x, synthetic_mnist(2000, seed=6)[0])
    counts = torch.bincount(y, minlength=10)
    assert counts.min() > 150 and y.max() == 9
    t = class_templates().flatten(1)
    t = t / t.norm(dim=1, keepdim=True)
    assert (t @ t.T - torch.eye(10, dtype=torch.float64)).max() <= 0.6  # no two classes are near-duplicates
    x64, y64 = synthetic_mnist(7, seed=5, dtype=torch.float64)
    assert torch.equal(x64.float(), synthetic_mnist(7, seed=5)[0]) and torch.equal(y64, synthetic_mnist(7, seed=5)[1])


@pytest.mark.parametrize("make_step", [plain_train_step, make_train_step], ids=["plain", "profiled"])
def test_train_step_is_forward_loss_backward_update(make_step):
    model = build_model("simplecnn", F, dtype=torch.float64)
    twin = build_model("simplecnn", F, dtype=torch.float64)
    step = make_step(model, make_optimizer("adam", model.parameters()))
    opt = make_optimizer("adam", twin.parameters())
    for x, y in TrainProblem(batch=3, dtype="float64").make_batches(2, seed=1):
        loss = step(x, y)
        opt.zero_grad(set_to_none=True)
        expected = F.cross_entropy(twin(x), y)
        expected.backward()
        opt.step()
        assert loss.dim() == 0 and not loss.requires_grad and loss.item() == expected.item()
    assert all(torch.equal(p, twin.get_parameter(n)) and p.grad is not None for n, p in model.named_parameters())


def test_first_call_timer_times_only_the_first_call():
    calls = []

    def step(x, y):
        calls.append((x, y))
        if len(calls) == 1:  # the first call is the slow one (a compile, a graph capture)
            time.sleep(0.05)
        return x + y

    timer = FirstCallTimer(step)
    x, y = torch.ones(2), torch.zeros(2)
    assert timer.first_s is None and timer.step is step
    assert torch.equal(timer(x, y), x + y)
    first = timer.first_s
    assert first is not None and 0.05 <= first < 5, "the first call's wall time, its sleep included"
    timer(x, y)
    assert timer.first_s == first and len(calls) == 2, "later calls pass through untimed"


# ---- the float64 reference ----------------------------------------------------------------------------------------
class TorchCNN(nn.Module):
    """The same architecture from nn.Conv2d / nn.Linear and F.max_pool2d: what the reference must equal."""

    def __init__(self, name: str, seed: int) -> None:
        super().__init__()
        arch = ARCHITECTURES[name]
        for i, (c, k, r) in enumerate(arch.convs, 1):
            self.add_module(f"conv{i}", nn.utils.skip_init(nn.Conv2d, c, k, r, padding=r // 2, dtype=torch.float64))
        for i, (fin, fout) in enumerate(arch.linears, 1):
            self.add_module(f"fc{i}", nn.utils.skip_init(nn.Linear, fin, fout, dtype=torch.float64))
        self.convs, self.linears = len(arch.convs), len(arch.linears)
        self.load_state_dict(initial_parameters(name, seed))

    def forward(self, x):
        for i in range(1, self.convs + 1):
            x = F.max_pool2d(torch.relu(getattr(self, f"conv{i}")(x)), 2, 2)
        x = x.flatten(1)
        for i in range(1, self.linears + 1):
            x = getattr(self, f"fc{i}")(x)
            x = torch.relu(x) if i < self.linears else x
        return x


@pytest.mark.parametrize("model_name,optimizer", [("simplecnn", "sgd"), ("simplecnn", "adam"), ("basiccnn", "sgd"),
                                                  ("basiccnn", "adam")])
def test_reference_training_equals_torch_float64(model_name, optimizer):
    """Oracle ops + written-out cross entropy and optimizer == nn modules + nn.CrossEntropyLoss + torch.optim."""
    batches = TrainProblem(model_name, batch=6, optimizer=optimizer, dtype="float64").make_batches(6, seed=3)
    ref = reference_training(model_name, optimizer, batches, seed=2)
    model = TorchCNN(model_name, seed=2)
    opt = make_optimizer(optimizer, model.parameters())
    loss_fn, losses = nn.CrossEntropyLoss(), []
    for x, y in batches:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    result = check(torch.stack(losses), ref.losses, "float64")
    assert result.ok, f"losses: {result.detail}"
    moved = ref.parameters["conv1.weight"] - initial_parameters(model_name, 2)["conv1.weight"]
    assert moved.abs().max() > 1e-3  # the steps were real steps
    for n, p in model.named_parameters():
        result = check(p, ref.parameters[n], "float64")
        assert result.ok, f"{n}: {result.detail} (max abs {result.max_abs_err:.3g})"


def test_optimizers_have_the_documented_hyperparameters():
    p = torch.zeros(1, requires_grad=True)
    sgd, adam = make_optimizer("sgd", [p]), make_optimizer("adam", [p], foreach=False)
    assert sgd.defaults["lr"] == OPTIMIZERS["sgd"].lr == 0.01 and sgd.defaults["momentum"] == 0.9
    assert adam.defaults["lr"] == OPTIMIZERS["adam"].lr == 1e-3 and adam.defaults["betas"] == (0.9, 0.999)
    assert adam.defaults["eps"] == 1e-8 and adam.defaults["weight_decay"] == 0 and not sgd.defaults["nesterov"]


# ---- every implementation against the reference -------------------------------------------------------------------
@pytest.mark.parametrize("model_name,optimizer", COVERING, ids=[f"{m}-{o}" for m, o in COVERING])
@pytest.mark.parametrize("name", IMPLS)
def test_training_steps_agree_with_float64_reference(name, model_name, optimizer):
    impl = implementation(name, "cpu")
    batch = BATCH
    if interpreted(name, "cpu"):
        if (model_name, optimizer) not in INTERPRETED_COVERING:
            pytest.skip("triton interpreter: both models and both optimizers are covered by the other two cases")
        batch = INTERPRETED_BATCH
    result = train_agreement(impl, model_name, optimizer, steps=STEPS, batch=batch)
    assert result.check.ok, result.check.detail
    assert torch.isfinite(result.losses).all() and len(result.losses) == STEPS


class ScaledWeightGrad(torch.autograd.Function):
    """Identity forward; scales the weight gradient by 1.001 — an error only the backward makes."""

    @staticmethod
    def forward(ctx, w):
        return w.view_as(w)

    @staticmethod
    def backward(ctx, g):
        return g * 1.001


class WrongBackwardOps:
    max_pool2d = staticmethod(F.max_pool2d)

    @staticmethod
    def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
        return F.conv2d(x, ScaledWeightGrad.apply(w), b, stride, padding, dilation, groups)


class AveragingPoolOps:
    conv2d = staticmethod(F.conv2d)

    @staticmethod
    def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
        return F.avg_pool2d(x, kernel_size, stride, padding, ceil_mode)


@contextlib.contextmanager
def updates_off_by(fraction: float):
    """Every optimizer step lands ``fraction`` of its update off (a wrongly fused or replayed optimizer)."""
    before: dict[torch.Tensor, torch.Tensor] = {}

    def pre(opt, args, kwargs):
        before.update({p: p.detach().clone() for group in opt.param_groups for p in group["params"]})

    def post(opt, args, kwargs):
        with torch.no_grad():
            for p, b in before.items():
                p.add_(fraction * (p - b))

    hooks = [register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("ops,broken,part", [(WrongBackwardOps, contextlib.nullcontext(), "grad of conv"),
                                             (AveragingPoolOps, contextlib.nullcontext(), "max_pool2d decisions"),
                                             (F, updates_off_by(1e-3), "update of")],
                         ids=["weight-grad-off-by-1e-3", "pool-averages", "update-off-by-1e-3"])
def test_agreement_catches_a_wrong_implementation(ops, broken, part):
    with broken:
        result = train_agreement(ops, "simplecnn", "sgd", steps=2, batch=4)
    assert not result.check.ok and part in result.check.detail, result.check.detail


def test_agreement_in_float64_and_channels_last_is_tight():
    result = train_agreement(kernels.get("cudnn"), "basiccnn", "sgd", steps=2, batch=4, dtype=torch.float64,
                             layout="channels_last")
    assert result.check.ok, result.check.detail
    assert result.gradients_check.max_abs_err < 1e-12 and result.losses_check.max_abs_err < 1e-12


# ---- learning -----------------------------------------------------------------------------------------------------
LEARN_STEPS = 200
HELD_OUT = 512


def accuracy(model, x, y) -> float:
    """Share of correct predictions, in batches of BATCH with autograd on: `compile` reuses the training step's
    compiled problems instead of compiling inference graphs of other shapes."""
    correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(BATCH), y.split(BATCH)))
    return correct / len(y)


def learn(model) -> float:
    """SGD on 200 batches of 16 synthetic digits; accuracy on 512 held-out ones."""
    model.reset_parameters(0)
    step = plain_train_step(model, make_optimizer("sgd", model.parameters()))
    for x, y in TrainProblem("simplecnn", BATCH, "sgd").make_batches(LEARN_STEPS, seed=1):
        step(x, y)
    return accuracy(model, *synthetic_mnist(HELD_OUT, seed=1000))


@pytest.fixture(scope="module")
def models():
    """One SimpleCNN per implementation for the whole module (reset before each use): `compile` compiles the
    problems of its training step once and every test reuses them."""
    built: dict[str, nn.Module] = {}

    def get(name: str, ops) -> nn.Module:
        if name not in built:
            built[name] = build_model("simplecnn", ops)
        return built[name]
    return get


@pytest.fixture(scope="module")
def torch_accuracy(models):
    return learn(models("torch.nn.functional", F))


@pytest.mark.parametrize("name", IMPLS)
def test_every_implementation_learns_the_synthetic_digits(name, models, torch_accuracy):
    impl = implementation(name, "cpu")
    if interpreted(name, "cpu"):
        pytest.skip(f"triton interpreter: {LEARN_STEPS} training steps would take far too long (agreement covers it)")
    acc = learn(models(name, impl))
    assert acc >= 0.9, f"{name}: {acc:.1%} held-out accuracy after {LEARN_STEPS} steps"
    assert abs(acc - torch_accuracy) <= 0.03, f"{name}: {acc:.1%} vs torch.nn.functional {torch_accuracy:.1%}"


@pytest.mark.parametrize("name", ["cudnn", "im2col"])
def test_bfloat16_mixed_precision_step_agrees_at_bfloat16_tolerance(name):
    """dtype 'bfloat16': float32 master weights and optimizer, layers computed in bfloat16 (autocast's recipe)."""
    problem = TrainProblem("simplecnn", 8, "sgd", "bfloat16")
    assert problem.storage == torch.float32 and problem.compute == torch.bfloat16
    model = problem.build(implementation(name, "cpu"))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    result = train_agreement(implementation(name, "cpu"), "simplecnn", "sgd", steps=3, batch=8, dtype="bfloat16")
    assert result.check.ok, result.check.detail
    assert result.gradients_check.max_abs_err > 1e-6  # it really computed in bfloat16, not float32
