"""The GPU window's one archive: everything a window wrote, in one ``.tar.gz`` that fits what a lent machine returns.

From a lent GPU machine only the files in one output folder come back: at most 8 files, each ≤ 16 MiB and 64 MiB in
all, no deeper than ``OUT/a/b/file``; a command killed at its limit loses everything else. So the window rewrites a
single archive after every phase (``pack``; written beside, then renamed, so a kill mid-write leaves the previous
whole one), and ``unpack`` restores it here as ``results/gpu/<device>-<date>/`` for one ``git add``.

The archive holds one top-level folder, the run's name; ``MANIFEST.json`` in it lists every file with its size and
what was left out to stay under the size limit (largest optional files first: traces, plots, then log heads).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from pathlib import Path

#: what one returned file may weigh (the device tool's limit is 16 MiB; keep a margin for the tar/gzip framing)
MAX_ARCHIVE_BYTES = 15 << 20
#: a log longer than this keeps only its last part (the end of a log says why it ended)
LOG_TAIL_BYTES = 256 << 10
MANIFEST = "MANIFEST.json"
#: dropped first, in this order, when the archive would be too large: nothing here is needed to read the results
OPTIONAL = ("traces/", "plots/", ".png", ".html", ".log")


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST and not p.name.endswith(".tmp"))


def _member(rel: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(rel)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
    return info, io.BytesIO(data)


def _read(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".log" and len(data) > LOG_TAIL_BYTES:
        return b"[... head cut by bench.pack ...]\n" + data[-LOG_TAIL_BYTES:]
    return data


def _build(root: Path, name: str, files: list[Path], manifest: dict) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for path in files:
            tar.addfile(*_member(f"{name}/{path.relative_to(root).as_posix()}", _read(path)))
        tar.addfile(*_member(f"{name}/{MANIFEST}", json.dumps(manifest, indent=1).encode()))
    return buf.getvalue()


def _rank(root: Path, path: Path) -> tuple[int, int]:
    """Drop order: optional kinds first (by OPTIONAL's order), within a kind the largest first."""
    rel = path.relative_to(root).as_posix()
    kind = next((i for i, pat in enumerate(OPTIONAL) if pat in rel or rel.endswith(pat)), len(OPTIONAL))
    return kind, -path.stat().st_size


def pack(root: Path, archive: Path, name: str | None = None, limit: int = MAX_ARCHIVE_BYTES) -> dict:
    """Write ``root`` as ``archive`` (one top-level folder ``name``, default root's name) under ``limit`` bytes,
    leaving out optional files as needed; returns the manifest. The archive is replaced atomically."""
    name = name or root.name
    files = _files(root)
    dropped: list[str] = []
    droppable = sorted((p for p in files if _rank(root, p)[0] < len(OPTIONAL)), key=lambda p: _rank(root, p))
    while True:
        manifest = {"name": name, "packed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "files": {p.relative_to(root).as_posix(): p.stat().st_size for p in files},
                    "left_out": dropped}
        data = _build(root, name, files, manifest)
        if len(data) <= limit or not droppable:
            break
        gone = droppable.pop(0)
        files.remove(gone)
        dropped.append(f"{gone.relative_to(root).as_posix()} ({gone.stat().st_size} B)")
    if len(data) > limit:
        manifest["over_limit"] = f"{len(data)} B > {limit} B with every optional file left out"
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, archive)
    manifest["archive_bytes"] = len(data)
    return manifest


def read_name(archive: Path) -> str:
    """The run's name: the archive's one top-level folder. ValueError if it has none or several, or unsafe paths,
    or is no gzipped tar at all."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
    except tarfile.TarError as exc:  # not an OSError: the caller's refusal would miss it
        raise ValueError(f"not a gzipped tar: {exc}") from None
    tops = set()
    for m in members:
        parts = Path(m.name).parts
        if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()):
            raise ValueError(f"{archive}: unsafe member {m.name!r}")
        tops.add(parts[0])
    if len(tops) != 1:
        raise ValueError(f"{archive}: expected one top-level folder, found {sorted(tops) or 'none'}")
    return tops.pop()


def unpack(archive: Path, into: Path) -> Path:
    """Extract the archive under ``into``; returns the run directory. The caller checks it does not exist yet."""
    name = read_name(archive)
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(into, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(into)
    return into / name
