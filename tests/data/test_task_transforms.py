"""Per-task augmentations: output sizes (non-square re-ID inputs), erasing colour, grey patches."""
import numpy as np
import pytest
import torch
from PIL import Image

from torchvision import transforms as T

from metricvision.data.transforms import TRANSFORMS, as_float_images, height_width


def picture(w=70, h=90):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("name,size,shape", [
    ("reid", [32, 16], (3, 32, 16)), ("landmarks", 24, (3, 24, 24)), ("patches", 32, (3, 32, 32)),
    ("train", [20, 12], (3, 20, 12)), ("eval", [32, 16], (3, 32, 16)),
])
def test_output_shapes(name, size, shape):
    torch.manual_seed(0)
    x = as_float_images(TRANSFORMS.create(name, size=size)(picture()))
    assert x.shape == shape and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1


def torchvision_train(size, scale_min, jitter):
    """The "train" augmentation as the torchvision composition it stands for."""
    return T.Compose([
        T.RandomApply([T.ColorJitter(jitter, jitter, jitter, 0.05)], p=0.8),
        T.RandomGrayscale(0.1),
        T.RandomResizedCrop(height_width(size), scale=(scale_min, 1.0), ratio=(0.8, 1.25)),
        T.RandomApply([T.RandomRotation(10, fill=255)], p=0.3),
        T.PILToTensor(),
    ])


@pytest.mark.parametrize("size,scale_min,jitter", [(72, 0.6, 0.3), ([40, 24], 0.3, 0.5), (32, 1.0, 0.0), (24, 0.08, 0.4)])
@pytest.mark.parametrize("path", ["call", "batch"])
def test_train_augment_equals_the_torchvision_composition_pixel_for_pixel(size, scale_min, jitter, path):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (int(rng.integers(20, 60)), int(rng.integers(20, 60)), 3), dtype=np.uint8))
              for _ in range(150)]
    images += [Image.fromarray(rng.integers(0, 255, (90, 12, 3), dtype=np.uint8))] * 3  # RandomResizedCrop's fallback
    ours, theirs = TRANSFORMS.create("train", size=size, scale_min=scale_min, jitter=jitter), torchvision_train(size, scale_min, jitter)
    torch.manual_seed(1)
    torch.rand(600)  # the replay crosses a regeneration of the generator's state
    a = ([ours(im) for im in images] if path == "call" else ours.batch(images[:70]) + ours.batch(images[70:])) + [torch.rand(3)]
    torch.manual_seed(1)
    torch.rand(600)
    b = [theirs(im) for im in images] + [torch.rand(3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # same pixels, same random numbers drawn
    batch = as_float_images(torch.stack(a[:1]))
    torch.testing.assert_close(batch[0], b[0].float() / 255, rtol=0, atol=0)


def test_replayed_draws_equal_torch_calls_and_advance_the_generator():
    from metricvision.data.torch_draws import TORCH_DRAWS, replayed_draws
    for seed in range(3):
        calls = [("rand",), ("uniform", 0.7, 1.3), ("randint", 41), ("randperm", 4), ("uniform", -10.0, 10.0),
                 ("uniform", -0.05, 0.05), ("randint", 3)] * 200
        torch.manual_seed(seed)
        with replayed_draws() as draws:
            mine = [getattr(draws, c[0])(*c[1:]) for c in calls]
        after = torch.rand(5)
        torch.manual_seed(seed)
        theirs = [getattr(TORCH_DRAWS, c[0])(*c[1:]) for c in calls]
        assert mine == theirs and torch.equal(after, torch.rand(5))


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


def test_train_augment_reduces_a_photograph_first_then_equals_the_composition_on_the_reduced_copy():
    rng = np.random.default_rng(3)
    photo = Image.fromarray(rng.integers(0, 255, (700, 1000, 3), dtype=np.uint8))
    ours, theirs = TRANSFORMS.create("train", size=48), torchvision_train(48, 0.6, 0.3)
    factor = 700 // ours.reduce_above
    assert factor == 5 and ours.reduce_above * factor <= 700
    torch.manual_seed(2)
    a = ours.batch([photo] * 20)
    torch.manual_seed(2)
    b = [theirs(photo.reduce(factor)) for _ in range(20)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_a_large_jpeg_decodes_reduced_for_train_augment_but_whole_for_other_transforms(tmp_path):
    from metricvision.data.sample import Sample, SampleDataset

    path = tmp_path / "photo.jpg"
    rng = np.random.default_rng(4)
    Image.fromarray(rng.integers(0, 255, (1400, 2000, 3), dtype=np.uint8)).save(path, quality=90)
    train = SampleDataset([Sample(image=str(path), label=0)], TRANSFORMS.create("train", size=48))
    img = train.image(0)
    assert train.transform.reduce_above <= min(img.size) < 2 * train.transform.reduce_above and img.size[0] > img.size[1]
    assert train[0][0].shape == (3, 48, 48)
    assert SampleDataset([Sample(image=str(path), label=0)], TRANSFORMS.create("eval", size=48)).image(0).size == (2000, 1400)
