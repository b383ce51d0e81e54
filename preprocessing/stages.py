"""Cached, atomically written pipeline stages that delete only their own files.

A stage is built in a scratch directory ``<name>.tmp/`` (marked ``_RAYBENCH_SCRATCH`` when
raybench creates it) and renamed to ``<name>/`` only when complete, with a ``_SUCCESS.json``
marker holding the stage key (a hash of its code version, settings and inputs), the stage
version and a digest of every file it wrote (``outputs``). On a re-run, a stage whose marker
matches is skipped; a stale stage is rebuilt, and :func:`rebuild_reason` says why. Downstream
stages key on the digests of the files they read, so a rebuild that writes the same bytes does
not cascade.

Rebuilding removes only the files listed in the old marker's ``outputs``. A file raybench did
not write (say, a note a user saved inside ``cohort/``) is never deleted: the stage refuses,
before any work, with one line naming the file. A ``<name>.tmp/`` left by an interrupted run is
removed only when it carries raybench's scratch mark; it only ever holds that run's partial
output.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from raybench.errors import RaybenchError
from raybench.ownership import safe_relpath

MARKER = "_SUCCESS.json"
SCRATCH = "_RAYBENCH_SCRATCH"


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


def _files_below(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.name != MARKER)


def _own_files(stage_dir: Path) -> set[str]:
    """Files the stage's marker says raybench wrote (entries leaving the directory ignored).

    A marker written before stages recorded their outputs lists none; raybench wrote it after
    every file of its stage, so the files not newer than the marker count as its own.
    """
    path = stage_dir / MARKER
    try:
        marker = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return set()
    listed = marker.get("outputs") if isinstance(marker, dict) else None
    if listed is None:
        written = path.stat().st_mtime_ns
        return {rel for rel in _files_below(stage_dir)
                if (stage_dir / rel).stat().st_mtime_ns <= written}
    listed = list(listed) if isinstance(listed, dict | list) else []
    return {rel for rel in map(safe_relpath, listed) if rel is not None}


def _foreign_files(stage_dir: Path) -> list[str]:
    own = _own_files(stage_dir)
    return [rel for rel in _files_below(stage_dir) if rel not in own]


def _remove_own(stage_dir: Path) -> None:
    """Delete the files listed in the stage's marker, the marker, then empty directories."""
    for rel in sorted(_own_files(stage_dir)):
        path = stage_dir / rel
        if path.is_file() and not path.is_symlink():
            path.unlink()
    (stage_dir / MARKER).unlink(missing_ok=True)
    for directory in sorted((p for p in stage_dir.rglob("*") if p.is_dir()),
                            key=lambda p: len(p.parts), reverse=True):
        if not any(directory.iterdir()):
            directory.rmdir()
    if not any(stage_dir.iterdir()):
        stage_dir.rmdir()


def _check_rebuildable(out: Path, name: str, scratch: bool = True) -> None:
    final, tmp = out / name, out / f"{name}.tmp"
    if final.is_dir():
        foreign = _foreign_files(final)
        if foreign:
            raise RaybenchError(
                f"{final} must be rebuilt but holds file(s) raybench did not write "
                f"({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}); move them "
                "out of the prepared directory and re-run (raybench deletes only its own files)")
    elif final.exists():
        raise RaybenchError(f"{final} is not a directory; raybench needs that name for the "
                            f"{name} stage")
    if scratch and tmp.exists() and not (tmp / SCRATCH).is_file():
        raise RaybenchError(f"{tmp} exists but is not raybench's scratch directory (no "
                            f"{SCRATCH}); move it away and re-run")


def run_stage(out: Path, name: str, key: str, build: Callable[[Path], dict],
              version: int = 1) -> tuple[dict, bool]:
    """Run ``build(tmp_dir)`` unless the stage is done; returns (marker, skipped)."""
    if is_done(out, name, key):
        return read_marker(out, name), True
    _check_rebuildable(out, name)
    tmp = out / f"{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)  # checked above: raybench's own scratch of an interrupted run
    tmp.mkdir(parents=True)
    (tmp / SCRATCH).write_text("scratch directory of a raybench preprocessing stage\n")
    started = time.perf_counter()
    summary = build(tmp)
    outputs = {rel: d for rel, d in output_digests(tmp).items() if rel != SCRATCH}
    marker = {"key": key, "version": version, "seconds": round(time.perf_counter() - started, 3),
              "summary": summary, "outputs": outputs}
    (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True, default=str) + "\n")
    final = out / name
    if final.exists():
        _check_rebuildable(out, name, scratch=False)
        _remove_own(final)
    (tmp / SCRATCH).unlink()
    tmp.rename(final)
    return marker, False
