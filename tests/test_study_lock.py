"""One writer per study: the lock on local/shared filesystems, the lease on object storage
(``file://`` URIs stand in for s3://), stale-holder takeover and leftover Ray processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from raybench.errors import RaybenchError
from raybench.study import processes
from raybench.study.lock import LOCK_FILE, StudyLock


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _rewrite(path, **fields) -> None:
    holder = json.loads(path.read_text())
    holder.update(fields)
    path.write_text(json.dumps(holder))


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    first = StudyLock(str(tmp_path), ttl_s=30).acquire()
    try:
        holder = json.loads((tmp_path / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["host_id"] == processes.host_identity()
        with pytest.raises(RaybenchError) as error:
            StudyLock(str(tmp_path), ttl_s=30).acquire()
        message = str(error.value)
        assert "\n" not in message and "in use by another raybench run" in message
        assert f"host {holder['host']}, PID {os.getpid()}, since {holder['since']}" in message
    finally:
        first.release()
    assert not (tmp_path / LOCK_FILE).exists()
    StudyLock(str(tmp_path), ttl_s=30).acquire().release()  # free again


def test_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    old = StudyLock(str(tmp_path), ttl_s=3600).acquire()
    old._stop.set()  # the holder is killed: no release, no renewal
    dead = _dead_pid()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        info = processes.process_info(sleeper.pid)
        ray = [{"pid": sleeper.pid, "start": info.start if info else None, "name": "raylet"},
               {"pid": dead, "start": None, "name": "gcs_server"}]
        _rewrite(tmp_path / LOCK_FILE, pid=dead, pid_start=None, ray_processes=ray)
        new = StudyLock(str(tmp_path), ttl_s=3600).acquire()  # lease unexpired: PID decides
        try:
            assert new.previous is not None and new.previous.pid == dead
            leftovers = new.previous.leftover_processes()
            assert [p["pid"] for p in leftovers] == [sleeper.pid]  # the dead one is not listed
            assert json.loads((tmp_path / LOCK_FILE).read_text())["token"] == new.token
        finally:
            new.release()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_reused_pid_does_not_keep_a_stale_lock(tmp_path):
    lock = StudyLock(str(tmp_path), ttl_s=3600).acquire()
    lock._stop.set()
    _rewrite(tmp_path / LOCK_FILE, pid_start="1")  # our PID, but started at another time
    taken = StudyLock(str(tmp_path), ttl_s=3600).acquire()
    taken.release()
    assert taken.previous is not None


def test_lease_on_object_storage_expires_and_is_taken_over(tmp_path):
    uri = f"file://{tmp_path / 'bucket' / 'study'}"
    (tmp_path / "bucket" / "study").mkdir(parents=True)
    lease = tmp_path / "bucket" / "study" / LOCK_FILE
    first = StudyLock(uri, ttl_s=30, settle_s=0.05).acquire()
    first._stop.set()
    # Held from another host: its PID means nothing here, only the lease expiry counts.
    _rewrite(lease, host="node-7", host_id="node-7/other-boot/pid:[1]", pid=4242)
    with pytest.raises(RaybenchError, match="host node-7, PID 4242"):
        StudyLock(uri, ttl_s=30, settle_s=0.05).acquire()
    _rewrite(lease, expires=time.time() - 1)  # the holder stopped renewing its lease
    second = StudyLock(uri, ttl_s=30, settle_s=0.05).acquire()
    try:
        assert second.previous.host == "node-7"
        assert second.previous.leftover_processes() == []  # another host's PIDs: not ours
        assert json.loads(lease.read_text())["token"] == second.token
    finally:
        second.release()
    assert not lease.exists()


def test_holder_renews_its_lease(tmp_path):
    lock = StudyLock(str(tmp_path), ttl_s=0.6).acquire()
    try:
        first = json.loads((tmp_path / LOCK_FILE).read_text())["expires"]
        time.sleep(1.0)
        assert json.loads((tmp_path / LOCK_FILE).read_text())["expires"] > first
        assert not lock.lost
    finally:
        lock.release()
