"""AUG: sustained boosting with adaptive classifier assignment (``aug``).

Jiang, Huang, Yang, "Rethinking Multimodal Learning from the Perspective of Mitigating
Classification Ability Disproportion", NeurIPS 2025, arXiv:2502.20120 (code
njustkmg/NeurIPS25-AUG; CareBench lists it as "AUG, CVPR 2025").
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from raybench.models.base import (
    DataSpec,
    ModelConfigError,
    ModelOutput,
    MultimodalModel,
    TaskSpec,
    task_loss,
)
from raybench.models.carebench_common import (
    CAREBENCH_HPARAMS,
    no_task_loss_mask,
    soft_target_loss,
    true_label_score,
)
from raybench.models.cxr_encoders import build_cxr_encoder
from raybench.models.ehr_encoders import build_ehr_encoder
from raybench.models.registry import register_model

__all__ = ["AUG"]

MODALITIES = ("ehr", "cxr")


@register_model("aug")
class AUG(MultimodalModel):
    """Per-modality boosted classifiers; the weaker modality gets more of them.

    Faithful (paper and its reference code): each modality's feature goes through an
    embedding ``Linear + ReLU`` and a classifier ``fc_out`` shared by both modalities and by
    every boosting layer; a "configurable classifier" (boosting layer) is ``Linear(feature,
    classifier_hidden) + ReLU`` followed by the same ``fc_out``, and the modality's logit is
    the sum ``z_t`` of the base classifier and its active boosting layers. With ``h_t`` the
    newest layer's logit and ``z_{t-1} = z_t - h_t``, the sustained-boosting loss per
    modality is ``l(z_t) + l(z_{t-1}) + l(h_t) - 1/2 l(h_t, y * sigma(z_{t-1}))`` (``l`` =
    BCE; multiclass: cross-entropy and the soft target ``onehot(y) * softmax(z_{t-1})``,
    ``z_{t-1}`` detached), and ``l(z_t)`` alone before any layer is added. The training
    objective is ``merge_alpha * L_ehr + (1 - merge_alpha) * L_cxr`` and the prediction
    ``merge_alpha * z_ehr + (1 - merge_alpha) * z_cxr``. Adaptive classifier assignment:
    during each training epoch the summed probability of the true labels is accumulated per
    modality; after epoch 1 and every ``layer_check_interval`` epochs, with
    ``ratio = score_ehr / score_cxr``, a boosting layer is added to the CXR classifier if
    ``ratio > aug_lambda + margin`` and to the EHR classifier if ``ratio < aug_lambda -
    margin``. New layers: Xavier-normal weights, zero bias.

    Deviations: ``aug_max_layers`` (8) boosting layers per modality are allocated up front
    and activated by a count kept in the buffers ``active_ehr`` / ``active_cxr`` (so the
    optimiser owns them from the start and best-state restore brings the count back;
    CareBench appends layers that never join its optimiser); assignment stops at the cap.
    One optimiser step per batch on the weighted sum of both modality losses, where the
    reference code takes one step per modality. The whole objective is in ``aux_losses``
    (``aug_ehr``, ``aug_cxr``); in training ``extras["loss_mask"]`` is all False, so the
    trainer's task loss on the fused logits adds zero. Multiclass residual term: the paper's
    soft-target cross-entropy (CareBench uses a KL divergence). Encoders: CareBench's EHR
    transformer and ResNet-50 projected to ``hidden``. Missing images are the zero image
    (``handles_missing_cxr`` False, as in CareBench).
    """

    modalities: ClassVar[frozenset[str]] = frozenset(MODALITIES)
    handles_missing_cxr: ClassVar[bool] = False

    def __init__(self, data: DataSpec, task: TaskSpec, **hparams: Any) -> None:
        super().__init__(data, task, **hparams)
        hp = self.hparams
        max_layers = int(hp["aug_max_layers"])
        if max_layers < 1:
            raise ModelConfigError(f"aug: aug_max_layers must be >= 1, got {max_layers}")
        if int(hp["layer_check_interval"]) < 1:
            raise ModelConfigError(
                f"aug: layer_check_interval must be >= 1, got {hp['layer_check_interval']}")
        dim, clf = int(hp["hidden"]), int(hp["classifier_hidden"])
        self.ehr_encoder = build_ehr_encoder(str(hp["ehr_encoder"]), data.ehr_features, hp)
        self.cxr_encoder = build_cxr_encoder(hp, data.cxr_channels, proj_dim=dim)
        self.embedding = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(dim, clf), nn.ReLU()) for m in MODALITIES})
        self.fc_out = nn.Linear(clf, task.n_outputs)
        self.boost = nn.ModuleDict(
            {m: nn.ModuleList(nn.Linear(dim, clf) for _ in range(max_layers))
             for m in MODALITIES})
        for layers in self.boost.values():
            for layer in layers:
                nn.init.xavier_normal_(layer.weight)
                nn.init.zeros_(layer.bias)
        self.register_buffer("active_ehr", torch.zeros((), dtype=torch.long))
        self.register_buffer("active_cxr", torch.zeros((), dtype=torch.long))
        self.epoch_scores = {m: 0.0 for m in MODALITIES}  # reset every epoch
        self.last_ratio = float("nan")

    @classmethod
    def default_hparams(cls) -> dict:
        """CareBench: transformer + ResNet-50, merge_alpha 0.6, lambda 1, margin 0.01, every 5."""
        return {**CAREBENCH_HPARAMS, "merge_alpha": 0.6, "aug_lambda": 1.0, "margin": 0.01,
                "layer_check_interval": 5, "classifier_hidden": 256, "aug_max_layers": 8}

    @classmethod
    def search_space(cls) -> dict:
        """CareBench's: merge_alpha, aug_lambda, margin, layer_check_interval."""
        return {"merge_alpha": {"uniform": [0.2, 0.8]},
                "aug_lambda": {"uniform": [0.8, 1.2]},
                "margin": {"uniform": [0.005, 0.05]},
                "layer_check_interval": {"choice": [5, 10, 15]}}

    def active_layers(self, modality: str) -> int:
        """Number of boosting layers in use for ``modality``."""
        return int(getattr(self, f"active_{modality}"))

    def _classify(self, modality: str, feat: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(z_t, z_{t-1}, h_t)``: full logit, logit without the newest layer, newest layer's."""
        logits = self.fc_out(self.embedding[modality](feat))
        previous, newest = logits, None
        for layer in self.boost[modality][: self.active_layers(modality)]:
            previous = logits
            newest = self.fc_out(F.relu(layer(feat)))
            logits = logits + newest
        return logits, previous, newest

    def _boosting_loss(self, logits: torch.Tensor, previous: torch.Tensor,
                       newest: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        kind = self.task.kind
        loss = task_loss(logits, y, kind)
        if newest is None:
            return loss
        if kind == "multiclass":
            onehot = F.one_hot(y.reshape(-1).long(), self.task.n_outputs).to(previous.dtype)
            residual_target = onehot * torch.softmax(previous.detach(), -1)
        else:
            residual_target = y.to(previous.dtype).reshape(previous.shape) * torch.sigmoid(
                previous.detach())
        return (loss + task_loss(previous, y, kind) + task_loss(newest, y, kind)
                - 0.5 * soft_target_loss(newest, residual_target, kind))

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        """Fused logits; in training with labels, both boosting losses in ``aux_losses``."""
        feats = {"ehr": self.ehr_encoder(batch["ehr"], batch["ehr_lengths"]),
                 "cxr": self.cxr_encoder(batch["cxr"])}
        outputs = {m: self._classify(m, feats[m]) for m in MODALITIES}
        alpha = float(self.hparams["merge_alpha"])
        fused = alpha * outputs["ehr"][0] + (1 - alpha) * outputs["cxr"][0]
        extras = {"ehr_logits": outputs["ehr"][0], "cxr_logits": outputs["cxr"][0]}
        if "y" not in batch:
            return ModelOutput(logits=fused, aux_losses={}, extras=extras)
        y = batch["y"]
        weights = {"ehr": alpha, "cxr": 1 - alpha}
        aux = {f"aug_{m}": weights[m] * self._boosting_loss(*outputs[m], y) for m in MODALITIES}
        if self.training:
            for m in MODALITIES:
                self.epoch_scores[m] += float(true_label_score(outputs[m][0], y, self.task.kind))
            extras["loss_mask"] = no_task_loss_mask(batch)
        return ModelOutput(logits=fused, aux_losses=aux, extras=extras)

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Reset the per-modality training scores."""
        self.epoch_scores = {m: 0.0 for m in MODALITIES}

    def on_epoch_end(self, epoch: int) -> None:
        """Adaptive classifier assignment after epoch 1 and every ``layer_check_interval``."""
        cxr_score = self.epoch_scores["cxr"]
        self.last_ratio = self.epoch_scores["ehr"] / cxr_score if cxr_score > 0 else float("inf")
        interval = int(self.hparams["layer_check_interval"])
        if epoch != 1 and epoch % interval:
            return
        lam, margin = float(self.hparams["aug_lambda"]), float(self.hparams["margin"])
        weaker = None
        if self.last_ratio > lam + margin:
            weaker = "cxr"
        elif self.last_ratio < lam - margin:
            weaker = "ehr"
        if weaker is not None:
            count = getattr(self, f"active_{weaker}")
            if int(count) < len(self.boost[weaker]):
                count += 1
