"""Pieces shared by the CareBench fusion methods UTDE, AUG, InfoReg, Flex-MoE and SMIL.

- :data:`CAREBENCH_HPARAMS`: CareBench's common defaults, re-exported from
  :mod:`raybench.models.carebench_blocks`.
- :func:`true_label_score`: a batch's summed probability of the true labels, the per-modality
  "classification ability" score AUG and InfoReg compare.
- :func:`no_task_loss_mask`: an all-False ``loss_mask`` for methods whose whole training
  objective is in ``aux_losses`` (the trainer's task loss on ``logits`` then adds zero).
- :func:`soft_target_loss`: BCE / cross-entropy against soft targets (AUG's residual term).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from raybench.models.carebench_blocks import CAREBENCH_HPARAMS  # one home for the defaults

__all__ = [
    "CAREBENCH_HPARAMS",
    "no_task_loss_mask",
    "probabilities",
    "soft_target_loss",
    "true_label_score",
]

def probabilities(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Softmax (multiclass) or sigmoid (binary/multilabel) of ``logits``."""
    return torch.softmax(logits, -1) if kind == "multiclass" else torch.sigmoid(logits)


def true_label_score(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Sum over the batch of each sample's probability of its true label(s) (detached).

    Multiclass: ``p(y_i)``; binary/multilabel: the mean over labels of ``p`` where the label
    is 1 and ``1 - p`` where it is 0, so every sample contributes at most 1 (as in the AUG
    and InfoReg reference code, which sum ``softmax(out)[i][y_i]`` over the batch).
    """
    logits = logits.detach().float()
    if kind == "multiclass":
        return torch.softmax(logits, -1).gather(1, y.reshape(-1, 1).long()).sum()
    p = torch.sigmoid(logits)
    target = y.to(p.dtype).reshape(p.shape)
    return (target * p + (1 - target) * (1 - p)).mean(1).sum()


def soft_target_loss(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """BCE-with-logits against soft targets in [0, 1] (binary/multilabel), or cross-entropy
    ``-sum_c t_c log softmax(logits)_c`` (multiclass, ``target`` ``[B, C]``); mean over
    samples (and labels)."""
    if kind == "multiclass":
        return -(target * F.log_softmax(logits, -1)).sum(-1).mean()
    return F.binary_cross_entropy_with_logits(logits, target.reshape(logits.shape))


def no_task_loss_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """All-False bool ``[B]``: the trainer's task loss on ``logits`` becomes an attached zero."""
    return torch.zeros(batch["ehr"].shape[0], dtype=torch.bool, device=batch["ehr"].device)
