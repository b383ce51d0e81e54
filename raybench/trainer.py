"""Training one method on one task: early stopping and checkpoint selection on validation,
one final evaluation on test, predictions as probabilities with subgroup columns.

Methods with unimodal pretraining (e.g. MedFuse) declare ``pretrain_stages()``; each stage
is trained with early stopping on validation like the final ``fusion`` stage, with no
special case here. The model's hooks run in every stage: ``on_epoch_start`` before an epoch's
first batch, ``after_backward`` between ``loss.backward()`` and ``optimizer.step()``,
``on_epoch_end`` after the epoch's last step and before its validation. Deterministic under
a seed on CPU; bf16 autocast on CUDA.

A stage whose ``stage_objective`` is ``"self"`` (self-supervised pretraining) reads no label:
its loss is the sum of the model's ``aux_losses``, it trains on the samples its
``stage_samples`` asks for (``"paired"``: with an image), early-stops on the same loss over
the validation split (patience ``ssl_patience``) and, given a
:class:`raybench.pretrain.StageCheckpoints`, stores a checkpoint every ``probe_every`` epochs
from which a killed run resumes.
:func:`raybench.pretrain.pretrain` runs only those stages; :func:`train_and_evaluate`
with ``pretrained`` loads their result instead of training them. Each stage's optimiser and
learning-rate schedule come from the model's ``optimizer_spec`` (default: Adam/AdamW,
constant).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

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
from raybench.errors import RaybenchError
from raybench.metrics import bucket_means_from_train, compute_metrics, higher_is_better
from raybench.models import DataSpec, TaskSpec, build_model
from raybench.models.base import MultimodalModel, OptimizerSpec, task_loss
from raybench.optim import build_optimizer, lr_factor, set_lr
from raybench.tasks import get_task

if TYPE_CHECKING:
    from raybench.pretrain import StageCheckpoints


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
    # Stages with objective "self" (self-supervised pretraining):
    ssl_epochs: int | None = None  # default: pretrain_epochs, else epochs
    ssl_patience: int = 30  # MedMod: early stopping on validation SSL loss, patience 30
    ssl_batch_size: int | None = None  # default: loader.batch_size
    probe_every: int | None = None  # checkpoint every k epochs (with StageCheckpoints)


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

    def stage_split(self, stage: str) -> tuple[np.ndarray, np.ndarray]:
        """Train and validation samples of ``stage`` (only those with an image if paired)."""
        if self.model.stage_samples(stage) == "all":
            return self.train_idx, self.val_idx
        return (self.train_idx[self.image_row[self.train_idx] >= 0],
                self.val_idx[self.image_row[self.val_idx] >= 0])

    def _loss(self, out, batch, objective: str) -> torch.Tensor:
        loss = None
        if objective == "task":
            loss = task_loss(out.logits.float(), batch["y"], self.data.kind,
                             out.extras.get("loss_mask"))
        for aux in out.aux_losses.values():
            loss = aux.float() if loss is None else loss + aux.float()
        if loss is None:
            raise RaybenchError(f"model {self.model.name!r}: a 'self' stage returned no "
                                "aux_losses to train on")
        return loss

    def train_epoch(self, optimizer, epoch: int, epochs: int, indices: np.ndarray | None = None,
                    objective: str = "task", loader: LoaderConfig | None = None) -> float:
        self.model.train()
        started, losses = time.perf_counter(), []
        batches = iterate_batches(self.data, self.train_idx if indices is None else indices,
                                  loader or self.cfg.loader, train=True,
                                  seed=self.cfg.seed * 10_007 + epoch,
                                  image_row=self.image_row, device=self.device,
                                  inputs=self.inputs)
        self.model.on_epoch_start(epoch, epochs)
        for step, (idx, batch) in enumerate(batches):
            if self.cfg.max_train_batches is not None and step >= self.cfg.max_train_batches:
                break
            if objective == "self" and len(idx) < 2:
                continue  # a trailing batch of one sample: losses over pairs need two
            out = self._forward(batch)
            loss = self._loss(out, batch, objective)
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
    def evaluate_self(self, indices: np.ndarray, loader: LoaderConfig) -> float:
        """Mean over validation batches of the summed ``aux_losses`` (a "self" stage)."""
        self.model.eval()
        losses = []
        for idx, batch in iterate_batches(self.data, indices, loader, train=False,
                                          image_row=self.image_row, device=self.device,
                                          inputs=self.inputs):
            if len(idx) >= 2:
                losses.append(float(self._loss(self._forward(batch), batch, "self")))
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

    def _optimizer_spec(self, stage: str) -> OptimizerSpec:
        spec = self.model.optimizer_spec(stage)
        if spec is None:
            hp = self.model.hparams
            spec = OptimizerSpec(name="adamw" if self.cfg.optimizer == "adamw" else "adam",
                                 lr=float(hp["lr"]), weight_decay=float(hp["weight_decay"]))
        return spec

    def _self_stage_loader(self, stage: str, train: np.ndarray) -> LoaderConfig:
        loader = replace(self.cfg.loader,
                         batch_size=self.cfg.ssl_batch_size or self.cfg.loader.batch_size)
        if loader.batch_size < 2:
            raise RaybenchError("contrastive and VICReg losses need at least 2 paired samples "
                                f"per batch; got batch size {loader.batch_size}")
        if len(train) < loader.batch_size:
            raise RaybenchError(
                f"stage {stage!r} of {self.model.name} trains on paired samples (with an "
                f"image) of the training split: task {self.data.task!r} has {len(train)}, "
                f"fewer than one batch of {loader.batch_size}; lower the SSL batch size or "
                "use more data")
        return loader

    def fit_stage(self, stage: str, epochs: int, checkpoints: StageCheckpoints | None = None
                  ) -> tuple[int, dict]:
        """Train one stage with early stopping on validation; reload its best state."""
        self.model.set_stage(stage)
        objective = self.model.stage_objective(stage)
        train, val = self.stage_split(stage)
        loader, patience = self.cfg.loader, self.cfg.patience
        if objective == "self":
            loader, patience = self._self_stage_loader(stage, train), self.cfg.ssl_patience
        spec = self._optimizer_spec(stage)
        optimizer = build_optimizer(spec, self.model.named_parameters())
        state = {"epoch": 0, "best": -math.inf, "best_epoch": 0, "best_state": None,
                 "best_metrics": {}, "waited": 0}
        snapshot = checkpoints.resume(stage) if checkpoints is not None else None
        if snapshot is not None:
            self.model.load_state_dict(snapshot["model"])
            optimizer.load_state_dict(snapshot["optimizer"])
            torch.set_rng_state(snapshot["rng"])
            self.history = list(snapshot["history"])
            state.update({k: snapshot[k] for k in state})
        every = self.cfg.probe_every or epochs
        for epoch in range(state["epoch"] + 1, epochs + 1):
            if state["waited"] >= patience:
                break
            set_lr(optimizer, spec.lr * lr_factor(spec, epoch, epochs))
            seconds = self.train_seconds
            loss = self.train_epoch(optimizer, epoch, epochs, train, objective, loader)
            seconds = self.train_seconds - seconds
            if objective == "self":
                val_loss = self.evaluate_self(val, loader)
                metrics = {"ssl_loss": val_loss}
                score = -val_loss if math.isfinite(val_loss) else -math.inf
                record = {"val_ssl_loss": val_loss}
            else:
                metrics, _, _ = self.evaluate(val)
                score = self.score(metrics)
                key = self.task.selection_metric
                record = {"val_" + key: metrics.get(key)}
            self.history.append({"stage": stage, "epoch": epoch, "train_loss": loss,
                                 "train_seconds": seconds, **record})
            state["epoch"] = epoch
            if score > state["best"] or state["best_state"] is None:
                state.update(best=score, best_epoch=epoch, best_metrics=metrics, waited=0,
                             best_state=copy.deepcopy(self.model.state_dict()))
            else:
                state["waited"] += 1
            last = epoch == epochs or state["waited"] >= patience
            if checkpoints is not None and objective == "self" and (epoch % every == 0 or last):
                checkpoints.save(stage, epoch, self.model, {
                    **state, "model": self.model.state_dict(),
                    "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
                    "history": list(self.history)})
        self.model.load_state_dict(state["best_state"])
        return state["best_epoch"], state["best_metrics"]


def _self_stages(model: MultimodalModel) -> list[str]:
    return [s for s in model.pretrain_stages() if model.stage_objective(s) == "self"]


def _stage_epochs(cfg: TrainConfig, objective: str) -> int:
    if objective == "self":
        return cfg.ssl_epochs or cfg.pretrain_epochs or cfg.epochs
    return cfg.pretrain_epochs or cfg.epochs


def train_and_evaluate(data: PreparedTask, method: str, hparams: dict | None = None,
                       cfg: TrainConfig | None = None,
                       pretrained: Mapping[str, torch.Tensor] | None = None) -> TrainResult:
    """Train ``method`` on ``data`` (train split), select on validation, test once.

    ``pretrained`` (a ``pretrained_state()`` of the same method and pretraining
    hyperparameters) is loaded first, and the ``"self"`` stages are then skipped.
    """
    cfg = cfg or TrainConfig()
    run = _Run(data, method, dict(hparams or {}), cfg)
    if pretrained is not None:
        run.model.load_pretrained(pretrained)
    for stage in run.model.pretrain_stages():
        objective = run.model.stage_objective(stage)
        if pretrained is None or objective != "self":
            run.fit_stage(stage, _stage_epochs(cfg, objective))
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
