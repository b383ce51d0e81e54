"""Prepared-dataset loading and batching for training.

:func:`load_prepared` reads one task of a prepared dataset into plain numpy arrays
(:class:`PreparedTask`): the EHR feature matrix of all stays, the CXR images as uint8, and
per sample the row where its EHR window starts, its number of EHR steps, its image row and
its label. Samples of a stay share the stay's rows (each sample is a window of them: the
last ``max_hours`` of bins before its prediction time), so series are never copied.
The arrays can be put once in the Ray object store and read zero-copy by every trial on a
node. :func:`iterate_batches` gathers batches with vectorised indexing and applies the
anchors' CXR augmentation (random affine + horizontal flip, then centre crop and ImageNet
normalisation) to a whole batch at once with ``affine_grid``. Optional batch keys (see
``raybench.models.base.OPTIONAL_INPUTS``) are added only when the model declares them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from raybench.errors import RaybenchError
from raybench.models.base import OPTIONAL_INPUTS
from raybench.tasks import get_task

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
GROUP_COLUMNS = ("race_group", "sex", "age_group", "insurance")
IMAGENET_MEAN, IMAGENET_STD = 0.449, 0.226  # grey level: mean of ImageNet's RGB statistics


@dataclass
class PreparedTask:
    """One task of a prepared dataset as numpy arrays (picklable, object-store friendly)."""

    task: str
    kind: str
    label_names: list[str]
    feature_names: list[str]
    ehr: np.ndarray  # float32 [rows + 1, F], all stays by (stay_id, step), then a zero row
    images: np.ndarray  # uint8 [M, S, S]
    ehr_start: np.ndarray  # int64 [N], first EHR row of the sample's window
    n_steps: np.ndarray  # int32 [N]
    image_row: np.ndarray  # int32 [N], -1 = no image
    y: np.ndarray  # float32 [N, K] (binary / multilabel) or int64 [N] (multiclass)
    split: np.ndarray  # int8 [N], SPLIT_CODES
    stay_id: np.ndarray  # int64 [N]; for joining only, never written to reports
    groups: dict[str, np.ndarray] = field(default_factory=dict)
    remaining_hours: np.ndarray | None = None
    # float32 [N]: hours from the image's study time to the prediction time, 0 without an
    # image; None when the dataset was prepared without image times.
    cxr_hours: np.ndarray | None = None
    step_hours: float = 1.0  # hours per EHR step (the manifest's ehr.resample_hours)

    @property
    def n_outputs(self) -> int:
        """Logits per sample."""
        return len(self.label_names)

    @property
    def image_size(self) -> int:
        """Side of the stored square images."""
        return int(self.images.shape[1]) if self.images.size else 0

    def indices(self, split: str) -> np.ndarray:
        """Sample indices of a split."""
        return np.flatnonzero(self.split == SPLIT_CODES[split])


def _read_manifest(dataset: Path) -> dict:
    path = Path(dataset) / "manifest.json"
    if not path.is_file():
        raise RaybenchError(f"{dataset} is not a prepared dataset (no manifest.json); "
                            "run `raybench preprocess` first")
    return json.loads(path.read_text())


@dataclass
class SharedArrays:
    """Arrays every task of a dataset shares: EHR features and decoded images."""

    manifest: dict
    feature_names: list[str]
    ehr: np.ndarray
    stays: np.ndarray  # sorted stay ids of the EHR rows
    starts: np.ndarray  # first row of each stay
    images: np.ndarray
    image_lookup: np.ndarray  # cxr_index -> row of ``images`` (-1 = not written)
    image_times: np.ndarray | None = None  # datetime64[ns] by cxr_index; None: not prepared


def load_shared(dataset: Path, imputation: str = "medmod") -> SharedArrays:
    """Read the EHR features (of ``imputation``) and the images of a prepared dataset once."""
    dataset = Path(dataset)
    manifest = _read_manifest(dataset)
    feature_dirs = manifest["ehr"]["feature_dirs"]
    if imputation not in feature_dirs:
        raise RaybenchError(f"imputation {imputation!r} was not prepared in {dataset}; "
                            f"available: {', '.join(feature_dirs)}")
    features = pd.read_parquet(dataset / feature_dirs[imputation])
    names = manifest["ehr"]["features"]
    stay_of_row = features["stay_id"].to_numpy()
    # One extra all-zero row at the end: batches point padding steps at it.
    ehr = np.zeros((len(features) + 1, len(names)), dtype=np.float32)
    ehr[:-1] = features[names].to_numpy(np.float32)
    del features
    first = np.r_[True, stay_of_row[1:] != stay_of_row[:-1]]
    images, lookup = _load_images(dataset)
    return SharedArrays(manifest, names, ehr, stay_of_row[first], np.flatnonzero(first),
                        images, lookup, _load_image_times(dataset))


def load_prepared(dataset: Path, task: str, imputation: str = "medmod",
                  shared: SharedArrays | None = None) -> PreparedTask:
    """Load ``task`` of the prepared dataset (EHR features of ``imputation``).

    Pass ``shared`` (from :func:`load_shared`) to load several tasks over one copy of the
    EHR matrix and the images.
    """
    dataset = Path(dataset)
    get_task(task)
    shared = shared or load_shared(dataset, imputation)
    manifest = shared.manifest
    if task not in manifest["tasks"]:
        raise RaybenchError(f"task {task!r} is not in {dataset}/manifest.json")
    meta = manifest["tasks"][task]
    labels = pd.read_parquet(dataset / meta["file"])
    label_cols = [c for c in labels.columns if c.startswith("label_")]
    stays = shared.stays
    pos = np.searchsorted(stays, labels["stay_id"].to_numpy())
    if (pos >= len(stays)).any() or (stays[np.minimum(pos, len(stays) - 1)]
                                     != labels["stay_id"].to_numpy()).any():
        raise RaybenchError(f"{dataset}: labels of {task} refer to stays without EHR rows")
    cxr_index = labels["cxr_index"].to_numpy()
    lookup = shared.image_lookup
    inside = (cxr_index >= 0) & (cxr_index < len(lookup))
    image_row = np.where(inside, lookup[np.clip(cxr_index, 0, max(len(lookup) - 1, 0))], -1)
    if meta["kind"] == "multiclass":
        y = labels["label_0"].to_numpy(np.int64)
    else:
        y = labels[label_cols].to_numpy(np.float32)
    # A sample's EHR is the window [first_step, first_step + n_steps) of its stay's bins
    # (the last max_hours before its prediction time); older datasets start at bin 0.
    first_step = (labels["first_step"].to_numpy(np.int64) if "first_step" in labels
                  else np.zeros(len(labels), np.int64))
    cohort = pd.read_parquet(dataset / "cohort" / "stays.parquet",
                             columns=["stay_id", *GROUP_COLUMNS]).set_index("stay_id")
    groups = cohort.reindex(labels["stay_id"])
    return PreparedTask(
        task=task, kind=meta["kind"], label_names=list(meta["labels"]),
        feature_names=shared.feature_names, ehr=shared.ehr, images=shared.images,
        ehr_start=shared.starts[pos].astype(np.int64) + first_step,
        n_steps=labels["n_steps"].to_numpy(np.int32), image_row=image_row.astype(np.int32),
        y=y, split=labels["split"].map(SPLIT_CODES).to_numpy(np.int8),
        stay_id=labels["stay_id"].to_numpy(np.int64),
        groups={c: groups[c].astype(str).to_numpy() for c in GROUP_COLUMNS},
        remaining_hours=(labels["remaining_hours"].to_numpy(np.float32)
                         if "remaining_hours" in labels else None),
        cxr_hours=_cxr_hours(labels, image_row, shared.image_times),
        step_hours=float(manifest["ehr"].get("resample_hours", 1)),
    )


def _load_image_times(dataset: Path) -> np.ndarray | None:
    """Study time of every indexed image (datetime64[ns] by ``cxr_index``), if prepared."""
    path = dataset / "samples" / "cxr_index.parquet"
    if not path.is_file():
        return None
    index = pd.read_parquet(path)
    if "time" not in index or "cxr_index" not in index:
        return None
    times = np.full(int(index["cxr_index"].max()) + 1 if len(index) else 0,
                    np.datetime64("NaT"), dtype="datetime64[ns]")
    times[index["cxr_index"].to_numpy()] = pd.to_datetime(index["time"]).to_numpy(
        "datetime64[ns]")
    return times


def _cxr_hours(labels: pd.DataFrame, image_row: np.ndarray, times: np.ndarray | None
               ) -> np.ndarray | None:
    """Hours from each sample's image to its ``pred_time`` (0 without an image), or None."""
    present = image_row >= 0
    if times is None or "pred_time" not in labels:
        return None
    if not present.any():
        return np.zeros(len(labels), np.float32)
    cxr_index = labels["cxr_index"].to_numpy()
    if cxr_index[present].max() >= len(times):
        return None
    image_time = times[np.where(present, cxr_index, 0)]
    pred_time = pd.to_datetime(labels["pred_time"]).to_numpy("datetime64[ns]")
    hours = (pred_time - image_time) / np.timedelta64(1, "h")
    if np.isnan(hours[present]).any():
        return None
    return np.where(present, hours, 0.0).astype(np.float32)


