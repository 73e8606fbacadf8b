"""Recipe keys of the task recipes: (H, W) image sizes, whitening fitted on the training split."""
import numpy as np
import pytest

from metricvision.config import load_recipe
from metricvision.index.whitening import LearnedWhitening, fit_whitening, label_pairs


def test_image_size_takes_an_int_or_height_width():
    assert load_recipe(None, ["data.image_size=[256, 128]"]).data.image_size == [256, 128]
    assert load_recipe(None, ["data.image_size=64"]).data.image_size == 64
    with pytest.raises(ValueError, match=r"data.image_size must be int or List\[int\], got 'big'"):
        load_recipe(None, ["data.image_size=big"])


def test_label_pairs_match_each_item_with_its_labels_first():
    assert label_pairs([4, 2, 4, -1, 4, 2, 7]).tolist() == [[0, 2], [0, 4], [1, 5]]
    assert label_pairs([1, 2]).shape == (0, 2)


def test_fit_whitening_kinds():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    labels = np.repeat(np.arange(10), 4)
    learned = fit_whitening("learned", x, labels)
    reference = LearnedWhitening().fit(x, label_pairs(labels))
    np.testing.assert_allclose(learned.transform(x), reference.transform(x), rtol=1e-5, atol=1e-6)
    assert fit_whitening("none", x, labels) is None
    assert fit_whitening("pca", x, labels, dim=3).transform(x).shape == (40, 3)
    with pytest.raises(ValueError, match="whitening must be one of"):
        fit_whitening("zca", x, labels)
    with pytest.raises(ValueError, match="no label has two or more"):
        fit_whitening("learned", x, np.arange(40))
