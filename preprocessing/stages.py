"""Cached, atomically written pipeline stages.

A stage writes into ``<name>.tmp/`` and renames it to ``<name>/`` only when complete, with a
``_SUCCESS.json`` marker holding the stage key (a hash of its code version, settings and
inputs), the stage version and a digest of every file it wrote. On a re-run, a stage whose
marker matches is skipped; a half-written or stale stage is rebuilt, and
:func:`rebuild_reason` says why. Downstream stages key on the digests of the files they read,
so a rebuild that writes the same bytes does not cascade.
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


def output_digests(directory: Path) -> dict[str, str]:
    """sha256 (16 hex digits) of every file below ``directory`` except the marker."""
    digests = {}
    for path in sorted(Path(directory).rglob("*")):
        if path.is_file() and path.name != MARKER:
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(chunk)
            digests[path.relative_to(directory).as_posix()] = digest.hexdigest()[:16]
    return digests


def outputs_digest(out: Path, name: str, marker: dict, *prefixes: str) -> str:
    """One digest of the stage's files whose path starts with one of ``prefixes`` (all if none).

    Markers written before stages recorded their outputs are hashed from the files.
    """
    files = marker.get("outputs") or output_digests(out / name)
    chosen = sorted((p, d) for p, d in files.items() if not prefixes or p.startswith(prefixes))
    return hashlib.sha256(json.dumps(chosen).encode()).hexdigest()[:16]


def rebuild_reason(out: Path, name: str, key: str, version: int) -> str | None:
    """Why the stage must be (re)built, or None when it is done with this key."""
    marker = out / name / MARKER
    if not marker.is_file():
        return "incomplete" if (out / name).exists() else "not built yet"
    try:
        previous = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return "unreadable marker"
    if previous.get("key") == key:
        return None
    old = int(previous.get("version", 1))
    if old != version:
        return f"stage version changed (v{old} -> v{version})"
    return "settings or inputs changed"


def adopt(out: Path, name: str, key: str, version: int) -> dict:
    """Mark a finished stage as built with ``key``/``version`` (its files are kept as they are)."""
    path = out / name / MARKER
    marker = json.loads(path.read_text())
    marker.update(key=key, version=version, outputs=output_digests(out / name))
    path.write_text(json.dumps(marker, indent=2, sort_keys=True, default=str) + "\n")
    return marker


def run_stage(out: Path, name: str, key: str, build: Callable[[Path], dict],
              version: int = 1) -> tuple[dict, bool]:
    """Run ``build(tmp_dir)`` unless the stage is done; returns (marker, skipped)."""
    if is_done(out, name, key):
        return read_marker(out, name), True
    tmp = out / f"{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = time.perf_counter()
    summary = build(tmp)
    marker = {"key": key, "version": version, "seconds": round(time.perf_counter() - started, 3),
              "summary": summary, "outputs": output_digests(tmp)}
    (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True, default=str) + "\n")
    final = out / name
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return marker, False
