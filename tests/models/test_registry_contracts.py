"""Contract: every registered backbone, transform and sampler builds with its defaults and keeps its promise."""
import numpy as np
import pytest
import torch
from PIL import Image

from metricvision.data.samplers import SAMPLERS
from metricvision.data.sample import Sample
from metricvision.data.transforms import TRANSFORMS
from metricvision.models import BACKBONES, Embedder


@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone_maps_images_to_feature_maps(name):
    emb = Embedder(name, pooling="avg", dim=8, pretrained=False).eval()
    x = torch.rand(2, 3, 32, 32)
    f = emb.features(x)
    assert f.dim() == 4 and f.shape[:2] == (2, emb.head.in_features)
    out = emb(x)
    assert out.shape == (2, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", TRANSFORMS.names())
def test_transform_gives_an_image_of_the_size(name):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 40, 3), dtype=np.uint8))
    x = TRANSFORMS.create(name, size=[24, 16])(image)
    assert x.shape == (3, 24, 16) and x.dtype in (torch.float32, torch.uint8)


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_sampler_gives_pk_batches(name):
    samples = [Sample(image="x", label=i // 4, camera=i % 2, meta={"subcategory": f"s{i // 8}"}) for i in range(32)]
    sampler = SAMPLERS.create(name, samples=samples, batch_size=8, k=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 4
    for b in batches:
        labels = [samples[i].label for i in b]
        assert len(b) == 8 and len(set(labels)) == 2 and labels[:4] == [labels[0]] * 4
