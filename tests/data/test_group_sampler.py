"""Grouped PK sampler: classes of one coarser label (e.g. a subcategory) meet in a batch."""
import numpy as np
import pytest

from metricvision.data.sample import Sample
from metricvision.data.samplers import SAMPLERS, GroupPKSampler, PKSampler


def grouped(groups=6, per_group=5, images=3):
    """Labels of groups x per_group classes with ``images`` samples each, the group of each sample, and 2 unlabelled."""
    labels = np.repeat(np.arange(groups * per_group), images).tolist() + [-1, -1]
    return np.array(labels), np.array([f"g{lab // per_group}" if lab >= 0 else "none" for lab in labels])


def same_group_pairs(batches, labels, groups, k):
    """Fraction of the pairs of distinct classes in a batch that share a group, over the batches."""
    out = []
    for batch in batches:
        g = groups[np.array(batch)][::k]
        out.append(((g[:, None] == g[None]).sum() - len(g)) / (len(g) * (len(g) - 1)))
    return float(np.mean(out))


@pytest.mark.parametrize("per_group", [2, 5])
@pytest.mark.parametrize("g", [1, 3, 4])
def test_batches_are_pk_with_the_first_anchor_among_its_group(per_group, g):
    labels, groups = grouped(per_group=per_group)
    sampler = GroupPKSampler(labels, groups, batch_size=16, k=2, seed=1, classes_per_group=g)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for batch in sampler:
            ids = labels[batch]
            assert len(batch) == 16 and (ids >= 0).all()
            chosen = ids[::2]
            assert len(set(chosen.tolist())) == 8 and (ids[1::2] == chosen).all()  # 8 distinct classes x 2, contiguous
            first = groups[batch][::2][: min(g, per_group)]
            assert len(set(first.tolist())) == 1  # the first anchor brings g - 1 classes of its own group


def test_groups_raise_the_share_of_near_miss_pairs_over_pk():
    labels, groups = grouped(groups=10, per_group=6)
    pk = PKSampler(labels, 16, 2, seed=0)
    shares = {1: same_group_pairs(pk, labels, groups, 2)}
    for g in (4, 8):
        shares[g] = same_group_pairs(GroupPKSampler(labels, groups, 16, 2, seed=0, classes_per_group=g), labels, groups, 2)
    # random classes share a group 5 / 59 of the time; groups of 4 put about 3 of a class's 7 partners in its group
    assert shares[1] < 0.15 < 0.4 <= shares[4] < shares[8]


def test_deterministic_and_validated():
    labels, groups = grouped()
    a, b = GroupPKSampler(labels, groups, 8, 2, seed=3), GroupPKSampler(labels, groups, 8, 2, seed=3)
    a.set_epoch(1), b.set_epoch(1)
    assert list(a) == list(b)
    b.set_epoch(2)
    assert list(a) != list(b)
    with pytest.raises(ValueError, match="classes_per_group must be >= 1, got 0"):
        GroupPKSampler(labels, groups, 8, 2, classes_per_group=0)
    whole = GroupPKSampler(labels, groups, 8, 2, classes_per_group=9)  # more than the batch's 4 classes: one group fills it
    whole.set_epoch(0)
    assert all(len(set(groups[b].tolist())) == 1 for b in whole)
    mixed = groups.copy()
    mixed[1] = "g5"
    with pytest.raises(ValueError, match="class 0 has samples in several groups"):
        GroupPKSampler(labels, mixed, 8, 2)


def test_registry_groups_by_a_meta_key_and_names_a_sample_without_it():
    samples = [Sample(image=f"{i}.png", label=i // 2, meta={"subcategory": f"s{i // 6}"}) for i in range(24)]
    sampler = SAMPLERS.create("group_pk", samples=samples, batch_size=8, k=2, seed=0, classes_per_group=3)
    assert isinstance(sampler, GroupPKSampler) and sampler.group_of == {c: f"s{c // 3}" for c in range(12)}
    samples[5] = Sample(image="5.png", label=2, meta={"category": "x"})
    with pytest.raises(ValueError, match=r"meta\['subcategory'\], but sample '5.png' has no such key"):
        SAMPLERS.create("group_pk", samples=samples, batch_size=8, k=2, seed=0)


def test_a_recipe_trains_with_grouped_batches(tmp_path, emoji_small):
    from metricvision.config import load_recipe
    from metricvision.engine.trainer import Trainer

    train, test = emoji_small
    recipe = load_recipe("default", ["model.backbone=small_cnn", "model.pretrained=false", "model.pooling=avg",
                                     "data.image_size=24", "model.dim=16", "data.batch_size=16", "data.samples_per_class=2",
                                     "train.epochs=1", "eval.clustering=false", "data.sampler=group_pk",
                                     "data.sampler_params.classes_per_group=4"])
    t = Trainer(recipe, tmp_path / "run", train, test)
    assert isinstance(t.sampler, GroupPKSampler) and t.sampler.classes_per_group == 4
    t.sampler.set_epoch(0)
    first = next(iter(t.sampler))
    groups = [train[i].meta["subcategory"] for i in first[::2]]
    assert len(set(groups[:4])) == 1  # the first anchor and three classes of its subcategory
    assert 0 <= t.fit()["map@r"] <= 1


def test_sampler_params_that_the_sampler_does_not_take_are_named(tmp_path, emoji_small):
    from metricvision.config import load_recipe
    from metricvision.engine.builders import build_sampler

    train, _ = emoji_small
    recipe = load_recipe("default", ["data.samples_per_class=2", "data.sampler_params.classes_per_group=4"])
    with pytest.raises(ValueError, match=r"bad data.sampler_params for sampler 'pk': .*classes_per_group.*; allowed: \[\]"):
        build_sampler(recipe, train)
    grouped = load_recipe("default", ["data.samples_per_class=2", "data.sampler=group_pk", "data.sampler_params.groups=4"])
    with pytest.raises(ValueError, match=r"allowed: \['key', 'classes_per_group'\]"):
        build_sampler(grouped, train)
