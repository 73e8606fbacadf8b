import inspect

import numpy as np
import pytest
import torch

from metricvision.kb.model import ImageTextModel, ModelCard
from metricvision.localization.crops import CropEmbedder
from metricvision.localization.detector import QueryDetector
from metricvision.localization.localizers import LOCALIZERS
from metricvision.localization.train import save_detector


@pytest.fixture(scope="module")
def model():
    return ImageTextModel(ModelCard(backbone="mobilenet_v2", image_size=32))


@pytest.mark.parametrize("name", LOCALIZERS.names())
def test_contract(name, model, tmp_path):
    extra = {}
    if name.startswith("query_detector") or name.startswith("peak_"):
        crop = CropEmbedder(model.embedder) if name == "query_detector_crops" else None
        det = QueryDetector(model.embedder, hidden=16, prime=name == "query_detector_primed")
        save_detector(det, tmp_path / "det.safetensors", crop=crop)
        extra = {"weights": str(tmp_path / "det.safetensors")}
    if name == "query_detector_primed_crops":
        from metricvision.localization.priming import CropPrimer, save_primer

        save_primer(CropPrimer(model.embedder), tmp_path / "primer.safetensors", side=model.card.image_size)
        extra["primer"] = str(tmp_path / "primer.safetensors")
    loc = LOCALIZERS.create(name, model=model, max_boxes=3, **extra)
    # a method sees the image and the query embeddings only: no counts, sizes or boxes
    assert list(inspect.signature(loc.localize).parameters) == ["image", "queries"]
    torch.manual_seed(0)
    image = torch.rand(3, 96, 96)
    queries = torch.nn.functional.normalize(torch.randn(2, model.dim), dim=1)
    out = loc.localize(image, queries)
    assert len(out) == 2
    for boxes in out:
        assert boxes.shape[1] == 5 and len(boxes) <= 3
        assert np.all(np.diff(boxes[:, 4]) <= 0)
    prepared = loc.prepare(image)
    assert all(np.array_equal(a, b) for a, b in zip(loc.boxes(prepared, queries), out))
    chosen = loc.fit([prepared, prepared], queries, [np.array([[10.0, 10, 40, 40]]), np.zeros((0, 4))])
    assert isinstance(chosen, dict) and chosen


def test_model_crops_are_the_image_models_embeddings_of_the_crops(model, tmp_path):
    save_detector(QueryDetector(model.embedder, hidden=8), tmp_path / "det.safetensors")
    loc = LOCALIZERS.create("query_detector_model_crops", model=model, weights=str(tmp_path / "det.safetensors"))
    assert loc.side == model.card.image_size == 32
    image = torch.rand(3, 128, 128)
    got = loc.embed_crops(image, torch.tensor([[0.0, 0.0, 64.0, 64.0], [64.0, 32.0, 128.0, 96.0]]))
    with torch.no_grad():  # a 64 px square to 32 px: a 2 x 2 average, then the whole image model
        expected = model.embedder(torch.nn.functional.avg_pool2d(torch.stack([image[:, :64, :64], image[:, 32:96, 64:]]), 2))
    assert got.shape == (1, 2, model.dim) and torch.allclose(got[0], expected, atol=1e-5)
    with pytest.raises(ValueError, match="side must be"):
        LOCALIZERS.create("query_detector_model_crops", model=model, weights=str(tmp_path / "det.safetensors"), side=8)


def test_model_crops_mix_the_trained_crop_embedders_cosine_when_there_is_one(model, tmp_path):
    save_detector(QueryDetector(model.embedder, hidden=8), tmp_path / "det.safetensors", crop=CropEmbedder(model.embedder, side=32))
    loc = LOCALIZERS.create("query_detector_model_crops", model=model, weights=str(tmp_path / "det.safetensors"))
    image, boxes = torch.rand(3, 96, 96), torch.tensor([[0.0, 0.0, 48.0, 48.0], [40.0, 30.0, 90.0, 80.0]])
    emb = loc.embed_crops(image, boxes)
    assert torch.allclose(emb[1], loc.crop.embed(image, boxes))
    queries = torch.nn.functional.normalize(torch.randn(3, model.dim), dim=1)
    for mix in (0.0, 0.25, 1.0):
        loc.mix = mix
        assert torch.allclose(loc.cosines(emb, queries), mix * emb[0] @ queries.T + (1 - mix) * emb[1] @ queries.T, atol=1e-6)
    chosen = loc.fit([loc.prepare(image)], queries[:1], [np.array([[0.0, 0.0, 48.0, 48.0]])])
    assert set(chosen) == {"gamma", "nms_iou", "mix", "vote"}
    fixed = LOCALIZERS.create("query_detector_model_crops", model=model, weights=str(tmp_path / "det.safetensors"), mix=0.5)
    assert set(fixed.fit([fixed.prepare(image)], queries[:1], [np.array([[0.0, 0.0, 48.0, 48.0]])])) == {"gamma", "nms_iou", "vote"}
    assert fixed.mix == 0.5
    with pytest.raises(ValueError, match="mix must be in"):
        LOCALIZERS.create("query_detector_model_crops", model=model, weights=str(tmp_path / "det.safetensors"), mix=1.5)


