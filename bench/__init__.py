"""convbench's harness, in four layers (ARCHITECTURE.md; import-linter checks them, pyproject.toml):
``commands`` (one module per CLI command) above ``present`` (charts, reports) and ``measure`` (cases, suites, timing,
workers), both above ``runs`` (stored runs: rows, statistics, compare, history; torch-free). Imports reference and
kernels; nothing imports bench."""
