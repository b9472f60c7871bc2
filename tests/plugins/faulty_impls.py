"""Implementations that misbehave on purpose, loaded by the harness tests through CONVBENCH_PLUGINS: the sweep
must record each failure and carry on."""

from __future__ import annotations

import os
import signal
import time

import torch.nn.functional as F

from kernels import register
from kernels.base import Implementation


class _Library(Implementation):
    """Correct pooling from torch, so only conv2d misbehaves."""

    def _max_pool2d(self, x, p):
        out = F.max_pool2d(x, **p.kwargs())
        return out if p.return_indices else (out, None)

    def _avg_pool2d(self, x, p):
        return F.avg_pool2d(x, **p.kwargs())


@register
class Hangs(_Library):
    name, summary = "test-hang", "never returns from conv2d"

    def _conv2d(self, x, weight, bias, p):
        time.sleep(3600)


@register
class Crashes(_Library):
    name, summary = "test-crash", "kills its own process in conv2d (as a segfault would)"

    def _conv2d(self, x, weight, bias, p):
        os.kill(os.getpid(), signal.SIGSEGV)


@register
class Wrong(_Library):
    name, summary = "test-wrong", "returns a conv2d result that is off by one"

    def _conv2d(self, x, weight, bias, p):
        return F.conv2d(x, weight, bias, **p.kwargs()) + 1


@register
class Raises(_Library):
    name, summary = "test-raise", "raises in conv2d"

    def _conv2d(self, x, weight, bias, p):
        raise RuntimeError("deliberate failure")
