import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from metricvision.kb.model import ImageTextModel, ModelCard
from metricvision.kb.views import ANGLES, encode_object_queries, object_views


@pytest.fixture(scope="module")
def model():
    return ImageTextModel(ModelCard(backbone="mobilenet_v2", image_size=32))


def _object() -> np.ndarray:
    """A red bar on a white canvas (40 px)."""
    im = np.full((40, 40, 3), 255, np.uint8)
    im[16:24, 6:34] = (200, 30, 30)
    return im


def test_object_views_rotate_blur_and_relight_on_the_images_own_background():
    views = object_views(_object())
    assert len(views) == 1 + len(ANGLES) + 3 and all(v.size == (40, 40) for v in views)
    assert np.array_equal(np.asarray(views[0]), _object())
    for v in views[1 : 1 + len(ANGLES)]:  # rotated: the corners filled with the background, the bar turned
        a = np.asarray(v)
        assert tuple(a[0, 0]) == (255, 255, 255) and tuple(a[-1, -1]) == (255, 255, 255)
        assert not np.array_equal(a, _object())
    blurred, darker, brighter = (np.asarray(v, np.float32) for v in views[-3:])
    assert blurred[20, 5:8].std() > 0 and 0 < blurred[15, 20, 1] < 255  # the edges are soft
    assert darker[20, 20, 0] == pytest.approx(200 * 0.75, abs=1) and brighter[20, 20, 0] == pytest.approx(250, abs=1)
    assert {v.size for v in object_views(np.zeros((1500, 2000, 3), np.uint8))} == {(512, 384)}  # a photograph, reduced
    with pytest.raises(FileNotFoundError, match="missing.png"):
        object_views("missing.png")


def test_object_queries_are_the_normalized_mean_of_their_views_embeddings(model):
    images = [_object(), np.asarray(Image.fromarray(_object()).rotate(90))]
    got = encode_object_queries(model, images)
    expected = torch.stack([F.normalize(model.encode_images(object_views(im)).mean(0), dim=0) for im in images])
    assert got.shape == (2, model.dim) and torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(encode_object_queries(model, images, views=False), model.encode_images(images))
    assert encode_object_queries(model, []).shape == (0, model.dim)
