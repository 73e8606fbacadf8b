"""Per-task augmentations: output sizes (non-square re-ID inputs), erasing colour, grey patches."""
import numpy as np
import pytest
import torch
from PIL import Image

from metricvision.data.transforms import TRANSFORMS, height_width


def picture(w=70, h=90):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("name,size,shape", [
    ("reid", [32, 16], (3, 32, 16)), ("landmarks", 24, (3, 24, 24)), ("patches", 32, (3, 32, 32)),
    ("train", [20, 12], (3, 20, 12)), ("eval", [32, 16], (3, 32, 16)),
])
def test_output_shapes(name, size, shape):
    torch.manual_seed(0)
    x = TRANSFORMS.create(name, size=size)(picture())
    assert x.shape == shape and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1


def test_reid_erasing_fills_with_the_imagenet_mean():
    torch.manual_seed(0)
    t = TRANSFORMS.create("reid", size=[64, 32], erasing=1.0, flip=0.0, pad=0)
    black = Image.new("RGB", (32, 64))
    x = t(black)
    erased = x.sum(0) > 0
    assert erased.any()
    torch.testing.assert_close(x[:, erased].mean(1), torch.tensor([0.485, 0.456, 0.406]))


def test_patches_are_grey_and_bad_options_are_named():
    x = TRANSFORMS.create("patches", size=32)(picture(64, 64))
    torch.testing.assert_close(x[0], x[1])
    with pytest.raises(ValueError, match="erasing must be in"):
        TRANSFORMS.create("reid", erasing=2.0)
    with pytest.raises(ValueError, match=r"\[height, width\]"):
        height_width([1, 2, 3])
