"""Which cases each suite holds (bench/measure/suites.py names the suites and their timing).

Sweeps vary one axis at a time around a base problem (every axis takes at least two values, combinations that
torch would refuse are never generated), then cross every problem with the suite's dtypes and layouts. A full
factorial would be millions of cases; one-axis-at-a-time plus real network layers (ResNet-50, SimpleCNN) is the
covering set that says where each implementation wins and loses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from reference import ConvProblem, NetTrainProblem, PoolProblem, TrainProblem

from .cases import Case
from .models import ZOO, ZOO_SHAPE, model_layers

CONV_OPS = ("conv2d", "conv2d_backward")
POOL_OPS = ("max_pool2d", "avg_pool2d")


# ---- generators ---------------------------------------------------------------------------------------------------
CONV_AXES = {  # results-column name → how it changes a ConvProblem
    "batch": lambda p, v: p.replace(N=v),
    "in_channels": lambda p, v: p.replace(C=v),
    "out_channels": lambda p, v: p.replace(K=v),
    "height": lambda p, v: p.replace(H=v, W=v),  # square images
    "kernel": lambda p, v: p.replace(R=v, S=v, padding=(v // 2, v // 2) if isinstance(p.padding, tuple) else p.padding),
    "stride": lambda p, v: p.replace(stride=(v, v)),
    "padding": lambda p, v: p.replace(padding=v if isinstance(v, str) else (v, v)),
    "dilation": lambda p, v: p.replace(dilation=(v, v), padding=(v, v) if isinstance(p.padding, tuple) else p.padding),
    "groups": lambda p, v: p.replace(groups=p.C if v == "depthwise" else v,
                                     K=p.C if v == "depthwise" else p.K),
}


def _valid(make: Callable[..., object], *args, **kwargs):
    try:
        return make(*args, **kwargs)
    except ValueError:  # torch would refuse it: never generate it
        return None


def one_axis_at_a_time(base, axes: dict[str, list], changers: dict) -> list:
    """The base problem, then for each axis each listed value with everything else at the base."""
    problems = [base]
    for axis, values in axes.items():
        for v in values:
            p = _valid(changers[axis], base, v)
            if p is not None:
                problems.append(p)
    return problems


def crossed(problems: Iterable, dtypes: Iterable[str], layouts: Iterable[str] | None = None) -> list:
    """Every problem in every dtype and layout (``layouts=None`` keeps each problem's own)."""
    out = []
    for p in problems:
        for dt in dtypes:
            for lay in layouts or (p.layout,):
                q = _valid(p.replace, dtype=dt, layout=lay)
                if q is not None:
                    out.append(q)
    return out


def conv_cases(problems: Iterable[ConvProblem], device: str, ops=CONV_OPS) -> list[Case]:
    return [Case(op, p, device) for p in problems for op in ops]


def pool_cases(problems: Iterable[PoolProblem], device: str) -> list[Case]:
    return [Case(p.op, p, device) for p in problems]


def _dtypes(device: str, cpu: tuple[str, ...], gpu: tuple[str, ...] = ("float32", "tf32", "float16", "bfloat16")):
    return gpu if device == "cuda" else cpu


def _pools(N: int, C: int, H: int, specs: list[dict], dtypes, layouts) -> list[PoolProblem]:
    base = [PoolProblem(s.pop("op"), N, C, H, H, **s) for s in (dict(s) for s in specs)]
    return crossed(base, dtypes, layouts)


# ---- the suites ---------------------------------------------------------------------------------------------------
def _smoke(device: str) -> list[Case]:
    # three conv problems that between them give every axis two values, and two problems per pool kind
    big = device == "cuda"
    a = ConvProblem(N=8 if big else 2, C=16, H=32 if big else 16, W=32 if big else 16, K=32 if big else 8, R=3, S=3,
                    padding=(1, 1))
    b = a.replace(N=a.N * 2, C=a.C // 2, K=a.K * 2, H=a.H - 4, W=a.W - 4, R=5, S=5, stride=(2, 2), padding=(2, 2),
                  layout="channels_last")
    c = a.replace(dilation=(2, 2), padding="same", bias=False)
    dts = _dtypes(device, ("float32",))
    convs = crossed([a, b, c], dts)
    pools = _pools(a.N, 8, 16, [dict(op="max_pool2d", kernel=(2, 2)),
                                dict(op="max_pool2d", kernel=(3, 3), stride=(2, 2), padding=(1, 1),
                                     return_indices=True),
                                dict(op="avg_pool2d", kernel=(2, 2)),
                                dict(op="avg_pool2d", kernel=(3, 3), stride=(1, 1), padding=(1, 1),
                                     count_include_pad=False)], dts[:1], ("nchw",))
    return conv_cases(convs, device) + pool_cases(pools, device)


QUICK_AXES = {"batch": [2, 32], "in_channels": [64], "out_channels": [64], "height": [56], "kernel": [1, 5],
              "stride": [2], "padding": [0, "same"], "dilation": [2], "groups": [4, "depthwise"]}


def train_cases(device: str, batches, optimizers=("sgd", "adam"), models=("simplecnn",), dtypes=None) -> list[Case]:
    """Whole training steps (forward, loss, backward, optimizer) of the reference CNNs on synthetic MNIST."""
    dtypes = dtypes or (("float32", "tf32", "bfloat16") if device == "cuda" else ("float32",))
    return [Case("train_step", TrainProblem(m, b, o, dt), device)
            for m in models for b in batches for o in optimizers for dt in dtypes]


def _quick(device: str) -> list[Case]:
    gpu = device == "cuda"
    base = ConvProblem(N=32 if gpu else 8, C=64 if gpu else 32, H=28, W=28, K=64 if gpu else 32, R=3, S=3,
                       padding=(1, 1))
    axes = QUICK_AXES if not gpu else {**QUICK_AXES, "batch": [8, 128], "in_channels": [128], "out_channels": [128]}
    problems = one_axis_at_a_time(base, axes, CONV_AXES)
    dts = _dtypes(device, ("float32",))
    convs = crossed(problems, dts[:1], ("nchw",))
    convs += crossed([base, problems[-1]], dts, ("channels_last",))  # layout axis on the base and depthwise problems
    convs += crossed([base], dts[1:], ("nchw",))  # dtype axis on the base problem (GPU)
    pools = _pools(base.N, base.C, 56, [dict(op="max_pool2d", kernel=(2, 2)),
                                        dict(op="max_pool2d", kernel=(3, 3), stride=(2, 2), padding=(1, 1)),
                                        dict(op="avg_pool2d", kernel=(2, 2)),
                                        dict(op="avg_pool2d", kernel=(3, 3), stride=(1, 1), padding=(1, 1),
                                             count_include_pad=False)], dts[:1], ("nchw", "channels_last"))
    trains = train_cases(device, (16, 64), ("sgd",)) + train_cases(device, (64,), ("adam",))
    return conv_cases(convs, device) + pool_cases(pools, device) + trains


FULL_AXES = {"batch": [1, 4, 32, 64], "in_channels": [3, 16, 64, 128], "out_channels": [16, 64, 128],
             "height": [14, 56, 112], "kernel": [1, 5, 7], "stride": [2, 3], "padding": [0, 2, "same", "valid"],
             "dilation": [2, 3], "groups": [2, 8, "depthwise"]}


def _full(device: str) -> list[Case]:
    gpu = device == "cuda"
    base = ConvProblem(N=32 if gpu else 8, C=64, H=28, W=28, K=64, R=3, S=3, padding=(1, 1))
    axes = FULL_AXES if not gpu else {**FULL_AXES, "batch": [1, 8, 128, 256], "in_channels": [3, 16, 128, 256],
                                      "out_channels": [16, 128, 256]}
    problems = one_axis_at_a_time(base, axes, CONV_AXES)
    dts = _dtypes(device, ("float32", "bfloat16"))
    convs = crossed(problems, dts, ("nchw", "channels_last"))
    pool_specs = [dict(op="max_pool2d", kernel=(2, 2)),
                  dict(op="max_pool2d", kernel=(3, 3), stride=(2, 2), padding=(1, 1), return_indices=True),
                  dict(op="max_pool2d", kernel=(3, 3), stride=(2, 2), dilation=(2, 2), ceil_mode=True),
                  dict(op="avg_pool2d", kernel=(2, 2)),
                  dict(op="avg_pool2d", kernel=(3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=True),
                  dict(op="avg_pool2d", kernel=(3, 3), stride=(1, 1), padding=(1, 1), count_include_pad=False),
                  dict(op="avg_pool2d", kernel=(7, 7), divisor_override=16)]
    pools = []
    for N, C, H in [(base.N, 64, 56), (base.N, 256, 14), (1, 64, 112)]:
        pools += _pools(N, C, H, pool_specs, dts, ("nchw", "channels_last"))
    trains = train_cases(device, (1, 64, 1024) if gpu else (1, 64, 256), models=("simplecnn", "basiccnn"))
    return conv_cases(convs, device) + pool_cases(pools, device) + trains


def resnet50_layers(batch: int) -> list[tuple[ConvProblem, int]]:
    """The distinct conv layers of torchvision's ResNet-50 at 224×224, with how often each occurs — read off the
    model itself (bench/measure/models.py: meta tensors, no weights, no download) so the list cannot drift."""
    return [(layer.problem, layer.count) for layer in model_layers(["resnet50"], 224, batch)
            if layer.problem.op == "conv2d"]


def model_cases(names: Iterable[str], image_size: int, batch: int, device: str, dtypes: Iterable[str] = ("float32",),
                layouts: Iterable[str] = ("nchw",), train_batch: int | None = None) -> list[Case]:
    """The distinct conv and pool layers of torchvision models (conv2d and conv2d_backward cases for each conv, one
    case per pool), each case carrying its per-model counts (``Case.models``), in every dtype and layout; then, when
    ``train_batch`` is given, one SGD training step per model (``NetTrainProblem``) of that batch in float32 —
    the step's check needs enough values per BatchNorm channel (reference/net_agreement.py)."""
    cases = []
    for dt in dtypes:
        for lay in layouts:
            for layer in model_layers(list(names), image_size, batch, dt, lay):
                ops = CONV_OPS if layer.problem.op == "conv2d" else (layer.problem.op,)
                cases += [Case(op, layer.problem, device, models=layer.models_text()) for op in ops]
    if train_batch:
        cases += [Case("train_step", NetTrainProblem(name, train_batch, image_size), device) for name in names]
    return cases


def _zoo(device: str) -> list[Case]:
    image_size, batch = ZOO_SHAPE[device]
    if device == "cuda":  # what networks train in on a GPU; forward and backward
        return model_cases(ZOO, image_size, batch, device, ("bfloat16",), ("channels_last",))
    # the CPU's zoo is the forward pass only: 143 layers fit the quick suite's 5 minutes on 2 cores, 286 would not
    return [c for c in model_cases(ZOO, image_size, batch, device) if c.op != "conv2d_backward"]


def _resnet50(device: str) -> list[Case]:
    gpu = device == "cuda"
    layers = [p for p, _ in resnet50_layers(32 if gpu else 1)]
    if gpu:  # the issue-5 comparison (bf16 channels_last) and an honest fp32 / TF32 pair
        convs = crossed(layers, ("bfloat16",), ("channels_last",)) + crossed(layers, ("float32", "tf32"), ("nchw",))
    else:
        convs = crossed(layers, ("float32",), ("nchw",))
    stem_pool = PoolProblem("max_pool2d", layers[0].N, 64, 112, 112, kernel=(3, 3), stride=(2, 2), padding=(1, 1))
    pools = crossed([stem_pool], ("bfloat16",) if gpu else ("float32",), ("channels_last",) if gpu else ("nchw",))
    return conv_cases(convs, device) + pool_cases(pools, device)


def simplecnn_layers(batch: int) -> list:
    """SimpleCNN's conv and pool layers: Conv(1→16, k5, p2) → MaxPool 2 → Conv(16→32, k5, p2) → MaxPool 2."""
    return [ConvProblem(N=batch, C=1, H=28, W=28, K=16, R=5, S=5, padding=(2, 2)),
            PoolProblem("max_pool2d", batch, 16, 28, 28, kernel=(2, 2)),
            ConvProblem(N=batch, C=16, H=14, W=14, K=32, R=5, S=5, padding=(2, 2)),
            PoolProblem("max_pool2d", batch, 32, 14, 14, kernel=(2, 2))]


def _simplecnn(device: str) -> list[Case]:
    batches = (1, 64, 512, 4096) if device == "cuda" else (1, 16, 64, 256)
    cases = []
    for b in batches:
        for layer in simplecnn_layers(b):
            if isinstance(layer, ConvProblem):
                cases += conv_cases([layer], device)
            else:
                cases += pool_cases([layer], device)
    return cases + train_cases(device, batches) + train_cases(device, (64,), models=("basiccnn",))


def _pool_large(device: str) -> list[Case]:
    # Far larger than any last-level cache (GPU: 411 MB of bf16 input against a 50–60 MB L2; CPU: 26 MB against
    # 32 MB of L3 shared by everyone), so a pool streams from DRAM and its rate reads against the copy bandwidth.
    gpu = device == "cuda"
    N, C, H = (64, 256, 112) if gpu else (8, 64, 112)
    specs = [dict(op="max_pool2d", kernel=(2, 2)), dict(op="max_pool2d", kernel=(3, 3), stride=(2, 2), padding=(1, 1)),
             dict(op="avg_pool2d", kernel=(2, 2)),
             dict(op="avg_pool2d", kernel=(3, 3), stride=(1, 1), padding=(1, 1), count_include_pad=False)]
    return pool_cases(_pools(N, C, H, specs, ("bfloat16",) if gpu else ("float32",), ("channels_last", "nchw")),
                      device)


def _train(device: str) -> list[Case]:
    # the batches people train SimpleCNN at on each device, in the dtype they would train in
    gpu = device == "cuda"
    return train_cases(device, (256, 4096) if gpu else (64, 256), dtypes=("bfloat16",) if gpu else ("float32",))
