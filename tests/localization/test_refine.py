import pytest
import torch

from metricvision.data.scenes import SceneConfig, build_scenes
from metricvision.kb.model import ImageTextModel, ModelCard
from metricvision.localization.detector import QueryDetector
from metricvision.localization.localizers import LOCALIZERS
from torchvision.ops import box_iou

from metricvision.localization.refine import (BoxRefiner, apply_offsets, corner_offsets, load_refiner, paired_iou, refined_iou,
                                              refiner_examples, save_refiner, train_refiner)
from metricvision.localization.train import image_tensor, read_scenes, save_detector


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ImageTextModel(ModelCard(backbone="mobilenet_v2", image_size=32))


def test_offsets_are_corner_moves_over_the_square_crops_side():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0]])  # square crop side 40
    target = torch.tensor([[14.0, 16.0, 34.0, 56.0]])
    assert torch.allclose(corner_offsets(boxes, target), torch.tensor([[0.1, -0.1, 0.1, -0.1]]))
    assert torch.allclose(apply_offsets(boxes, corner_offsets(boxes, target)), target)
    a, b = torch.rand(6, 2) * 50, torch.rand(6, 2) * 50
    a, b = torch.cat([a, a + 1 + torch.rand(6, 2) * 30], 1), torch.cat([b, b + 1 + torch.rand(6, 2) * 30], 1)
    assert torch.allclose(paired_iou(a, b), box_iou(a, b).diagonal())
    # crossed corners are put back in order
    assert torch.allclose(apply_offsets(boxes, torch.tensor([[1.0, 0.0, 0.0, 0.0]])), torch.tensor([[30.0, 20.0, 50.0, 60.0]]))


def test_a_trained_refiner_moves_jittered_boxes_onto_the_objects(model, tmp_path):
    cfg = SceneConfig(size=96, sides=(28, 40), targets=(1, 1), distractors=(1, 2), blur=0.0)
    scenes = read_scenes(build_scenes(tmp_path / "s", "train", 4, seed=0, cfg=cfg))
    images = [image_tensor(p) for p in scenes.images]
    maps, offsets, boxes, truth = refiner_examples(model.embedder, images, scenes.boxes, 32, jitters=8)
    assert len(maps) == 8 * sum(len(b) for b in scenes.boxes) and maps.dtype == torch.float16
    assert torch.allclose(apply_offsets(boxes, offsets), truth, atol=1e-3)
    refiner = BoxRefiner(maps.shape[1], mid=16, hidden=32)
    untrained = refined_iou(refiner, maps, boxes, truth)
    assert untrained["iou_after"] == untrained["iou_before"]  # starts as "keep the box"
    logs = train_refiner(refiner, maps, offsets, steps=150, batch_size=64, lr=3e-3, log_every=50)
    assert logs[-1]["l1"] < logs[0]["l1"]
    trained = refined_iou(refiner, maps, boxes, truth)
    assert trained["iou_after"] > trained["iou_before"] + 0.05
    save_refiner(refiner, tmp_path / "r.safetensors", side=32, image_model="tiny")
    loaded, side = load_refiner(tmp_path / "r.safetensors", model.embedder)
    assert side == 32
    assert torch.equal(loaded.refine(boxes[:5], maps[:5]), refiner.refine(boxes[:5], maps[:5]))
    with pytest.raises(FileNotFoundError, match="detector refiner"):
        load_refiner(tmp_path / "missing.safetensors", model.embedder)
    with pytest.raises(ValueError, match="jitters"):
        refiner_examples(model.embedder, images, scenes.boxes, 32, jitters=0)


