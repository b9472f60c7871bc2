"""convbench's measuring side: suites, timing, the run/report/compare/merge CLI. Imports reference and kernels;
nothing imports bench."""
