"""Writing the report directory: only files of the report's own output list are ever deleted.

Each build records the names it wrote in ``.raybench-report.json`` next to ``report.md``. The
next build deletes the names of that list it no longer writes (a figure of an experiment that
is gone) and nothing else. A directory without that list is used only when it is new or empty,
so ``--out`` pointed at a folder of the user's never loses a file. Names read back from the
list are checked to be plain file names: the list lies in the study directory and could have
been edited.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from raybench.errors import RaybenchError
from raybench.ownership import safe_relpath

__all__ = ["OUTPUT_LIST", "write_outputs"]

OUTPUT_LIST = ".raybench-report.json"


def _previous_outputs(out_dir: Path) -> set[str] | None:
    """Names of the previous build's output list; None when the directory has no list."""
    path = out_dir / OUTPUT_LIST
    if not path.is_file():
        return None
    try:
        listed = json.loads(path.read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        raise RaybenchError(f"{path}: not a raybench report output list; move the report "
                            "directory away or choose another --out") from None
    names = {safe_relpath(n) for n in listed} if isinstance(listed, list) else set()
    return {n for n in names if n is not None and "/" not in n}


def write_outputs(out_dir: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` (name -> bytes) into ``out_dir`` and record them in the output list.

    Raises :class:`RaybenchError` when ``out_dir`` holds files but no output list (it is not
    a directory this report wrote).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = _previous_outputs(out_dir)
    if previous is None:
        present = sorted(p.name for p in out_dir.iterdir())
        if present:
            raise RaybenchError(
                f"{out_dir} holds files raybench's report did not write ({', '.join(present[:3])}"
                f"{' ...' if len(present) > 3 else ''}; no {OUTPUT_LIST}); choose another "
                "--out or empty it (the report deletes only files it wrote)")
        previous = set()
    for name in sorted(previous - set(files)):
        path = out_dir / name
        if path.is_file() and not path.is_symlink():
            path.unlink()
    for name in sorted(files):
        (out_dir / name).write_bytes(files[name])
    listing = json.dumps({"files": sorted(files), "note": "written by raybench report; "
                          "the next build deletes only these names"}, indent=2) + "\n"
    tmp = out_dir / (OUTPUT_LIST + ".tmp")
    tmp.write_text(listing)
    os.replace(tmp, out_dir / OUTPUT_LIST)
