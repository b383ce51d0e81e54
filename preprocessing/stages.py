"""Cached, atomically written pipeline stages.

A stage writes into ``<name>.tmp/`` and renames it to ``<name>/`` only when complete, with a
``_SUCCESS.json`` marker holding the stage key (a hash of its settings and inputs). On a
re-run, a stage whose marker matches is skipped; a half-written or stale stage is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

MARKER = "_SUCCESS.json"


def fingerprint(paths: list[Path]) -> str:
    """Hash of the input files' names, sizes and modification times."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        stat = Path(path).stat()
        digest.update(f"{Path(path).name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def stage_key(*parts: str) -> str:
    """Combine settings digests and upstream keys into one stage key."""
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def is_done(out: Path, name: str, key: str) -> bool:
    """True when ``out/name`` is complete and was built with ``key``."""
    marker = out / name / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("key") == key
    except (OSError, json.JSONDecodeError):
        return False


def read_marker(out: Path, name: str) -> dict:
    """The marker of a finished stage (its key, summary and timing)."""
    return json.loads((out / name / MARKER).read_text())


def run_stage(out: Path, name: str, key: str, build: Callable[[Path], dict]) -> tuple[dict, bool]:
    """Run ``build(tmp_dir)`` unless the stage is done; returns (marker, skipped)."""
    if is_done(out, name, key):
        return read_marker(out, name), True
    tmp = out / f"{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = time.perf_counter()
    summary = build(tmp)
    marker = {"key": key, "seconds": round(time.perf_counter() - started, 3),
              "summary": summary}
    (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True, default=str) + "\n")
    final = out / name
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return marker, False
