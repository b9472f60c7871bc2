"""Measuring: cases and suites, which to select, the worker that validates and times them, timing, peaks, the
environment, the ab/Callgrind peer, the profiler's capture. Imports ``bench.runs`` (never ``present`` or
``commands``), ``kernels`` and ``reference``."""
