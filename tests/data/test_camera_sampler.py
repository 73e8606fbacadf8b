"""Camera-aware PK sampler: property tests over random identities and cameras."""
import numpy as np
import pytest

from metricvision.data.samplers import SAMPLERS, CameraPKSampler, PKSampler
from metricvision.data.sample import Sample


def random_reid(seed, ids=12, max_images=9, cameras=6):
    rng = np.random.default_rng(seed)
    labels, cams = [], []
    for pid in range(ids):
        n = int(rng.integers(1, max_images + 1))
        labels += [pid] * n
        cams += rng.integers(0, int(rng.integers(1, cameras + 1)), n).tolist()
    labels += [-1, -1]  # junk: never drawn
    cams += [0, 1]
    return np.array(labels), np.array(cams)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [2, 4])
def test_each_identity_spans_as_many_cameras_as_it_can(seed, k):
    labels, cams = random_reid(seed)
    sampler = CameraPKSampler(labels, cams, batch_size=4 * k, k=k, seed=seed)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        for batch in sampler:
            assert len(batch) == 4 * k
            ids = labels[batch]
            assert (ids >= 0).all()
            chosen = [ids[i] for i in range(0, len(batch), k)]
            assert len(set(chosen)) == 4  # P distinct identities, K each, contiguous
            for j, pid in enumerate(chosen):
                group = batch[j * k:(j + 1) * k]
                assert (labels[group] == pid).all()
                own = np.flatnonzero(labels == pid)
                assert len({int(c) for c in cams[group]}) == min(k, len(set(cams[own].tolist())))
                if len(own) >= k:
                    assert len(set(group)) == k  # no repeat when the identity has K images


def test_deterministic_per_epoch_and_same_batches_count_as_pk():
    labels, cams = random_reid(0)
    a, b = CameraPKSampler(labels, cams, 8, 2, seed=3), CameraPKSampler(labels, cams, 8, 2, seed=3)
    a.set_epoch(1), b.set_epoch(1)
    assert list(a) == list(b)
    b.set_epoch(2)
    assert list(a) != list(b)
    assert len(a) == len(PKSampler(labels, 8, 2, seed=3))


def test_registry_builds_from_samples_and_checks_cameras():
    samples = [Sample(image="x", label=i // 3, camera=i % 3) for i in range(12)]
    sampler = SAMPLERS.create("camera_pk", samples=samples, batch_size=4, k=2, seed=0)
    assert isinstance(sampler, CameraPKSampler)
    with pytest.raises(ValueError, match="3 cameras for 4 labels"):
        CameraPKSampler([0, 0, 1, 1], [0, 1, 0], 2, 2)


def test_too_few_classes_for_the_batch_names_the_samples_per_class_that_fits():
    labels = np.repeat(np.arange(5), 100)  # Fashion-MNIST's 5 training classes, the default batch 128 = 64 x 2
    with pytest.raises(ValueError, match=r"needs 64 classes but the data has only 5; set data.samples_per_class=32"):
        PKSampler(labels, batch_size=128, k=2)
    assert PKSampler(labels, batch_size=128, k=32).p == 4
    with pytest.raises(ValueError, match=r"data.samples_per_class=6 "):
        PKSampler(np.repeat(np.arange(3), 10), batch_size=18, k=2)