def _load_images(dataset: Path) -> tuple[np.ndarray, np.ndarray]:
    """Decoded images as uint8 [M, S, S] and the cxr_index -> row lookup."""
    table = pd.read_parquet(dataset / "cxr" / "images.parquet")
    if table.empty:
        return np.zeros((0, 1, 1), np.uint8), np.zeros(0, np.int32)
    size = int(table["height"].iloc[0])
    images = np.frombuffer(b"".join(table["image"].tolist()), np.uint8).reshape(-1, size, size)
    lookup = np.full(int(table["cxr_index"].max()) + 1, -1, np.int32)
    lookup[table["cxr_index"].to_numpy()] = np.arange(len(table), dtype=np.int32)
    return images, lookup


def drop_images(data: PreparedTask, ratio: float, splits: tuple[str, ...], seed: int
                ) -> np.ndarray:
    """Image rows with the images of ``ratio`` of the stays in ``splits`` removed.

    Whole stays lose their image (all their hourly samples), chosen with a seeded RNG, as a
    robustness condition. CareBench drops only in train/val; pass the splits to match it.
    """
    rows = data.image_row.copy()
    if ratio <= 0:
        return rows
    rng = np.random.default_rng(seed)
    for split in splits:
        idx = data.indices(split)
        stays = np.unique(data.stay_id[idx][rows[idx] >= 0])
        dropped = rng.choice(stays, size=int(round(ratio * len(stays))), replace=False)
        rows[idx[np.isin(data.stay_id[idx], dropped)]] = -1
    return rows


