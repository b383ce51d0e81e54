"""Pieces shared by the CareBench fusion methods (HEALNet, DrFuse, UMSE, ShaSpec, M3Care).

- :data:`CAREBENCH_HPARAMS`: CareBench's common defaults (EHR transformer d 256, 4 heads,
  1 layer, dropout 0.2; ResNet-50; lr 1e-4).
- :func:`encode_steps`: per-step EHR outputs and their validity mask from either encoder.
- :class:`PatchEmbedding`: non-overlapping image patches -> tokens (a strided convolution),
  refusing a patch size that does not divide the image crop.
- :func:`masked_mean`, :func:`run_on_rows`: helpers that keep absent images out of a
  computation (their pixels never enter any layer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from raybench.models.base import TRAINER_HPARAMS, ModelConfigError
from raybench.models.ehr_encoders import LSTMEncoder, clamp_lengths, valid_step_mask

__all__ = [
    "CAREBENCH_HPARAMS",
    "PatchEmbedding",
    "encode_steps",
    "last_steps",
    "masked_mean",
    "run_on_rows",
]

#: CareBench's shared defaults: EHR transformer (d 256, 4 heads, 1 layer), dropout 0.2,
#: ImageNet ResNet-50 (loaded only from the local cache), lr 1e-4. ``bidirectional`` only
#: matters if ``ehr_encoder`` is switched to the LSTM.
CAREBENCH_HPARAMS: dict[str, Any] = {
    "ehr_encoder": "transformer",
    "hidden": 256,
    "ehr_layers": 1,
    "nhead": 4,
    "dropout": 0.2,
    "max_len": 512,
    "bidirectional": False,
    "cxr_backbone": "resnet50",
    "pretrained": True,
    **TRAINER_HPARAMS,
}


def encode_steps(
    encoder: nn.Module, ehr: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-step outputs ``[B, T', D]`` and the bool ``[B, T']`` mask of valid steps.

    Works for both EHR encoders: the LSTM keeps every step (padded outputs are zero), the
    transformer keeps the last ``max_len`` valid steps of each sequence.
    """
    lengths = clamp_lengths(lengths, ehr.shape[1])
    if isinstance(encoder, LSTMEncoder):
        steps, _ = encoder.forward_steps(ehr, lengths)
    else:
        steps, lengths = encoder.forward_steps(ehr, lengths)
    return steps, valid_step_mask(lengths, steps.shape[1])


def last_steps(x: torch.Tensor, lengths: torch.Tensor, max_len: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The last ``max_len`` valid steps of each sequence, left-aligned, and their lengths
    (the EHR transformer's truncation rule)."""
    lengths = clamp_lengths(lengths, x.shape[1])
    if x.shape[1] <= max_len:
        return x, lengths
    start = (lengths - max_len).clamp(min=0)
    idx = start[:, None] + torch.arange(max_len, device=x.device)[None, :]
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[2])), lengths.clamp(max=max_len)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Mean of ``x`` over ``dim`` where the bool ``mask`` (``x``'s shape up to ``dim``) is True."""
    weights = mask.unsqueeze(-1).to(x.dtype)
    return (x * weights).sum(dim) / weights.sum(dim).clamp(min=1.0)


def run_on_rows(
    fn: Callable[..., torch.Tensor], rows: torch.Tensor, default: torch.Tensor, *args: torch.Tensor
) -> torch.Tensor:
    """``default`` with the rows selected by the bool ``rows`` replaced by ``fn(*args[rows])``.

    Only the selected rows go through ``fn`` (so e.g. absent images never enter a layer or its
    dropout mask); with no row selected ``fn`` is not called and ``default`` is returned.
    """
    idx = rows.nonzero(as_tuple=True)[0]
    if idx.numel() == 0:
        return default
    out = fn(*(a.index_select(0, idx) for a in args))
    return default.to(out.dtype).index_copy(0, idx, out)


class PatchEmbedding(nn.Module):
    """Image ``[B, C, S, S]`` -> tokens ``[B, (S/p)^2, dim]`` by a ``p x p``/stride-``p`` conv.

    A linear map of each non-overlapping ``p x p`` patch (ViT's patch embedding), row-major
    over the patch grid. ``p`` must divide the crop size ``S``: the error names the setting
    (``setting``) and the divisors that would work.
    """

    def __init__(self, in_channels: int, dim: int, patch: int, image_size: int,
                 setting: str) -> None:
        super().__init__()
        patch, image_size = int(patch), int(image_size)
        if patch < 1 or image_size % patch:
            divisors = [d for d in range(2, image_size + 1) if image_size % d == 0]
            raise ModelConfigError(
                f"{setting} {patch} does not divide the image crop of {image_size} px; "
                f"use one of {divisors[:8]} or a crop that is a multiple of {patch} "
                "(loader setting crop)")
        self.patch, self.grid = patch, image_size // patch
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        self.out_dim = dim

    @property
    def n_tokens(self) -> int:
        """Number of patches (tokens) per image."""
        return self.grid * self.grid

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``[B, n_tokens, dim]``."""
        return self.proj(image).flatten(2).transpose(1, 2)
