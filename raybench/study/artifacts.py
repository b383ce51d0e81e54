"""Pretraining artifacts: ``<study>/artifacts/<key>/``, one per pretraining run.

A pretraining run is identified by its :class:`PretrainSpec` -- the method, the values of
its ``pretrain_keys()``, the seed, the cohort it pretrains on (the paired samples of
``ssl.pretrain_task``), the prepared dataset's fingerprint and the pretraining schedule --
and stored under the first 16 hex digits of the SHA-1 of that spec (canonical JSON)::

    artifacts/<key>/spec.json                    the spec (written first)
    artifacts/<key>/checkpoints/epoch_0010.pt    pretrained_state() every probe_every epochs
    artifacts/<key>/resume.pt                    the latest snapshot (removed when done)
    artifacts/<key>/pretrain.json                written last: the run is finished

Every file is written atomically through :mod:`raybench.study.storage` (a temporary name,
then a move), so the study directory may be a URI. The only file ever deleted is a finished
run's own ``resume.pt``, by a name computed here (never read from the study directory).
Checkpoints are ``torch.save`` files of plain tensors and numbers, read back with
``torch.load(weights_only=True)``: nothing in a study directory is unpickled.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch

from raybench.errors import RaybenchError
from raybench.study.storage import is_remote, read_bytes, write_bytes

__all__ = ["ARTIFACTS_DIR", "Artifact", "PretrainSpec", "dataset_fingerprint"]

ARTIFACTS_DIR = "artifacts"
DONE_FILE = "pretrain.json"
RESUME_FILE = "resume.pt"


def dataset_fingerprint(manifest: dict, imputation: str) -> str:
    """A short hash of a prepared dataset's manifest (counts, config hash, provenance) and
    the EHR imputation the study reads."""
    text = json.dumps({"manifest": manifest, "imputation": imputation}, sort_keys=True,
                      default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PretrainSpec:
    """Everything that determines what a pretraining run learns (see the module docstring)."""

    method: str
    hparams: dict[str, Any]
    seed: int
    cohort: dict[str, Any]
    dataset: str
    schedule: dict[str, Any] = field(default_factory=dict)

    def canonical(self) -> str:
        """Canonical JSON of the spec (sorted keys)."""
        return json.dumps(asdict(self), sort_keys=True, default=str)

    def key(self) -> str:
        """The artifact's directory name: 16 hex digits of the spec's SHA-1."""
        return hashlib.sha1(self.canonical().encode()).hexdigest()[:16]


def _save(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _load(data: bytes, where: str) -> Any:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or unsafe file
        raise RaybenchError(f"{where}: cannot load the checkpoint ({exc})") from None


class Artifact:
    """One pretraining run's directory under ``<storage>/artifacts/<key>``."""

    def __init__(self, storage: str, key: str) -> None:
        if not isinstance(key, str) or not re.fullmatch(r"[0-9a-f]{16}", key):
            raise RaybenchError(f"not a pretraining artifact key: {key!r} (16 hex digits)")
        self.storage, self.key = str(storage), key

    def relpath(self, name: str) -> str:
        """``artifacts/<key>/<name>``."""
        return f"{ARTIFACTS_DIR}/{self.key}/{name}"

    @staticmethod
    def checkpoint_name(epoch: int) -> str:
        """``checkpoints/epoch_0010.pt``."""
        return f"checkpoints/epoch_{int(epoch):04d}.pt"

    def write_json(self, name: str, value: Any) -> None:
        """Write ``value`` as JSON (atomically)."""
        data = json.dumps(value, sort_keys=True, default=str, allow_nan=True).encode()
        write_bytes(self.storage, self.relpath(name), data)

    def read_json(self, name: str) -> Any | None:
        """A JSON file of the artifact, or None when it does not exist."""
        data = read_bytes(self.storage, self.relpath(name))
        return None if data is None else json.loads(data)

    def write_checkpoint(self, epoch: int, state: dict[str, torch.Tensor]) -> None:
        """Store a ``pretrained_state()`` of ``epoch``."""
        write_bytes(self.storage, self.relpath(self.checkpoint_name(epoch)), _save(state))

    def load_checkpoint(self, epoch: int) -> dict[str, torch.Tensor]:
        """The ``pretrained_state()`` of ``epoch`` (``weights_only`` load)."""
        rel = self.relpath(self.checkpoint_name(epoch))
        data = read_bytes(self.storage, rel)
        if data is None:
            raise RaybenchError(f"{self.storage}/{rel}: pretraining checkpoint not found")
        return _load(data, f"{self.storage}/{rel}")

    def write_snapshot(self, snapshot: dict) -> None:
        """Store the resume snapshot (replaces the previous one)."""
        write_bytes(self.storage, self.relpath(RESUME_FILE), _save(snapshot))

    def read_snapshot(self) -> dict | None:
        """The resume snapshot, or None."""
        data = read_bytes(self.storage, self.relpath(RESUME_FILE))
        return None if data is None else _load(data, f"{self.storage}/{self.relpath(RESUME_FILE)}")

    def done(self) -> dict | None:
        """The finished run's record (``pretrain.json``), or None while it is not finished."""
        return self.read_json(DONE_FILE)

    def finish(self, record: dict) -> None:
        """Write ``pretrain.json`` (the run is finished), then drop the resume snapshot."""
        self.write_json(DONE_FILE, record)
        self.delete(RESUME_FILE)

    def delete(self, name: str) -> None:
        """Remove a file of the artifact if it exists."""
        uri = self.storage if is_remote(self.storage) else str(Path(self.storage).resolve())
        fs, root = pafs.FileSystem.from_uri(uri)
        path = f"{root.rstrip('/')}/{self.relpath(name)}"
        if fs.get_file_info(path).type == pafs.FileType.File:
            fs.delete_file(path)
