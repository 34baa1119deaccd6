"""Image backbones with one constructor and one output format.

Every backbone is a `Backbone`: a stem followed by four stages `layer1..layer4`, returning all four feature maps
as a dict. Paper models pick the maps they need (SSAN and most others: `layer4`; NAFS runs its own copies of
`layer3`/`layer4` on stripes, so the stages are plain attributes it can call or deep-copy).

    backbone = create_backbone("resnet50", pretrained=True)          # ImageNet weights, paper setting
    backbone = create_backbone("resnet50", last_stride=1)            # NAFS: layer4 keeps layer3's resolution
    backbone = create_backbone("resnet_small")                       # CPU demos on 96x32 images
    maps = backbone(images)                                          # {"layer1": ..., "layer4": B x C x H x W}

Strides (cumulative, relative to the input):

| stage  | resnet50 (last_stride 2 / 1) | resnet_small (last_stride 2 / 1) |
|--------|------------------------------|----------------------------------|
| stem   | 4  (conv s2 + maxpool s2)    | 2  (conv s2, no maxpool)         |
| layer1 | 4                            | 2                                |
| layer2 | 8                            | 2                                |
| layer3 | 16                           | 4                                |
| layer4 | 32 / 16                      | 8 / 4                            |

So a 384x128 image gives a 12x4 (or 24x8) `layer4` map on ResNet-50, and a 96x32 image gives the same 12x4 (or 24x8)
map on resnet_small, whose layer2..layer4 maps (48x16, 24x8, 12x4) have exactly ResNet-50's sizes at 384x128.
Stripe-based heads (SSAN's 6 stripes, NAFS's 3+2 stripes) therefore see the same grid on both.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet50_Weights, resnet50
from torchvision.models.resnet import BasicBlock

STAGES = ("layer1", "layer2", "layer3", "layer4")


class Backbone(nn.Module):
    """stem -> layer1 -> layer2 -> layer3 -> layer4, returning every stage's map.

    `channels[stage]` and `strides[stage]` (cumulative) let heads be built without running the network.
    """

    def __init__(self, stem: nn.Module, layers: list[nn.Module], channels: list[int], strides: list[int]):
        super().__init__()
        self.stem = stem
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.channels: dict[str, int] = dict(zip(STAGES, channels))
        self.strides: dict[str, int] = dict(zip(STAGES, strides))

    @property
    def out_channels(self) -> int:
        return self.channels["layer4"]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        maps = {}
        for name in STAGES:
            x = getattr(self, name)(x)
            maps[name] = x
        return maps


# --------------------------------------------------------------------------------------------------------------
# ResNet-50 (torchvision)
# --------------------------------------------------------------------------------------------------------------


def _set_first_block_stride(layer: nn.Sequential, stride: int) -> None:
    """Change a stage's downsampling stride in place; weights are unaffected (only the convolution stride changes).

    torchvision puts the stride on the first block's 3x3 conv (ResNet v1.5) and its 1x1 shortcut conv.
    """
    block = layer[0]
    strided = block.conv2 if hasattr(block, "conv3") else block.conv1  # Bottleneck vs BasicBlock
    strided.stride = (stride, stride)
    if block.downsample is not None:
        block.downsample[0].stride = (stride, stride)


def _resnet50(last_stride: int, widths) -> Backbone:
    if widths is not None:
        raise ValueError("widths only applies to 'resnet_small'; resnet50 has fixed widths")
    net = resnet50(weights=None)
    stem = nn.Sequential(OrderedDict(conv1=net.conv1, bn1=net.bn1, relu=net.relu, maxpool=net.maxpool))
    _set_first_block_stride(net.layer4, last_stride)
    return Backbone(
        stem,
        [net.layer1, net.layer2, net.layer3, net.layer4],
        channels=[256, 512, 1024, 2048],
        strides=[4, 8, 16, 16 * last_stride],
    )


def _imagenet_resnet50_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights through its normal cache, with an actionable error when offline."""
    weights = ResNet50_Weights.IMAGENET1K_V1
    filename = weights.url.rsplit("/", 1)[-1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    try:
        return weights.get_state_dict(progress=True)
    except (OSError, RuntimeError) as err:  # URLError/HTTPError/socket errors are OSErrors; a bad hash is a RuntimeError
        raise RuntimeError(
            f"Could not load ImageNet ResNet-50 weights ({err.__class__.__name__}: {err}).\n"
            f"Without internet access, place the file {filename} (from {weights.url}) at\n"
            f"    {cached}\n"
            "(the torch hub cache; set TORCH_HOME to move it), pass pretrained='/path/to/resnet50.pth', "
            "or run with pretrained=False."
        ) from err


# --------------------------------------------------------------------------------------------------------------
# resnet_small: a scaled-down ResNet for CPU demos
# --------------------------------------------------------------------------------------------------------------


def _stage(in_ch: int, out_ch: int, blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or in_ch != out_ch:
        downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
    layers = [BasicBlock(in_ch, out_ch, stride, downsample)]
    layers += [BasicBlock(out_ch, out_ch) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _resnet_small(last_stride: int, widths) -> Backbone:
    """Two BasicBlocks per stage; strides chosen so 96x32 inputs reproduce ResNet-50's 384x128 map sizes (table above)."""
    w = tuple(widths) if widths is not None else (16, 32, 64, 128)
    if len(w) != 4:
        raise ValueError(f"widths must have 4 entries (one per stage), got {w}")
    stem = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, w[0], 3, stride=2, padding=1, bias=False),
            bn1=nn.BatchNorm2d(w[0]),
            relu=nn.ReLU(inplace=True),
        )
    )
    layers = [
        _stage(w[0], w[0], 2, stride=1),
        _stage(w[0], w[1], 2, stride=1),
        _stage(w[1], w[2], 2, stride=2),
        _stage(w[2], w[3], 2, stride=last_stride),
    ]
    backbone = Backbone(stem, layers, channels=list(w), strides=[2, 2, 4, 4 * last_stride])
    for m in backbone.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return backbone


