"""Optimisers and per-epoch learning-rate schedules of the training stages.

:class:`LARS` is layer-wise adaptive rate scaling (You, Gitman, Ginsburg, *Large Batch
Training of Convolutional Networks*, 2017, arXiv:1708.03888, Algorithm 1), written in torch
so that no extra dependency (MedMod uses lightning-flash's) is needed. For every parameter
tensor ``w`` with gradient ``g`` the update is::

    local_lr = trust_coefficient * ||w|| / (||g|| + weight_decay * ||w||)   (1 if a norm is 0)
    v        = momentum * v + local_lr * (g + weight_decay * w)
    w        = w - lr * v

Parameters in a group with ``exclude=True`` -- biases, normalisation weights and other
tensors of at most one dimension, as in SimCLR and VICReg -- get neither weight decay nor the
trust ratio: plain SGD with momentum.

:func:`build_optimizer` turns an :class:`~raybench.models.base.OptimizerSpec` into an
optimiser; :func:`lr_factor` gives the schedule's multiplier of the base learning rate for an
epoch, which the trainer applies at the start of every epoch (a pure function of the epoch,
so a resumed stage needs no scheduler state).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from raybench.models.base import ModelConfigError, OptimizerSpec

__all__ = ["LARS", "OPTIMIZERS", "SCHEDULES", "build_optimizer", "lr_factor",
           "lars_param_groups", "set_lr"]

OPTIMIZERS = ("adam", "adamw", "lars")
SCHEDULES = ("constant", "multistep", "cosine", "warmup_cosine_restarts")


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios (see the module docstring).

    Args:
        params: parameters or param groups; a group may set ``exclude=True`` (no weight
            decay, no trust ratio) -- :func:`lars_param_groups` builds them.
        lr: base learning rate.
        momentum: heavy-ball momentum (MedMod: 0.9).
        weight_decay: L2 coefficient added to the gradient (MedMod: 1e-4).
        trust_coefficient: ``eta`` of the local learning rate (1e-3).
        eps: added to the denominator of the trust ratio.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0, trust_coefficient: float = 1e-3,
                 eps: float = 1e-8) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError("LARS needs lr, momentum, weight_decay >= 0 and "
                             "trust_coefficient > 0")
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                    "trust_coefficient": trust_coefficient, "eps": eps, "exclude": False}
        super().__init__(params, defaults)

    @staticmethod
    def trust_ratio(weight: torch.Tensor, grad: torch.Tensor, weight_decay: float,
                    trust_coefficient: float, eps: float = 1e-8) -> torch.Tensor:
        """``eta * ||w|| / (||g|| + wd * ||w||)``, or 1 when either norm is zero."""
        w_norm, g_norm = torch.linalg.vector_norm(weight), torch.linalg.vector_norm(grad)
        ratio = trust_coefficient * w_norm / (g_norm + weight_decay * w_norm + eps)
        return torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch.optim.Optimizer API
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd = 0.0 if group["exclude"] else group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if not group["exclude"]:
                    ratio = self.trust_ratio(param, grad, wd, group["trust_coefficient"],
                                             group["eps"])
                    grad = grad.add(param, alpha=wd).mul_(ratio)
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(grad).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                param.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def lars_param_groups(named: Iterable[tuple[str, nn.Parameter]]) -> list[dict]:
    """Two groups: weights (adapted, decayed) and ``exclude=True`` for every tensor of at
    most one dimension (biases, BatchNorm/LayerNorm weights, scalars such as a temperature)."""
    adapted, excluded = [], []
    for _, param in named:
        (excluded if param.ndim <= 1 else adapted).append(param)
    groups = [{"params": adapted}] if adapted else []
    return groups + ([{"params": excluded, "exclude": True}] if excluded else [])


def build_optimizer(spec: OptimizerSpec, named: Iterable[tuple[str, nn.Parameter]]
                    ) -> torch.optim.Optimizer:
    """The optimiser of ``spec`` over the trainable ``(name, parameter)`` pairs ``named``."""
    named = [(n, p) for n, p in named if p.requires_grad]
    if spec.name not in OPTIMIZERS:
        raise ModelConfigError(f"unknown optimizer {spec.name!r}; valid: {', '.join(OPTIMIZERS)}")
    if spec.schedule not in SCHEDULES:
        raise ModelConfigError(f"unknown lr schedule {spec.schedule!r}; valid: "
                               f"{', '.join(SCHEDULES)}")
    if spec.name == "lars":
        return LARS(lars_param_groups(named), lr=spec.lr, momentum=spec.momentum,
                    weight_decay=spec.weight_decay, trust_coefficient=spec.trust_coefficient)
    params = [p for _, p in named]
    cls = torch.optim.AdamW if spec.name == "adamw" else torch.optim.Adam
    return cls(params, lr=spec.lr, weight_decay=spec.weight_decay)


def lr_factor(spec: OptimizerSpec, epoch: int, epochs: int) -> float:
    """Multiplier of ``spec.lr`` during ``epoch`` (1-based) of a stage of ``epochs`` epochs.

    ``warmup_cosine_restarts`` is MedMod's LARS schedule: epochs ``1..W`` ramp linearly
    ``1/W, 2/W, ..., 1``; from epoch ``W + 1`` the factor is
    ``(1 + cos(pi * ((epoch - W - 1) mod T0) / T0)) / 2`` (PyTorch's
    ``CosineAnnealingWarmRestarts`` with ``eta_min = 0``).
    """
    index = epoch - 1  # epochs already completed
    if spec.schedule == "multistep":
        passed = sum(1 for m in spec.milestones if index >= int(m * epochs))
        return 0.1 ** passed
    if spec.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * index / max(epochs, 1)))
    if spec.schedule == "warmup_cosine_restarts":
        warm = spec.warmup_epochs
        if index < warm:
            return (index + 1) / warm
        period = max(spec.restart_epochs, 1)
        return 0.5 * (1.0 + math.cos(math.pi * ((index - warm) % period) / period))
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every param group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr
