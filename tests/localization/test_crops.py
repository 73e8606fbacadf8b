import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metricvision.data.scenes import SceneConfig, build_scenes
from metricvision.kb.model import ImageTextModel, ModelCard
from metricvision.localization.crops import CropEmbedder, crop_boxes, crop_stems, square_boxes, train_crop_embedder
from metricvision.localization.detector import QueryDetector
from metricvision.localization.train import image_tensor, load_detector, read_scenes, save_detector


@pytest.fixture(scope="module")
def model():
    return ImageTextModel(ModelCard(backbone="mobilenet_v2", image_size=32))


def test_square_boxes_keep_centre_and_take_the_long_side():
    sq = square_boxes(torch.tensor([[10.0, 20.0, 30.0, 60.0]]), pad=0.5)
    assert torch.allclose(sq, torch.tensor([[-10.0, 10.0, 50.0, 70.0]]))


def test_crop_equals_average_pooled_slice():
    image = torch.rand(3, 64, 64)
    crop = crop_boxes(image, torch.tensor([[8.0, 12.0, 40.0, 44.0]]), side=16)
    assert crop.shape == (1, 3, 16, 16)
    assert torch.allclose(crop[0], F.avg_pool2d(image[None, :, 12:44, 8:40], 2)[0], atol=1e-6)
    assert crop_boxes(image, torch.zeros(0, 4), side=16).shape == (0, 3, 16, 16)


def test_crop_embedder_rejects_a_bad_split(model):
    with pytest.raises(ValueError, match="split must be in"):
        CropEmbedder(model.embedder, split=0)


def test_crop_embedder_learns_the_identities_of_scene_objects(model, tmp_path):
    cfg = SceneConfig(size=96, sides=(28, 40), targets=(1, 1), distractors=(1, 2), blur=0.0)
    scenes = read_scenes(build_scenes(tmp_path / "s", "train", 3, seed=0, cfg=cfg))
    crop = CropEmbedder(model.embedder, side=32)
    stems = crop_stems(crop, [image_tensor(p) for p in scenes.images], scenes.boxes, jitters=2)
    ids = torch.from_numpy(np.concatenate(scenes.identities))
    ref_ids = torch.unique(ids)
    torch.manual_seed(0)
    refs = F.normalize(torch.randn(len(ref_ids), model.dim), dim=1)
    def accuracy() -> float:
        with torch.no_grad():
            nearest = ref_ids[(crop.head(stems[0]) @ refs.T).argmax(dim=1)]
        return float((nearest == ids).float().mean())
    before = accuracy()
    logs = train_crop_embedder(crop, stems, ids, [refs], ref_ids, steps=40, batch_size=16, lr=1e-3, log_every=20)
    assert logs[-1]["crop_metric"] < logs[0]["crop_metric"]
    assert accuracy() == 1.0 > before


def test_crop_embedder_round_trips_with_the_detector(model, tmp_path):
    crop = CropEmbedder(model.embedder, side=32)
    with torch.no_grad():
        for p in crop.proj.parameters():
            p.add_(0.1)
    save_detector(QueryDetector(model.embedder, hidden=8), tmp_path / "d.safetensors", crop=crop)
    _, loaded = load_detector(tmp_path / "d.safetensors", model.embedder)
    image, boxes = torch.rand(3, 64, 64), torch.tensor([[4.0, 4.0, 40.0, 30.0]])
    assert torch.allclose(loaded.embed(image, boxes), crop.eval().embed(image, boxes))


def test_primed_detector_starts_as_the_unprimed_one_and_needs_queries(model):
    torch.manual_seed(0)
    plain = QueryDetector(model.embedder, hidden=8)
    primed = QueryDetector(model.embedder, hidden=8, prime=True)
    primed.load_state_dict(plain.state_dict(), strict=False)
    feats = plain.features(torch.rand(2, 3, 64, 64))
    queries = F.normalize(torch.randn(2, model.dim), dim=1)
    for a, b in zip(plain.head(feats, (64, 64)), primed.head(feats, (64, 64), primes=queries)):
        assert torch.allclose(a, b)
    with pytest.raises(ValueError, match="primed detector needs one"):
        primed.head(feats, (64, 64))


