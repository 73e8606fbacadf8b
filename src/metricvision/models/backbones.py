"""Backbones: modules mapping (N, 3, H, W) images to (N, C, h, w) feature maps.

Names: registered small CNNs ("small_cnn"), "mobilenet_v2" (ImageNet weights resolved
offline), any torchvision model as "torchvision:NAME" and any timm model as "timm:NAME".
"""
from __future__ import annotations

from typing import Callable, Tuple

import torch
from torch import nn

from metricvision._registry import Registry
from metricvision.models.weights import WeightsNotFound, resolve_state_dict

BackboneFactory = Callable[..., Tuple[nn.Module, int]]
BACKBONES: Registry[Tuple[nn.Module, int]] = Registry("backbone")


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


@BACKBONES.register("small_cnn")
def small_cnn(pretrained: bool = False, width: int = 32, weights_path: str | None = None) -> Tuple[nn.Module, int]:
    """Four conv blocks with 2x downsampling between them; 8 * width output channels."""
    if pretrained:
        raise WeightsNotFound("small_cnn has no pretrained weights; set pretrained: false")
    w = width
    net = nn.Sequential(
        _block(3, w), nn.MaxPool2d(2), _block(w, 2 * w), nn.MaxPool2d(2),
        _block(2 * w, 4 * w), nn.MaxPool2d(2), _block(4 * w, 8 * w),
    )
    return net, 8 * w


@BACKBONES.register("mobilenet_v2")
def mobilenet_v2(pretrained: bool = True, weights_path: str | None = None) -> Tuple[nn.Module, int]:
    """torchvision MobileNetV2 features (1280 channels); ImageNet weights found offline."""
    import torchvision

    net = torchvision.models.mobilenet_v2().features
    if pretrained:
        net.load_state_dict(resolve_state_dict("mobilenet_v2", weights_path))
    return net, 1280


def torchvision_backbone(name: str, pretrained: bool = False, weights_path: str | None = None) -> Tuple[nn.Module, int]:
    """Any torchvision classification model, cut before its pooling / classifier."""
    import torchvision

    if name not in torchvision.models.list_models():
        raise KeyError(f"unknown torchvision model '{name}'")
    model = torchvision.models.get_model(name)
    if pretrained:
        sd = _hub_or_local(name, weights_path, lambda: torchvision.models.get_model(name, weights="DEFAULT").state_dict())
        model.load_state_dict(sd)
    if hasattr(model, "features"):
        net = model.features
    else:  # ResNet-like: drop avgpool and fc
        net = nn.Sequential(*list(model.children())[:-2])
    return net, _out_channels(net)


def timm_backbone(name: str, pretrained: bool = False, weights_path: str | None = None) -> Tuple[nn.Module, int]:
    """Any timm model as a feature-map extractor (num_classes=0, no global pooling)."""
    try:
        import timm
    except ImportError as e:
        raise ImportError("timm backbones need the 'timm' extra: pip install -e '.[timm]'") from e
    model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="")
    if pretrained:
        sd = _hub_or_local(name, weights_path, lambda: timm.create_model(name, pretrained=True, num_classes=0, global_pool="").state_dict())
        model.load_state_dict(sd, strict=False)
    return model, int(model.num_features)


def _hub_or_local(name: str, weights_path: str | None, download: Callable[[], dict]) -> dict:
    """Local weights if present, else one download attempt; offline fails at once with a clear message."""
    try:
        return resolve_state_dict(name, weights_path)
    except WeightsNotFound as local_error:
        try:
            return download()
        except Exception as e:  # no network, hub refused, ...
            raise WeightsNotFound(f"{local_error}; download failed too ({type(e).__name__}: {e})") from e


def _out_channels(net: nn.Module) -> int:
    with torch.no_grad():
        was_training = net.training
        net.eval()
        c = int(net(torch.zeros(1, 3, 64, 64)).shape[1])
        net.train(was_training)
    return c


def create_backbone(name: str, pretrained: bool = False, weights_path: str | None = None) -> Tuple[nn.Module, int]:
    """(module, out_channels) for a registered name, "torchvision:NAME" or "timm:NAME"."""
    if name.startswith("torchvision:"):
        return torchvision_backbone(name.split(":", 1)[1], pretrained, weights_path)
    if name.startswith("timm:"):
        return timm_backbone(name.split(":", 1)[1], pretrained, weights_path)
    return BACKBONES.create(name, pretrained=pretrained, weights_path=weights_path)
