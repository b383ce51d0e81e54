"""ConVIRT: bidirectional cross-modal contrastive pretraining of the EHR and CXR encoders."""

from __future__ import annotations

import torch

from raybench.models.registry import register_model
from raybench.models.ssl_base import SelfSupervisedModel
from raybench.models.ssl_losses import convirt_loss

__all__ = ["ConVIRT"]


@register_model("convirt")
class ConVIRT(SelfSupervisedModel):
    """ConVIRT (MedMod's "SimCLR") between a stay's EHR and its chest X-ray.

    Zhang, Jiang, Miura, Manning, Langlotz, *Contrastive Learning of Medical Visual
    Representations from Paired Images and Text*, MLHC 2022, arXiv:2010.00747; as adapted to
    EHR + CXR by Elsharief et al., *MedMod*, CHIL 2025.

    Loss on the projected pair (cosine similarity ``s``, temperature ``temperature``)::

        L = 1/2 [l(e->c) + l(c->e)],  l(e->c) = mean_i -log exp(s_ii/tau) / sum_k exp(s_ik/tau)

    ``exclude_positive`` drops ``k = i`` from the denominator, as MedMod's code does
    (``studies/ssl.yaml`` sets it; the paper keeps the positive). Defaults: temperature 0.1
    (ConVIRT's and MedMod's parser default; MedMod's scripts use 0.01), LARS (lr 0.6, momentum
    0.9, weight decay 1e-4, trust 1e-3, biases and norms excluded), 10 warm-up epochs, cosine
    with warm restarts every 500 epochs. Deviations: ConVIRT weights the image->text direction
    by 0.75 (here 1/2, as specified for raybench); MedMod sums the two directions (a factor 2);
    MedMod's projection heads and backbones otherwise as described in ``docs/ssl.md``.
    """

    @classmethod
    def default_hparams(cls) -> dict:
        """MedMod SSL defaults plus ``temperature`` 0.1 and ``exclude_positive`` False."""
        return {**super().default_hparams(), "temperature": 0.1, "exclude_positive": False}

    def loss_names(self) -> tuple[str, ...]:
        """One loss, ``convirt``."""
        return ("convirt",)

    def ssl_losses(self, z_e: torch.Tensor, z_c: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"convirt": L}``."""
        return {"convirt": convirt_loss(z_e, z_c, float(self.hparams["temperature"]),
                                        bool(self.hparams["exclude_positive"]))}
