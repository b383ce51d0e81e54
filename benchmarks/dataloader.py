"""Data-loader benchmark: raybench's loader vs the anchors' per-sample JPEG + torchvision path.

Both deliver the same training batches (EHR window + augmented 224 px CXR, 16 samples):
- baseline (MedFuse/MedMod/CareBench): for each sample, open its resized JPEG, convert to
  RGB, Resize(256), RandomHorizontalFlip, RandomAffine(45, translate 0.15, scale 0.85-1.15),
  CenterCrop(224), ToTensor, Normalize; then stack;
- raybench: uint8 images already decoded once by preprocessing, gathered per batch with
  numpy indexing, augmented for the whole batch at once (``affine_grid``).

Prints samples/s for each and the ratio (target >= 10x).

    python benchmarks/dataloader.py [--patients 600] [--batches 30] [--repeats 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torchvision import transforms

from preprocessing.config import PreprocessConfig
from preprocessing.pipeline import run_preprocess
from preprocessing.schemas import cxr_image_relpath
from preprocessing.synth.generator import SynthConfig, generate
from raybench.data import LoaderConfig, iterate_batches, load_prepared


def anchors_transform() -> transforms.Compose:
    """The anchors' training transform (MedFuse)."""
    return transforms.Compose([
        transforms.Resize(256),
        transforms.RandomHorizontalFlip(),
        transforms.RandomAffine(degrees=45, scale=(0.85, 1.15), translate=(0.15, 0.15)),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])


def main() -> None:
    """Prepare data once, time both loaders on the same samples, print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=600)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="raybench-loader-bench-"))
    raw, prepared = workdir / "raw", workdir / "prepared"
    if not (raw / "synthetic_manifest.json").exists():
        generate(SynthConfig(out=raw, patients=args.patients, seed=0, image_size=512))
    run_preprocess(raw / "mimic-iv", raw / "mimic-cxr-jpg", prepared,
                   config=PreprocessConfig(imputations=("medmod",)), show=False)
    data = load_prepared(prepared, "phenotyping")
    index = pd.read_parquet(prepared / "samples" / "cxr_index.parquet").set_index("cxr_index")
    with_image = data.indices("train")[data.image_row[data.indices("train")] >= 0]
    samples = np.resize(with_image, args.batches * 16)
    cfg = LoaderConfig(batch_size=16)
    transform = anchors_transform()
    cxr_index = pd.read_parquet(prepared / "labels" / "phenotyping.parquet")["cxr_index"]
    root = raw / "mimic-cxr-jpg"
    paths = {}
    for sample in np.unique(samples):
        meta = index.loc[int(cxr_index.iloc[sample])]
        paths[sample] = root / cxr_image_relpath(meta["subject_id"], meta["study_id"],
                                                 meta["dicom_id"])

    def raybench_loader() -> float:
        started = time.perf_counter()
        for _ in iterate_batches(data, samples, cfg, train=True, seed=0):
            pass
        return len(samples) / (time.perf_counter() - started)

    def anchors_loader() -> float:
        started = time.perf_counter()
        for i in range(0, len(samples), 16):
            torch.stack([transform(Image.open(paths[s]).convert("RGB"))
                         for s in samples[i:i + 16]])
        return len(samples) / (time.perf_counter() - started)

    fast, slow = [], []
    for _ in range(args.repeats):  # interleaved, so background load hits both alike
        fast.append(raybench_loader())
        slow.append(anchors_loader())
    print(f"samples: {len(samples)} per run (batches of 16, 224 px CXR + EHR for raybench); "
          f"best of {args.repeats} interleaved runs (median in brackets)")
    print(f"baseline (per-sample JPEG + torchvision):    {max(slow):8.1f} samples/s "
          f"({np.median(slow):8.1f})")
    print(f"raybench (in-memory uint8, batched augment): {max(fast):8.1f} samples/s "
          f"({np.median(fast):8.1f})")
    ratio = max(fast) / max(slow)
    verdict = "PASS" if ratio >= 10 else "FAIL"
    print(f"speed-up: {ratio:.1f}x (median {np.median(fast) / np.median(slow):.1f}x) "
          f"(target >= 10x): {verdict}")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