def test_model_crops_take_proposals_from_the_detector_models_head_and_crops_from_another_model(model, tmp_path):
    from metricvision.kb.model import save_image_model
    from metricvision.models import Embedder

    save_image_model(model.embedder, tmp_path / "det_model.safetensors", 32)
    det = QueryDetector(model.embedder, hidden=8)
    save_detector(det, tmp_path / "det.safetensors", crop=CropEmbedder(model.embedder, side=32))
    torch.manual_seed(1)  # another image model: a 16-d identity space the head never saw
    other = ImageTextModel(ModelCard(backbone="mobilenet_v2", image_size=24, dim=16, head=True, pretrained=False),
                           Embedder("mobilenet_v2", pooling="avg", dim=16, pretrained=False))
    loc = LOCALIZERS.create("query_detector_model_crops", model=other, weights=str(tmp_path / "det.safetensors"),
                            detector_model=str(tmp_path / "det_model.safetensors"), proposals=5)
    assert loc.crop is None and loc.mix == 1.0 and loc.side == 24
    image = torch.rand(3, 96, 96)
    boxes, logp, emb = loc.prepare(image)
    obj, all_boxes, _ = det.eval().predict(image[None])  # the proposals are the detector model's head's
    assert len(boxes) == 5 and all(any(torch.allclose(b, a) for a in all_boxes[0].reshape(-1, 4)) for b in boxes)
    with torch.no_grad():
        expected = other.embedder(torch.stack([crop_of(image, b, 24) for b in boxes]))
    assert emb.shape == (1, 5, 16) and torch.allclose(emb[0], expected, atol=1e-5)
    found = loc.boxes((boxes, logp, emb), torch.randn(2, 16))
    assert len(found) == 2 and all(f.shape[1] == 5 and len(f) <= 5 for f in found)
    with pytest.raises(ValueError, match="query_detector_model_crops only"):
        LOCALIZERS.create("query_detector", model=other, weights=str(tmp_path / "det.safetensors"),
                          detector_model=str(tmp_path / "det_model.safetensors"))
    with pytest.raises(ValueError, match="scored by the model alone"):
        LOCALIZERS.create("query_detector_model_crops", model=other, weights=str(tmp_path / "det.safetensors"),
                          detector_model=str(tmp_path / "det_model.safetensors"), mix=0.5)


def crop_of(image, box, side):
    from metricvision.localization.crops import crop_boxes

    return crop_boxes(image, box[None], side)[0]


def test_model_crops_hubness_correction_against_references_follows_csls(model, tmp_path):
    save_detector(QueryDetector(model.embedder, hidden=8), tmp_path / "det.safetensors")
    torch.manual_seed(1)
    refs = torch.nn.functional.normalize(torch.randn(30, model.dim), dim=1)
    np.savez(tmp_path / "refs.npz", embeddings=3 * refs.numpy(), labels=np.arange(30))  # normalized on loading
    weights = str(tmp_path / "det.safetensors")
    loc = LOCALIZERS.create("query_detector_model_crops", model=model, weights=weights, references=str(tmp_path / "refs.npz"),
                            hub=1.0, hub_k=3)
    emb = torch.nn.functional.normalize(torch.randn(1, 5, model.dim), dim=2)
    queries = torch.nn.functional.normalize(torch.randn(2, model.dim), dim=1)

    def r(x):  # mean cosine to the 3 nearest references, a plain loop
        return torch.tensor([sorted((refs @ v).tolist(), reverse=True)[:3] for v in x]).mean(1)

    expected = 2 * emb[0] @ queries.T - r(emb[0])[:, None] - r(queries)[None, :]  # CSLS
    assert torch.allclose(loc.cosines(emb, queries), expected / 2, atol=1e-5)
    loc.hub = 0.0
    assert torch.allclose(loc.cosines(emb, queries), emb[0] @ queries.T, atol=1e-6)
    chooses = LOCALIZERS.create("query_detector_model_crops", model=model, weights=weights, references=refs.numpy())
    image = torch.rand(3, 96, 96)
    chosen = chooses.fit([chooses.prepare(image)], queries[:1], [np.array([[0.0, 0.0, 48.0, 48.0]])])
    assert set(chosen) == {"gamma", "nms_iou", "hub", "vote"} and chooses.hub in (0.0, 0.5, 1.0)
    plain = LOCALIZERS.create("query_detector_model_crops", model=model, weights=weights)
    assert set(plain.fit([plain.prepare(image)], queries[:1], [np.array([[0.0, 0.0, 48.0, 48.0]])])) == {"gamma", "nms_iou", "vote"}
    with pytest.raises(ValueError, match=r"references must be \(N >= 1, \d+\) embeddings"):
        LOCALIZERS.create("query_detector_model_crops", model=model, weights=weights, references=np.zeros((4, 7)))
    with pytest.raises(ValueError, match="hub must be"):
        LOCALIZERS.create("query_detector_model_crops", model=model, weights=weights, hub=0.5)
    with pytest.raises(ValueError, match="hub_k must be"):
        LOCALIZERS.create("query_detector_model_crops", model=model, weights=weights, references=refs.numpy(), hub_k=31)
    with pytest.raises(ValueError, match="dataset emoji has splits"):
        LOCALIZERS.create("query_detector_model_crops", model=model, weights=weights, references="emoji:val")
    with pytest.raises(FileNotFoundError, match="references .*missing.npz not found"):
        LOCALIZERS.create("query_detector_model_crops", model=model, weights=weights, references=str(tmp_path / "missing.npz"))
