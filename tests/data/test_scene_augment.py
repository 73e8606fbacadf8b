"""SceneAugment: proposal-like crops of an object pasted on a photograph, as the scene benchmark shows objects."""
import numpy as np
import pytest
import torch
from PIL import Image

from metricvision.data.scene_augment import SceneAugment
from metricvision.data.transforms import TRANSFORMS


def disc(colour=(200, 0, 0), side=40) -> Image.Image:
    yy, xx = np.mgrid[:side, :side] - (side - 1) / 2
    img = np.full((side, side, 3), 255, np.uint8)
    img[yy**2 + xx**2 <= (side / 2 - 1) ** 2] = colour
    return Image.fromarray(img)


def test_the_crop_is_the_square_around_the_pasted_object():
    aug = SceneAugment(32, p=1.0, sides=(40, 40), max_rotation=0.0, blur=0.0, neighbour=0.0, shift=0.0, scale=0.0)
    torch.manual_seed(0)
    out = aug(disc()).permute(1, 2, 0).numpy().astype(int)
    red = (out[..., 0] > 150) & (out[..., 1] < 60) & (out[..., 2] < 60)
    assert out.dtype == np.int64 and out.shape == (32, 32, 3)
    assert red[16, 16] and red[1:-1, 16].all() and red[16, 1:-1].all()  # the disc spans the crop edge to edge
    assert 0.6 < red.mean() < 0.85 and not red[0, 0] and not red[-1, -1]  # pi / 4 of the square; corners are background
    assert aug.backgrounds[0].shape == (512, 512, 3)


def test_a_neighbour_hides_at_most_max_occlusion_and_draws_replay():
    aug = SceneAugment(32, p=1.0, sides=(24, 48), neighbour=1.0, max_occlusion=0.3)
    images = [disc((200, 0, 0)), disc((0, 0, 200))] * 8
    torch.manual_seed(3)
    first = [aug(im) for im in images]
    torch.manual_seed(3)
    aug.recent.clear()
    assert all(torch.equal(a, aug(im)) for a, im in zip(first, images))
    rng, hidden = np.random.default_rng(0), []
    for _ in range(60):
        canvas, visible, full = aug.compose(np.asarray(disc()), rng)
        assert (visible & ~full).sum() == 0 and visible.sum() >= 0.7 * full.sum()
        shown = canvas[visible].astype(int)
        assert (shown[:, 0] > shown[:, 1:].max(axis=1) + 60).mean() > 0.9  # the visible pixels show the red object
        hidden.append(1 - visible.sum() / full.sum())
    assert max(hidden) > 0.05 and min(hidden) == 0  # neighbours sometimes in front, sometimes behind or apart


def test_p_zero_is_the_plain_augmentation_and_bad_values_are_named():
    aug = TRANSFORMS.create("scene", size=24, p=0.0)
    torch.manual_seed(1)
    out = aug(disc())
    torch.manual_seed(1)
    torch.randint(0, 2**31 - 1, (1,))  # the scene draw SceneAugment makes first
    assert torch.equal(out, TRANSFORMS.create("train", size=24)(disc()))
    with pytest.raises(ValueError, match="p must be in"):
        SceneAugment(24, p=1.5)
    with pytest.raises(ValueError, match=r"sides must be \[min, max\]"):
        SceneAugment(24, sides=(4, 300))
    with pytest.raises(FileNotFoundError, match="no background images"):
        SceneAugment(24, backgrounds=["/nonexistent"])


def test_a_recipe_trains_on_scene_crops(tmp_path, emoji_small):
    from metricvision.config import load_recipe
    from metricvision.engine.trainer import Trainer

    train, test = emoji_small
    recipe = load_recipe("default", ["model.backbone=small_cnn", "model.pretrained=false", "model.pooling=avg",
                                     "data.image_size=24", "data.batch_size=16", "train.epochs=1", "optim.warmup_steps=2",
                                     "eval.clustering=false", "data.train_transform=scene",
                                     "data.train_transform_params={p: 1.0, sides: [16, 48]}"])
    t = Trainer(recipe, tmp_path / "run", train, test)
    x, _ = t.train_set[0]
    assert x.shape == (3, 24, 24) and x.dtype == torch.uint8
    metrics = t.fit()
    assert np.isfinite(metrics["map@r"]) and metrics["map@r"] > 0


def test_the_shipped_recipe_builds_its_transform_on_a_folder_of_photographs(tmp_path):
    from metricvision.config import load_recipe
    from metricvision.data.scenes import generated_backgrounds

    for i, im in enumerate(generated_backgrounds(4, 64)):
        im.save(tmp_path / f"{i}.jpg")
    recipe = load_recipe("scene_objects", [f"data.train_transform_params.backgrounds=[{tmp_path}]"])
    d = recipe.data
    aug = TRANSFORMS.create(d.train_transform, size=d.image_size, **d.train_transform_params)
    assert isinstance(aug, SceneAugment) and aug.p == 0.5 and len(aug.backgrounds) == 3  # every 4th held out
    assert aug(disc()).shape == (3, 72, 72)
