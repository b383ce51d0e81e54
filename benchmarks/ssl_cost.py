"""SSL cost benchmark: pretraining and per-checkpoint probing against one medfuse epoch.

On one prepared dataset (synthetic by default), with the same encoders for every method:

- reference: one training epoch of ``medfuse``'s fusion stage on the paired (matched)
  training stays of phenotyping, batch 16 (the study default);
- pretraining: seconds per epoch of ``--method`` at batch 256 on the same stays (mean over
  ``--epochs`` epochs after a first, warm-up epoch; LARS as in MedMod);
- probing one checkpoint, per task of MedMod (mortality, phenotyping, decompensation,
  length of stay, radiology) on the base and matched cohorts and every modality
  (multimodal, ehr, cxr): frozen features computed once (per image, per EHR window) and
  cached, then one linear probe per (task, cohort, modality); and all tasks in one prober
  (tasks share images and windows);
- the probing share: probing all tasks once per ``--probe-every`` epochs, over the
  pretraining time of those epochs (the target is <= 10 %);
- for contrast: pretraining at batch 16 (on CPU the packed-LSTM backward of the shared EHR
  encoder grows with batch size x sequence length, so batch 256 costs more per sample), and
  one epoch of a linear probe trained through the trainer (frozen encoders run again on
  every batch of every epoch) on phenotyping, base cohort.

Every figure is printed with its ratio to the reference epoch. Nothing is asserted.

    python benchmarks/ssl_cost.py [--patients 2000] [--data PREPARED] [--method convirt]
        [--backbone resnet_tiny|resnet34] [--epochs 2] [--probe-every 10] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from preprocessing.config import PreprocessConfig
from preprocessing.pipeline import run_preprocess
from preprocessing.synth.generator import SynthConfig, generate
from raybench.data import LoaderConfig, load_prepared, load_shared
from raybench.models.base import OptimizerSpec
from raybench.optim import build_optimizer
from raybench.pretrain import pretrain
from raybench.ssl_probe import CheckpointProber, ProbeConfig, probe_sets
from raybench.trainer import TrainConfig, _Run

TASKS = ("mortality", "phenotyping", "decompensation", "length_of_stay", "radiology")
MODALITIES = ("multimodal", "ehr", "cxr")


def prepared_data(args: argparse.Namespace) -> Path:
    """``--data``, or a synthetic dataset generated and preprocessed under ``--workdir``."""
    if args.data is not None:
        return args.data
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ssl_cost_"))
    raw, out = work / f"raw{args.patients}", work / f"prepared{args.patients}"
    if not (out / "manifest.json").is_file():
        generate(SynthConfig(out=raw, patients=args.patients, seed=3, image_size=args.image_size))
        run_preprocess(raw / "mimic-iv", raw / "mimic-cxr-jpg", out, show=False,
                       config=PreprocessConfig(cxr_image_size=args.image_size,
                                               imputations=("medmod",)))
    return out


def _timed(fn) -> tuple[float, object]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    value = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started, value


def main() -> None:
    """Time the reference, pretraining and probing on one dataset; print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="a prepared dataset")
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--method", default="convirt", choices=["convirt", "vicreg", "align"])
    parser.add_argument("--backbone", default="resnet_tiny")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2, help="pretraining epochs timed")
    parser.add_argument("--probe-every", type=int, default=10)
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = prepared_data(args)
    shared = load_shared(path)
    data = {t: load_prepared(path, t, shared=shared) for t in TASKS}
    pheno = data["phenotyping"]
    encoders = {"hidden": args.hidden, "cxr_backbone": args.backbone, "pretrained": False}
    loader = LoaderConfig(batch_size=16, max_len=args.max_len)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"data: {path}; device {device}; torch threads {torch.get_num_threads()}; "
          f"backbone {args.backbone}; EHR LSTM hidden {args.hidden}")

    # reference: one medfuse fusion-stage epoch on the paired phenotyping training stays
    run = _Run(pheno, "medfuse", {**encoders, "ehr_layers": 1}, TrainConfig(
        cohort="matched", loader=loader))
    run.model.set_stage("fusion")
    optimizer = build_optimizer(OptimizerSpec("adam", lr=1e-4), run.model.named_parameters())
    run.train_epoch(optimizer, 1, 2)  # warm-up
    reference, _ = _timed(lambda: run.train_epoch(optimizer, 2, 2))
    n_pairs = len(run.train_idx)
    print(f"reference: medfuse fusion epoch, {n_pairs} paired stays, batch 16: "
          f"{reference:.2f} s")

    cfg = TrainConfig(ssl_epochs=args.epochs + 1, ssl_patience=args.epochs + 1,
                      ssl_batch_size=256, cohort="matched", loader=loader)
    result = pretrain(pheno, args.method, encoders, cfg)
    per_epoch = sum(h["train_seconds"] for h in result.history[1:]) / args.epochs
    rows = [(f"pretraining {args.method}: s / epoch (batch 256)", per_epoch)]
    model = result.model
    small = pretrain(pheno, args.method, encoders, TrainConfig(
        ssl_epochs=2, ssl_patience=2, ssl_batch_size=16, cohort="matched", loader=loader))
    probe = ProbeConfig()
    total_tasks = 0.0
    for task in TASKS:
        sets = probe_sets({task: data[task]}, [task], ["base", "matched"], probe)
        prober = CheckpointProber(sets, MODALITIES, probe, loader, device=device)
        seconds, _ = _timed(lambda p=prober: p(model))
        total_tasks += seconds
        rows.append((f"probing one checkpoint: {task} (base + matched, 3 modalities)",
                     seconds))
    sets = probe_sets(data, TASKS, ["base", "matched"], probe)
    together, _ = _timed(lambda: CheckpointProber(sets, MODALITIES, probe, loader,
                                                  device=device)(model))
    rows.append(("probing one checkpoint: all five tasks in one prober", together))

    linear = _Run(pheno, args.method, {**encoders, "ssl_eval": "linear", "lr": 1e-3},
                  TrainConfig(cohort="base", loader=loader))
    linear.model.load_pretrained(model.pretrained_state())
    linear.model.set_stage("fusion")
    opt = build_optimizer(OptimizerSpec("adam", lr=1e-3), linear.model.named_parameters())
    trainer_epoch, _ = _timed(lambda: (linear.train_epoch(opt, 1, 1),
                                       linear.evaluate(linear.val_idx)))
    rows.append(("contrast: trainer-based linear probe, one epoch (phenotyping, base)",
                 trainer_epoch))
    rows.append((f"contrast: pretraining {args.method}, s / epoch at batch 16",
                 small.history[1]["train_seconds"]))

    width = max(len(name) for name, _ in rows)
    print(f"{'':{width}}  {'seconds':>9}  {'x medfuse epoch':>15}")
    for name, seconds in rows:
        print(f"{name:{width}}  {seconds:9.2f}  {seconds / reference:15.2f}")
    window = args.probe_every * per_epoch
    print(f"probing share of pretraining (one checkpoint every {args.probe_every} epochs): "
          f"{together / (window + together):.1%} with one prober for all tasks "
          f"({total_tasks / (window + total_tasks):.1%} probing task by task); target <= 10 %")


if __name__ == "__main__":
    main()
