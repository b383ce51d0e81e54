"""At most one writer per study: a lock (or, on object storage, a lease) in the study directory.

``<study>/.raybench-lock.json`` names its holder: host, PID, start time, an expiry renewed by
the holder every ``ttl / 3`` seconds, and the Ray processes the holder started. A second
``raybench study`` on the same directory refuses with one line naming the holder.

A lock whose holder is gone is taken over:

* **same host** (same host name, boot and PID namespace): the holder's PID no longer runs, or
  runs another program (PID reused: another start time). A live holder is never taken over;
* **another host**: its lease expired (not renewed for ``ttl`` seconds; the hosts' clocks must
  roughly agree).

Local and shared filesystems (NFS, EFS) create the lock with ``O_CREAT | O_EXCL``, which is
atomic, and break a stale one by renaming it (only one contender wins the rename). Object
storage (``s3://``, ``gs://`` ...) has no exclusive create through pyarrow, so the lease is
written, then read back after ``settle`` seconds: the contender whose lease is still there
holds the study. Two contenders can both win only if one stalls for more than ``settle``
seconds between reading a free lease and writing its own (documented in
``docs/reliability.md``).

Settings (environment): ``RAYBENCH_LOCK_TTL_S`` (default 60), ``RAYBENCH_LOCK_SETTLE_S``
(default 2).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import pyarrow.fs as pafs

from raybench.errors import RaybenchError
from raybench.study import processes
from raybench.study.storage import is_remote

__all__ = ["LOCK_FILE", "Holder", "StudyLock"]

LOCK_FILE = ".raybench-lock.json"


def _setting(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        raise RaybenchError(f"{name}={os.environ[name]!r}: expected a number of seconds"
                            ) from None
    if value <= 0:
        raise RaybenchError(f"{name}={value}: expected a positive number of seconds")
    return value


@dataclass
class Holder:
    """Who holds a study: where, which process, since when, until when (lease)."""

    host: str
    host_id: str
    pid: int
    pid_start: str | None
    since: str
    expires: float
    token: str
    ray_processes: list[dict] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: object) -> Holder | None:
        """Parse a lock file's JSON; None when it is not a lock written by raybench."""
        if not isinstance(data, dict):
            return None
        try:
            ray = data.get("ray_processes") or []
            return cls(host=str(data["host"]), host_id=str(data["host_id"]),
                       pid=int(data["pid"]),
                       pid_start=None if data.get("pid_start") is None
                       else str(data["pid_start"]),
                       since=str(data["since"]), expires=float(data["expires"]),
                       token=str(data["token"]),
                       ray_processes=[p for p in ray if isinstance(p, dict)]
                       if isinstance(ray, list) else [])
        except (KeyError, TypeError, ValueError):
            return None

    def describe(self) -> str:
        """``host <name>, PID <n>, since <time>`` for messages."""
        return f"host {self.host}, PID {self.pid}, since {self.since}"

    def is_local(self) -> bool:
        """True when the holder's PID means something on this host."""
        return self.host_id == processes.host_identity()

    def is_stale(self, now: float | None = None) -> bool:
        """True when the holder is gone (see the module docstring)."""
        if self.is_local():
            return not processes.alive(self.pid, self.pid_start)
        return self.expires < (time.time() if now is None else now)

    def leftover_processes(self) -> list[dict]:
        """Recorded Ray processes of this (gone) holder that still run on this host."""
        if not self.is_local():
            return []
        return [p for p in self.ray_processes
                if processes.alive(p.get("pid"), p.get("start"))]


