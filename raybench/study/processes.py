"""Processes on this host, read from ``/proc`` (Linux): liveness, start times, descendants.

Used by the study lock to tell a dead holder from a live one and to find the Ray processes a
killed driver left behind. Where ``/proc`` is missing (macOS), liveness falls back to
``os.kill(pid, 0)`` and no descendants are recorded.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ProcessInfo", "alive", "descendants", "host_identity", "process_info"]

_PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessInfo:
    """One process: id, parent, state letter (``R``, ``S``, ``Z``...), start tick, name."""

    pid: int
    ppid: int
    state: str
    start: str
    name: str


def process_info(pid: int) -> ProcessInfo | None:
    """``/proc/<pid>/stat`` parsed, or None when the process (or ``/proc``) is absent."""
    try:
        text = (_PROC / str(int(pid)) / "stat").read_text()
    except (OSError, ValueError):
        return None
    # The name is in parentheses and may itself hold spaces or parentheses.
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    return ProcessInfo(pid=int(pid), ppid=int(fields[1]), state=fields[0], start=fields[19],
                       name=name)


def alive(pid: int, start: str | None = None) -> bool:
    """True when ``pid`` runs (not a zombie) and, if ``start`` is given, is the same process
    that was recorded (a reused PID has another start tick)."""
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    info = process_info(pid)
    if info is not None:
        return info.state not in ("Z", "X") and (start is None or info.start == start)
    if _PROC.is_dir():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def descendants(pid: int | None = None) -> list[ProcessInfo]:
    """Every living process below ``pid`` (default: this process), parents first."""
    root = os.getpid() if pid is None else int(pid)
    children: dict[int, list[ProcessInfo]] = {}
    try:
        entries = [p.name for p in _PROC.iterdir() if p.name.isdigit()]
    except OSError:
        return []
    for entry in entries:
        info = process_info(int(entry))
        if info is not None and info.state not in ("Z", "X"):
            children.setdefault(info.ppid, []).append(info)
    found, queue = [], [root]
    while queue:
        for child in sorted(children.get(queue.pop(0), []), key=lambda i: i.pid):
            found.append(child)
            queue.append(child.pid)
    return found


def host_identity() -> str:
    """This host as seen by PIDs: host name, boot id and PID namespace (Linux).

    Two containers may share a host name but not a PID namespace; a PID is only meaningful
    where all three match.
    """
    parts = [socket.gethostname()]
    try:
        parts.append((_PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip())
        parts.append(os.readlink(_PROC / "self" / "ns" / "pid"))
    except OSError:
        pass
    return "/".join(parts)
