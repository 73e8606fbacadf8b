import math

import pytest
import torch
import torch.nn.functional as F

from metricvision.models import Embedder
from metricvision.models.multiscale import multiscale_embed


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Embedder("small_cnn", pooling="gem", dim=16).eval()


@torch.no_grad()
def test_single_scale_is_the_model(model):
    images = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(multiscale_embed(model, images, scales=(1.0,)), model(images), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_equals_loop_over_scales(model):
    images = torch.rand(2, 3, 48, 48)
    scales = (1.0, 1 / math.sqrt(2), 0.5)
    per_scale = []
    for s in scales:
        resized = images if s == 1 else F.interpolate(images, scale_factor=s, mode="bilinear", align_corners=False)
        per_scale.append(model(resized))  # cirtorch extract_ms
    stacked = torch.stack(per_scale)
    torch.testing.assert_close(multiscale_embed(model, images, scales, combine="sum"), F.normalize(stacked.sum(0), dim=1))
    gem = (stacked.sign() * stacked.abs() ** 3).mean(0)
    torch.testing.assert_close(multiscale_embed(model, images, scales, combine="gem", p=3), F.normalize(gem.sign() * gem.abs() ** (1 / 3), dim=1))
    torch.testing.assert_close(multiscale_embed(model, images, scales, combine="gem", p=1), multiscale_embed(model, images, scales, combine="sum"))


def test_gradient_flows_and_errors(model):
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    multiscale_embed(model, images).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    with pytest.raises(ValueError, match="combine"):
        multiscale_embed(model, images, combine="max")
    with pytest.raises(ValueError, match="scales"):
        multiscale_embed(model, images, scales=(1.0, 0.0))
