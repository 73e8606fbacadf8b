"""Adapters that turn library models into (N, C, h, w) feature extractors.

Vision transformers give tokens, not maps: their patch tokens are laid back on the
patch grid (the class / register tokens are dropped), so every pooling applies.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def set_last_stride(model: nn.Module, stride: int, name: str) -> None:
    """Set the stride of the network's last downsampling to ``stride``, in place.

    ResNet-like (a ``layer4``): the first block of ``layer4`` (Luo et al. 2019, the "bag of tricks" re-ID
    baseline, doubling the last feature map). Otherwise (MobileNet-like: downsampling blocks without a
    shortcut) the last stride-2 convolution, provided no strided pooling follows it and the network still
    runs (refused where that block also strides a shortcut).
    """
    if stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {stride}")
    layer4 = getattr(model, "layer4", None)
    if layer4 is not None:
        for m in layer4[0].modules():
            if isinstance(m, nn.Conv2d) and m.stride == (2, 2):
                m.stride = (stride, stride)
            elif isinstance(m, nn.AvgPool2d) and m.stride == 2:  # timm's avg-down shortcut
                m.stride = m.kernel_size = stride
        return
    last = None
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.stride == (2, 2):
            last = m
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) and m.stride not in (1, (1, 1), None):
            last = None
    if last is None:
        raise ValueError(f"last_stride applies to ResNet-like backbones (a layer4) or to those whose last downsampling "
                         f"is a stride-2 convolution (MobileNets), not '{name}'")
    last.stride = (stride, stride)
    was = model.training
    try:  # a residual downsampling block strides its shortcut too: changing one conv breaks the sum
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, 64, 64))
    except RuntimeError as e:
        last.stride = (2, 2)
        raise ValueError(f"last_stride: the last stride-2 convolution of '{name}' sits in a block that also "
                         f"downsamples elsewhere (a shortcut); not supported ({e})") from e
    finally:
        model.train(was)


class TorchvisionViTGrid(nn.Module):
    """torchvision VisionTransformer -> (N, C, H/patch, W/patch) patch-token map, any input size.

    The positional embedding of the patch grid is resized bicubically when the input grid
    differs from the one it was trained on.
    """

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit
        self.patch = int(vit.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, C, H // patch, W // patch)."""
        v = self.vit
        grid = v.conv_proj(x)
        n, c, h, w = grid.shape
        tokens = torch.cat([v.class_token.expand(n, -1, -1), grid.flatten(2).transpose(1, 2)], dim=1)
        pos = v.encoder.pos_embedding
        side = int(round((pos.shape[1] - 1) ** 0.5))
        if (h, w) != (side, side):
            patch_pos = pos[:, 1:].reshape(1, side, side, c).permute(0, 3, 1, 2)
            patch_pos = F.interpolate(patch_pos, size=(h, w), mode="bicubic", align_corners=False)
            pos = torch.cat([pos[:, :1], patch_pos.flatten(2).transpose(1, 2)], dim=1)
        out = v.encoder.ln(v.encoder.layers(v.encoder.dropout(tokens + pos)))
        return out[:, 1:].transpose(1, 2).reshape(n, c, h, w)


class TokenGrid(nn.Module):
    """A timm transformer's features -> (N, C, h, w): (N, T, C) tokens laid on the patch grid
    (ViT, DeiT, EVA), or (N, h, w, C) channels-last maps (Swin) permuted."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.prefix = int(getattr(model, "num_prefix_tokens", 1))
        self.patch = model.patch_embed.patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, C, H // patch, W // patch)."""
        tokens = self.model(x)
        if tokens.dim() == 4:
            return tokens.permute(0, 3, 1, 2)
        h, w = x.shape[-2] // self.patch[0], x.shape[-1] // self.patch[1]
        patches = tokens[:, self.prefix:]
        if patches.shape[1] != h * w:
            raise ValueError(f"expected {h} x {w} patch tokens for a {tuple(x.shape[-2:])} input, got {patches.shape[1]}")
        return patches.transpose(1, 2).reshape(x.shape[0], -1, h, w)
