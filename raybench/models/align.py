"""ALIGN: symmetric contrastive pretraining with a learnable temperature."""

from __future__ import annotations

import math

import torch
from torch import nn

from raybench.models.base import ModelConfigError
from raybench.models.registry import register_model
from raybench.models.ssl_base import SelfSupervisedModel
from raybench.models.ssl_losses import ALIGN_TEMPERATURE_BOUNDS, align_loss

__all__ = ["ALIGN"]


@register_model("align")
class ALIGN(SelfSupervisedModel):
    """ALIGN's dual-encoder contrastive loss between a stay's EHR and chest X-ray.

    Jia et al., *Scaling Up Visual and Vision-Language Representation Learning With Noisy Text
    Supervision*, ICML 2021, arXiv:2102.05918; as used by Elsharief et al., *MedMod*, CHIL
    2025.

    ``L = l(e->c) + l(c->e)`` (InfoNCE over the batch, the positive in the denominator, the
    two directions summed as in the paper) on cosine similarities divided by a learnable
    temperature ``tau = exp(t)``; ``t`` starts at ``log(init_temperature)`` (0.07) and is
    clamped to ``[log 0.01, log 1]`` in the forward pass. Pretraining optimiser as MedMod's
    ALIGN trainer: AdamW (weight decay 1e-3) with cosine annealing over the epochs, lr 1e-4
    (MedMod's script: 6.0e-5). Pairs are a stay's EHR and image, exactly like ConVIRT.
    Deviations: MedMod divides by the raw parameter (no exponential, no clamp). One MedMod
    commit (259ebc9, ``align_model.py``) swaps the EHR of 16-20 % of each batch between two
    slices before the loss ("noisy pairs"); raybench does not (see ``docs/ssl.md``).
    """

    def build_loss_parameters(self) -> None:
        """The learnable log-temperature ``t``, initialised to ``log(init_temperature)``."""
        init = float(self.hparams["init_temperature"])
        low, high = ALIGN_TEMPERATURE_BOUNDS
        if not low <= init <= high:
            raise ModelConfigError(f"align: init_temperature must be in [{low}, {high}], "
                                   f"got {init}")
        self.log_temperature = nn.Parameter(torch.tensor(math.log(init)))

    @classmethod
    def default_hparams(cls) -> dict:
        """MedMod SSL defaults with AdamW (lr 1e-4, wd 1e-3) and ``init_temperature`` 0.07."""
        return {**super().default_hparams(), "ssl_optimizer": "adamw", "ssl_lr": 1e-4,
                "ssl_weight_decay": 1e-3, "init_temperature": 0.07}

    @classmethod
    def pretrain_search_space(cls) -> dict:
        """AdamW-scale pretraining learning rates."""
        return {"ssl_lr": {"loguniform": [1e-5, 1e-3]}}

    def loss_names(self) -> tuple[str, ...]:
        """One loss, ``align``."""
        return ("align",)

    def ssl_losses(self, z_e: torch.Tensor, z_c: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"align": L}``."""
        return {"align": align_loss(z_e, z_c, self.log_temperature)}
