"""convbench implementations: one module per implementation, each registered with ``@register``.

>>> import kernels
>>> kernels.names()
('naive', 'im2col', 'cudnn', 'compile', 'triton')
>>> kernels.get("im2col").conv2d(x, w, stride=2, padding="valid")

Every public module of this package is imported on first use, so adding an implementation is adding one module or
package (plus an ``ORDER`` entry to place it in tables); bench, report and compare pick it up unchanged. Implementations
that live outside this package are loaded from installed packages' ``convbench.implementations`` entry points
(``ENTRY_POINTS``; see examples/my_conv) and from the modules named in ``CONVBENCH_PLUGINS`` (comma-separated).

A module that fails to import is recorded, not fatal (``load_errors``; ``python -m bench list`` shows why), so one
broken module cannot take the others down. Only an implementation's *optional dependency being absent* may make it
unavailable instead (triton: ``ModuleNotFoundError`` for the ``triton`` package itself — still registered, its
``unavailable_reason`` says so); any other error of a built-in module is a bug: ``builtin_load_errors`` lists them,
and the test suite fails on any (tests/conftest.py ``implementation``, tests/test_import_rules.py).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import pkgutil
import traceback

from ._provenance import Record, note, recording
from ._provenance import merge as merge_facts
from .base import OPS, Implementation, device_type

__all__ = ["Implementation", "OPS", "device_type", "register", "names", "get", "all_implementations", "recording",
           "note", "Record", "merge_facts", "default_names", "load_errors", "builtin_load_errors"]

#: display order of the built-in implementations; others follow in registration order
#: the entry-point group through which an installed package adds implementations (``[project.entry-points.
#: "convbench.implementations"] my_conv = "my_conv"`` in its pyproject.toml; the value is a module that registers
#: with ``@register``, or an ``Implementation`` subclass, registered when loaded)
ENTRY_POINTS = "convbench.implementations"
ORDER = ("naive", "im2col", "cudnn", "compile", "compile-max-autotune", "compile-max-autotune-no-cudagraphs",
         "triton")

_REGISTRY: dict[str, Implementation] = {}
_LOAD_ERRORS: dict[str, str] = {}
_BUILTIN_FAILED: set[str] = set()  # keys of _LOAD_ERRORS that are modules of this package
_loaded = False


def register(cls: type[Implementation]) -> type[Implementation]:
    """Class decorator: instantiate and register an implementation under ``cls.name``."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__} must set a 'name' to be registered")
    if cls.name in _REGISTRY:
        raise ValueError(f"an implementation named {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls()
    return cls


def _load() -> None:
    """Import every implementation module once. A module that fails to import is remembered, not fatal."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name == "base":  # helpers, not implementations
            continue
        try:
            importlib.import_module(f"{__name__}.{info.name}")
        except Exception as exc:  # a broken module must not take the other implementations down with it
            _LOAD_ERRORS[info.name] = _describe(exc)
            _BUILTIN_FAILED.add(info.name)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINTS):  # what `pip install` registered
        try:
            found = ep.load()
            if isinstance(found, type) and issubclass(found, Implementation) and found.name not in _REGISTRY:
                register(found)  # an entry point may name the class itself, decorated or not
        except Exception as exc:
            _LOAD_ERRORS[f"{ep.name} = {ep.value}"] = _describe(exc)
    for module in filter(None, (m.strip() for m in os.environ.get("CONVBENCH_PLUGINS", "").split(","))):
        try:
            importlib.import_module(module)
        except Exception as exc:
            _LOAD_ERRORS[module] = _describe(exc)


def _describe(exc: BaseException) -> str:
    """'Type: message (file:line)' — the line being the last one of our code or a library's the import ran, not
    the import machinery's."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def names() -> tuple[str, ...]:
    """Registered implementation names, built-ins first in ORDER."""
    _load()
    known = [n for n in ORDER if n in _REGISTRY]
    return tuple(known + [n for n in _REGISTRY if n not in known])


def get(name: str) -> Implementation:
    """The implementation registered as ``name``; ValueError naming the choices otherwise."""
    _load()
    if not isinstance(name, str):
        raise TypeError(f"kernels.get: 'name' must be a str, got {type(name).__name__}")
    if name not in _REGISTRY:
        why = "".join(f" ({module} failed to import: {err})" for module, err in _LOAD_ERRORS.items())
        raise ValueError(f"kernels.get: unknown implementation 'name'={name!r}{why}; registered: {', '.join(names())}")
    return _REGISTRY[name]


def default_names() -> tuple[str, ...]:
    """The implementations a run takes when none is named: every registered one except opt-in variants."""
    return tuple(n for n in names() if _REGISTRY[n].default)


def all_implementations() -> list[Implementation]:
    return [_REGISTRY[n] for n in names()]


def load_errors() -> dict[str, str]:
    """Modules that could not be imported, with the reason (shown by ``python -m bench list``): built-in modules by
    their name in this package, entry points as ``name = value``, plugins by the name given in CONVBENCH_PLUGINS."""
    _load()
    return dict(_LOAD_ERRORS)


def builtin_load_errors() -> dict[str, str]:
    """The modules of this package that failed to import ({'triton': 'ImportError: ...'}). Always empty on a
    working install: a missing optional dependency leaves its implementation registered and unavailable instead."""
    _load()
    return {m: e for m, e in _LOAD_ERRORS.items() if m in _BUILTIN_FAILED}
