"""Time to first row of ``bench run`` on the smoke suite, as a user waits for it:
``python tests/time_to_first_row.py [--repo DIR] [--runs N] [-- extra run options]``.

Each run starts ``python -m bench run --suite smoke --no-report`` in DIR (default: this checkout) and polls its
results.jsonl every 50 ms: the first figure is command start → first row written, the second → first case finished
(as many rows of the first case as the run has implementations). Runs are one after another; the medians are
printed last. Time nothing else meanwhile: the figures include start-up, peaks, the worker's start and warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one(repo: Path, extra: list[str]) -> tuple[float, float]:
    out = Path(tempfile.mkdtemp(prefix="convbench-ttfr-")) / "run"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", "--suite", "smoke", "--out", str(out),
                             "--no-report", *extra], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = case = None
    while proc.poll() is None and case is None:
        time.sleep(0.05)
        path = out / "results.jsonl"
        if not path.exists():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows and first is None:
            first = time.perf_counter() - t0
        impls = len(json.loads((out / "env.json").read_text()).get("impls", [])) if (out / "env.json").exists() else 0
        if rows and impls and sum(r["case_key"] == rows[0]["case_key"] for r in rows) >= impls:
            case = time.perf_counter() - t0
    proc.kill()
    proc.wait()
    if first is None or case is None:
        raise SystemExit(f"the run in {out} ended before its first case finished (exit {proc.returncode})")
    return first, case


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("extra", nargs="*", help="more `bench run` options (after --)")
    args = p.parse_args()
    firsts, cases = [], []
    for i in range(args.runs):
        first, case = one(args.repo, args.extra)
        firsts.append(first)
        cases.append(case)
        print(f"run {i + 1}: first row {first:.2f} s, first case {case:.2f} s", flush=True)
    print(f"median of {args.runs}: first row {statistics.median(firsts):.2f} s, "
          f"first case {statistics.median(cases):.2f} s")


if __name__ == "__main__":
    main()
