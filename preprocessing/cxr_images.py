"""CXR image stage: decode MIMIC-CXR-JPG files at reduced scale, resize, crop, store as Parquet.

Each image is decoded by libjpeg at the smallest DCT scale (1, 1/2, 1/4 or 1/8) that keeps the
short side at least ``size`` pixels (``Image.draft``), so a 2500 x 3000 radiograph is decoded
as ~313 x 375 instead of 7.5 M pixels. The decoded grayscale image is then resized so its short
side is ``size`` (aspect kept) and centre-cropped to ``size`` x ``size``; both steps are one
``Image.resize(..., box=centre_square)`` call, which is the same transform without resizing the
pixels that the crop would throw away.

``resize_images`` runs that per-image function over a whole image list with Ray Data (one
``map_batches`` task per small chunk of images, order preserved) and streams the results into
ONE Parquet file (columns ``cxr_index`` int32, ``image`` binary ``size*size`` raw uint8 bytes
row-major, ``height``/``width`` int16), written under a temporary name and renamed into place.
A missing or unreadable image is skipped and reported, never fatal.

``decode_resize`` (one path -> ``(size, size)`` uint8 array) is importable without Ray and is
what the benchmark and the training data loader reuse.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from preprocessing.schemas import cxr_image_relpath
from raybench.errors import RaybenchError

REQUIRED_COLUMNS: tuple[str, ...] = ("cxr_index", "subject_id", "study_id", "dicom_id")
# Version of the ``cxr`` stage (this module). Bump it when a change alters what the stage
# writes; tests/test_stage_versions.py holds its golden hash.
STAGE_VERSION = 1
# Antialiased bilinear: after DCT-scaled decoding the remaining reduction is < 2x, where it is
# the fastest PIL filter and, measured against a full decode + LANCZOS, as close as LANCZOS.
RESAMPLE = Image.Resampling.BILINEAR
# Rows per Parquet row group (256 px images: 64 MiB) and most images per Ray Data task.
ROW_GROUP_ROWS = 1024
MAX_TASK_IMAGES = 64
MISSING_REASON = "missing file"

OUTPUT_SCHEMA = pa.schema([
    ("cxr_index", pa.int32()),
    ("image", pa.binary()),
    ("height", pa.int16()),
    ("width", pa.int16()),
])
_JOB_SCHEMA = pa.schema([("cxr_index", pa.int32()), ("dicom_id", pa.string()),
                         ("path", pa.string())])
_DECODED_SCHEMA = pa.schema([("cxr_index", pa.int32()), ("dicom_id", pa.string()),
                             ("image", pa.binary()), ("reason", pa.string())])


def draft_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) of an image of ``width`` x ``height`` resized so its short side is ``size``.

    Passed to ``Image.draft``, which then picks the largest DCT reduction that still decodes at
    least this many pixels along both axes.
    """
    scale = size / min(width, height)
    return max(size, math.ceil(width * scale)), max(size, math.ceil(height * scale))


def open_reduced(path: Path | str, size: int) -> Image.Image:
    """Open an image and decode it in grayscale at the smallest scale with short side >= ``size``.

    For JPEGs this uses libjpeg DCT scaling (``Image.draft``); other formats are decoded in
    full. Raises ``OSError`` (missing, truncated or unidentified file) like ``Image.open``.
    """
    with Image.open(path) as im:
        im.draft("L", draft_size(im.width, im.height, size))
        return im.convert("L")  # convert() loads the (reduced) pixels; the file is then closed


def resize_crop(gray: Image.Image, size: int) -> Image.Image:
    """Resize so the short side is ``size`` (aspect kept) and centre-crop to ``size`` x ``size``.

    Done as one resize of the centred square of side ``min(width, height)``, which is exactly
    resize-then-crop without resampling the cropped-away margins.
    """
    width, height = gray.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return gray.resize((size, size), RESAMPLE, box=(left, top, left + side, top + side))


def decode_resize(path: Path | str, size: int = 256) -> np.ndarray:
    """Decode one image at reduced scale, resize short side to ``size``, centre-crop.

    Returns a ``(size, size)`` uint8 grayscale array. Raises ``OSError`` if the file is missing
    or not a readable image.
    """
    return np.asarray(resize_crop(open_reduced(path, size), size), dtype=np.uint8)


