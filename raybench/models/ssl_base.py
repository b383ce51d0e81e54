"""What ConVIRT, VICReg and ALIGN share: MedMod's self-supervised EHR-CXR model and protocol.

Architecture (MedMod's SSL models): an EHR LSTM (``hidden`` 128, one layer) and a ResNet-34
(random init, as in MedMod's SSL code), each followed by a three-layer MLP projection head
``Linear-BN-ReLU-Linear-BN-ReLU-Linear`` to ``proj_dim`` (128). A method supplies only its
loss on the projected pair ``z_e, z_c`` (:meth:`SelfSupervisedModel.ssl_losses`).

Stages:

* ``"pretrain"`` -- objective ``"self"``, samples ``"paired"``: the trainer computes no task
  loss and sums the method's ``aux_losses`` over paired samples (the EHR view has no
  augmentation, the image view gets the loader's batch augmentation, as in MedMod).
* ``"fusion"`` -- the downstream evaluation ``ssl_eval``: ``linear`` freezes the encoders and
  the projection heads (kept in eval mode) and trains one linear layer on :meth:`features`;
  ``finetune`` (MedMod's ``finetune.py``) freezes the projection heads and trains the
  encoders of the used modalities plus the linear layer. Both use Adam with the learning rate
  divided by 10 at each fraction of ``probe_milestones`` of the epochs (MedMod: 60 %, 80 %).

:meth:`features` is what the linear layer sees: with ``probe_layer`` ``backbone`` (MedMod's
``fusion_layer`` 0) the encoder outputs, with ``projection`` (``fusion_layer`` 3) the
projected embeddings; for ``ssl_modality`` ``multimodal`` the concatenation
``[EHR, CXR (zeros when absent), presence bit]``, else one modality's part. Absent images
never pass through the CNN or the projection head (``handles_missing_cxr``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from raybench.models.base import (
    TRAINER_HPARAMS,
    TRAINER_SEARCH_SPACE,
    DataSpec,
    ModelConfigError,
    ModelOutput,
    MultimodalModel,
    OptimizerSpec,
    TaskSpec,
)
from raybench.models.cxr_encoders import CXR_HPARAMS, build_cxr_encoder
from raybench.models.ehr_encoders import EHR_HPARAMS, LSTMEncoder, build_ehr_encoder

__all__ = ["DOWNSTREAM_KEYS", "SSL_EVALUATIONS", "SSL_MODALITIES", "PROBE_LAYERS",
           "SelfSupervisedModel", "combine_features", "parse_milestones",
           "projection_head"]

SSL_EVALUATIONS = ("linear", "finetune")
SSL_MODALITIES = ("multimodal", "ehr", "cxr")
PROBE_LAYERS = ("backbone", "projection")
SSL_OPTIMIZERS = ("lars", "adamw")
#: Hyperparameters of the downstream evaluation only; every other one defines pretraining.
DOWNSTREAM_KEYS = ("lr", "weight_decay", "ssl_eval", "ssl_modality", "probe_layer",
                   "probe_milestones")
_CHOICES = {"ssl_eval": SSL_EVALUATIONS, "ssl_modality": SSL_MODALITIES,
            "probe_layer": PROBE_LAYERS, "ssl_optimizer": SSL_OPTIMIZERS}


def parse_milestones(text: str) -> tuple[float, ...]:
    """``"0.6,0.8"`` -> ``(0.6, 0.8)``: increasing fractions in (0, 1); ``""`` -> ``()``."""
    try:
        values = tuple(float(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        values = (-1.0,)
    if any(not 0 < v < 1 for v in values) or list(values) != sorted(set(values)):
        raise ModelConfigError(f"probe_milestones: expected increasing fractions of the epochs "
                               f"in (0, 1) separated by commas (e.g. '0.6,0.8'), got {text!r}")
    return values


def combine_features(modality: str, ehr: torch.Tensor | None, cxr: torch.Tensor | None,
                     present: torch.Tensor) -> torch.Tensor:
    """The probe's input from its parts: ``multimodal`` ``[ehr, cxr * present, present]``,
    ``ehr`` or ``cxr`` alone (``cxr`` is already zero where the image is absent)."""
    if modality == "ehr":
        return ehr
    if modality == "cxr":
        return cxr
    flag = present.to(ehr.dtype)[:, None]
    return torch.cat([ehr, cxr.to(ehr.dtype) * flag, flag], dim=1)


def projection_head(in_dim: int, dim: int) -> nn.Sequential:
    """Three-layer MLP projection head ``in -> dim -> dim -> dim`` with BatchNorm + ReLU."""
    return nn.Sequential(
        nn.Linear(in_dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
        nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
        nn.Linear(dim, dim),
    )


class SelfSupervisedModel(MultimodalModel):
    """Base of the SSL methods (not registered itself); see the module docstring."""

    modalities: ClassVar[frozenset[str]] = frozenset({"ehr", "cxr"})
    handles_missing_cxr: ClassVar[bool] = True

    def __init__(self, data: DataSpec, task: TaskSpec, **hparams: Any) -> None:
        super().__init__(data, task, **hparams)
        hp = self.hparams
        for key, valid in _CHOICES.items():
            if hp[key] not in valid:
                raise ModelConfigError(f"{self.name}: {key} must be one of {', '.join(valid)}, "
                                       f"got {hp[key]!r}")
        self.milestones = parse_milestones(hp["probe_milestones"])
        if int(hp["proj_dim"]) < 1:
            raise ModelConfigError(f"{self.name}: proj_dim must be >= 1, got {hp['proj_dim']}")
        dim = int(hp["proj_dim"])
        self.ehr_encoder = build_ehr_encoder(str(hp["ehr_encoder"]), data.ehr_features, hp)
        self.cxr_encoder = build_cxr_encoder(hp, data.cxr_channels)
        self.ehr_projection = projection_head(self.ehr_encoder.out_dim, dim)
        self.cxr_projection = projection_head(self.cxr_encoder.out_dim, dim)
        self.head = nn.Linear(self.feature_dim(), task.n_outputs)
        self.build_loss_parameters()
        self.set_stage("fusion")

    def build_loss_parameters(self) -> None:
        """Create the loss's own parameters, if any (called before the stage is set)."""

    # ----------------------------------------------------------------- hyperparameters
    @classmethod
    def default_hparams(cls) -> dict:
        """MedMod's SSL settings; subclasses add their loss's and set the optimiser."""
        return {
            **EHR_HPARAMS, "hidden": 128, "ehr_layers": 1, "dropout": 0.0,
            **CXR_HPARAMS, "pretrained": False,
            "proj_dim": 128,
            "ssl_optimizer": "lars", "ssl_lr": 0.6, "ssl_weight_decay": 1e-4,
            "ssl_warmup_epochs": 10, "ssl_restart_epochs": 500,
            "ssl_eval": "linear", "ssl_modality": "multimodal", "probe_layer": "backbone",
            "probe_milestones": "0.6,0.8",
            **TRAINER_HPARAMS,
        }

    @classmethod
    def search_space(cls) -> dict:
        """The downstream optimiser (linear probe or fine-tuning): lr and weight decay."""
        return {**TRAINER_SEARCH_SPACE, "lr": {"loguniform": [1e-4, 1e-1]}}

    @classmethod
    def pretrain_search_space(cls) -> dict:
        """The pretraining learning rate (MedMod searched none; LARS-scale default range)."""
        return {"ssl_lr": {"uniform": [0.01, 0.1]}}

    @classmethod
    def pretrain_keys(cls) -> tuple[str, ...]:
        """Every hyperparameter except the downstream ones (:data:`DOWNSTREAM_KEYS`)."""
        return tuple(k for k in cls.default_hparams() if k not in DOWNSTREAM_KEYS)

    # ----------------------------------------------------------------- stages
    def pretrain_stages(self) -> list[str]:
        """One label-free stage, ``"pretrain"``."""
        return ["pretrain"]

    def stage_objective(self, stage: str) -> str:
        """``"self"`` for ``"pretrain"``, ``"task"`` for the downstream ``"fusion"`` stage."""
        return "self" if stage == "pretrain" else "task"

    def stage_samples(self, stage: str) -> str:
        """Pretraining uses paired samples only."""
        return "paired" if stage == "pretrain" else "all"

    def _uses(self, modality: str) -> bool:
        return self.hparams["ssl_modality"] in ("multimodal", modality)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.stage == "pretrain":
            return []
        frozen = [self.ehr_projection, self.cxr_projection]
        for modality, encoder in (("ehr", self.ehr_encoder), ("cxr", self.cxr_encoder)):
            if self.hparams["ssl_eval"] == "linear" or not self._uses(modality):
                frozen.append(encoder)
        return frozen

    def _trainable(self, name: str) -> bool:
        if self.stage == "pretrain" or name.startswith("head."):
            return True
        return self.hparams["ssl_eval"] == "finetune" and any(
            name.startswith(f"{m}_encoder.") for m in ("ehr", "cxr") if self._uses(m))

    def set_stage(self, stage: str) -> None:
        """``pretrain``: everything trains; ``fusion``: the linear layer, plus the used
        encoders for ``finetune`` (projection heads and loss parameters stay frozen)."""
        super().set_stage(stage)
        for name, param in self.named_parameters():
            param.requires_grad_(self._trainable(name))
        self.train(self.training)

    def train(self, mode: bool = True) -> SelfSupervisedModel:
        """Like ``nn.Module.train``, but frozen modules stay in eval mode."""
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def optimizer_spec(self, stage: str) -> OptimizerSpec:
        """Pretraining: LARS + warm-up + cosine restarts (or AdamW + cosine); downstream: Adam
        with ``probe_milestones``."""
        hp = self.hparams
        if stage == "pretrain":
            lars = hp["ssl_optimizer"] == "lars"
            return OptimizerSpec(
                name=str(hp["ssl_optimizer"]), lr=float(hp["ssl_lr"]),
                weight_decay=float(hp["ssl_weight_decay"]),
                schedule="warmup_cosine_restarts" if lars else "cosine",
                warmup_epochs=int(hp["ssl_warmup_epochs"]),
                restart_epochs=int(hp["ssl_restart_epochs"]))
        return OptimizerSpec(name="adam", lr=float(hp["lr"]),
                             weight_decay=float(hp["weight_decay"]), schedule="multistep",
                             milestones=self.milestones)

    # ----------------------------------------------------------------- representation
    def feature_dim(self) -> int:
        """Width of :meth:`features` for this ``ssl_modality`` and ``probe_layer``."""
        proj = self.hparams["probe_layer"] == "projection"
        ehr = int(self.hparams["proj_dim"]) if proj else self.ehr_encoder.out_dim
        cxr = int(self.hparams["proj_dim"]) if proj else self.cxr_encoder.out_dim
        return {"multimodal": ehr + cxr + 1, "ehr": ehr, "cxr": cxr}[self.hparams["ssl_modality"]]

    def ehr_features(self, ehr: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The EHR part of :meth:`features` (encoder output or its projection)."""
        h = self.ehr_encoder(ehr, lengths)
        return self.ehr_projection(h) if self.hparams["probe_layer"] == "projection" else h

    def ehr_step_features(self, ehr: torch.Tensor, lengths: torch.Tensor
                          ) -> torch.Tensor | None:
        """``[B, T, d]``: at step ``k`` the EHR feature of the sequence's first ``k + 1``
        steps, when the EHR encoder is causal (a unidirectional LSTM: its output at a step is
        its hidden state there); None for other encoders. Lets a probe compute the features of
        every hourly sample of a stay in one pass over the stay."""
        encoder = self.ehr_encoder
        if not isinstance(encoder, LSTMEncoder) or encoder.bidirectional:
            return None
        steps, _ = encoder.forward_steps(ehr, lengths)
        if self.hparams["probe_layer"] == "projection":
            flat = self.ehr_projection(steps.reshape(-1, steps.shape[-1]))
            steps = flat.reshape(steps.shape[0], steps.shape[1], -1)
        return steps

    def cxr_features(self, cxr: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """The CXR part of :meth:`features`; exact zeros where ``present`` is False (absent
        images go through neither the CNN nor the projection head)."""
        idx = present.to(torch.bool).nonzero(as_tuple=True)[0]
        proj = self.hparams["probe_layer"] == "projection"
        width = int(self.hparams["proj_dim"]) if proj else self.cxr_encoder.out_dim
        if idx.numel() == 0:
            return cxr.new_zeros(cxr.shape[0], width)
        h = self.cxr_encoder(cxr.index_select(0, idx))
        h = self.cxr_projection(h) if proj else h
        return h.new_zeros(cxr.shape[0], h.shape[1]).index_copy(0, idx, h)

    def combine(self, ehr: torch.Tensor | None, cxr: torch.Tensor | None,
                present: torch.Tensor) -> torch.Tensor:
        """:func:`combine_features` for this model's ``ssl_modality``."""
        return combine_features(self.hparams["ssl_modality"], ehr, cxr, present)

    def features(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The representation a linear probe sees, ``[B, feature_dim()]``."""
        present = batch["cxr_present"].to(torch.bool)
        ehr = self.ehr_features(batch["ehr"], batch["ehr_lengths"]) if self._uses("ehr") else None
        cxr = self.cxr_features(batch["cxr"], present) if self._uses("cxr") else None
        return self.combine(ehr, cxr, present)

    def ssl_losses(self, z_e: torch.Tensor, z_c: torch.Tensor) -> dict[str, torch.Tensor]:
        """The method's weighted losses on projected pairs ``[N, proj_dim]`` (N >= 2)."""
        raise NotImplementedError

    def loss_names(self) -> tuple[str, ...]:
        """Keys of :meth:`ssl_losses` (the ``aux_losses`` of the pretraining stage)."""
        raise NotImplementedError

    def _scatter(self, rows: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
        return rows.new_zeros(n, rows.shape[1]).index_copy(0, idx, rows)

    def _pretrain_forward(self, batch: Mapping[str, torch.Tensor]) -> ModelOutput:
        """One pass: SSL losses over the paired samples only (unpaired ones enter no batch
        statistic), logits from the detached features (zeros for unpaired projections)."""
        present = batch["cxr_present"].to(torch.bool)
        idx = present.nonzero(as_tuple=True)[0]
        n, proj = present.shape[0], self.hparams["probe_layer"] == "projection"
        h_e = self.ehr_encoder(batch["ehr"], batch["ehr_lengths"])
        width = int(self.hparams["proj_dim"]) if proj else self.cxr_encoder.out_dim
        ehr_part = h_e.new_zeros(n, int(self.hparams["proj_dim"])) if proj else h_e
        cxr_part = h_e.new_zeros(n, width)
        if idx.numel() >= 2:
            z_e = self.ehr_projection(h_e.index_select(0, idx))
            h_c = self.cxr_encoder(batch["cxr"].index_select(0, idx))
            z_c = self.cxr_projection(h_c)
            aux = self.ssl_losses(z_e, z_c)
            ehr_part = self._scatter(z_e, idx, n) if proj else h_e
            cxr_part = self._scatter(z_c if proj else h_c, idx, n)
        else:  # a loss over pairs needs two; keep the graph, contribute 0
            aux = {name: 0.0 * h_e.sum() for name in self.loss_names()}
        feats = self.combine(ehr_part, cxr_part, present)
        return ModelOutput(logits=self.head(feats.detach()), aux_losses=aux)

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        """Downstream logits; in stage ``pretrain`` the SSL losses over the paired samples
        (logits then come from the detached features, so only the losses train)."""
        if self.stage == "pretrain":
            return self._pretrain_forward(batch)
        with torch.set_grad_enabled(torch.is_grad_enabled()
                                    and self.hparams["ssl_eval"] == "finetune"):
            feats = self.features(batch)
        return ModelOutput(logits=self.head(feats), aux_losses={})

    # ----------------------------------------------------------------- pretrained state
    def _is_representation(self, key: str) -> bool:
        return not key.startswith("head.")

    def pretrained_state(self) -> dict[str, torch.Tensor]:
        """Encoders, projection heads and loss parameters (not the downstream linear layer)."""
        return {k: v for k, v in self.state_dict().items() if self._is_representation(k)}

    def load_pretrained(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load a :meth:`pretrained_state`; the linear layer keeps its initialisation."""
        expected = {k for k in self.state_dict() if self._is_representation(k)}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ModelConfigError(
                f"{self.name}: pretrained state does not match the model (missing "
                f"{missing[:3]}, unexpected {unexpected[:3]}); was it pretrained with other "
                "hyperparameters?")
        try:
            self.load_state_dict(dict(state), strict=False)
        except RuntimeError as exc:
            raise ModelConfigError(f"{self.name}: pretrained state does not fit: "
                                   f"{' '.join(str(exc).split())[:300]}") from None
