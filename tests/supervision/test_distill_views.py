"""Augmented views shared by a distillation teacher and its student at two resolutions."""
import pytest
import torch
import torch.nn.functional as F

from metricvision.config import load_recipe
from metricvision.data.sample import SampleDataset
from metricvision.data.transforms import TrainAugment, as_float_images
from metricvision.engine.runs import load_run
from metricvision.engine.trainer import Trainer
from metricvision.losses import create_loss
from metricvision.supervision.distill import TeacherDistillation
from metricvision.supervision.distill_views import VIEWS_CACHE, ViewDataset, render_view

TINY = ["model.pretrained=false", "model.pooling=avg", "data.batch_size=16", "data.samples_per_class=4",
        "train.epochs=1", "optim.warmup_steps=2", "eval.clustering=false", "model.backbone=small_cnn", "model.dim=48"]


def test_a_view_is_the_same_content_at_both_resolutions(emoji_small):
    base = SampleDataset(emoji_small[0][:6])
    big, small = TrainAugment(size=80), TrainAugment(size=40)
    same, other = [], []
    for i in range(6):
        hi = as_float_images(render_view(big, base, i, 0, seed=3))
        lo = as_float_images(render_view(small, base, i, 0, seed=3))
        assert torch.equal(render_view(small, base, i, 0, seed=3), render_view(small, base, i, 0, seed=3))
        down = F.interpolate(hi[None], size=(40, 40), mode="bilinear", antialias=True)[0]
        same.append(float((down - lo).abs().mean()))
        other.append(float((down - as_float_images(render_view(small, base, i, 1, seed=3))).abs().mean()))
    # the other view of the same image differs by its crop / colours; the same view only by resampling
    assert max(same) < 0.06 and sum(same) < 0.5 * sum(other)


def test_a_mixup_view_blends_another_images_view_the_same_at_both_resolutions(emoji_small):
    base = SampleDataset(emoji_small[0][:8])
    big, small = TrainAugment(size=80), TrainAugment(size=40)
    blended, kept = 0, 0
    for i in range(8):
        plain = render_view(small, base, i, 0, seed=3)
        mixed = render_view(small, base, i, 0, seed=3, mixup=1.0)
        assert torch.equal(mixed, render_view(small, base, i, 0, seed=3, mixup=1.0))
        # the blend = (1 - w) x this view + w x the same view number of another image, w in [0, 0.5]
        others = [render_view(small, base, j, 0, seed=3).float() for j in range(8)]
        fits = [float(((mixed.float() - plain.float()) - w * (o - plain.float())).abs().max())
                for o in others for w in torch.linspace(0, 0.5, 51).tolist()]
        assert min(fits) <= 2.0  # uint8 rounding and the 0.01 grid of w
        blended += not torch.equal(mixed, plain)
        kept += torch.equal(render_view(small, base, i, 0, seed=3, mixup=0.5), plain)
        hi = F.interpolate(as_float_images(render_view(big, base, i, 0, seed=3, mixup=1.0))[None], size=(40, 40),
                           mode="bilinear", antialias=True)[0]
        assert float((hi - as_float_images(mixed)).abs().mean()) < 0.06
    assert blended >= 5 and 0 < kept < 8  # a partner may be the image itself


def test_view_dataset_draws_each_epochs_views_from_seed_and_epoch(emoji_small):
    base = SampleDataset(emoji_small[0][:10])
    a, b = ViewDataset(base, TrainAugment(size=24), 3, seed=1), ViewDataset(base, TrainAugment(size=24), 3, seed=1)
    a.choose(4)
    b.choose(4)
    assert torch.equal(a.view_of, b.view_of) and 0 <= int(a.view_of.min()) and int(a.view_of.max()) < 3
    b.choose(5)
    assert not torch.equal(a.view_of, b.view_of)
    x, y = a.__getitems__([2])[0]
    assert y == base.samples[2].label and torch.equal(x, render_view(a.augment, base, 2, int(a.view_of[2]), 1))
    with pytest.raises(ValueError, match="views must be >= 1, got 0"):
        ViewDataset(base, TrainAugment(size=24), 0, seed=1)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, emoji_small):
    train, test = emoji_small
    run = tmp_path_factory.mktemp("teacher")
    Trainer(load_recipe("default", TINY + ["data.image_size=32"]), run, train, test).fit()
    return run


def test_student_distils_towards_the_teachers_embedding_of_the_view_it_sees(tmp_path, emoji_small, teacher_run):
    train, test = emoji_small
    recipe = load_recipe("distill", TINY + ["data.image_size=24", f"distill.teacher={teacher_run}", "distill.views=2"])
    t = Trainer(recipe, tmp_path / "student", train, test)
    (hook,) = [h for h in t.hooks if isinstance(h, TeacherDistillation)]
    assert t.fit()["epochs_trained"] == 1 and isinstance(t.train_set, ViewDataset)
    cached = torch.load(tmp_path / "student" / VIEWS_CACHE)["embeddings"]
    assert cached.shape == (len(train), 2, 48) and torch.equal(cached, hook.embeddings_)
    # the cache holds the teacher's embeddings of the views rendered at its own 32 px
    _, teacher = load_run(teacher_run)
    base, big = SampleDataset(train), TrainAugment(size=32)
    views = torch.stack([as_float_images(render_view(big, base, i, k, 0)) for i in (0, 5) for k in (0, 1)])
    assert torch.allclose(teacher.encode(views), cached[[0, 5]].reshape(4, 48), atol=1e-5)
    # each row is pulled onto the teacher's embedding of the view that image shows this epoch
    idx = torch.tensor([0, 5, 7])
    hook.views_.view_of[idx] = torch.tensor([1, 0, 1])
    z = F.normalize(torch.randn(3, 48), dim=1)
    want = recipe.distill.weight * create_loss("embedding_distillation")(z, cached[idx, torch.tensor([1, 0, 1])]).value
    assert torch.allclose(hook.extra_loss(t, idx, z).value, want)


def test_views_need_the_training_augmentation(tmp_path, emoji_small, teacher_run):
    train, test = emoji_small
    recipe = load_recipe("distill", TINY + ["data.image_size=24", f"distill.teacher={teacher_run}", "distill.views=2",
                                            "data.train_transform=eval"])
    with pytest.raises(ValueError, match="distill.views needs data.train_transform 'train'.*got 'eval'"):
        Trainer(recipe, tmp_path / "s", train, test).fit()


@pytest.mark.parametrize("sets, message", [
    (["distill.views=2", "distill.mixup=1.5"], r"distill.mixup must be in \[0, 1\].*got 1.5"),
    (["distill.views=0", "distill.mixup=0.5"], "distill.mixup=0.5 blends augmented views: it needs distill.views > 0"),
])
def test_mixup_out_of_range_or_without_views_is_refused_before_any_teacher_work(tmp_path, emoji_small, teacher_run, sets,
                                                                                 message):
    train, test = emoji_small
    recipe = load_recipe("distill", TINY + ["data.image_size=24", f"distill.teacher={teacher_run}"] + sets)
    with pytest.raises(ValueError, match=message):
        Trainer(recipe, tmp_path / "s", train, test).fit()
    assert not list((tmp_path / "s").glob("teacher*.pt"))