def _decode_batch(batch: pa.Table, size: int) -> pa.Table:
    """Ray Data UDF: decode/resize every path of a chunk; failures get a reason, no image."""
    images: list[bytes | None] = []
    reasons: list[str | None] = []
    for path in batch.column("path").to_pylist():
        try:
            images.append(resize_crop(open_reduced(path, size), size).tobytes())
            reasons.append(None)
        except FileNotFoundError:
            images.append(None)
            reasons.append(MISSING_REASON)
        except Exception as exc:  # any decoder error means "unreadable": skip, never fatal
            images.append(None)
            reasons.append(f"unreadable image: {type(exc).__name__}: {exc}")
    return pa.table({
        "cxr_index": batch.column("cxr_index"),
        "dicom_id": batch.column("dicom_id"),
        "image": pa.array(images, type=pa.binary()),
        "reason": pa.array(reasons, type=pa.string()),
    }, schema=_DECODED_SCHEMA)


def _jobs(images: pd.DataFrame, cxr_root: Path) -> pa.Table:
    """Validated job list (cxr_index, dicom_id, absolute path), sorted by cxr_index."""
    missing = [c for c in REQUIRED_COLUMNS if c not in images.columns]
    if missing:
        raise RaybenchError(f"CXR image list has no column(s) {missing}")
    empty = [c for c in REQUIRED_COLUMNS if images[c].isna().any()]
    if empty:
        raise RaybenchError(f"CXR image list has missing values in column(s) {empty}")
    index = images["cxr_index"]
    limits = np.iinfo(np.int32)
    if len(index) and (not pd.api.types.is_integer_dtype(index)
                       or index.min() < limits.min or index.max() > limits.max):
        raise RaybenchError(f"CXR image list: cxr_index must be integers fitting in int32, "
                            f"got {index.dtype}")
    if index.duplicated().any():
        dup = index[index.duplicated()].iloc[0]
        raise RaybenchError(f"CXR image list has duplicate cxr_index values (e.g. {dup})")
    ordered = images.sort_values("cxr_index", kind="stable")
    root = str(Path(cxr_root))
    paths = [
        os.path.join(root, cxr_image_relpath(s, t, d))
        for s, t, d in zip(ordered["subject_id"], ordered["study_id"], ordered["dicom_id"],
                           strict=True)
    ]
    return pa.table({
        "cxr_index": pa.array(ordered["cxr_index"].to_numpy(dtype=np.int64), type=pa.int32()),
        "dicom_id": pa.array([str(d) for d in ordered["dicom_id"]], type=pa.string()),
        "path": pa.array(paths, type=pa.string()),
    }, schema=_JOB_SCHEMA)


def ensure_ray() -> None:
    """Start a local Ray on all cores unless Ray is already initialised (left running)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                 log_to_driver=False,
                 ignore_reinit_error=True)


@contextmanager
def quiet_ray_data() -> Iterator[None]:
    """Turn Ray Data's own progress bars and start-up banner off; restore them on exit."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    saved = {name: getattr(ctx, name) for name in
             ("enable_progress_bars", "enable_operator_progress_bars",
              "print_on_execution_start")}
    for name in saved:
        setattr(ctx, name, False)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(ctx, name, value)


def task_images(n_images: int) -> int:
    """Images per Ray Data task: ~4 tasks per CPU for load balance, at most MAX_TASK_IMAGES."""
    import ray

    cpus = max(1, int(ray.cluster_resources().get("CPU", os.cpu_count() or 1)))
    return max(1, min(MAX_TASK_IMAGES, math.ceil(n_images / (4 * cpus))))


def chunked_dataset(table: pa.Table, chunk: int):
    """A Ray Dataset with one block of at most ``chunk`` rows per slice of ``table``, in order."""
    import ray.data

    blocks = [table.slice(i, chunk) for i in range(0, table.num_rows, chunk)]
    ds = ray.data.from_arrow(blocks)
    ctx = ds.context  # the dataset's own copy of the DataContext: no global side effect
    ctx.execution_options.preserve_order = True
    # With per-operator reservations a 2-CPU cluster runs only one decode task at a time
    # (measured: ~1 core busy); this pipeline has a single map operator, so reserve nothing.
    ctx.op_resource_reservation_enabled = False
    return ds


def _decoded_batches(jobs: pa.Table, size: int) -> Iterator[pa.Table]:
    """Decode all jobs with Ray Data; yields per-chunk tables in cxr_index order."""
    chunk = task_images(jobs.num_rows)
    ds = chunked_dataset(jobs, chunk).map_batches(
        _decode_batch, batch_size=chunk, batch_format="pyarrow", fn_kwargs={"size": size},
    )
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2)


