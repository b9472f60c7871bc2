"""A scratch checkout in which one implementation is made a known fraction slower — the detection target of
``bench ab`` (``python tests/slowdown.py DEST IMPL FRACTION [spin|work]``, then ``bench ab HEAD DEST``).

The copy of ``kernels/`` and ``reference/`` gets a few lines appended to ``kernels/<IMPL>.py`` that wrap the
registered object's conv2d / max_pool2d / avg_pool2d and the calls its ``bind`` returns (what the bench times for a
forward op).

``spin`` (for time): after each forward call it spins for FRACTION of that call's own time, and in the backward an
identity autograd node on the inputs spins for FRACTION of the time since the backward reached the output (a hook
marks it), so forward and backward both take FRACTION longer. A spin is time, not work: under Callgrind it costs
what the interpreter's clock loop costs, not FRACTION of the op's instructions.

``work`` (for instruction counts): every round(1/FRACTION)-th forward call runs the op's forward once more, and
every round(1/FRACTION)-th backward through an output also walks the backward of a twin graph (built, with one
more forward, when the output needs gradients), so any window of that many consecutive calls executes FRACTION
more of the op's own work, deterministically.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PATCH = '''

# ---- test-only slowdown (tests/slowdown.py) ----------------------------------------------------------------------
def _slow_down(impl, fraction):
    import time as _time

    def spin(seconds):
        end = _time.perf_counter() + seconds
        while _time.perf_counter() < end:
            pass

    class _Mark(torch.autograd.Function):  # identity; its backward spins for a fraction of the op's backward
        @staticmethod
        def forward(ctx, clock, *xs):
            ctx.clock = clock
            return xs if len(xs) > 1 else xs[0]

        @staticmethod
        def backward(ctx, *grads):
            if ctx.clock:
                spin(fraction * (_time.perf_counter() - ctx.clock[-1]))
            return (None, *grads)

    def wrap(fn):
        def slowed(input, *args, **kwargs):
            clock = []
            leaves = [a for a in (input, *args) if isinstance(a, torch.Tensor) and a.requires_grad]
            if leaves:
                marked = _Mark.apply(clock, *leaves)
                marked = marked if isinstance(marked, tuple) else (marked,)
                swap = dict(zip(map(id, leaves), marked))
                input, args = swap.get(id(input), input), tuple(swap.get(id(a), a) for a in args)
            t0 = _time.perf_counter()
            out = fn(input, *args, **kwargs)
            spin(fraction * (_time.perf_counter() - t0))
            first = out[0] if isinstance(out, tuple) else out
            if leaves and first.requires_grad:
                first.register_hook(lambda g: clock.append(_time.perf_counter()))
            return out
        return slowed

    class _Twin(torch.autograd.Function):  # identity; every `every`-th backward also walks a twin graph once
        @staticmethod
        def forward(ctx, twin, out):
            ctx.twin = twin
            return out.view_as(out)

        @staticmethod
        def backward(ctx, grad):
            twin = ctx.twin
            twin["n"] += 1
            if twin["n"] % twin["every"] == 0:
                torch.autograd.grad(twin["out"], twin["leaves"], grad, retain_graph=True)
            return None, grad

    def repeat(fn):
        every, calls = max(1, round(1 / fraction)), [0]

        def copies(xs):  # detached leaves with the same requires_grad: the twin graph's inputs
            return [x.detach().requires_grad_(x.requires_grad) if isinstance(x, torch.Tensor) else x for x in xs]

        def slowed(input, *args, **kwargs):
            calls[0] += 1
            out = fn(input, *args, **kwargs)
            if calls[0] % every == 0:  # the forward's work once more, the same call
                fn(input, *args, **kwargs)
            first = out[0] if isinstance(out, tuple) else out
            if first.requires_grad:  # the backward's work once more every `every`-th backward, on a twin graph
                twin_in = copies((input, *args))
                twin_out = fn(*twin_in, **kwargs)
                twin_out = twin_out[0] if isinstance(twin_out, tuple) else twin_out
                leaves = [t for t in twin_in if isinstance(t, torch.Tensor) and t.requires_grad]
                first = _Twin.apply({"out": twin_out, "leaves": leaves, "n": 0, "every": every}, first)
                out = (first, *out[1:]) if isinstance(out, tuple) else first
            return out
        return slowed

    for name in ("conv2d", "max_pool2d", "avg_pool2d"):
        setattr(impl, name, (wrap if @MODE@ == "spin" else repeat)(getattr(impl, name)))

    bind = impl.bind  # what the bench times for a forward op: the bound call (Implementation.bind)

    def slowed_bind(op, *args, **kwargs):
        call = bind(op, *args, **kwargs)
        every, calls = max(1, round(1 / fraction)), [0]

        def slowed():
            if @MODE@ == "spin":
                t0 = _time.perf_counter()
                out = call()
                spin(fraction * (_time.perf_counter() - t0))
                return out
            calls[0] += 1
            out = call()
            if calls[0] % every == 0:  # the call's work once more
                call()
            return out
        return slowed

    impl.bind = slowed_bind


_slow_down(__import__("kernels")._REGISTRY[@CLASS@.name], @FRACTION@)
'''


def make(dest: Path, impl: str, fraction: float, mode: str = "spin") -> Path:
    if mode not in ("spin", "work"):
        raise ValueError(f"mode must be 'spin' or 'work', not {mode!r}")
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for pkg in ("kernels", "reference"):
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    module = dest / "kernels" / f"{impl}.py"  # the module or package is named as the registry names it
    if not module.exists():
        module = dest / "kernels" / impl / "__init__.py"
    text = module.read_text()
    cls = next(line.split()[1].split("(")[0] for line, prev in zip(text.splitlines()[1:], text.splitlines())
               if prev.strip() == "@register" and line.startswith("class "))
    module.write_text(text + PATCH.replace("@CLASS@", cls).replace("@FRACTION@", repr(fraction))
                      .replace("@MODE@", repr(mode)))
    return dest


if __name__ == "__main__":
    d, name, frac = sys.argv[1], sys.argv[2], float(sys.argv[3])
    print(make(Path(d), name, frac, *sys.argv[4:5]))
