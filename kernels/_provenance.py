"""What a call actually ran, told by the implementation from inside the call (never predicted from a probe).

Implementations call ``note(backend=..., **facts)`` on the path they take: im2col names its branch, triton its
kernel paths and autotuned configs, compile what Inductor generated. Nothing is recorded unless a caller asks:

>>> with kernels.recording() as rec:
...     kernels.get("im2col").conv2d(x, w)
>>> rec.backend, rec.facts
('native-nhwc:cols-brgemm', {...})

Outside ``recording`` a note costs one thread-local lookup, so timed calls stay clean (the bench records only the
untimed validation call). Several notes in one call (a backward's dgrad and wgrad, a model's layers) are kept in
order; ``backend`` joins their distinct labels with ``+``. Blocks nest: a note goes to the innermost one only, so a
caller can set apart what a sub-step ran (the forward a backward row needs) from the call it labels.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field

_local = threading.local()


@dataclass
class Record:
    """The notes of the calls made inside one ``recording()`` block."""

    labels: list[str] = field(default_factory=list)
    facts: dict = field(default_factory=dict)

    @property
    def backend(self) -> str | None:
        return "+".join(dict.fromkeys(self.labels)) or None


@contextlib.contextmanager
def recording():
    """Collect every ``note`` made by calls inside the block (an inner block takes the notes of its own calls)."""
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    rec = Record()
    stack.append(rec)
    try:
        yield rec
    finally:
        stack.remove(rec)


def active() -> bool:
    """Whether a note would be kept (implementations use it to skip gathering costly facts)."""
    return bool(getattr(_local, "stack", None))


def note(backend: str | None = None, **facts) -> None:
    """Record what this call ran: a ``backend`` label and/or facts (merged: lists extended, dicts updated)."""
    stack = getattr(_local, "stack", None)
    if stack:
        rec = stack[-1]
        if backend:
            rec.labels.append(backend)
        merge(rec.facts, facts)


def merge(into: dict, facts: dict) -> dict:
    """Merge ``facts`` into ``into`` (lists extended, dicts updated, anything else replaced); returns ``into``."""
    for k, v in facts.items():
        if isinstance(v, list) and isinstance(into.get(k), list):
            into[k] = into[k] + v
        elif isinstance(v, dict) and isinstance(into.get(k), dict):
            into[k] = {**into[k], **v}
        else:
            into[k] = v
    return into