def _output_rows(good: pa.Table, size: int) -> pa.Table:
    """Decoded rows -> output schema (cxr_index, image, height, width)."""
    n = good.num_rows
    side = pa.array(np.full(n, size, dtype=np.int16), type=pa.int16())
    return pa.table({"cxr_index": good.column("cxr_index"), "image": good.column("image"),
                     "height": side, "width": side}, schema=OUTPUT_SCHEMA)


def _parquet_writer(path: Path) -> pq.ParquetWriter:
    return pq.ParquetWriter(
        path, OUTPUT_SCHEMA, compression="zstd",  # measured: smaller and faster to read than snappy
        use_dictionary=["height", "width"],
        write_statistics=["cxr_index", "height", "width"],
    )


def resize_images(images: pd.DataFrame, cxr_root: Path, out_path: Path, size: int = 256,
                  progress=None) -> dict:
    """Decode, resize (short side ``size``) and centre-crop every listed CXR JPEG into Parquet.

    Args:
        images: columns ``cxr_index`` (unique int), ``subject_id``, ``study_id``, ``dicom_id``;
            each image is read from ``cxr_root / cxr_image_relpath(subject, study, dicom)``.
        cxr_root: the MIMIC-CXR-JPG root (the folder holding ``files/``).
        out_path: the Parquet file to write (via a temporary name in the same folder and
            ``os.replace``): ``cxr_index`` int32, ``image`` binary (``size*size`` raw uint8
            bytes, row-major), ``height``/``width`` int16; rows sorted by ``cxr_index``; only
            the images that could be read.
        size: output side in pixels.
        progress: an optional rich ``Progress``; a task is added and advanced per chunk.

    Returns:
        ``{"written": n_ok, "skipped": [{"dicom_id", "reason"}, ...], "seconds": t,
        "images_per_second": r}``; ``r`` counts every listed image (read or skipped) per
        second of ``seconds``, which excludes starting Ray (started on all cores if
        not yet initialised, and left running for the caller to shut down).

    Raises:
        RaybenchError: bad ``size`` or image list (missing columns, duplicate ``cxr_index``).
    """
    if not 8 <= size <= 4096:
        raise RaybenchError(f"image size must be between 8 and 4096 px, got {size}")
    jobs = _jobs(images, Path(cxr_root))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ensure_ray()
    started = time.perf_counter()
    task = progress.add_task("resizing CXR images", total=jobs.num_rows) if progress else None
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    written, skipped = 0, []
    try:
        with _parquet_writer(tmp) as writer, quiet_ray_data():
            pending: list[pa.Table] = []  # decoded rows not yet written (< one row group)
            for batch in (_decoded_batches(jobs, size) if jobs.num_rows else ()):
                ok = batch.column("reason").is_null()
                for bad in batch.filter(pc.invert(ok)).select(["dicom_id", "reason"]).to_pylist():
                    skipped.append({"dicom_id": bad["dicom_id"], "reason": bad["reason"]})
                good = batch.filter(ok)
                if good.num_rows:
                    pending.append(_output_rows(good, size))
                    written += good.num_rows
                if sum(t.num_rows for t in pending) >= ROW_GROUP_ROWS:  # write whole groups
                    rows = pa.concat_tables(pending)
                    full = rows.num_rows - rows.num_rows % ROW_GROUP_ROWS
                    writer.write_table(rows.slice(0, full), row_group_size=ROW_GROUP_ROWS)
                    pending[:] = [rows.slice(full)]
                if progress is not None:
                    progress.advance(task, batch.num_rows)
            if pending:
                writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - started
    return {
        "written": written,
        "skipped": skipped,
        "seconds": round(seconds, 3),
        "images_per_second": round(jobs.num_rows / seconds, 1) if seconds > 0 else 0.0,
    }


def read_images(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a ``resize_images`` Parquet file: (cxr_index int32 (n,), images uint8 (n, h, w))."""
    table = pq.read_table(path)
    index = table.column("cxr_index").to_numpy()
    if table.num_rows == 0:
        return index, np.zeros((0, 0, 0), dtype=np.uint8)
    h, w = int(table.column("height")[0].as_py()), int(table.column("width")[0].as_py())
    raw = b"".join(table.column("image").to_pylist())
    return index, np.frombuffer(raw, dtype=np.uint8).reshape(table.num_rows, h, w)
