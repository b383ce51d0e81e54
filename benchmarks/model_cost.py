"""Model cost: trainable parameters, inference s/batch and train s/epoch of every method.

Every registered method (the registry decides, so new methods are included) is built on the
same prepared synthetic dataset (phenotyping, base cohort: samples with and without an
image) and timed through the trainer's own code path (``raybench.trainer``): one training
epoch of the normal ("fusion") stage over the same ``--batches`` batches of 16 (data
loading, forward, backward, trainer hooks, optimiser step), and the forward pass of
inference batches of 16 in eval mode. Each figure is also given as a ratio to ``medfuse``
measured in the same run. Methods are timed in turns (``--repeats`` rounds, every method
once per round, best round kept) so that background load hits all of them alike.

Presets: ``carebench`` (default): every method at its defaults with CareBench's ResNet-50
and 224 px crops (ImageNet weights are not needed for timing); ``tiny``: hidden 32,
``resnet_tiny``, 56 px crops, other settings at their defaults (CPU-sized).

    python benchmarks/model_cost.py [--preset carebench|tiny] [--batches 8] [--repeats 2]
                                    [--methods a,b] [--device auto] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch

from preprocessing.config import PreprocessConfig
from preprocessing.pipeline import run_preprocess
from preprocessing.synth.generator import SynthConfig, generate
from raybench import trainer as T
from raybench.data import LoaderConfig, load_prepared
from raybench.models import get_model, list_models

PRESETS = {
    "carebench": {"image_size": 256, "hparams": {"cxr_backbone": "resnet50",
                                                 "pretrained": False}},
    "tiny": {"image_size": 64, "hparams": {"hidden": 32, "nhead": 2,
                                           "cxr_backbone": "resnet_tiny",
                                           "pretrained": False}},
}
REFERENCE = "medfuse"


def hparams_for(method: str, preset: str) -> dict:
    """The preset's settings that ``method`` has."""
    defaults = get_model(method).default_hparams()
    return {k: v for k, v in PRESETS[preset]["hparams"].items() if k in defaults}


def measure(data, method: str, preset: str, batches: int, device: str) -> dict:
    """Trainable parameters, inference s/batch, train s/epoch of one method."""
    cfg = T.TrainConfig(epochs=1, seed=0, device=device, max_train_batches=batches,
                        loader=LoaderConfig(batch_size=16, augment=True))
    run = T._Run(data, method, hparams_for(method, preset), cfg)
    run.model.set_stage("fusion")
    params = [p for p in run.model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=run.model.hparams["lr"])
    started = time.perf_counter()
    run.train_epoch(optimizer, 1, 1)
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    train_seconds = time.perf_counter() - started
    _, _, infer = run.evaluate(run.test_idx[: 16 * batches])
    return {"stages": len(run.model.pretrain_stages()),
            "params": sum(p.numel() for p in params),
            "infer": infer, "train": train_seconds}


def prepare(workdir: Path, patients: int, image_size: int) -> Path:
    """A prepared synthetic dataset (reused if ``workdir`` already has it)."""
    raw, prepared = workdir / "raw", workdir / f"prepared_{image_size}"
    if not (raw / "synthetic_manifest.json").exists():
        generate(SynthConfig(out=raw, patients=patients, seed=0, image_size=image_size))
    if not (prepared / "manifest.json").exists():
        run_preprocess(raw / "mimic-iv", raw / "mimic-cxr-jpg", prepared,
                       config=PreprocessConfig(cxr_image_size=image_size,
                                               imputations=("medmod",)), show=False)
    return prepared


def main() -> None:
    """Prepare data once, time every method in rounds, print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="carebench")
    parser.add_argument("--patients", type=int, default=400)
    parser.add_argument("--batches", type=int, default=8, help="batches of 16 per epoch")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--methods", default="", help="comma-separated (default: all)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m] or list_models()
    if REFERENCE not in methods:
        methods.insert(0, REFERENCE)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="raybench-model-cost-"))
    prepared = prepare(workdir, args.patients, PRESETS[args.preset]["image_size"])
    data = load_prepared(prepared, "phenotyping")
    best: dict[str, dict] = {}
    for round_ in range(args.repeats):
        for method in methods:
            result = measure(data, method, args.preset, args.batches, args.device)
            kept = best.setdefault(method, result)
            kept["infer"] = min(kept["infer"], result["infer"])
            kept["train"] = min(kept["train"], result["train"])
            print(f"round {round_ + 1}/{args.repeats} {method}: {result['train']:.2f} s/epoch, "
                  f"{result['infer']:.3f} s/batch", flush=True)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = torch.cuda.get_device_name() if device.startswith("cuda") else (
        f"CPU, {args.threads} torch threads")
    ref = best[REFERENCE]
    print(f"\npreset {args.preset}; {device}; phenotyping (25 labels), batch 16, one epoch = "
          f"{args.batches} training batches; best of {args.repeats} interleaved rounds; "
          f"ratios to {REFERENCE} in the same run\n")
    print("| method | stages | trainable params | x | inference s/batch | x "
          "| train s/epoch | x |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for method in sorted(best):
        row = best[method]
        ratios = [row[k] / ref[k] if ref[k] else math.nan for k in ("params", "infer", "train")]
        print(f"| `{method}` | {row['stages']} | {row['params']:,} | {ratios[0]:.2f} | "
              f"{row['infer']:.3f} | {ratios[1]:.2f} | {row['train']:.2f} | {ratios[2]:.2f} |")
    print("\nstages: pretraining stages before the timed fusion stage (each trains its own "
          "epochs).")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
