"""Measure the training cost of an epoch of every registered method, for ``raybench validate``.

Trains each method (model defaults, CXR backbone and crop as listed) for one epoch of a few and
of more batches of 16 on a small synthetic prepared dataset, and writes to
``raybench/study/epoch_costs.csv`` the fit ``epoch seconds = overhead + seconds_per_batch x
batches`` (each point the minimum over ``--repeats`` runs: other load on the machine only adds
time). ``raybench validate`` applies it to the batches of a study's epoch (see
``raybench/study/estimate.py``). It measures this machine (the device column says which):
re-run it on the hardware you plan for.

    python benchmarks/epoch_costs.py [--batches 2 10] [--repeats 2] [--methods ehr_lstm ...]
                                     [--workdir DIR] [--out CSV]

The default ``--out`` is where ``raybench validate`` looks (``RAYBENCH_EPOCH_COSTS`` overrides
both). No table ships with raybench: the project's 2-core machine is shared and loaded, and
timings there are not worth publishing as costs.
"""

from __future__ import annotations

import argparse
import csv
import platform
import tempfile
from pathlib import Path

import torch

from preprocessing.config import PreprocessConfig
from preprocessing.pipeline import run_preprocess
from preprocessing.synth.generator import SynthConfig, generate
from raybench.data import LoaderConfig, load_prepared
from raybench.models import get_model, list_models
from raybench.study.estimate import EPOCH_COSTS
from raybench.trainer import TrainConfig, train_and_evaluate

#: (image size stored, crop, backbones measured): the CPU-sized images of the demo and debug
#: studies. Full-size (224 px) training belongs on a GPU, which this script has not measured.
SETTINGS = ((64, 56, ("resnet_tiny", "resnet34")),)


def _prepared(workdir: Path, size: int) -> Path:
    raw, out = workdir / f"raw{size}", workdir / f"prepared{size}"
    if not (out / "manifest.json").is_file():
        generate(SynthConfig(out=raw, patients=120, seed=0, image_size=max(size, 64)))
        run_preprocess(raw / "mimic-iv", raw / "mimic-cxr-jpg", out,
                       config=PreprocessConfig(cxr_image_size=size, imputations=("medmod",)),
                       show=False)
    return out


def _epoch_seconds(data, method: str, hparams: dict, crop: int, batches: int,
                   repeats: int) -> float:
    """Training seconds of one epoch of ``batches`` batches (every training stage of the
    method, e.g. MedFuse's pretraining); the minimum over ``repeats`` runs."""
    times = []
    for repeat in range(repeats):
        config = TrainConfig(epochs=1, patience=1, seed=repeat, max_train_batches=batches,
                             max_val_samples=16, device="cpu",
                             loader=LoaderConfig(batch_size=16, crop=crop))
        times.append(train_and_evaluate(data, method, hparams, config).train_seconds)
    return min(times)


def main() -> None:
    """Measure and write the CSV."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs=2, default=(2, 10),
                        help="the two epoch lengths the line is fitted through")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--methods", nargs="*", default=None, help="default: every method")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=EPOCH_COSTS)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="raybench-epoch-costs-"))
    device = "cpu"
    rows = []
    for size, crop, backbones in SETTINGS:
        data = load_prepared(_prepared(workdir, size), "mortality", "medmod")
        for method in args.methods or list_models():
            defaults = get_model(method).default_hparams()
            choices = backbones if "cxr_backbone" in defaults else ("-",)
            if choices == ("-",) and size != SETTINGS[0][0]:
                continue  # EHR only: measured once
            for backbone in choices:
                hparams = {} if backbone == "-" else {"cxr_backbone": backbone,
                                                      "pretrained": False}
                few, many = (_epoch_seconds(data, method, hparams, crop, n, args.repeats)
                             for n in args.batches)
                per_batch = max((many - few) / (args.batches[1] - args.batches[0]), 0.0)
                overhead = max(few - per_batch * args.batches[0], 0.0)
                rows.append({"method": method, "cxr_backbone": backbone,
                             "crop": 0 if backbone == "-" else crop, "device": device,
                             "epoch_overhead_s": f"{overhead:.4f}",
                             "seconds_per_batch": f"{per_batch:.4f}"})
                print(f"{method:16s} {backbone:12s} crop {crop:3d}: {overhead:.3f} s + "
                      f"{per_batch:.3f} s/batch", flush=True)
    header = (f"# training seconds of an epoch = epoch_overhead_s + seconds_per_batch x "
              "batches of 16 (model defaults, mortality, all training stages), "
              f"measured by benchmarks/epoch_costs.py on {platform.machine()} with "
              f"{torch.get_num_threads()} torch threads\n")
    with args.out.open("w", newline="") as handle:
        handle.write(header)
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
