"""Run directories joined and split: ``bench merge OUT PART...`` joins those of ``--shard K/N`` runs into one;
``split_by_device`` splits a run of several environments into one run directory each.

When merging, rows are keyed by (case, implementation); a key present in several parts keeps the first (and says
so). The parts must come from one environment (device, threads, torch, CPU model), else exit 3 — numbers from
different machines do not belong in one table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from .schema import JsonlWriter, device_key, env_groups, finalize, fingerprint, read_jsonl, row_id


def merge_runs(out: Path, parts: list[Path]) -> int:
    envs, rows, seen, dupes = [], [], set(), 0
    for part in parts:
        env_path = part / "env.json"
        if not env_path.exists():
            print(f"convbench merge: {part} has no env.json", file=sys.stderr)
            return 2
        env = json.loads(env_path.read_text())
        if envs and fingerprint(env) != fingerprint(envs[0]):
            print(f"convbench merge: {part} comes from another environment: {fingerprint(env)} vs "
                  f"{fingerprint(envs[0])}", file=sys.stderr)
            return 3
        envs.append(env)
        for r in read_jsonl(part / "results.jsonl"):
            if row_id(r) in seen:
                dupes += 1
                continue
            seen.add(row_id(r))
            rows.append(r)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "results.jsonl").exists():
        print(f"convbench merge: {out} already holds results.jsonl; choose an empty directory", file=sys.stderr)
        return 2
    writer = JsonlWriter(out / "results.jsonl")
    for r in rows:
        writer.write(r)
    writer.close()
    merged = dict(envs[0])
    merged.update(start=min(e["start"] for e in envs), end=max(e.get("end") or e["start"] for e in envs), shard=None,
                  merged_from=[{"dir": str(p), "shard": e.get("shard"), "host": e.get("host"), "start": e["start"],
                                "end": e.get("end"), "complete": e.get("complete")} for p, e in zip(parts, envs)],
                  warnings=list(dict.fromkeys(w for e in envs for w in e.get("warnings", []))))
    suites = {(e.get("suite"), e.get("suite_hash")) for e in envs}
    if len({s for s, _ in suites}) > 1:
        merged["warnings"].append(f"merged parts of different suites: {sorted(suites)}")
    if dupes:
        merged["warnings"].append(f"{dupes} rows appeared in more than one part; the first was kept")
    finalize(out, rows, merged)
    print(f"merged {len(parts)} parts, {len(rows)} rows → {out}")
    return 0


def split_by_device(run_dir: Path, env: dict) -> list[Path]:
    """A run of several environments (``run --executor ray`` over different devices) as one ordinary run
    directory per environment, ``DIR/by-device/<env key>/``: that environment's rows, and env.json with the
    node's environment under the run's own fields — so compare, history, baseline and report each take one."""
    rows = read_jsonl(run_dir / "results.jsonl")
    dirs = []
    for key, (node, frame) in env_groups(env, pd.DataFrame(rows)).items():
        part = [rows[i] for i in frame.index]  # the rows as written, not as a frame round-trips them
        sub = run_dir / "by-device" / key
        sub.mkdir(parents=True, exist_ok=True)
        sub_env = {**env, **{k: v for k, v in node.items() if k not in ("start", "end", "argv", "suite", "warnings")},
                   "nodes": {k: n for k, n in (env.get("nodes") or {}).items()
                             if (n.get("env_key") or device_key(n)) == key},
                   "split_from": str(run_dir), "env_key": key}
        (sub / "results.jsonl").unlink(missing_ok=True)
        writer = JsonlWriter(sub / "results.jsonl")
        for r in part:
            writer.write(r)
        writer.close()
        finalize(sub, part, sub_env)
        dirs.append(sub)
    return dirs
