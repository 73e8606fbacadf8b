"""Backbones: modules mapping (N, 3, H, W) images to (N, C, h, w) feature maps.

Names: registered networks ("small_cnn", "l2net", "mobilenet_v2" with ImageNet weights
resolved offline), any torchvision model by its name ("resnet50", "convnext_tiny",
"vit_b_16", or "torchvision:NAME") and any timm model as "timm:NAME". A backbone may set
``input_mean`` / ``input_std`` (per-channel, images in [0, 1]); the Embedder normalizes
with them (ImageNet statistics otherwise).
"""
from __future__ import annotations

from typing import Callable, Tuple

import torch
from torch import nn

from metricvision._registry import Registry
from metricvision.models.adapters import TokenGrid, TorchvisionViTGrid, set_last_stride
from metricvision.models.l2net import l2net
from metricvision.models.weights import WeightsNotFound, hf_cache_dir, resolve_state_dict

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


@BACKBONES.register("l2net")
def l2net_backbone(pretrained: bool = False, weights_path: str | None = None) -> Tuple[nn.Module, int]:
    """L2-Net / HardNet patch network (see ``l2net``); weights from ``weights_path`` or the caches."""
    net, channels = l2net()
    if pretrained:
        net.load_state_dict(resolve_state_dict("l2net", weights_path))
    return net, channels


def torchvision_backbone(
    name: str, pretrained: bool = False, weights_path: str | None = None, last_stride: int = 2
) -> Tuple[nn.Module, int]:
    """Any torchvision classification model, cut before its pooling / classifier.

    Weights: ``weights_path``, the local caches (torch hub's included), else one download.
    """
    import torchvision

    if name not in torchvision.models.list_models():
        raise KeyError(f"unknown torchvision model '{name}'")
    model = torchvision.models.get_model(name)
    if pretrained:
        sd = _hub_or_local(name, weights_path, lambda: torchvision.models.get_model(name, weights="DEFAULT").state_dict())
        model.load_state_dict(sd)
    if last_stride != 2:
        set_last_stride(model, last_stride, name)
    if isinstance(model, torchvision.models.VisionTransformer):
        net: nn.Module = TorchvisionViTGrid(model)
        return net, int(model.hidden_dim)
    if hasattr(model, "features"):
        net = model.features
    else:  # ResNet-like: drop avgpool and fc
        net = nn.Sequential(*list(model.children())[:-2])
    return net, _out_channels(net)


def timm_backbone(
    name: str, pretrained: bool = False, weights_path: str | None = None, last_stride: int = 2
) -> Tuple[nn.Module, int]:
    """Any timm model as a feature-map extractor (num_classes=0, no global pooling).

    Transformers accept any input size (``dynamic_img_size``) and give their patch-token
    grid. Weights: ``weights_path``, the local caches, else timm's own (its Hugging Face
    cache, or a download). The model's own input mean / std are used.
    """
    try:
        import timm
    except ImportError as e:
        raise ImportError("timm backbones need the 'timm' extra: pip install -e '.[timm]'") from e

    def create(weights: bool) -> nn.Module:
        kwargs = {"pretrained": weights, "num_classes": 0, "global_pool": ""}
        try:  # transformers: any input size
            return timm.create_model(name, dynamic_img_size=True, **kwargs)
        except TypeError:  # CNNs take any size already and refuse the argument
            return timm.create_model(name, **kwargs)

    model = create(False)
    if pretrained:
        sd = _hub_or_local(name, weights_path, lambda: create(True).state_dict(), also=f"timm's cache {hf_cache_dir()}")
        model.load_state_dict(sd, strict=False)
    if last_stride != 2:
        set_last_stride(model, last_stride, f"timm:{name}")
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    net: nn.Module = TokenGrid(model) if hasattr(model, "patch_embed") else model
    if "mean" in cfg and "std" in cfg:
        net.input_mean, net.input_std = tuple(cfg["mean"]), tuple(cfg["std"])
    return net, int(model.num_features)


def _hub_or_local(name: str, weights_path: str | None, download: Callable[[], dict], also: str = "") -> dict:
    """Local weights if present, else the library's own loader (its cache, then one download).

    Offline and uncached, fails at once with a message listing every place looked at.
    """
    try:
        return resolve_state_dict(name, weights_path)
    except WeightsNotFound as local_error:
        try:
            return download()
        except Exception as e:  # no network, hub refused, ...
            where = f"; {also}" if also else ""
            raise WeightsNotFound(f"{local_error}{where}; download failed too ({type(e).__name__}: {e})") from e


def _out_channels(net: nn.Module) -> int:
    with torch.no_grad():
        was_training = net.training
        net.eval()
        c = int(net(torch.zeros(1, 3, 64, 64)).shape[1])
        net.train(was_training)
    return c


def create_backbone(
    name: str, pretrained: bool = False, weights_path: str | None = None, last_stride: int = 2
) -> Tuple[nn.Module, int]:
    """(module, out_channels) for a registered name, a torchvision model name, "torchvision:NAME" or "timm:NAME".

    Args:
        last_stride: 1 sets the stride of the last downsampling (a ResNet's last stage, a MobileNet's last
            strided block) to 1, doubling the final map (re-ID, dense classification); 2 leaves it.
    """
    if name.startswith("timm:"):
        return timm_backbone(name.split(":", 1)[1], pretrained, weights_path, last_stride)
    if name in BACKBONES:
        net, channels = BACKBONES.create(name, pretrained=pretrained, weights_path=weights_path)
        if last_stride != 2:
            set_last_stride(net, last_stride, name)
        return net, channels
    import torchvision

    tv_name = name.split(":", 1)[1] if name.startswith("torchvision:") else name
    if tv_name not in torchvision.models.list_models():
        raise KeyError(f"unknown backbone '{name}'; expected one of {', '.join(BACKBONES.names())}, "
                       "a torchvision model name (e.g. resnet50), 'torchvision:NAME' or 'timm:NAME'")
    return torchvision_backbone(tv_name, pretrained, weights_path, last_stride)
