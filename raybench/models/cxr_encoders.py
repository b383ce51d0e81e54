"""Chest X-ray encoders: torchvision ResNet-34/50 (fc removed) and a tiny ResNet for CPU runs.

:class:`ResNetEncoder` splits the backbone into ``stem`` (conv1/bn1/relu/maxpool), four
``stages`` (layer1..layer4) and a global average pool so that fusion methods (MMTM, DAFT)
can act on intermediate feature maps; fusion "positions" follow MedFuse's indexing
(0 = after the stem, k = after layer k). ImageNet weights are optional and are never
downloaded: with ``pretrained=True`` they are loaded only if torchvision's weight file is
already in the local torch hub cache (``torch.hub.get_dir()/checkpoints``); otherwise a
warning is issued once per backbone and the encoder keeps its random init.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

from raybench.models.base import ModelConfigError

__all__ = [
    "CXR_BACKBONES",
    "CXR_HPARAMS",
    "ResNetEncoder",
    "TinyResNet",
    "build_cxr_encoder",
    "cached_weights_path",
    "encode_present",
]

CXR_BACKBONES = ("resnet34", "resnet50", "resnet_tiny")
#: Anchors (MedFuse/MedMod): ImageNet-initialised ResNet-34.
CXR_HPARAMS: dict[str, Any] = {"cxr_backbone": "resnet34", "pretrained": True}

_WEIGHTS = {
    "resnet34": [torchvision.models.ResNet34_Weights.IMAGENET1K_V1],
    "resnet50": [
        torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
        torchvision.models.ResNet50_Weights.IMAGENET1K_V2,
    ],
}
_WARNED: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def cached_weights_path(backbone: str) -> Path | None:
    """Path of an ImageNet weight file for ``backbone`` already in the torch hub cache."""
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    for weights in _WEIGHTS.get(backbone, []):
        path = checkpoints / Path(weights.url).name
        if path.is_file():
            return path
    return None


class TinyResNet(nn.Module):
    """ResNet with one BasicBlock per stage and widths ``w, 2w, 4w, 8w`` (CPU tests/demos).

    Same attribute names as torchvision's ResNet (``conv1``, ``bn1``, ``relu``, ``maxpool``,
    ``layer1``..``layer4``) so :class:`ResNetEncoder` can wrap either.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widths = [width, 2 * width, 4 * width, 8 * width]
        in_planes = width
        for i, planes in enumerate(widths):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or in_planes != planes:
                down = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes),
                )
            block = BasicBlock(in_planes, planes, stride, down)
            setattr(self, f"layer{i + 1}", nn.Sequential(block))
            in_planes = planes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def _stage_channels(stage: nn.Sequential) -> int:
    block = stage[-1]
    bn = block.bn3 if hasattr(block, "bn3") else block.bn2
    return int(bn.num_features)


def _load_backbone(backbone: str, pretrained: bool) -> nn.Module:
    if backbone == "resnet_tiny":
        if pretrained:
            _warn_once("resnet_tiny", "no ImageNet weights exist for resnet_tiny; random init")
        return TinyResNet()
    if backbone not in ("resnet34", "resnet50"):
        raise ModelConfigError(
            f"unknown cxr_backbone {backbone!r}; valid: {', '.join(CXR_BACKBONES)}"
        )
    net = getattr(torchvision.models, backbone)(weights=None)
    if not pretrained:
        return net
    path = cached_weights_path(backbone)
    if path is None:
        names = ", ".join(Path(w.url).name for w in _WEIGHTS[backbone])
        _warn_once(
            backbone,
            f"pretrained {backbone}: no ImageNet weights ({names}) in "
            f"{Path(torch.hub.get_dir()) / 'checkpoints'}; continuing with random init "
            "(weights are never downloaded)",
        )
        return net
    try:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (RuntimeError, OSError, ValueError) as exc:
        _warn_once(backbone, f"could not load {path} ({exc}); continuing with random init")
    return net


class ResNetEncoder(nn.Module):
    """ResNet backbone without its fc: image ``[B, C, H, W]`` -> feature ``[B, out_dim]``.

    ``out_dim`` is 512 (resnet34), 2048 (resnet50) or 128 (resnet_tiny), or ``proj_dim`` if
    given (a Linear projection after pooling). ``in_channels != 3`` replaces ``conv1`` by one
    initialised with the mean of the RGB filters (so grayscale works with ImageNet weights).
    """

    def __init__(
        self,
        backbone: str = "resnet34",
        pretrained: bool = False,
        in_channels: int = 3,
        proj_dim: int | None = None,
    ) -> None:
        super().__init__()
        net = _load_backbone(backbone, pretrained)
        conv1 = net.conv1
        if in_channels != 3:
            new = nn.Conv2d(
                in_channels,
                conv1.out_channels,
                kernel_size=conv1.kernel_size,
                stride=conv1.stride,
                padding=conv1.padding,
                bias=False,
            )
            with torch.no_grad():
                new.weight.copy_(conv1.weight.mean(dim=1, keepdim=True).expand_as(new.weight))
            conv1 = new
        self.backbone = backbone
        self.stem = nn.Sequential(conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        self.stage_channels = [_stage_channels(s) for s in self.stages]
        #: channels at fusion position k: 0 = stem output, k = output of layer k (1..4)
        self.position_channels = [conv1.out_channels, *self.stage_channels]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feat_dim = self.stage_channels[-1]
        self.proj = nn.Linear(self.feat_dim, proj_dim) if proj_dim else None
        self.out_dim = proj_dim or self.feat_dim

    def pool_features(self, fmap: torch.Tensor) -> torch.Tensor:
        """Global-average-pool the last feature map and apply the optional projection."""
        feat = torch.flatten(self.pool(fmap), 1)
        return self.proj(feat) if self.proj is not None else feat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Feature ``[B, out_dim]``."""
        h = self.stem(x)
        for stage in self.stages:
            h = stage(h)
        return self.pool_features(h)


def build_cxr_encoder(
    hp: dict[str, Any], in_channels: int = 3, proj_dim: int | None = None
) -> ResNetEncoder:
    """Encoder configured from the flat hparams ``hp`` (``cxr_backbone``, ``pretrained``)."""
    return ResNetEncoder(
        str(hp["cxr_backbone"]),
        pretrained=bool(hp["pretrained"]),
        in_channels=in_channels,
        proj_dim=proj_dim,
    )


def encode_present(encoder: nn.Module, cxr: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Features ``[B, encoder.out_dim]``: ``encoder(cxr)`` where present, exact zeros elsewhere.

    Only the present images go through the encoder, so absent ones (whatever their pixels)
    neither produce features nor enter BatchNorm batch statistics. In training mode a batch
    whose present images are a single one needs feature maps larger than 1x1 at layer4
    (images >= 64 px), a BatchNorm requirement.
    """
    idx = present.to(torch.bool).nonzero(as_tuple=True)[0]
    if idx.numel() == 0:
        return cxr.new_zeros(cxr.shape[0], encoder.out_dim)
    encoded = encoder(cxr.index_select(0, idx))  # bf16/fp16 under autocast
    return encoded.new_zeros(cxr.shape[0], encoded.shape[1]).index_copy(0, idx, encoded)
