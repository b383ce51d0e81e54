"""VICReg: variance-invariance-covariance regularised pretraining of the EHR and CXR encoders."""

from __future__ import annotations

import torch

from raybench.models.registry import register_model
from raybench.models.ssl_base import SelfSupervisedModel
from raybench.models.ssl_losses import vicreg_terms

__all__ = ["VICReg"]


@register_model("vicreg")
class VICReg(SelfSupervisedModel):
    """VICReg between a stay's projected EHR and chest X-ray embeddings.

    Bardes, Ponce, LeCun, *VICReg: Variance-Invariance-Covariance Regularization for
    Self-Supervised Learning*, ICLR 2022, arXiv:2105.04906; as used cross-modally by
    Elsharief et al., *MedMod*, CHIL 2025.

    ``L = sim_coeff * MSE(z_e, z_c) + std_coeff * [v(z_e) + v(z_c)] + cov_coeff * [c(z_e) +
    c(z_c)]`` with ``v(z) = mean_j relu(1 - sqrt(Var z_j + 1e-4))`` and
    ``c(z) = sum_{i != j} Cov(z)_ij^2 / d``; coefficients 25 / 25 / 1 (paper and MedMod). The
    three weighted terms are separate ``aux_losses`` (``vicreg_invariance``,
    ``vicreg_variance``, ``vicreg_covariance``). Optimiser as ConVIRT (LARS; MedMod's script
    lr 0.5989). Deviations: the official VICReg code, and MedMod's copy of it, halves each
    variance term, and MedMod divides the covariance by the configured rather than the actual
    batch size; raybench follows the paper's equation above.
    """

    @classmethod
    def default_hparams(cls) -> dict:
        """MedMod SSL defaults plus VICReg's coefficients 25 / 25 / 1."""
        return {**super().default_hparams(), "sim_coeff": 25.0, "std_coeff": 25.0,
                "cov_coeff": 1.0}

    def loss_names(self) -> tuple[str, ...]:
        """The three weighted terms."""
        return ("vicreg_invariance", "vicreg_variance", "vicreg_covariance")

    def ssl_losses(self, z_e: torch.Tensor, z_c: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weighted invariance, variance and covariance terms."""
        hp = self.hparams
        invariance, variance, covariance = vicreg_terms(z_e, z_c)
        return {"vicreg_invariance": float(hp["sim_coeff"]) * invariance,
                "vicreg_variance": float(hp["std_coeff"]) * variance,
                "vicreg_covariance": float(hp["cov_coeff"]) * covariance}
