"""Stored runs, torch-free: the rows and files of a run directory, statistics, compare, history, baselines, merging
and packing. Imports nothing else of bench, and never torch (import-linter: pyproject.toml)."""
