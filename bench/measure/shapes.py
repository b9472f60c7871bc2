"""``bench profile --shape N=8,C=256,…``: one explicit problem as cases, instead of a suite's."""

from __future__ import annotations

from reference import ConvProblem, PoolProblem, TrainProblem

from ..runs.schema import UsageError
from .cases import Case

SHAPE_KEYS = {"N", "C", "H", "W", "K", "R", "S", "stride", "padding", "dilation", "groups", "bias"}
PAIRS = ("stride", "padding", "dilation")


def parse_shape(text: str, ops: list[str], dtypes: list[str], layouts: list[str], device: str) -> list:
    """``--shape N=8,C=256,H=14,W=14,K=256,R=3,stride=1,padding=1`` as one case per op × dtype × layout (pools:
    R is the window, K is ignored)."""
    values: dict[str, str] = {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        if "=" not in item:
            raise UsageError(f"--shape expects KEY=VALUE pairs (N, C, H, W, K, R, S, stride, padding, dilation, "
                             f"groups, bias), got {item!r}")
        k, v = (s.strip() for s in item.split("=", 1))
        if k not in SHAPE_KEYS:
            raise UsageError(f"--shape: unknown key {k!r}; keys: {', '.join(sorted(SHAPE_KEYS))}")
        values[k] = v
    missing = {"N", "C", "H", "W"} - set(values)
    if missing:
        raise UsageError(f"--shape needs {', '.join(sorted(missing))}")

    def num(k: str, default=None):
        """An int; stride, padding and dilation may be HxW (a pair) and padding same/valid."""
        if k not in values:
            return default
        v = values[k]
        if k == "padding" and v in ("same", "valid"):
            return v
        try:
            parts = [int(p) for p in v.split("x")]
        except ValueError:
            parts = []
        if len(parts) == 1:
            return parts[0] if k not in PAIRS else (parts[0], parts[0])
        if len(parts) == 2 and k in PAIRS:
            return tuple(parts)
        raise UsageError(f"--shape {k}={v!r}: expects an integer" + (" or HxW" if k in PAIRS else ""))

    empty = [k for k in ("N", "C", "H", "W") if isinstance(num(k), int) and num(k) < 1]
    if empty:
        raise UsageError(f"--shape {text}: {', '.join(empty)} must be at least 1 (a zero-size problem has no work "
                         f"to time)")
    cases = []
    for op in ops:
        for dtype in dtypes:
            for layout in layouts:
                try:
                    if op in ("conv2d", "conv2d_backward"):
                        R = num("R", 3)
                        p = ConvProblem(N=num("N"), C=num("C"), H=num("H"), W=num("W"), K=num("K", num("C")), R=R,
                                        S=num("S", R), stride=num("stride", (1, 1)), padding=num("padding", (0, 0)),
                                        dilation=num("dilation", (1, 1)), groups=num("groups", 1),
                                        bias=values.get("bias", "1") not in ("0", "false"), dtype=dtype,
                                        layout=layout)
                    elif op in ("max_pool2d", "avg_pool2d"):
                        R = num("R", 2)
                        p = PoolProblem(op=op, N=num("N"), C=num("C"), H=num("H"), W=num("W"), kernel=(R, num("S", R)),
                                        stride=num("stride"), padding=num("padding", (0, 0)), dtype=dtype,
                                        layout=layout)
                    else:
                        raise UsageError(f"--shape describes a conv or pool; --op {op} has no shape")
                except (ValueError, TypeError) as exc:
                    raise UsageError(f"--shape {text}: {str(exc).splitlines()[0]}") from None
                cases.append(Case(op, p, device))
    return cases


def train_case(model: str, batch: int, optimizer: str, dtype: str, device: str) -> Case:
    """One training step of a reference CNN as a case (``bench profile`` without a shape or suite)."""
    return Case("train_step", TrainProblem(model, batch, optimizer, dtype), device)