# --------------------------------------------------------------------------------------------------------------
# Weights and the constructor
# --------------------------------------------------------------------------------------------------------------


def _to_backbone_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept torchvision-format files (conv1.*, bn1.*, fc.*) as well as Backbone.state_dict() files."""
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")  # saved from DataParallel/DDP
        if key.startswith("fc."):
            continue  # classifier head: not part of the backbone
        if key.startswith(("conv1.", "bn1.")):
            key = "stem." + key
        out[key] = value
    return out


def load_backbone_weights(backbone: Backbone, weights: str | Path | dict[str, torch.Tensor]) -> None:
    """Load a state dict (or a local .pth file holding one) strictly, so a wrong file fails loudly."""
    if not isinstance(weights, dict):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights file not found: {path}")
        weights = torch.load(path, map_location="cpu", weights_only=True)
        for wrapper in ("state_dict", "model"):  # common checkpoint wrappers
            if isinstance(weights.get(wrapper), dict):
                weights = weights[wrapper]
    try:
        result = backbone.load_state_dict(_to_backbone_keys(weights), strict=False)
    except RuntimeError as err:  # tensor shape mismatches
        raise RuntimeError(f"backbone weights do not match the architecture: {err}") from err
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(
            "backbone weights do not match the architecture: "
            f"missing {result.missing_keys[:5]}{'...' if len(result.missing_keys) > 5 else ''}, "
            f"unexpected {result.unexpected_keys[:5]}{'...' if len(result.unexpected_keys) > 5 else ''}"
        )


_BACKBONES = {"resnet50": _resnet50, "resnet_small": _resnet_small}


def create_backbone(
    name: str,
    *,
    pretrained: bool | str | Path = False,
    last_stride: int = 2,
    widths: tuple[int, ...] | None = None,
) -> Backbone:
    """Build a backbone by name.

    pretrained: False (random init), True (ImageNet; resnet50 only) or a path to a local state dict.
    last_stride: stride of layer4 (2 standard, 1 for NAFS-style finer maps).
    widths: resnet_small's 4 stage widths, default (16, 32, 64, 128).
    """
    if name not in _BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; available: {sorted(_BACKBONES)}")
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
    state_dict = None
    if pretrained is True:
        if name != "resnet50":
            raise ValueError(f"no ImageNet weights exist for {name!r}; pass a local file path or pretrained=False")
        state_dict = _imagenet_resnet50_state_dict()  # before building, so an offline run fails fast
    backbone = _BACKBONES[name](last_stride, widths)
    if state_dict is not None:
        load_backbone_weights(backbone, state_dict)
    elif pretrained not in (False, None):
        load_backbone_weights(backbone, pretrained)
    return backbone
