"""InfoReg: information-acquisition regulation of the dominant modality (``inforeg``).

Huang, Wei, Yang, Hu, "Adaptive Unimodal Regulation for Balanced Multimodal Information
Acquisition", CVPR 2025, arXiv:2503.18595 (code GeWu-Lab/InfoReg_CVPR2025).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from raybench.models.base import (
    DataSpec,
    ModelConfigError,
    ModelOutput,
    MultimodalModel,
    TaskSpec,
)
from raybench.models.carebench_common import CAREBENCH_HPARAMS, true_label_score
from raybench.models.cxr_encoders import build_cxr_encoder
from raybench.models.ehr_encoders import build_ehr_encoder
from raybench.models.registry import register_model

__all__ = ["InfoReg", "INFOREG_MODES"]

MODALITIES = ("ehr", "cxr")
INFOREG_MODES = ("proximal", "grad_scale")


@register_model("inforeg")
class InfoReg(MultimodalModel):
    """Joint + unimodal heads; the dominant modality's encoder is slowed down early on.

    Faithful (paper and its reference code): a joint head on ``[ehr_feat, cxr_feat]`` gives
    the prediction; unimodal heads add their task losses (``L = L_joint + L_ehr + L_cxr``).
    Each batch, the modality whose summed true-label probability ``s_m`` is higher is
    dominant; while the prime learning window is open (``k > k_threshold``) its encoder
    gets the proximal term ``beta/2 ||theta_m - theta_m^prev||^2`` (added to its gradients
    as ``beta (theta_m - theta_m^prev)`` after ``backward()``), ``theta_m^prev`` being its
    parameters at the start of the epoch and ``beta = scale_m * exp(tanh(s_m - s_other))``
    (``ehr_scale`` / ``cxr_scale``, the reference code's 0.95 / 0.1). The window: after each
    epoch, the trace of each encoder's empirical Fisher information (sum over its Linear and
    Conv weights of the mean squared gradient, accumulated over the epoch's batches) is
    appended to its history; at the next epoch start
    ``k_m = (tr_n - tr_{n-h}) / (tr_{n-h+1} + ... + tr_n)`` with ``h = history`` (missing
    entries count 0; ``k = 1`` in the first epoch), the reference code's
    ``(mean of last h - mean of the h before) / mean of last h``.

    Deviations: the window is measured on the trace of the modality being regulated (the
    reference code always uses the audio encoder's, its dominant modality); the reference
    code's branch for a dominant second modality is unreachable (both tests read
    ``score_a > score_v``), here either modality can be regulated. ``inforeg_mode:
    grad_scale`` is CareBench's variant: the dominant encoder's gradients are multiplied by
    ``1 - min(scale_m * (s_d - s_o) / (s_d + s_o), 0.9)`` (CareBench also measures the window
    on per-batch EHR traces; here on per-epoch traces in both modes). Binary/multilabel
    scores average over labels. State: the trace history and ``k`` live in buffers
    (``trace_history`` [2, history + 1], ``epochs_recorded``, ``window_k``); the epoch-start
    parameter copy is training-only state, retaken every epoch, and not saved. Encoders:
    CareBench's EHR transformer and ResNet-50 projected to ``hidden``; missing images are the
    zero image (``handles_missing_cxr`` False, as in CareBench).
    """

    modalities: ClassVar[frozenset[str]] = frozenset(MODALITIES)
    handles_missing_cxr: ClassVar[bool] = False

    def __init__(self, data: DataSpec, task: TaskSpec, **hparams: Any) -> None:
        super().__init__(data, task, **hparams)
        hp = self.hparams
        if hp["inforeg_mode"] not in INFOREG_MODES:
            raise ModelConfigError(f"inforeg: inforeg_mode must be one of "
                                   f"{', '.join(INFOREG_MODES)}, got {hp['inforeg_mode']!r}")
        history = int(hp["history"])
        if history < 1:
            raise ModelConfigError(f"inforeg: history must be >= 1, got {history}")
        dim = int(hp["hidden"])
        self.ehr_encoder = build_ehr_encoder(str(hp["ehr_encoder"]), data.ehr_features, hp)
        self.cxr_encoder = build_cxr_encoder(hp, data.cxr_channels, proj_dim=dim)
        self.head_joint = nn.Linear(2 * dim, task.n_outputs)
        self.head_ehr = nn.Linear(dim, task.n_outputs)
        self.head_cxr = nn.Linear(dim, task.n_outputs)
        self.register_buffer("trace_history", torch.zeros(len(MODALITIES), history + 1))
        self.register_buffer("epochs_recorded", torch.zeros((), dtype=torch.long))
        self.register_buffer("window_k", torch.ones(len(MODALITIES)))
        self._trace_sum = [0.0] * len(MODALITIES)
        self._anchors: dict[str, list[torch.Tensor]] = {}
        self.last_betas = dict.fromkeys(MODALITIES, 0.0)

    @classmethod
    def default_hparams(cls) -> dict:
        """CareBench: transformer + ResNet-50, k 0.05, scales 0.95 / 0.10, history 5."""
        return {**CAREBENCH_HPARAMS, "inforeg_mode": "proximal", "k_threshold": 0.05,
                "ehr_scale": 0.95, "cxr_scale": 0.10, "history": 5}

    @classmethod
    def search_space(cls) -> dict:
        """CareBench's: k_threshold, ehr_scale, cxr_scale, history."""
        return {"k_threshold": {"uniform": [0.01, 0.10]},
                "ehr_scale": {"uniform": [0.5, 1.5]},
                "cxr_scale": {"uniform": [0.05, 0.50]},
                "history": {"choice": [5, 10, 15]}}

    def _encoder(self, modality: str) -> nn.Module:
        return self.ehr_encoder if modality == "ehr" else self.cxr_encoder

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        """Joint logits; unimodal head losses in ``aux_losses``; scores in ``extras``."""
        ehr = self.ehr_encoder(batch["ehr"], batch["ehr_lengths"])
        cxr = self.cxr_encoder(batch["cxr"])
        logits = self.head_joint(torch.cat([ehr, cxr], dim=1))
        unimodal = {"ehr": self.head_ehr(ehr), "cxr": self.head_cxr(cxr)}
        extras = {f"{m}_logits": unimodal[m] for m in MODALITIES}
        aux = self._aux_head_losses(batch, {f"{m}_head": (unimodal[m], None)
                                            for m in MODALITIES}, 1.0)
        if "y" in batch and self.training:
            for m in MODALITIES:
                extras[f"score_{m}"] = true_label_score(unimodal[m], batch["y"], self.task.kind)
        return ModelOutput(logits=logits, aux_losses=aux, extras=extras)

    # ------------------------------------------------------------------ trainer hooks
    def window_value(self) -> torch.Tensor:
        """``k`` per modality from the trace history (1 before any epoch was recorded)."""
        if int(self.epochs_recorded) == 0:
            return torch.ones(len(MODALITIES), device=self.trace_history.device)
        hist = self.trace_history
        recent = hist[:, 1:].sum(1)
        k = (hist[:, -1] - hist[:, 0]) / recent.clamp(min=1e-30)
        return torch.where(recent > 0, k, torch.zeros_like(k))

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Open the epoch: ``k`` from the history, parameter anchors, zero trace sums."""
        self.window_k.copy_(self.window_value())
        self._trace_sum = [0.0] * len(MODALITIES)
        if self.hparams["inforeg_mode"] == "proximal":
            self._anchors = {m: [p.detach().clone() for p in self._encoder(m).parameters()]
                             for m in MODALITIES}

    def _beta(self, dominant: float, other: float, scale: float) -> float:
        if self.hparams["inforeg_mode"] == "proximal":
            return scale * math.exp(math.tanh(dominant - other))
        return min(scale * (dominant - other) / max(dominant + other, 1e-8), 0.9)

    def after_backward(self, out: ModelOutput, batch: dict[str, torch.Tensor]) -> None:
        """Regulate the dominant encoder's gradients; accumulate the Fisher traces."""
        self.last_betas = dict.fromkeys(MODALITIES, 0.0)
        if "score_ehr" in out.extras:
            scores = {m: float(out.extras[f"score_{m}"]) for m in MODALITIES}
            if scores["ehr"] != scores["cxr"]:
                dominant = max(MODALITIES, key=scores.get)
                other = "cxr" if dominant == "ehr" else "ehr"
                index = MODALITIES.index(dominant)
                if float(self.window_k[index]) > float(self.hparams["k_threshold"]):
                    beta = self._beta(scores[dominant], scores[other],
                                      float(self.hparams[f"{dominant}_scale"]))
                    self._regulate(dominant, beta)
                    self.last_betas[dominant] = beta
        for index, m in enumerate(MODALITIES):
            self._trace_sum[index] += self._fisher_trace(self._encoder(m))

    def _regulate(self, modality: str, beta: float) -> None:
        params = list(self._encoder(modality).parameters())
        if self.hparams["inforeg_mode"] == "proximal":
            anchors = self._anchors.get(modality) or [p.detach().clone() for p in params]
            for param, anchor in zip(params, anchors, strict=True):
                if param.grad is not None:
                    param.grad.add_(param.detach() - anchor, alpha=beta)
        else:
            for param in params:
                if param.grad is not None:
                    param.grad.mul_(1.0 - beta)

    @staticmethod
    def _fisher_trace(encoder: nn.Module) -> float:
        """Sum over Linear/Conv weights of the mean squared gradient (0 without gradients)."""
        means = [module.weight.grad.detach().float().pow(2).mean()
                 for module in encoder.modules()
                 if isinstance(module, nn.Linear | nn.Conv2d) and module.weight.grad is not None]
        return float(torch.stack(means).sum()) if means else 0.0

    def on_epoch_end(self, epoch: int) -> None:
        """Append the epoch's traces to the history."""
        newest = torch.tensor(self._trace_sum, dtype=self.trace_history.dtype,
                              device=self.trace_history.device)
        self.trace_history.copy_(torch.cat([self.trace_history[:, 1:], newest[:, None]], 1))
        self.epochs_recorded += 1