def test_model_crops_localizer_refines_its_proposals(model, tmp_path):
    save_detector(QueryDetector(model.embedder, hidden=8), tmp_path / "det.safetensors")
    weights = str(tmp_path / "det.safetensors")
    refiner = BoxRefiner(1280, mid=8, hidden=8)
    with torch.no_grad():
        refiner.net[-1].bias.copy_(torch.tensor([-0.1, -0.1, 0.1, 0.1]))  # every box grows by a fifth of its crop side
    save_refiner(refiner, tmp_path / "r.safetensors", side=32)
    plain = LOCALIZERS.create("query_detector_model_crops", model=model, weights=weights, proposals=5)
    loc = LOCALIZERS.create("query_detector_model_crops", model=model, weights=weights, proposals=5,
                            refiner=str(tmp_path / "r.safetensors"))
    torch.manual_seed(1)
    image = torch.rand(3, 96, 96)
    boxes, logp, emb = plain.prepare(image)
    refined, logp2, emb2 = loc.prepare(image)
    assert torch.allclose(refined, apply_offsets(boxes, torch.tensor([[-0.1, -0.1, 0.1, 0.1]]).expand(len(boxes), 4)), atol=1e-4)
    assert torch.equal(logp, logp2) and torch.allclose(emb, emb2, atol=1e-5)  # scored by the proposals' own crops
    twice = LOCALIZERS.create("query_detector_model_crops", model=model, weights=weights, proposals=5,
                              refiner=str(tmp_path / "r.safetensors"), refine_passes=2, rescore="refined")
    again, _, emb3 = twice.prepare(image)
    once = refined
    assert torch.allclose(again, apply_offsets(once, torch.tensor([[-0.1, -0.1, 0.1, 0.1]]).expand(len(once), 4)), atol=1e-3)
    assert torch.allclose(emb3, twice.embed_crops(image, again), atol=1e-5)  # rescored: the refined boxes' crops
    mean = LOCALIZERS.create("query_detector_model_crops", model=model, weights=weights, proposals=5,
                             refiner=str(tmp_path / "r.safetensors"), rescore="mean")
    _, _, emb4 = mean.prepare(image)
    assert torch.allclose(emb4, torch.nn.functional.normalize(emb + mean.embed_crops(image, refined), dim=-1), atol=1e-5)
    with pytest.raises(ValueError, match="rescore must be one of"):
        LOCALIZERS.create("query_detector_model_crops", model=model, weights=weights, rescore="yes")
    with pytest.raises(ValueError, match="set side=32"):
        LOCALIZERS.create("query_detector_model_crops", model=model, weights=weights, refiner=str(tmp_path / "r.safetensors"), side=48)
    with pytest.raises(ValueError, match="refine_passes"):
        LOCALIZERS.create("query_detector_model_crops", model=model, weights=weights, refine_passes=0)
    save_refiner(BoxRefiner(64, mid=8, hidden=8), tmp_path / "other.safetensors", side=32, image_model="a 64-channel model")
    with pytest.raises(ValueError, match="64 channels; this image model's have 1280"):
        load_refiner(tmp_path / "other.safetensors", model.embedder)


def test_cli_trains_a_refiner_and_reports_the_iou_before_and_after(model, tmp_path, capsys):
    import json

    from metricvision.cli import main
    from metricvision.kb.model import save_image_model

    ckpt = tmp_path / "model.safetensors"
    save_image_model(model.embedder, ckpt, image_size=32)
    cfg = SceneConfig(size=96, sides=(28, 40), targets=(1, 1), distractors=(1, 2), blur=0.0)
    build_scenes(tmp_path / "train", "train", 3, seed=0, cfg=cfg)
    build_scenes(tmp_path / "val", "val", 2, seed=1, cfg=cfg)
    out = tmp_path / "r.safetensors"
    assert main(["detector", "refiner", "--scenes", str(tmp_path / "train"), "--checkpoint", str(ckpt), "--out", str(out),
                 "--val-scenes", str(tmp_path / "val"), "--steps", "30", "--batch-size", "32", "--jitters", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["side"] == 32 and result["crops"] == 2 * sum(len(b) for b in read_scenes(tmp_path / "train").boxes)
    assert set(result["val"]) == {"iou_before", "iou_after", "iou50_before", "iou50_after"}
    assert load_refiner(out, model.embedder)[1] == 32
