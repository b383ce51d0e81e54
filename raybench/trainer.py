"""Training one method on one task: early stopping and checkpoint selection on validation,
one final evaluation on test, predictions as probabilities with subgroup columns.

Methods with unimodal pretraining (e.g. MedFuse) declare ``pretrain_stages()``; each stage
is trained with early stopping on validation like the final ``fusion`` stage, with no
special case here. The model's hooks run in every stage: ``on_epoch_start`` before an epoch's
first batch, ``after_backward`` between ``loss.backward()`` and ``optimizer.step()``,
``on_epoch_end`` after the epoch's last step and before its validation. Deterministic under
a seed on CPU; bf16 autocast on CUDA.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch

from raybench.data import (
    GROUP_COLUMNS,
    LoaderConfig,
    PreparedTask,
    drop_images,
    iterate_batches,
    require_inputs,
)
from raybench.metrics import bucket_means_from_train, compute_metrics, higher_is_better
from raybench.models import DataSpec, TaskSpec, build_model
from raybench.models.base import task_loss
from raybench.tasks import get_task


@dataclass(frozen=True)
class TrainConfig:
    """Trainer settings (the method's own hyperparameters, lr included, are separate)."""

    epochs: int = 50
    patience: int = 10
    pretrain_epochs: int | None = None  # per pretraining stage; default: epochs
    optimizer: str = "adam"  # adam | adamw
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast, CUDA only
    max_train_batches: int | None = None  # per epoch (hourly tasks have many samples)
    max_val_samples: int | None = None  # fixed random subset of validation for selection
    threshold: float = 0.5
    cohort: str = "base"  # base: all samples; matched: samples with a CXR (before dropping)
    cxr_missing_ratio: float = 0.0
    cxr_missing_splits: tuple[str, ...] = ("train", "val", "test")
    loader: LoaderConfig = field(default_factory=LoaderConfig)


@dataclass
class TrainResult:
    """What one training run returns."""

    val_metrics: dict[str, float]
    test_metrics: dict[str, float]
    selection_metric: str
    best_epoch: int
    epochs_run: int
    history: list[dict]
    predictions: pd.DataFrame
    n_parameters: int
    train_seconds: float
    train_samples_per_second: float
    inference_seconds_per_batch: float
    config: dict


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _probabilities(logits: torch.Tensor, kind: str) -> np.ndarray:
    logits = logits.float()
    if kind == "multiclass":
        return torch.softmax(logits, dim=-1).cpu().numpy()
    probs = torch.sigmoid(logits).cpu().numpy()
    return probs[:, 0] if kind == "binary" else probs


class _Run:
    """State shared by the stages of one training run."""

    def __init__(self, data: PreparedTask, method: str, hparams: dict, cfg: TrainConfig):
        self.data, self.cfg = data, cfg
        self.task = get_task(data.task)
        self.device = _device(cfg.device)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        crop = cfg.loader.crop or max(8, data.image_size * 7 // 8)
        spec = DataSpec(ehr_features=data.ehr.shape[1], image_size=crop,
                        feature_names=tuple(data.feature_names), step_hours=data.step_hours)
        self.model = build_model(method, spec, TaskSpec(data.task, data.kind, data.n_outputs),
                                 **hparams).to(self.device)
        self.inputs = self.model.inputs
        require_inputs(data, self.inputs, method)
        self.image_row = drop_images(data, cfg.cxr_missing_ratio, cfg.cxr_missing_splits,
                                     cfg.seed)
        def split(name: str) -> np.ndarray:
            idx = data.indices(name)
            if cfg.cohort == "matched":
                return idx[data.image_row[idx] >= 0]
            if cfg.cohort != "base":
                raise ValueError(f"cohort must be 'base' or 'matched', got {cfg.cohort!r}")
            return idx

        self.train_idx = split("train")
        val = split("val")
        if cfg.max_val_samples and len(val) > cfg.max_val_samples:
            val = np.sort(np.random.default_rng(cfg.seed).choice(val, cfg.max_val_samples,
                                                                 replace=False))
        self.val_idx, self.test_idx = val, split("test")
        self.bucket_means = None
        if data.remaining_hours is not None:
            edges = self.task.los_bucket_edges_days
            if edges is None:
                raise ValueError(f"task {data.task!r} has remaining_hours but no LoS bucket edges")
            self.bucket_means = bucket_means_from_train(
                data.remaining_hours[self.train_idx], data.y[self.train_idx], data.n_outputs,
                edges_days=edges)
        self.autocast = self.device.type == "cuda" and cfg.amp
        self.samples_seen, self.train_seconds, self.history = 0, 0.0, []

    def _forward(self, batch):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.model(batch)

    def train_epoch(self, optimizer, epoch: int, epochs: int) -> float:
        self.model.train()
        started, losses = time.perf_counter(), []
        batches = iterate_batches(self.data, self.train_idx, self.cfg.loader, train=True,
                                  seed=self.cfg.seed * 10_007 + epoch,
                                  image_row=self.image_row, device=self.device,
                                  inputs=self.inputs)
        self.model.on_epoch_start(epoch, epochs)
        for step, (idx, batch) in enumerate(batches):
            if self.cfg.max_train_batches is not None and step >= self.cfg.max_train_batches:
                break
            out = self._forward(batch)
            loss = task_loss(out.logits.float(), batch["y"], self.data.kind,
                             out.extras.get("loss_mask"))
            for aux in out.aux_losses.values():
                loss = loss + aux.float()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.model.after_backward(out, batch)
            optimizer.step()
            losses.append(float(loss.detach()))
            self.samples_seen += len(idx)
        self.model.on_epoch_end(epoch)
        self.train_seconds += time.perf_counter() - started
        return float(np.mean(losses)) if losses else math.nan

    @torch.no_grad()
    def evaluate(self, indices: np.ndarray) -> tuple[dict, np.ndarray, float]:
        self.model.eval()
        probs, seconds, batches = [], 0.0, 0
        for _, batch in iterate_batches(self.data, indices, self.cfg.loader, train=False,
                                        image_row=self.image_row, device=self.device,
                                        inputs=self.inputs):
            started = time.perf_counter()
            logits = self._forward(batch).logits
            probs.append(_probabilities(logits, self.data.kind))
            seconds += time.perf_counter() - started
            batches += 1
        prob = np.concatenate(probs)
        y = self.data.y[indices]
        y = y[:, 0] if self.data.kind == "binary" else y
        extra = {}
        if self.bucket_means is not None:
            extra = {"remaining_hours": self.data.remaining_hours[indices],
                     "bucket_means_hours": self.bucket_means}
        metrics = compute_metrics(self.data.kind, y, prob, threshold=self.cfg.threshold,
                                  label_names=self.data.label_names, **extra)
        return metrics, prob, seconds / max(batches, 1)

    def score(self, metrics: dict) -> float:
        value = metrics.get(self.task.selection_metric, math.nan)
        if not math.isfinite(value):
            return -math.inf
        return value if higher_is_better(self.task.selection_metric) else -value

    def fit_stage(self, stage: str, epochs: int) -> tuple[int, dict]:
        self.model.set_stage(stage)
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt_cls = torch.optim.AdamW if self.cfg.optimizer == "adamw" else torch.optim.Adam
        optimizer = opt_cls(params, lr=self.model.hparams["lr"],
                            weight_decay=self.model.hparams["weight_decay"])
        best, best_epoch, best_state, best_metrics, waited = -math.inf, 0, None, {}, 0
        for epoch in range(1, epochs + 1):
            loss = self.train_epoch(optimizer, epoch, epochs)
            metrics, _, _ = self.evaluate(self.val_idx)
            score = self.score(metrics)
            self.history.append({"stage": stage, "epoch": epoch, "train_loss": loss,
                                 "val_" + self.task.selection_metric:
                                     metrics.get(self.task.selection_metric)})
            if score > best or best_state is None:
                best, best_epoch, best_metrics, waited = score, epoch, metrics, 0
                best_state = copy.deepcopy(self.model.state_dict())
            else:
                waited += 1
                if waited >= self.cfg.patience:
                    break
        self.model.load_state_dict(best_state)
        return best_epoch, best_metrics


def train_and_evaluate(data: PreparedTask, method: str, hparams: dict | None = None,
                       cfg: TrainConfig | None = None) -> TrainResult:
    """Train ``method`` on ``data`` (train split), select on validation, test once."""
    cfg = cfg or TrainConfig()
    run = _Run(data, method, dict(hparams or {}), cfg)
    for stage in run.model.pretrain_stages():
        run.fit_stage(stage, cfg.pretrain_epochs or cfg.epochs)
    best_epoch, val_metrics = run.fit_stage("fusion", cfg.epochs)
    test_metrics, prob, infer = run.evaluate(run.test_idx)
    return TrainResult(
        val_metrics=val_metrics, test_metrics=test_metrics,
        selection_metric=run.task.selection_metric, best_epoch=best_epoch,
        epochs_run=sum(1 for h in run.history if h["stage"] == "fusion"),
        history=run.history, predictions=_predictions(data, run.test_idx, prob, run.image_row),
        n_parameters=sum(p.numel() for p in run.model.parameters()),
        train_seconds=run.train_seconds,
        train_samples_per_second=run.samples_seen / max(run.train_seconds, 1e-9),
        inference_seconds_per_batch=infer,
        config={"method": method, "hparams": run.model.hparams, "train": asdict(cfg)},
    )


def _predictions(data: PreparedTask, idx: np.ndarray, prob: np.ndarray,
                 image_row: np.ndarray) -> pd.DataFrame:
    """Test predictions: sample position, truth, probabilities, subgroups (no identifiers)."""
    frame = pd.DataFrame({"sample": idx.astype(np.int64)})
    y = data.y[idx]
    if data.kind == "multiclass":
        frame["y_true"] = y
        for c in range(prob.shape[1]):
            frame[f"prob_{c}"] = prob[:, c]
    else:
        prob = prob.reshape(len(idx), -1)
        for k in range(y.shape[1]):
            frame[f"y_true_{k}"] = y[:, k]
            frame[f"prob_{k}"] = prob[:, k]
    frame["cxr_present"] = image_row[idx] >= 0
    for column in GROUP_COLUMNS:
        frame[column] = data.groups[column][idx]
    return frame
