"""Where a study directory lives: a local (or shared-filesystem) path, or a remote URI.

Everything goes through pyarrow filesystems, so ``s3://``, ``gs://``, ``hdfs://``, ``abfs://``
and ``file://`` URIs work the same way (credentials come from the usual environment of each,
e.g. AWS_* variables or an instance profile for S3).

A remote study is also mirrored in a local working directory on the driver
(``$RAYBENCH_CACHE/studies/<scheme>/<bucket>/<path>``, ``RAYBENCH_CACHE`` defaulting to
``~/.cache/raybench``): the driver writes its files there first and uploads them, keeps
synthetic data there (regenerable, never uploaded), and downloads what the report reads
before building it locally and uploading ``report/``. Trials and Ray Tune write straight to
the URI, from whichever node they run on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

__all__ = ["StudyStorage", "is_remote", "read_bytes", "write_bytes"]

#: What the report reads from a study directory.
REPORT_INPUTS = ("resolved_study.yaml", "trials.parquet", "predictions", "pretraining.json")


def is_remote(storage: str) -> bool:
    """True for a URI (``scheme://...``), False for a plain path."""
    return "://" in str(storage)


def _join(uri: str, relpath: str) -> tuple[pafs.FileSystem, str]:
    fs, root = pafs.FileSystem.from_uri(uri)
    return fs, f"{root.rstrip('/')}/{relpath}" if relpath else root


def write_bytes(uri: str, relpath: str, data: bytes) -> None:
    """Write ``data`` to ``uri/relpath`` (a local path or any pyarrow filesystem URI).

    Written to ``<path>.tmp`` and then moved, so a reader never sees a half-written file
    where the move is atomic (local and shared filesystems).
    """
    if not is_remote(uri):
        uri = str(Path(uri).resolve())
    fs, path = _join(uri, relpath)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    tmp = path + ".tmp"
    with fs.open_output_stream(tmp) as stream:
        stream.write(data)
    fs.move(tmp, path)


def read_bytes(uri: str, relpath: str) -> bytes | None:
    """Contents of ``uri/relpath``, or None when it does not exist."""
    if not is_remote(uri):
        uri = str(Path(uri).resolve())
    fs, path = _join(uri, relpath)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return stream.read()


def _cache_root() -> Path:
    return Path(os.environ.get("RAYBENCH_CACHE", "~/.cache/raybench")).expanduser()


@dataclass(frozen=True)
class StudyStorage:
    """A study directory: ``uri`` is where trials and Tune write, ``local`` the driver's copy.

    For a local path both are the same directory and every transfer method does nothing.
    """

    uri: str
    local: Path
    remote: bool

    @classmethod
    def from_setting(cls, storage: str) -> StudyStorage:
        """From a study's ``storage`` value: a path (relative to the working dir) or a URI."""
        if not is_remote(storage):
            local = Path(storage).expanduser().resolve()
            return cls(uri=str(local), local=local, remote=False)
        scheme, rest = str(storage).split("://", 1)
        parts = [p for p in rest.split("/") if p not in ("", ".", "..")]
        local = _cache_root() / "studies" / scheme / Path(*parts) if parts else None
        if local is None:
            from raybench.errors import RaybenchError

            raise RaybenchError(f"storage {storage}: the URI names no bucket or directory")
        return cls(uri=str(storage).rstrip("/"), local=local, remote=True)

    def join(self, relpath: str) -> str:
        """``uri/relpath`` as a string for Tune and the trials."""
        return f"{self.uri}/{relpath}"

    def read_bytes(self, relpath: str) -> bytes | None:
        """A file of the study directory (from the URI), or None when it does not exist."""
        return read_bytes(self.uri, relpath)

    def write_bytes(self, relpath: str, data: bytes) -> None:
        """Write a file to the local copy and, for a remote study, to the URI."""
        write_bytes(str(self.local), relpath, data)
        if self.remote:
            write_bytes(self.uri, relpath, data)

    def pull(self, relpaths: tuple[str, ...] = REPORT_INPUTS) -> None:
        """Copy files or directories from the URI into the local copy (remote studies only)."""
        if not self.remote:
            return
        local_fs = pafs.LocalFileSystem()
        for rel in relpaths:
            fs, path = _join(self.uri, rel)
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.NotFound:
                continue
            target = self.local / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            pafs.copy_files(path, str(target), source_filesystem=fs,
                            destination_filesystem=local_fs)

    def push(self, reldir: str) -> None:
        """Copy a directory of the local copy to the URI (remote studies only)."""
        if not self.remote or not (self.local / reldir).is_dir():
            return
        fs, path = _join(self.uri, reldir)
        fs.create_dir(path, recursive=True)
        pafs.copy_files(str(self.local / reldir), path,
                        source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)

    def describe(self) -> str:
        """Where the study is, for messages."""
        return f"{self.uri} (local copy: {self.local})" if self.remote else str(self.local)