@dataclass(frozen=True)
class LoaderConfig:
    """Batching and augmentation settings (anchors: affine 45 deg, 0.85-1.15, 0.15; flip)."""

    batch_size: int = 16
    max_len: int = 512
    crop: int | None = None  # default: 7/8 of the stored size (256 -> 224, like the anchors)
    augment: bool = True
    hflip: bool = True
    degrees: float = 45.0
    scale: tuple[float, float] = (0.85, 1.15)
    translate: float = 0.15


def _augment_crop(images: torch.Tensor, crop: int, cfg: LoaderConfig,
                  gen: torch.Generator) -> torch.Tensor:
    """Random affine (+ flip) of each image, sampled directly on the centre crop.

    The sampling grid is built from 1-D coordinates by broadcasting, which on CPU is several
    times faster than ``affine_grid``'s batched matrix product.
    """
    b, _, size, _ = images.shape
    angle = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(cfg.degrees)
    scale = cfg.scale[0] + torch.rand(b, generator=gen) * (cfg.scale[1] - cfg.scale[0])
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * cfg.translate * 2
    flip = torch.where(torch.rand(b, generator=gen) < (0.5 if cfg.hflip else 0.0), -1.0, 1.0)
    # Output pixel centres of the crop, in the input's normalised [-1, 1] coordinates.
    coords = (torch.arange(crop, dtype=torch.float32) * 2 + 1 - crop) / size
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # grid[b, i, j] = shift[b] + x_j * (cos*flip, sin*flip)[b] + y_i * (-sin, cos)[b]
    x_col = torch.stack([cos * flip, sin * flip], 1).view(b, 1, 1, 2)
    y_col = torch.stack([-sin, cos], 1).view(b, 1, 1, 2)
    grid = torch.addcmul(shift.view(b, 1, 1, 2), coords.view(1, 1, crop, 1), x_col)
    grid = torch.addcmul(grid, coords.view(1, crop, 1, 1), y_col).to(images.device)
    return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")


def require_inputs(data: PreparedTask, inputs: Collection[str], method: str = "the model"
                   ) -> None:
    """Raise RaybenchError unless ``data`` can provide every optional batch key in ``inputs``."""
    unknown = sorted(set(inputs) - OPTIONAL_INPUTS)
    if unknown:
        raise RaybenchError(f"{method} asks for unknown batch input(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(OPTIONAL_INPUTS))}")
    if "cxr_hours" in inputs and data.cxr_hours is None:
        raise RaybenchError(
            f"{method} needs cxr_hours (hours from each image to the prediction time), but "
            f"the prepared dataset of task {data.task!r} has no image times "
            "(samples/cxr_index.parquet `time`, labels `pred_time`); re-run `raybench "
            "preprocess`")