def test_backbone_primed_detector_starts_as_the_unprimed_one_and_modulates_the_backbone(model):
    torch.manual_seed(0)
    plain = QueryDetector(model.embedder, hidden=8)
    deep = QueryDetector(model.embedder, hidden=8, prime_at=[6, 10, 13])
    deep.load_state_dict(plain.state_dict(), strict=False)
    images = torch.rand(2, 3, 96, 96)
    stem = deep.features(images)
    assert stem.shape[1] == 32 and deep.primed and deep.film is None  # layer 6's output: query-independent
    queries = F.normalize(torch.randn(2, model.dim), dim=1)
    for a, b in zip(plain.head(plain.features(images), (96, 96)), deep.head(stem, (96, 96), primes=queries)):
        assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="primed detector needs one"):
        deep.head(stem, (96, 96))
    with torch.no_grad():  # a modulated middle layer changes what the frozen layers after it compute, per query
        deep.films["6"].weight.normal_()
    feats = deep.primed_features(stem, queries)
    assert not torch.allclose(feats, deep.primed_features(stem, queries.flip(0)))
    assert torch.allclose(feats[:, model.dim:], deep.primed_features(stem, queries)[:, model.dim:])
    with pytest.raises(ValueError, match="prime_at must be"):
        QueryDetector(model.embedder, prime_at=[14])


def test_a_backbone_primed_detector_trains_on_the_target_only_and_round_trips(model, tmp_path):
    from metricvision.localization.localizers import LOCALIZERS
    from metricvision.localization.train import train_detector

    cfg = SceneConfig(size=96, sides=(28, 40), targets=(1, 1), distractors=(1, 2), blur=0.0)
    scenes = read_scenes(build_scenes(tmp_path / "s", "train", 3, seed=0, cfg=cfg))
    ref_ids = torch.unique(torch.from_numpy(np.concatenate(scenes.identities)))
    torch.manual_seed(0)
    refs = F.normalize(torch.randn(len(ref_ids), model.dim), dim=1)
    det = QueryDetector(model.embedder, hidden=8, prime_at=[10, 13])
    logs = train_detector(det, scenes, ref_ids, [refs], steps=20, batch_size=2, lr=3e-3, log_every=10)
    assert logs[-1]["loss"] < logs[0]["loss"]
    assert all(f.weight.abs().sum() > 0 for f in det.films.values())  # the gradient reached the backbone's FiLMs
    save_detector(det, tmp_path / "d.safetensors")
    loaded, _ = load_detector(tmp_path / "d.safetensors", model.embedder)
    assert loaded.prime_at == (10, 13)
    loc = LOCALIZERS.create("query_detector_primed", model=model, weights=str(tmp_path / "d.safetensors"), max_boxes=3)
    image = image_tensor(scenes.images[0])
    expected = det.detect(image[None], refs[:2], max_boxes=3)[0]
    assert all(np.allclose(a, b) for a, b in zip(loc.localize(image, refs[:2]), expected))


def test_a_primed_detector_starts_from_a_trained_unprimed_head(model, tmp_path):
    from metricvision.localization.train import init_head, train_detector

    torch.manual_seed(0)
    plain = QueryDetector(model.embedder, hidden=8)
    with torch.no_grad():
        plain.match.add_(1.0)
    save_detector(plain, tmp_path / "plain.safetensors")
    deep = QueryDetector(model.embedder, hidden=8, prime_at=[10, 13])
    init_head(deep, tmp_path / "plain.safetensors")
    images = torch.rand(1, 3, 96, 96)
    queries = F.normalize(torch.randn(1, model.dim), dim=1)
    for a, b in zip(plain.head(plain.features(images), (96, 96)), deep.head(deep.features(images), (96, 96), primes=queries)):
        assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="does not hold a head of this detector's shape"):
        init_head(QueryDetector(model.embedder, hidden=16), tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="prime_targets must be one of"):
        train_detector(deep, read_scenes(build_scenes(tmp_path / "s", "train", 1, seed=0, cfg=SceneConfig(size=64))),
                       torch.tensor([0]), [queries], steps=1, prime_targets="some")
