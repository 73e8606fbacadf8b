"""Distillation through the Trainer: a tiny teacher run, then the distill recipe with its cached embeddings."""
import json
import shutil

import pytest
import torch

from metricvision.config import load_recipe
from metricvision.engine.runs import load_run
from metricvision.engine.trainer import CHECKPOINT, Trainer
from metricvision.losses import create_loss
from metricvision.supervision.distill import CACHE, TeacherDistillation

TINY = ["model.pretrained=false", "model.pooling=avg", "data.batch_size=16", "data.samples_per_class=4",
        "train.epochs=1", "optim.warmup_steps=2", "eval.clustering=false", "distill.views=0"]  # the clean-image cache


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, emoji_small):
    train, test = emoji_small
    run = tmp_path_factory.mktemp("teacher")
    recipe = load_recipe("default", TINY + ["model.backbone=small_cnn", "data.image_size=32", "model.dim=48"])
    Trainer(recipe, run, train, test).fit()
    return run


def test_distill_recipe_trains_a_student_on_cached_teacher_embeddings(tmp_path, emoji_small, teacher_run):
    train, test = emoji_small
    # a small CNN student: the recipe's untrained MobileNetV2 at 24 px after one tiny epoch can rank nothing right
    recipe = load_recipe("distill", TINY + ["data.image_size=24", "model.dim=48", "model.backbone=small_cnn",
                                            f"distill.teacher={teacher_run}"])
    t = Trainer(recipe, tmp_path / "student", train, test)
    (hook,) = [h for h in t.hooks if isinstance(h, TeacherDistillation)]
    metrics = t.fit()
    assert 0 < metrics["map@r"] <= 1 and json.loads((tmp_path / "student" / "metrics.json").read_text())["map@r"] == metrics["map@r"]
    # the cache holds the teacher's own embeddings of the training set, at the teacher's resolution
    _, teacher = load_run(teacher_run)
    cached = torch.load(tmp_path / "student" / CACHE)["embeddings"]
    t_recipe = Trainer(load_recipe("default", TINY + ["model.backbone=small_cnn", "data.image_size=32", "model.dim=48"]),
                       tmp_path / "probe", train, test)
    t_recipe.model = teacher
    assert cached.shape == (len(train), 48) and torch.allclose(cached, t_recipe.embed(train), atol=1e-5)
    # the added term is weight x the distillation loss of the student against the cached rows
    idx = torch.arange(8)
    z = torch.nn.functional.normalize(torch.randn(8, 48), dim=1)
    want = recipe.distill.weight * create_loss(recipe.distill.loss, **recipe.distill.params)(z, cached[idx]).value
    assert recipe.distill.weight != 1 and torch.allclose(hook.extra_loss(t, idx, z).value, want)


def test_second_student_reads_the_cache_without_the_teacher(tmp_path, emoji_small, teacher_run):
    train, test = emoji_small
    teacher = tmp_path / "teacher"
    shutil.copytree(teacher_run, teacher)
    run = tmp_path / "student"
    common = TINY + ["data.image_size=24", "model.dim=48", "model.backbone=small_cnn"]
    Trainer(load_recipe("distill", common + [f"distill.teacher={teacher}"]), run, train, test).fit()
    before = torch.load(run / CACHE)["embeddings"]
    (teacher / CHECKPOINT).unlink()  # the teacher cannot run any more: only the cache can serve it
    hook = TeacherDistillation(teacher=str(teacher), loss="rkd_distance", params={}, weight=2.0, use_labels=False)
    t = Trainer(load_recipe("distill", common + ["supervision.name=supervised"]), run, train, test, hooks=[hook])
    assert t.fit()["epochs_trained"] == 1 and torch.equal(hook.embeddings_, before)
    assert len(t.history["step_loss"]) > 0 and all(v == v for v in t.history["step_loss"])


def test_distillation_without_teacher_says_how_to_set_it(tmp_path, emoji_small):
    train, test = emoji_small
    t = Trainer(load_recipe("distill", TINY + ["data.image_size=24"]), tmp_path / "s", train, test)
    with pytest.raises(ValueError, match="distill.teacher=RUN"):
        t.fit()


def test_init_from_teacher_starts_the_student_from_the_teachers_weights(tmp_path, emoji_small, teacher_run):
    train, test = emoji_small
    same = TINY + ["model.backbone=small_cnn", "model.dim=48", "data.image_size=24", f"distill.teacher={teacher_run}",
                   "distill.init_from_teacher=true"]
    t = Trainer(load_recipe("distill", same + ["train.epochs=0"]), tmp_path / "s", train, test)
    t.fit()
    _, teacher = load_run(teacher_run)
    want = teacher.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in t.model.state_dict().items())
    # a resumed run keeps its own trained weights: the teacher's are copied only at the start
    run = tmp_path / "r"
    Trainer(load_recipe("distill", same), run, train, test).fit()
    resumed = Trainer(load_recipe("distill", same + ["train.epochs=2"]), run, train, test)
    trained = {k: v.clone() for k, v in load_run(run)[1].state_dict().items()}
    resumed.restore()
    resumed._call("on_fit_start")
    assert any(not torch.equal(v, want[k]) for k, v in trained.items())
    assert all(torch.equal(v, trained[k]) for k, v in resumed.model.state_dict().items())


def test_init_from_teacher_names_an_architecture_mismatch(tmp_path, emoji_small, teacher_run):
    train, test = emoji_small
    recipe = load_recipe("distill", TINY + ["model.backbone=small_cnn", "model.dim=32", "data.image_size=24",
                                            f"distill.teacher={teacher_run}", "distill.init_from_teacher=true"])
    with pytest.raises(ValueError, match="init_from_teacher.*differs"):
        Trainer(recipe, tmp_path / "s", train, test).fit()


def test_also_adds_weighted_distillation_terms_beside_the_main_one(tmp_path, emoji_small, teacher_run):
    train, test = emoji_small
    common = TINY + ["data.image_size=24", "model.dim=48", "model.backbone=small_cnn", f"distill.teacher={teacher_run}"]
    recipe = load_recipe("distill", common + ["distill.also={rkd_distance: 1.5, rkd_angle: 2.0}", "train.epochs=0"])
    t = Trainer(recipe, tmp_path / "s", train, test)
    t.fit()
    (hook,) = [h for h in t.hooks if isinstance(h, TeacherDistillation)]
    idx = torch.arange(8)
    z = torch.nn.functional.normalize(torch.randn(8, 48, generator=torch.Generator().manual_seed(0)), dim=1)
    cached = hook.embeddings_[idx]
    out = hook.extra_loss(t, idx, z)
    want = (recipe.distill.weight * create_loss("embedding_distillation")(z, cached).value
            + 1.5 * create_loss("rkd_distance")(z, cached).value + 2.0 * create_loss("rkd_angle")(z, cached).value)
    assert torch.allclose(out.value, want) and out.logs["distill_rkd_angle"] > 0
    bad = load_recipe("distill", common + ["distill.also={multi_similarity: 1.0}"])
    with pytest.raises(ValueError, match="distill.also must be a distillation loss.*got 'multi_similarity'"):
        Trainer(bad, tmp_path / "b", train, test).fit()
