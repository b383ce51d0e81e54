"""Tests of the CXR image stage (preprocessing.cxr_images): decode, resize, crop -> Parquet."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import ray
from PIL import Image
from rich.console import Console
from rich.progress import Progress

from preprocessing import schemas as S
from preprocessing.cxr_images import (
    OUTPUT_SCHEMA,
    decode_resize,
    open_reduced,
    read_images,
    resize_images,
)
from preprocessing.synth.generator import MIMIC_CXR_DIR, SynthConfig, generate
from preprocessing.synth.render import render
from raybench.errors import RaybenchError

SIZE = 64


@pytest.fixture(scope="module")
def ray_session():
    """A 2-CPU local Ray for the whole module."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def synth_tree(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """A small synthetic MIMIC-CXR-JPG tree (128 px wide JPEGs) and its image list."""
    out = tmp_path_factory.mktemp("synth")
    generate(SynthConfig(out=out, patients=12, seed=3, image_size=128))
    cxr_root = out / MIMIC_CXR_DIR
    meta = pd.read_csv(cxr_root / S.CXR_METADATA.relpath)
    assert len(meta) >= 4
    # cxr_index deliberately not in file order, to check the output is sorted by it.
    index = np.random.default_rng(0).permutation(len(meta)).astype(np.int32) * 3 + 7
    images = meta[["subject_id", "study_id", "dicom_id"]].assign(cxr_index=index)
    return cxr_root, images


def _put(cxr_root: Path, subject: int, study: int, dicom: str, pixels: np.ndarray | None = None,
         raw: bytes | None = None) -> dict:
    """Write one image (JPEG from ``pixels`` or ``raw`` bytes) where MIMIC-CXR-JPG puts it."""
    path = cxr_root / S.cxr_image_relpath(subject, study, dicom)
    path.parent.mkdir(parents=True, exist_ok=True)
    if pixels is not None:
        Image.fromarray(pixels).save(path, format="JPEG", quality=95)
    elif raw is not None:
        path.write_bytes(raw)
    return {"subject_id": subject, "study_id": study, "dicom_id": dicom}


def _jpeg_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _halves(width: int, height: int) -> np.ndarray:
    """Bright left half (220), dark right half (30)."""
    img = np.full((height, width), 30, dtype=np.uint8)
    img[:, : width // 2] = 220
    return img


def test_output_shape_dtype_and_order(ray_session, synth_tree, tmp_path):
    cxr_root, images = synth_tree
    out = tmp_path / "sub" / "cxr.parquet"
    result = resize_images(images, cxr_root, out, size=SIZE)

    assert result["written"] == len(images)
    assert result["skipped"] == []
    assert result["seconds"] > 0 and result["images_per_second"] > 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["cxr.parquet"]  # no temp left

    table = pq.read_table(out)
    assert table.schema.equals(OUTPUT_SCHEMA)
    index = table.column("cxr_index").to_numpy()
    assert index.tolist() == sorted(images["cxr_index"].tolist())
    assert set(table.column("height").to_pylist()) == {SIZE}
    assert set(table.column("width").to_pylist()) == {SIZE}
    for raw in table.column("image").to_pylist():
        assert len(raw) == SIZE * SIZE
        pixels = np.frombuffer(raw, dtype=np.uint8).reshape(SIZE, SIZE)
        assert pixels.std() > 1  # a radiograph, not a blank

    read_index, arrays = read_images(out)
    assert arrays.shape == (len(images), SIZE, SIZE) and arrays.dtype == np.uint8
    # Same pixels as the per-image function the data loader reuses.
    row = images.sort_values("cxr_index").iloc[0]
    path = cxr_root / S.cxr_image_relpath(row.subject_id, row.study_id, row.dicom_id)
    assert read_index[0] == row.cxr_index
    np.testing.assert_array_equal(arrays[0], decode_resize(path, SIZE))


def test_unreadable_and_missing_are_skipped(ray_session, tmp_path):
    root = tmp_path / "cxr"
    good = _jpeg_bytes(_halves(160, 192))
    rows = [
        _put(root, 10000001, 50000001, "ok-a", raw=good),
        _put(root, 10000001, 50000001, "truncated", raw=good[: len(good) // 3]),
        _put(root, 10000002, 50000002, "garbage", raw=b"this is not a jpeg" * 50),
        _put(root, 10000002, 50000002, "missing"),  # never written
        _put(root, 10000003, 50000003, "ok-b", raw=good),
    ]
    images = pd.DataFrame(rows).assign(cxr_index=np.arange(5, dtype=np.int32))
    out = tmp_path / "out.parquet"
    result = resize_images(images, root, out, size=SIZE)

    assert result["written"] == 2
    reasons = {s["dicom_id"]: s["reason"] for s in result["skipped"]}
    assert set(reasons) == {"truncated", "garbage", "missing"}
    assert reasons["missing"] == "missing file"
    assert reasons["truncated"].startswith("unreadable image")
    assert "truncated" in reasons["truncated"].lower()
    assert reasons["garbage"].startswith("unreadable image")
    assert pq.read_table(out).column("cxr_index").to_pylist() == [0, 4]


def test_centre_crop_keeps_aspect_and_left_right(ray_session, tmp_path):
    root = tmp_path / "cxr"
    landscape = _halves(400, 200)  # crop keeps columns 100..300: boundary in the middle
    portrait = np.full((400, 200), 30, dtype=np.uint8)
    portrait[:100] = 220  # top quarter bright: entirely outside the centre crop
    rows = [_put(root, 10000001, 50000001, "landscape", pixels=landscape),
            _put(root, 10000001, 50000001, "portrait", pixels=portrait)]
    images = pd.DataFrame(rows).assign(cxr_index=np.array([0, 1], dtype=np.int32))
    out = tmp_path / "out.parquet"
    assert resize_images(images, root, out, size=SIZE)["written"] == 2
    _, arrays = read_images(out)
    left, right = arrays[0][:, : SIZE // 2 - 3], arrays[0][:, SIZE // 2 + 3:]
    assert left.mean() > 210 and right.mean() < 40
    # Aspect kept: a squashed (not cropped) portrait would show a bright top quarter; only the
    # first row, whose filter support reaches just above the crop box, sees a little of it.
    assert arrays[1][1:].max() < 45 and arrays[1].mean() < 40
    # A bright left half stays on the left for a portrait-shaped film too.
    tall = decode_resize(_put_file(tmp_path, _halves(240, 300)), SIZE)
    assert tall[:, : SIZE // 2 - 3].mean() > 210 and tall[:, SIZE // 2 + 3:].mean() < 40


def _put_file(tmp_path: Path, pixels: np.ndarray) -> Path:
    path = tmp_path / "single.jpg"
    Image.fromarray(pixels).save(path, format="JPEG", quality=95)
    return path


def test_reduced_scale_decode_matches_full_decode(tmp_path):
    rng = np.random.default_rng(1)
    film = render({}, "AP", seed=5, width=1000).astype(np.float32)  # 1000 x 1200
    film += rng.normal(0, 8, film.shape)
    path = _put_file(tmp_path, np.clip(film, 0, 255).astype(np.uint8))
    size = 96

    reduced = open_reduced(path, size)
    assert reduced.mode == "L" and reduced.size == (125, 150)  # libjpeg 1/8 DCT scaling used

    full = Image.open(path).convert("L")
    scale = size / min(full.size)
    full = full.resize((size, round(full.height * scale)), Image.Resampling.LANCZOS)
    top = (full.height - size) // 2
    reference = np.asarray(full.crop((0, top, size, top + size)), dtype=np.int16)

    ours = decode_resize(path, size)
    assert ours.shape == (size, size) and ours.dtype == np.uint8
    assert np.abs(ours.astype(np.int16) - reference).mean() < 6


def test_deterministic_output(ray_session, synth_tree, tmp_path):
    cxr_root, images = synth_tree
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    resize_images(images, cxr_root, first, size=SIZE)
    resize_images(images.sample(frac=1.0, random_state=1), cxr_root, second, size=SIZE)
    a, b = pq.read_table(first), pq.read_table(second)
    assert a.column("cxr_index").equals(b.column("cxr_index"))
    assert a.column("image").equals(b.column("image"))
    assert first.read_bytes() == second.read_bytes()


def test_progress_is_reported(ray_session, synth_tree, tmp_path):
    cxr_root, images = synth_tree
    progress = Progress(console=Console(file=io.StringIO()))
    with progress:
        resize_images(images, cxr_root, tmp_path / "p.parquet", size=32, progress=progress)
    (task,) = progress.tasks
    assert task.total == len(images) and task.completed == len(images)


def test_empty_list_writes_empty_file(ray_session, tmp_path):
    images = pd.DataFrame({"cxr_index": pd.Series([], dtype="int32"), "subject_id": [],
                           "study_id": [], "dicom_id": []})
    out = tmp_path / "empty.parquet"
    result = resize_images(images, tmp_path, out, size=SIZE)
    assert result["written"] == 0 and result["skipped"] == []
    table = pq.read_table(out)
    assert table.num_rows == 0 and table.schema.equals(OUTPUT_SCHEMA)


@pytest.mark.parametrize("bad", ["duplicate", "missing_column", "missing_value", "float_index",
                                 "size"])
def test_bad_input_is_a_user_error(bad, tmp_path):
    images = pd.DataFrame({"cxr_index": [1, 2], "subject_id": [1, 2],
                           "study_id": [3, 4], "dicom_id": ["a", "b"]})
    size = SIZE
    if bad == "duplicate":
        images["cxr_index"] = 1
    elif bad == "missing_column":
        images = images.drop(columns="study_id")
    elif bad == "missing_value":
        images["dicom_id"] = ["a", None]
    elif bad == "float_index":
        images["cxr_index"] = [0.5, 1.5]
    else:
        size = 0
    with pytest.raises(RaybenchError):
        resize_images(images, tmp_path, tmp_path / "x.parquet", size=size)
    assert not list(tmp_path.iterdir())
