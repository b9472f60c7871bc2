"""A pytest plugin that streams every test's outcome to a JSON-lines file as it finishes
(``-p bench.commands.gpu_pytest``).

pytest writes its junit XML only when it ends; the GPU window kills its checks at a deadline, and a killed pytest
would leave nothing. This plugin appends one line per test (nodeid, outcome, seconds, a short reason) to the file
named by ``CONVBENCH_PYTEST_STREAM``, flushed at once — under xdist from the controller only, which receives every
worker's reports — and ``junit`` turns such a file (``bench.runs.schema.read_jsonl``) into junit XML after the fact,
whatever became of pytest.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from ..measure.faults import inject

ENV = "CONVBENCH_PYTEST_STREAM"


def _reason(report) -> str:
    if report.passed:
        return ""
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])[:300]
    text = getattr(report, "longreprtext", "") or str(report.longrepr or "")
    lines = [ln for ln in text.splitlines() if ln.startswith("E ")] or text.splitlines()[-1:]
    return " | ".join(ln[2:].strip() if ln.startswith("E ") else ln for ln in lines[:4])[:500]


def pytest_configure(config) -> None:
    inject("pytest")  # a rehearsal's injected fault (bench/measure/faults.py); nothing unless CONVBENCH_FAULT is set


def pytest_runtest_logreport(report) -> None:
    path = os.environ.get(ENV)
    if not path or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    # one line per test: the call phase, or setup when it failed or skipped (the test then has no call phase)
    if report.when == "call" or (report.when == "setup" and not report.passed) or \
            (report.when == "teardown" and report.failed):
        outcome = "error" if report.when != "call" and report.failed else report.outcome
        line = {"nodeid": report.nodeid, "outcome": outcome, "when": report.when,
                "seconds": round(report.duration, 3), "reason": _reason(report)}
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


def counts(lines: list[dict]) -> dict[str, int]:
    """Tests per outcome."""
    return dict(Counter(r["outcome"] for r in lines))


def junit(lines: list[dict], target: Path, name: str = "convbench-gpu-window", note: str = "") -> None:
    """Write junit XML for the streamed tests (``note``: e.g. 'killed at its deadline: N tests did not run')."""
    c = counts(lines)
    suite = ET.Element("testsuite", name=name, tests=str(len(lines)), failures=str(c.get("failed", 0)),
                       errors=str(c.get("error", 0)), skipped=str(c.get("skipped", 0)),
                       time=f"{sum(r['seconds'] for r in lines):.3f}")
    if note:
        ET.SubElement(ET.SubElement(suite, "properties"), "property", name="note", value=note)
    for r in lines:
        module, _, test = r["nodeid"].partition("::")
        case = ET.SubElement(suite, "testcase", classname=module.replace("/", ".").removesuffix(".py"),
                             name=test or module, time=f"{r['seconds']:.3f}")
        tag = {"failed": "failure", "error": "error", "skipped": "skipped"}.get(r["outcome"])
        if tag:
            ET.SubElement(case, tag, message=r["reason"][:300])
    root = ET.Element("testsuites")
    root.append(suite)
    ET.ElementTree(root).write(target, encoding="unicode")