def ehr_windows(data: PreparedTask, idx: np.ndarray, max_len: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """First EHR row and number of steps each sample's model input uses (the most recent
    ``max_len`` steps); equal windows give equal inputs, whatever the task."""
    steps = np.minimum(data.n_steps[idx], max_len).astype(np.int64)
    return data.ehr_start[idx] + data.n_steps[idx] - steps, steps


def ehr_batch(ehr: np.ndarray, start: np.ndarray, steps: np.ndarray) -> torch.Tensor:
    """``[B, T, F]`` EHR input of the windows ``(start, steps)``, right-padded with zeros."""
    offsets = np.arange(int(steps.max()))[None, :]
    valid = offsets < steps[:, None]
    rows = np.where(valid, start[:, None] + offsets, len(ehr) - 1)  # last row: zeros
    return torch.from_numpy(ehr[rows])


def image_batch(images: np.ndarray, rows: np.ndarray, crop: int,
                device: str | torch.device = "cpu",
                augment: tuple[LoaderConfig, torch.Generator] | None = None) -> torch.Tensor:
    """``[B, 3, crop, crop]`` model input from uint8 image ``rows`` (-1: no image, all zeros).

    Centre crop, or with ``augment = (config, generator)`` the random affine of
    :func:`_augment_crop`; then ``x / 255`` ImageNet-normalised.
    """
    present = rows >= 0
    size = images.shape[1]
    pixels = torch.from_numpy(images[np.maximum(rows, 0)]).to(device).unsqueeze(1)
    if augment is not None:
        pixels = _augment_crop(pixels.float(), crop, augment[0], augment[1])
    else:
        top = (size - crop) // 2
        pixels = pixels[:, :, top:top + crop, top:top + crop].float()
    # x / 255, ImageNet-normalised, zero where the image is missing: one multiply-add.
    keep = torch.from_numpy(present).to(device=device, dtype=torch.float32).view(-1, 1, 1, 1)
    pixels = pixels.mul_(keep / (255.0 * IMAGENET_STD)).sub_(keep * (IMAGENET_MEAN
                                                                     / IMAGENET_STD))
    return pixels.expand(-1, 3, -1, -1)  # grey -> 3 channels as a view, no copy


def make_batch(data: PreparedTask, idx: np.ndarray, cfg: LoaderConfig, *, train: bool,
               image_row: np.ndarray | None = None, gen: torch.Generator | None = None,
               device: str | torch.device = "cpu", inputs: Collection[str] = ()
               ) -> dict[str, torch.Tensor]:
    """Gather samples ``idx`` into the model batch (see docs/models.md for the keys).

    ``inputs`` names the optional keys to add (a model's ``inputs``), e.g. ``cxr_hours``.
    """
    start, steps = ehr_windows(data, idx, cfg.max_len)
    ehr = ehr_batch(data.ehr, start, steps)
    rows_img = (data.image_row if image_row is None else image_row)[idx]
    present = rows_img >= 0
    size = data.image_size
    crop = cfg.crop or max(8, size * 7 // 8)
    if data.images.size:
        cxr = image_batch(data.images, rows_img, crop, device,
                          (cfg, gen or torch.Generator().manual_seed(0))
                          if train and cfg.augment else None)
    else:
        cxr = torch.zeros(len(idx), 3, crop, crop, device=device)
    y = torch.from_numpy(data.y[idx])
    batch = {"ehr": ehr.to(device), "ehr_lengths": torch.from_numpy(steps).to(device),
             "cxr": cxr, "cxr_present": torch.from_numpy(present).to(device),
             "y": y.to(device)}
    if inputs:
        require_inputs(data, inputs)
        if "cxr_hours" in inputs:
            hours = np.where(present, data.cxr_hours[idx], 0.0).astype(np.float32)
            batch["cxr_hours"] = torch.from_numpy(hours).to(device)
    return batch


def iterate_batches(data: PreparedTask, indices: np.ndarray, cfg: LoaderConfig, *,
                    train: bool, seed: int = 0, image_row: np.ndarray | None = None,
                    device: str | torch.device = "cpu", inputs: Collection[str] = ()
                    ) -> Iterator[tuple[np.ndarray, dict]]:
    """Yield (sample indices, batch); shuffled with ``seed`` when ``train``.

    ``inputs``: optional batch keys to add (the model's declared ``inputs``).
    """
    require_inputs(data, inputs)
    order = np.random.default_rng(seed).permutation(indices) if train else np.asarray(indices)
    gen = torch.Generator().manual_seed(seed)
    for i in range(0, len(order), cfg.batch_size):
        idx = order[i:i + cfg.batch_size]
        yield idx, make_batch(data, idx, cfg, train=train, image_row=image_row, gen=gen,
                              device=device, inputs=inputs)
