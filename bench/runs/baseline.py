"""``bench baseline promote RUN_DIR``: make a run the baseline that ``bench compare RUN`` uses for its environment.

A baseline lives in ``results/baselines/<device_key>/`` (see ``bench.runs.schema.device_key``): one per environment
fingerprint (device, device name, threads, torch, CPU model), because runs from different environments are never
compared. Promoting copies the run's data files (not its plots) and a ``BASELINE.json`` that says where it came
from; an existing baseline is replaced atomically — the new one is assembled in a temporary directory beside it and
renamed into place, and the old one is removed only after that. Torch-free.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from pathlib import Path

from .schema import device_key, env_groups, load_run

DEFAULT_ROOT = Path("results/baselines")
#: the files a baseline keeps; plots and report.html (which links the plots) stay with the run
FILES = ("results.csv", "results.jsonl", "env.json", "pytest-benchmark.json", "report.md")


def _check(run_dir: Path) -> tuple[dict, int]:
    """The run's env and row count, or ValueError saying why it cannot be a baseline."""
    env, rows = load_run(run_dir)
    if env.get("complete") is False:
        raise ValueError(f"run_dir {run_dir} is an incomplete run (env.json complete=false): finish it with "
                         "--resume before promoting it")
    groups = env_groups(env, rows)
    if len(groups) > 1:  # a baseline is one environment's
        raise ValueError(f"run_dir {run_dir} holds rows of {len(groups)} environments ({', '.join(groups)}): "
                         f"promote one of its parts, which `bench report {run_dir}` writes to {run_dir}/by-device/")
    return env, len(rows)


def promote(run_dir: Path, root: Path = DEFAULT_ROOT) -> Path:
    """Copy ``run_dir`` to ``root/<device_key>/`` (replacing the baseline there) and return that directory."""
    run_dir, root = Path(run_dir), Path(root)
    env, n_rows = _check(run_dir)
    key = device_key(env)
    dest = root / key
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}.new-"))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; baselines are for everyone to read
        for name in FILES:
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, tmp / name)
        info = {"source": str(run_dir), "commit": (env.get("git") or {}).get("commit"),
                "promoted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "device_key": key, "rows": n_rows}
        (tmp / "BASELINE.json").write_text(json.dumps(info, indent=2) + "\n")
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}.old-"))
            os.replace(dest, old / key)
        try:
            os.replace(tmp, dest)
        except OSError:
            if old is not None:
                os.replace(old / key, dest)  # put the previous baseline back
                old.rmdir()
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def find(env: dict, root: Path = DEFAULT_ROOT) -> Path | None:
    """The baseline directory for this environment's device key, or None when there is none."""
    path = Path(root) / device_key(env)
    return path if (path / "env.json").is_file() else None
