"""SMIL: Bayesian meta-learning with severely missing modality (``smil``).

Ma, Ren, Zhao, Tulyakov, Wu, Peng, "SMIL: Multimodal Learning with Severely Missing
Modality", AAAI 2021, arXiv:2103.05677 (code mengmenm/SMIL).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from raybench.errors import RaybenchError
from raybench.models.base import (
    DataSpec,
    ModelConfigError,
    ModelOutput,
    MultimodalModel,
    TaskSpec,
    set_requires_grad,
    task_loss,
)
from raybench.models.carebench_common import (
    CAREBENCH_HPARAMS,
    no_task_loss_mask,
    probabilities,
)
from raybench.models.cxr_encoders import build_cxr_encoder, encode_present
from raybench.models.ehr_encoders import build_ehr_encoder
from raybench.models.registry import register_model

__all__ = ["SMIL"]

#: Modules adapted by the inner loop (everything but the frozen image branch).
ADAPTED = ("ehr_encoder", "recon_net", "perturb_fc1", "perturb_fc2", "fc1", "fc2")
FUSION_HIDDEN = 64  # the reference classifier's hidden width


@register_model("smil")
class SMIL(MultimodalModel):
    """Missing-image features reconstructed from k-means priors, meta-learned perturbations.

    Faithful (paper and reference code): a sample without an image gets a reconstructed
    image feature ``sum_k w_k c_k / sum_k w_k`` from the ``n_clusters`` k-means centres
    ``c_k`` of the training split's image features (the modality priors), with weights
    ``w = softplus(recon_net(ehr_feat))``; the regularisation network perturbs that path's
    fused feature and hidden layer, ``x + softplus(mu(ehr_feat) + eps)`` and ``h +
    softplus(mu(x) + eps)``, ``eps ~ N(0, 1)`` in meta-training and ``eps = 0`` otherwise;
    samples with an image use the clean path (no reconstruction, no perturbation); the
    classifier is ``Linear(2d, 64) + ReLU + dropout + Linear``. Training, as in the
    reference pipeline: stage "cxr" trains the image encoder with its own head and fits the
    centres (scikit-learn ``KMeans``, into the buffer ``centres``); stage "paired" trains the
    complete-modality path on samples with an image while the image branch stays frozen (as
    the reference's pretrained extractor of the missing modality); stage "fusion" is
    bi-level meta-learning per batch: a random 20 % (at least one sample) is the meta-val
    split, the rest the meta-train split whose images are all dropped on purpose; the inner
    loop takes ``inner_loop`` SGD steps of size ``lr_inner`` on the meta-train loss (the
    adapted copy ``theta*`` of every trainable module, second-order gradients kept), and the
    outer loss on the meta-val samples that have an image is ``BCE(p_noised) + MSE(p_noised /
    T, p_clean / T) + alpha (MSE(f_noised, f_clean) + MSE(h_noised, h_clean)) + beta
    MSE(recon, real image feature)`` at ``theta*`` (the issue's form, CareBench's
    ``SMILLoss``); the step minimises ``L_meta_train + L_outer`` (cross-entropy and softmax
    for multiclass). ``mc_size``: the meta-train loss is the Monte-Carlo average over
    ``mc_size`` draws of the perturbation noise (the expected loss under the stochastic
    regulariser), computed on the encoder features once.

    Deviations: centres come from the image features seen during each "cxr" epoch (training
    mode, augmented; the best epoch's are restored with the best state) instead of a
    separate pass of a trained extractor; the image branch is trained once (stage "cxr")
    and then frozen and kept in eval mode; the whole objective of stage "fusion" is in
    ``aux_losses`` (``extras["loss_mask"]`` all False). CareBench ships precomputed centres
    (MiniBatch k-means) as files, never uses ``mc_size``, adapts nothing in its inner loop
    (its functional forward ignores the adapted parameters) and excludes the EHR branch
    from adaptation where the reference excludes the missing modality's branch.
    Encoders: CareBench's EHR transformer and ResNet-50 projected to ``hidden``.
    """

    modalities: ClassVar[frozenset[str]] = frozenset({"ehr", "cxr"})
    handles_missing_cxr: ClassVar[bool] = True

    def __init__(self, data: DataSpec, task: TaskSpec, **hparams: Any) -> None:
        super().__init__(data, task, **hparams)
        hp = self.hparams
        for key in ("n_clusters", "inner_loop", "mc_size"):
            if int(hp[key]) < 1:
                raise ModelConfigError(f"smil: {key} must be >= 1, got {hp[key]}")
        dim, dropout = int(hp["hidden"]), float(hp["dropout"])
        self.ehr_encoder = build_ehr_encoder(str(hp["ehr_encoder"]), data.ehr_features, hp)
        self.cxr_encoder = build_cxr_encoder(hp, data.cxr_channels, proj_dim=dim)
        self.cxr_head = nn.Linear(dim, task.n_outputs)
        self.recon_net = nn.Sequential(nn.Linear(dim, 256), nn.ReLU(), nn.Dropout(dropout),
                                       nn.Linear(256, 128), nn.ReLU(),
                                       nn.Linear(128, int(hp["n_clusters"])))
        self.perturb_fc1 = nn.Linear(dim, 2 * dim)
        self.perturb_fc2 = nn.Linear(2 * dim, FUSION_HIDDEN)
        self.fc1 = nn.Linear(2 * dim, FUSION_HIDDEN)
        self.fc2 = nn.Linear(FUSION_HIDDEN, task.n_outputs)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("centres", torch.zeros(int(hp["n_clusters"]), dim))
        self._kmeans_features: list[torch.Tensor] = []
        self.set_stage("fusion")

    @classmethod
    def default_hparams(cls) -> dict:
        """CareBench: 10 clusters, inner_loop 1, lr_inner 0.01, mc 30, alpha/beta 0.05, T 3."""
        return {**CAREBENCH_HPARAMS, "n_clusters": 10, "inner_loop": 1, "lr_inner": 0.01,
                "mc_size": 30, "alpha": 0.05, "beta": 0.05, "temperature": 3.0}

    @classmethod
    def search_space(cls) -> dict:
        """CareBench's: inner_loop, mc_size, lr_inner, alpha, beta, temperature."""
        return {"inner_loop": {"choice": [1, 2, 3]},
                "mc_size": {"choice": [10, 20, 30]},
                "lr_inner": {"uniform": [1.0e-4, 1.0e-3]},
                "alpha": {"uniform": [0.05, 0.2]},
                "beta": {"uniform": [0.05, 0.2]},
                "temperature": {"uniform": [1.0, 3.0]}}

    # ------------------------------------------------------------------ stages
    def pretrain_stages(self) -> list[str]:
        """Image branch + cluster centres, then the complete-modality path."""
        return ["cxr", "paired"]

    def set_stage(self, stage: str) -> None:
        """The image branch is trainable in stage "cxr" only."""
        super().set_stage(stage)
        set_requires_grad([self.cxr_encoder, self.cxr_head], stage == "cxr")
        self.train(self.training)

    def train(self, mode: bool = True) -> SMIL:
        """Like ``nn.Module.train``, but the frozen image encoder stays in eval mode."""
        super().train(mode)
        if self.stage != "cxr":
            self.cxr_encoder.eval()
        return self

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Start collecting the epoch's image features (stage "cxr")."""
        self._kmeans_features = []

    def on_epoch_end(self, epoch: int) -> None:
        """Stage "cxr": k-means centres of the image features seen in this epoch."""
        if self.stage != "cxr":
            return
        feats = (torch.cat(self._kmeans_features).float().cpu().numpy()
                 if self._kmeans_features else np.zeros((0, self.centres.shape[1])))
        self._kmeans_features = []
        k = self.centres.shape[0]
        if len(feats) < k:
            raise RaybenchError(
                f"smil needs CXR images in the training split for its cluster centres "
                f"(n_clusters={k}; the training epoch saw {len(feats)} images)")
        kmeans = KMeans(n_clusters=k, n_init=10, random_state=0).fit(feats)
        self.centres.copy_(torch.from_numpy(kmeans.cluster_centers_).to(self.centres))

    # ------------------------------------------------------------------ paths
    def _heads(self, run: Callable, ehr: torch.Tensor, cxr: torch.Tensor, noise: bool | None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Classifier on ``[ehr, cxr]`` -> (logits, fused feature, hidden).

        ``noise`` None: clean path; False: mean perturbation; True: sampled perturbation
        (``ehr``/``cxr`` may carry a leading Monte-Carlo dimension).
        """
        x = torch.cat([ehr, cxr], dim=-1)
        if noise is not None:
            mu = run("perturb_fc1", ehr)
            x = x + F.softplus(mu + torch.randn_like(mu) if noise else mu)
        h = F.relu(run("fc1", x))
        if noise is not None:
            mu = run("perturb_fc2", x)
            h = h + F.softplus(mu + torch.randn_like(mu) if noise else mu)
        return run("fc2", self.dropout(h)), x, h

    def _reconstruct(self, run: Callable, ehr: torch.Tensor) -> torch.Tensor:
        """``sum_k w_k c_k / sum_k w_k`` with ``w = softplus(recon_net(ehr))``."""
        w = F.softplus(run("recon_net", ehr))
        return (w @ self.centres.to(w.dtype)) / w.sum(-1, keepdim=True).clamp(min=1e-6)

    def _run(self, params: dict[str, torch.Tensor] | None) -> Callable:
        """Module caller: the modules themselves, or ``functional_call`` with ``params``."""
        if params is None:
            return lambda name, *args: getattr(self, name)(*args)

        def run(name: str, *args: torch.Tensor) -> torch.Tensor:
            prefix = name + "."
            own = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
            return functional_call(getattr(self, name), own, args)

        return run

    def _predict(self, run: Callable, batch: dict, cxr: torch.Tensor, present: torch.Tensor
                 ) -> torch.Tensor:
        """Clean path where the image is present, reconstruction (eps = 0) elsewhere."""
        ehr = run("ehr_encoder", batch["ehr"], batch["ehr_lengths"])
        clean = self._heads(run, ehr, cxr.to(ehr.dtype), None)[0]
        noised = self._heads(run, ehr, self._reconstruct(run, ehr).to(ehr.dtype), False)[0]
        return torch.where(present[:, None], clean, noised)

    # ------------------------------------------------------------------ forward
    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        """Stage-dependent logits; the meta-learning losses in training stage "fusion"."""
        present = batch["cxr_present"].to(torch.bool)
        if self.stage == "cxr":
            feat = encode_present(self.cxr_encoder, batch["cxr"], present)
            if self.training:
                self._kmeans_features.append(feat[present].detach())
            logits = self.cxr_head(self.dropout(feat))
            return ModelOutput(logits=logits, aux_losses={}, extras={"loss_mask": present})
        with torch.no_grad():
            cxr = encode_present(self.cxr_encoder, batch["cxr"], present)
        logits = self._predict(self._run(None), batch, cxr, present)
        if self.stage == "paired":
            return ModelOutput(logits=logits, aux_losses={}, extras={"loss_mask": present})
        if not (self.training and "y" in batch):
            return ModelOutput(logits=logits, aux_losses={})
        with sdpa_kernel(SDPBackend.MATH):  # the only attention kernel with double backward
            aux = self._meta_losses(batch, cxr, present)
        return ModelOutput(logits=logits, aux_losses=aux,
                           extras={"loss_mask": no_task_loss_mask(batch)})

    def _meta_split(self, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Meta-train rows and meta-val rows (the latter: with an image; may be empty)."""
        n = present.shape[0]
        order = torch.randperm(n, device=present.device)
        n_val = max(1, n // 5) if n > 1 else 0
        val, train = order[:n_val], order[n_val:] if n > 1 else order
        for candidates in (val, train, order):
            complete = candidates[present[candidates]]
            if complete.numel():
                return train, complete
        return train, order[:0]

    def _meta_losses(self, batch: dict, cxr: torch.Tensor, present: torch.Tensor
                     ) -> dict[str, torch.Tensor]:
        kind, y = self.task.kind, batch["y"]
        hp = self.hparams
        train_rows, val_rows = self._meta_split(present)
        params = {f"{m}.{k}": p for m in ADAPTED
                  for k, p in getattr(self, m).named_parameters() if p.requires_grad}
        mc = int(hp["mc_size"])
        meta_train = None
        for _ in range(int(hp["inner_loop"])):
            run = self._run(params)
            ehr = run("ehr_encoder", batch["ehr"][train_rows], batch["ehr_lengths"][train_rows])
            recon = self._reconstruct(run, ehr).to(ehr.dtype)
            expand = (mc, *ehr.shape)
            logits = self._heads(run, ehr.expand(expand), recon.expand(expand), True)[0]
            target = y[train_rows].repeat(mc, *([1] * (y.dim() - 1)))
            meta_train = task_loss(logits.reshape(-1, logits.shape[-1]).float(), target, kind)
            names = list(params)
            grads = torch.autograd.grad(meta_train, [params[k] for k in names],
                                        create_graph=True, allow_unused=True)
            params = {k: params[k] - float(hp["lr_inner"]) * g if g is not None else params[k]
                      for k, g in zip(names, grads, strict=True)}
        losses = {"meta_train": meta_train}
        if val_rows.numel():
            run = self._run(params)
            ehr = run("ehr_encoder", batch["ehr"][val_rows], batch["ehr_lengths"][val_rows])
            recon = self._reconstruct(run, ehr).to(ehr.dtype)
            noised, f_noised, h_noised = self._heads(run, ehr, recon, False)
            real = cxr[val_rows].to(ehr.dtype)
            clean, f_clean, h_clean = self._heads(run, ehr, real, None)
            temperature = float(hp["temperature"])
            p_noised = probabilities(noised.float(), kind)
            p_clean = probabilities(clean.float(), kind)
            losses["meta_val"] = task_loss(noised.float(), y[val_rows], kind)
            losses["distill"] = F.mse_loss(p_noised / temperature, p_clean / temperature)
            losses["feature"] = float(hp["alpha"]) * (
                F.mse_loss(f_noised.float(), f_clean.float())
                + F.mse_loss(h_noised.float(), h_clean.float()))
            losses["prior_mean"] = float(hp["beta"]) * F.mse_loss(recon.float(), real.float())
        return losses
