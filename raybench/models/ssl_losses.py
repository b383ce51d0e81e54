"""Cross-modal self-supervised losses on projected EHR / CXR embeddings ``z_e, z_c [N, d]``.

Pairs are stays: row ``i`` of ``z_e`` and row ``i`` of ``z_c`` come from the same sample,
every other row is a negative. ``s_ik`` is the cosine similarity of ``z_e[i]`` and
``z_c[k]``.

* :func:`convirt_loss` (Zhang et al., *Contrastive Learning of Medical Visual
  Representations from Paired Images and Text*, MLHC 2022, arXiv:2010.00747):
  ``1/2 [l(e->c) + l(c->e)]`` with
  ``l(e->c) = mean_i -log( exp(s_ii / tau) / sum_k exp(s_ik / tau) )``; with
  ``exclude_positive`` the denominator sums over ``k != i`` only (MedMod's code).
* :func:`vicreg_terms` (Bardes, Ponce, LeCun, *VICReg: Variance-Invariance-Covariance
  Regularization for Self-Supervised Learning*, ICLR 2022, arXiv:2105.04906): the
  invariance ``MSE(z_e, z_c)``, the variance ``v(z_e) + v(z_c)`` with
  ``v(z) = mean_j relu(1 - sqrt(Var(z_j) + 1e-4))`` and the covariance ``c(z_e) + c(z_c)``
  with ``c(z) = sum_{i != j} Cov(z)_ij^2 / d`` (unbiased variance and covariance).
* :func:`align_loss` (Jia et al., *Scaling Up Visual and Vision-Language Representation
  Learning With Noisy Text Supervision*, ICML 2021, arXiv:2102.05918): the symmetric
  InfoNCE ``l(e->c) + l(c->e)`` (summed, as in the paper; positive in the denominator) with
  a learnable temperature ``tau = exp(t)``, ``t`` clamped to ``[log 0.01, log 1]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["ALIGN_TEMPERATURE_BOUNDS", "align_loss", "convirt_loss", "cosine_similarities",
           "info_nce", "vicreg_covariance", "vicreg_terms", "vicreg_variance"]

#: ALIGN's temperature is kept in [0.01, 1].
ALIGN_TEMPERATURE_BOUNDS = (0.01, 1.0)


def cosine_similarities(z_e: torch.Tensor, z_c: torch.Tensor) -> torch.Tensor:
    """``s[i, k] = cos(z_e[i], z_c[k])``, shape ``[N, N]`` (computed in float32)."""
    a = F.normalize(z_e.float(), dim=1, eps=1e-8)
    b = F.normalize(z_c.float(), dim=1, eps=1e-8)
    return a @ b.T


def info_nce(logits: torch.Tensor, exclude_positive: bool = False) -> torch.Tensor:
    """``mean_i -log softmax(logits[i])[i]``; ``exclude_positive`` drops ``k = i`` from the
    denominator (then ``-log`` of ``exp(l_ii) / sum_{k != i} exp(l_ik)``)."""
    n = logits.shape[0]
    positives = logits.diagonal()
    if exclude_positive:
        eye = torch.eye(n, dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(eye, -math.inf)
    return (torch.logsumexp(logits, dim=1) - positives).mean()


def convirt_loss(z_e: torch.Tensor, z_c: torch.Tensor, temperature: float,
                 exclude_positive: bool = False) -> torch.Tensor:
    """ConVIRT's bidirectional InfoNCE, ``1/2 [l(e->c) + l(c->e)]`` (see module docstring)."""
    logits = cosine_similarities(z_e, z_c) / temperature
    return 0.5 * (info_nce(logits, exclude_positive) + info_nce(logits.T, exclude_positive))


def vicreg_variance(z: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """``mean_j relu(1 - sqrt(Var(z_j) + eps))`` (unbiased variance over the batch)."""
    std = torch.sqrt(z.float().var(dim=0) + eps)
    return F.relu(1.0 - std).mean()


def vicreg_covariance(z: torch.Tensor) -> torch.Tensor:
    """``sum_{i != j} Cov(z)_ij^2 / d`` (unbiased covariance over the batch)."""
    z = z.float()
    n, d = z.shape
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / (n - 1)
    off = cov - torch.diag(cov.diagonal())
    return off.pow(2).sum() / d


def vicreg_terms(z_e: torch.Tensor, z_c: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(MSE(z_e, z_c), v(z_e) + v(z_c), c(z_e) + c(z_c))``, unweighted."""
    invariance = F.mse_loss(z_e.float(), z_c.float())
    variance = vicreg_variance(z_e) + vicreg_variance(z_c)
    covariance = vicreg_covariance(z_e) + vicreg_covariance(z_c)
    return invariance, variance, covariance


def align_loss(z_e: torch.Tensor, z_c: torch.Tensor, log_temperature: torch.Tensor
               ) -> torch.Tensor:
    """ALIGN's ``l(e->c) + l(c->e)`` at ``tau = exp(clamp(t, log 0.01, log 1))``."""
    low, high = (math.log(b) for b in ALIGN_TEMPERATURE_BOUNDS)
    temperature = log_temperature.float().clamp(low, high).exp()
    logits = cosine_similarities(z_e, z_c) / temperature
    return info_nce(logits) + info_nce(logits.T)
