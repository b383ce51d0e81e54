"""Directories raybench owns: a marker file, and deletions limited to files raybench wrote.

raybench writes into a directory (a study's ``storage``, ``raybench preprocess --out``,
``raybench synth --out``) only when the directory is new, empty, or carries raybench's marker
of the same kind (``.raybench-<kind>.json``, written first when raybench claims it). Any other
directory is refused with one line, so a mistyped path never overwrites a user's files.

Deleting is limited the same way: a writer records the files it wrote (an *output list*) and
later removes only names from that list; :func:`safe_relpath` refuses list entries that would
leave the directory (absolute paths, ``..``), because the list itself lies in a directory a
user (or an attacker with write access to a shared filesystem) may edit.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath

import pyarrow.fs as pafs

from raybench.errors import RaybenchError

__all__ = ["KINDS", "claim", "marker_name", "safe_relpath"]

#: What each kind of directory is, for messages.
KINDS = {
    "study": "a raybench study directory",
    "prepared": "a prepared dataset directory (raybench preprocess)",
    "synthetic": "a synthetic MIMIC tree (raybench synth)",
}
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def marker_name(kind: str) -> str:
    """The marker file of a kind of directory, e.g. ``.raybench-study.json``."""
    if kind not in KINDS:
        raise ValueError(f"unknown directory kind {kind!r}; known: {', '.join(KINDS)}")
    return f".raybench-{kind}.json"


def safe_relpath(text: object) -> str | None:
    """``text`` as a relative POSIX path inside a directory, or None when it could leave it.

    Refused: non-strings, empty strings, absolute paths, drive letters, backslashes, ``..``
    or ``.`` components and components that do not look like file names.
    """
    if not isinstance(text, str) or not text or "\\" in text or ":" in text:
        return None
    parts = text.split("/")
    if any(part in ("", ".", "..") or not _NAME.match(part) for part in parts):
        return None  # also refuses absolute paths (a leading empty part)
    return "/".join(parts)


def _filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in str(location):
        location = str(Path(location).expanduser().resolve())
    return pafs.FileSystem.from_uri(str(location))


def _read_marker(fs: pafs.FileSystem, path: str) -> dict | None:
    try:
        with fs.open_input_stream(path) as stream:
            data = json.loads(stream.read().decode("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _legacy_prepared(fs: pafs.FileSystem, root: str, entries: list[str]) -> bool:
    """A prepared directory written before markers existed: its ``manifest.json`` is one
    raybench writes (schema version, counts and stages)."""
    if "manifest.json" not in entries:
        return False
    manifest = _read_marker(fs, f"{root.rstrip('/')}/manifest.json")
    return manifest is not None and {"schema_version", "counts", "stages"} <= set(manifest)


#: Directories of an earlier raybench (no marker yet) that are adopted rather than refused.
_LEGACY = {"prepared": _legacy_prepared}


def _write_marker(fs: pafs.FileSystem, root: str, kind: str) -> None:
    # No timestamp: a synthetic tree must stay byte-identical for the same arguments.
    marker = {"kind": kind, "note": f"written by raybench: this directory is {KINDS[kind]}"}
    with fs.open_output_stream(f"{root.rstrip('/')}/{marker_name(kind)}") as stream:
        stream.write((json.dumps(marker, indent=2) + "\n").encode())


def claim(location: str | Path, kind: str) -> bool:
    """Make sure raybench may write into ``location`` as a directory of ``kind``.

    A missing or empty directory is created and marked; one with this kind's marker is
    accepted, and so is a prepared directory of an earlier raybench (its ``manifest.json``;
    it is marked now). Anything else raises :class:`RaybenchError` naming the directory, what
    it holds and what was expected. Returns True when the directory was claimed just now
    (new), False when it already was raybench's. ``location`` is a local path or a pyarrow
    URI.
    """
    fs, root = _filesystem(str(location))
    name = marker_name(kind)
    shown = str(location)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        raise RaybenchError(f"{shown} is a file, expected {KINDS[kind]} (or a new path)")
    entries: list[str] = []
    if info.type == pafs.FileType.Directory:
        selector = pafs.FileSelector(root, recursive=False, allow_not_found=True)
        entries = sorted(PurePosixPath(e.path).name for e in fs.get_file_info(selector))
    if name in entries:
        marker = _read_marker(fs, f"{root.rstrip('/')}/{name}")
        if marker is None or marker.get("kind") != kind:
            raise RaybenchError(f"{shown}/{name} is not a valid raybench marker (expected "
                                f"kind {kind!r}); refusing to write into {shown}")
        return False
    others = [e for e in entries if e.startswith(".raybench-") and e.endswith(".json")]
    if others:
        raise RaybenchError(f"{shown} is not {KINDS[kind]}: it holds {others[0]}; choose "
                            "another path")
    if entries and kind in _LEGACY and _LEGACY[kind](fs, root, entries):
        _write_marker(fs, root, kind)
        return False
    if entries:
        listed = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more"
                                           if len(entries) > 3 else "")
        raise RaybenchError(
            f"{shown} exists, is not empty ({listed}) and was not created by raybench (no "
            f"{name}); raybench writes only into a new or empty directory or its own, so "
            "nothing of yours is overwritten or deleted: choose another path or empty it")
    fs.create_dir(root, recursive=True)
    _write_marker(fs, root, kind)
    return True
