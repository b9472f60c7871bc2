"""Benchmark suites: their names, what each is, and how hard to measure each case — without torch, so that the CLI
lists and parses them in a moment. Which cases a suite holds is bench/measure/sweeps.py, built on first use.

To add a suite: a builder ``_name(device) -> list[Case]`` in sweeps.py and one ``Suite`` entry in ``SUITES`` here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """How a suite measures each (case, implementation).

    Samples are taken in interleaved rounds until the 95% confidence interval of the median is within
    ``rel_precision`` of it (after ``min_samples``), or ``max_samples`` / ``max_seconds`` is reached. On a CPU a
    sample repeats the call until it lasts ``target_sample_ms`` (loop calibration); on a GPU each sample is one
    call between CUDA events, with the L2 cache flushed before it.
    """

    min_samples: int = 5
    max_samples: int = 40
    max_seconds: float = 1.5
    target_sample_ms: float = 10.0
    warmup_ms: float = 50.0
    rel_precision: float = 0.02


SMOKE_TIMING = Timing(min_samples=3, max_samples=10, max_seconds=0.25, target_sample_ms=5.0, warmup_ms=10.0,
                      rel_precision=0.05)
QUICK_TIMING = Timing(min_samples=7, max_samples=40, max_seconds=1.0, target_sample_ms=10.0, warmup_ms=30.0,
                      rel_precision=0.02)
#: real networks' layers: many small cases, each timed briefly (the zoo suite, run --model)
ZOO_TIMING = Timing(min_samples=5, max_samples=20, max_seconds=0.2, target_sample_ms=5.0, warmup_ms=10.0,
                    rel_precision=0.03)
FULL_TIMING = Timing(min_samples=10, max_samples=100, max_seconds=4.0, target_sample_ms=20.0, warmup_ms=100.0,
                     rel_precision=0.01)


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    timing: Timing
    builder: str  # the name of its builder in bench/measure/sweeps.py: device → cases

    def build(self, device: str) -> list:
        from . import sweeps  # reference and torch: loaded when cases are built, never to list or parse the suites

        return getattr(sweeps, self.builder)(device)

    def cases(self, device: str) -> list:
        seen, out = set(), []
        for case in self.build(device):
            if case.key not in seen:
                seen.add(case.key)
                out.append(case)
        return out


def suite_hash(cases: Iterable, timing: Timing) -> str:
    """Identity of what a run measures: the case keys and the timing policy."""
    text = json.dumps({"cases": [c.key for c in cases], "timing": dataclasses.asdict(timing)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


SUITES: dict[str, Suite] = {s.name: s for s in [
    Suite("smoke", "three conv problems covering every axis and four pools; < 60 s on 2 CPU cores",
          SMOKE_TIMING, "_smoke"),
    Suite("quick", "one axis at a time around a base conv, both layouts, four pools, three SimpleCNN training "
                   "steps; < 5 min on 2 CPU cores",
          QUICK_TIMING, "_quick"),
    Suite("full", "every axis with 2–4 values, every dtype and layout, seven pool configurations at three sizes",
          FULL_TIMING, "_full"),
    Suite("resnet50", "the 23 distinct conv layers of ResNet-50 (224×224) and its stem max-pool", QUICK_TIMING,
          "_resnet50"),
    Suite("simplecnn", "SimpleCNN's conv and pool layers and its whole training step (SGD, Adam) across batch sizes",
          QUICK_TIMING, "_simplecnn"),
    Suite("pool-large", "max and avg pooling on tensors far larger than the last-level cache, both layouts "
                        "(read against the copy bandwidth)", QUICK_TIMING, "_pool_large"),
    Suite("zoo", "the distinct conv and pool layers of seven torchvision models: depthwise 3×3/5×5/7×7, grouped, "
                 "dilated, patchify stems, ceil-mode and padded pools (CPU: 64×64, batch 2, fp32, forward; GPU: "
                 "224×224, batch 32, bf16 channels_last, forward and backward); each model's whole-network conv + "
                 "pool time per implementation in the report; < 5 min on 2 CPU cores", ZOO_TIMING, "_zoo"),
    Suite("train", "the SimpleCNN training step at the batches it is trained at (GPU: 256 and 4096 in bf16; CPU: 64 "
                   "and 256), SGD and Adam", QUICK_TIMING, "_train"),
]}
#: the suites' names, for the CLI's choices
SUITE_NAMES = tuple(SUITES)