class StudyLock:
    """The lock of one study directory (a local path or a pyarrow URI); a context manager."""

    def __init__(self, location: str, ttl_s: float | None = None,
                 settle_s: float | None = None) -> None:
        self.location = str(location)
        self.remote = is_remote(self.location)
        self.ttl_s = ttl_s if ttl_s is not None else _setting("RAYBENCH_LOCK_TTL_S", 60.0)
        self.settle_s = (settle_s if settle_s is not None
                         else _setting("RAYBENCH_LOCK_SETTLE_S", 2.0))
        if self.remote:
            self._fs, root = pafs.FileSystem.from_uri(self.location)
            self.path = f"{root.rstrip('/')}/{LOCK_FILE}"
        else:
            self._fs, self.path = None, os.path.join(self.location, LOCK_FILE)
        self.token = uuid.uuid4().hex
        self.previous: Holder | None = None
        self.lost = False
        self._held: Holder | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._io = threading.Lock()

    # ----------------------------------------------------------------------- public API
    def acquire(self) -> StudyLock:
        """Take the lock, or raise :class:`RaybenchError` naming the live holder."""
        for _ in range(5):
            current, raw = self._read()
            if raw is not None:
                if current is None:
                    if not self._unreadable_is_stale():
                        raise RaybenchError(
                            f"{self._shown()} exists but cannot be read as a raybench lock and "
                            f"is younger than {self.ttl_s:g} s; another run may be starting. "
                            "Try again, or delete it if no run uses this study")
                elif not current.is_stale():
                    raise RaybenchError(
                        f"study {self.location} is in use by another raybench run ("
                        f"{current.describe()}; lease renewed until "
                        f"{_iso(current.expires)}); wait for it to finish or stop it. A lock "
                        "whose holder has died is taken over automatically")
                if not self._break(current, raw):
                    continue
                self.previous = current
            if self._create():
                self._start_renewing()
                return self
        raise RaybenchError(f"could not take the lock {self._shown()}: other runs keep "
                            "taking it; try again")

    def record(self, **fields) -> None:
        """Store extra facts in the lock (``ray_processes``) and renew it."""
        with self._io:
            if self._held is None:
                return
            for key, value in fields.items():
                setattr(self._held, key, value)
            self._renew_locked()

    def release(self) -> None:
        """Stop renewing and delete the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._io:
            if self._held is None:
                return
            current, _ = self._read()
            if current is not None and current.token == self.token:
                self._delete()
            self._held = None

    def __enter__(self) -> StudyLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # ----------------------------------------------------------------------- internals
    def _shown(self) -> str:
        return f"{self.location.rstrip('/')}/{LOCK_FILE}"

    def _holder(self) -> Holder:
        me = os.getpid()
        info = processes.process_info(me)
        return Holder(host=processes.host_identity().split("/")[0],
                      host_id=processes.host_identity(), pid=me,
                      pid_start=info.start if info else None,
                      since=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      expires=time.time() + self.ttl_s, token=self.token)

    def _read(self) -> tuple[Holder | None, bytes | None]:
        try:
            if self.remote:
                with self._fs.open_input_stream(self.path) as stream:
                    raw = stream.read()
            else:
                with open(self.path, "rb") as handle:
                    raw = handle.read()
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            if self.remote and self._fs.get_file_info(self.path).type == pafs.FileType.NotFound:
                return None, None
            raise RaybenchError(f"{self._shown()}: cannot read the study lock ({exc})") from None
        try:
            return Holder.from_json(json.loads(raw.decode("utf-8"))), raw
        except (UnicodeDecodeError, ValueError):
            return None, raw

    def _unreadable_is_stale(self) -> bool:
        if self.remote:
            mtime = self._fs.get_file_info(self.path).mtime
            age = time.time() - mtime.timestamp() if mtime is not None else self.ttl_s + 1
        else:
            try:
                age = time.time() - os.stat(self.path).st_mtime
            except FileNotFoundError:
                return True
        return age > self.ttl_s

    def _encode(self, holder: Holder) -> bytes:
        return (json.dumps(asdict(holder), indent=2) + "\n").encode()

    def _create(self) -> bool:
        holder = self._holder()
        data = self._encode(holder)
        if self.remote:
            with self._fs.open_output_stream(self.path) as stream:
                stream.write(data)
            time.sleep(self.settle_s)
            current, _ = self._read()
            if current is None or current.token != self.token:
                return False
        else:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        self._held = holder
        return True

    def _break(self, stale: Holder | None, raw: bytes) -> bool:
        """Remove a stale lock; False when another contender got there first."""
        if self.remote:
            return True  # the lease is overwritten by _create and checked after settling
        aside = f"{self.path}.stale-{self.token}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        with open(aside, "rb") as handle:
            moved = handle.read()
        if moved != raw:  # renamed a lock taken meanwhile: put it back
            try:
                os.link(aside, self.path)
            except OSError:
                pass
            os.unlink(aside)
            return False
        os.unlink(aside)
        return True

    def _delete(self) -> None:
        try:
            if self.remote:
                self._fs.delete_file(self.path)
            else:
                os.unlink(self.path)
        except (FileNotFoundError, OSError):
            pass

    def _renew_locked(self) -> None:
        current, _ = self._read()
        if current is None or current.token != self.token:
            self.lost = True
            self._held = None
            print(f"raybench: warning: the lock of study {self.location} was taken over by "
                  f"another run ({current.describe() if current else 'lock removed'}); this run "
                  "no longer holds it", file=sys.stderr)
            return
        self._held.expires = time.time() + self.ttl_s
        data = self._encode(self._held)
        if self.remote:
            with self._fs.open_output_stream(self.path) as stream:
                stream.write(data)
        else:
            tmp = f"{self.path}.renew-{self.token}"
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, self.path)

    def _start_renewing(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.ttl_s / 3):
                with self._io:
                    if self._held is None:
                        return
                    try:
                        self._renew_locked()
                    except OSError as exc:  # a flaky network filesystem: try again later
                        print(f"raybench: warning: could not renew the study lock ({exc})",
                              file=sys.stderr)

        self._stop.clear()
        self._thread = threading.Thread(target=loop, name="raybench-lock", daemon=True)
        self._thread.start()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")
