import json

import numpy as np
import pytest
import torch
from PIL import Image

from metricvision.cli import main
from metricvision.kb.regions import RegionTable, best_regions, grid_boxes, merge_with_regions
from shapes import draw


def test_grid_boxes_tile_the_image_at_every_scale():
    boxes = grid_boxes(200, 120, scales=(0.5, 0.25), overlap=0.5)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 200).all() and (boxes[:, 3] <= 120).all()
    for side in (60, 30):
        same = boxes[boxes[:, 2] - boxes[:, 0] == side]
        assert (same[:, 3] - same[:, 1] == side).all()
        covered = np.zeros((120, 200), bool)
        for x0, y0, x1, y1 in same.astype(int):
            covered[y0:y1, x0:x1] = True
        assert covered.all()
    assert len(grid_boxes(100, 100, scales=(1.0,))) == 1


@pytest.mark.parametrize("kwargs, match", [({"scales": (0.0,)}, "scales must be in"), ({"overlap": 1.0}, "overlap must be in")])
def test_grid_boxes_refuse_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        grid_boxes(64, 64, **kwargs)


def test_best_regions_and_merge_against_a_loop():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(12, 5)).astype(np.float32)
    table = RegionTable(item_ids=np.repeat(np.arange(4), 3), boxes=rng.uniform(0, 9, (12, 4)).astype(np.float32), embeddings=emb)
    q = rng.normal(size=5).astype(np.float32)
    found = best_regions(table, q, allowed=np.array([1, 3]), per_item=2)
    assert sorted(found) == [1, 3]
    for i, regions in found.items():
        ref = sorted(emb[3 * i : 3 * i + 3] @ q, reverse=True)[:2]
        assert [r["score"] for r in regions] == pytest.approx(ref, abs=1e-6)
    scores, ids = merge_with_regions(np.array([5.0, -1.0]), np.array([0, 1]), found, k=3)
    best = {0: 5.0, 1: max(-1.0, found[1][0]["score"]), 3: found[3][0]["score"]}
    assert list(ids) == sorted(best, key=lambda i: -best[i])
    assert list(scores) == pytest.approx(sorted(best.values(), reverse=True))


def scene(obj: np.ndarray, at: tuple, side: int = 192) -> Image.Image:
    im = Image.new("RGB", (side, side), (235, 235, 235))
    im.paste(Image.fromarray(obj), at)
    return im


def test_kb_with_regions_finds_the_small_object_and_its_box(tmp_path, shapes_kb, capsys):
    folder = tmp_path / "scenes"
    folder.mkdir()
    scene(draw("circle", "red", 28), (130, 20)).save(folder / "0.png")
    for n, (shape, color) in enumerate([("square", "blue"), ("triangle", "green"), ("square", "yellow")], 1):
        scene(draw(shape, color, 28), (20 + 30 * n, 120)).save(folder / f"{n}.png")
    ckpt = str(shapes_kb.path / shapes_kb.card.checkpoint)
    kb = str(tmp_path / "kb")
    assert main(["kb", "build", kb, "--from-folder", str(folder), "--checkpoint", ckpt, "--regions", "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["items"] == 4 and built["regions"] > 4 * 50
    query = tmp_path / "red_circle.png"
    Image.fromarray(draw("circle", "red", 32)).save(query)
    assert main(["search", kb, "--image", str(query), "--k", "4", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["caption"] == "0"  # the scene with the red circle
    x0, y0, x1, y1 = hits[0]["regions"][0]["box"]
    assert x0 <= 144 <= x1 and y0 <= 34 <= y1  # the circle's centre
    assert hits[0]["score"] == pytest.approx(max(r["score"] for h in hits for r in h["regions"]))
    assert main(["search", kb, "--image", str(query), "--k", "4", "--object-views", "--json"]) == 0
    viewed = json.loads(capsys.readouterr().out)  # the query as the mean of its views: another embedding, same scene
    assert viewed[0]["caption"] == "0" and viewed[0]["score"] != pytest.approx(hits[0]["score"], abs=1e-6)
    assert main(["kb", "add", kb, "--from-folder", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["regions"] == built["regions"]


def test_best_regions_max_items_keeps_the_best_items_in_order():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(40, 6)).astype(np.float32)
    table = RegionTable(item_ids=rng.integers(0, 10, 40), boxes=np.zeros((40, 4), np.float32), embeddings=emb)
    q = rng.normal(size=6).astype(np.float32)
    every = best_regions(table, q, per_item=1)
    top = best_regions(table, q, per_item=1, max_items=3)
    ranked = sorted(every, key=lambda i: -every[i][0]["score"])
    assert list(top) == ranked[:3] and list(every) == ranked


def test_detector_proposer_gives_at_most_max_regions_in_the_image(tmp_path, shapes_kb):
    from metricvision.kb.regions import create_proposer
    from metricvision.localization.detector import QueryDetector
    from metricvision.localization.train import save_detector

    save_detector(QueryDetector(shapes_kb.model.embedder, hidden=8), tmp_path / "det.safetensors")
    proposer = create_proposer(shapes_kb.model, str(tmp_path / "det.safetensors"), max_regions=5)
    boxes, emb = proposer(np.asarray(scene(draw("circle", "red", 28), (40, 40), side=128)))
    assert 1 <= len(boxes) <= 5 and emb.shape == (len(boxes), shapes_kb.model.dim)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 128).all()
    assert torch.linalg.norm(emb, dim=1) == pytest.approx(torch.ones(len(boxes)), abs=1e-4)


def test_detector_regions_embedded_by_the_image_model_on_their_crops(tmp_path, shapes_kb):
    from metricvision.kb.regions import DetectorProposer, enable_regions, kb_proposer
    from metricvision.localization.crops import crop_boxes
    from metricvision.localization.detector import QueryDetector
    from metricvision.localization.train import save_detector

    weights = tmp_path / "det.safetensors"
    save_detector(QueryDetector(shapes_kb.model.embedder, hidden=8), weights)
    image = np.asarray(scene(draw("circle", "red", 28), (40, 40), side=128))
    by_detector = DetectorProposer(shapes_kb.model, str(weights), max_regions=4)
    by_model = DetectorProposer(shapes_kb.model, str(weights), max_regions=4, embedding="model")
    (boxes, det_emb), (same_boxes, emb) = by_detector(image), by_model(image)
    assert np.array_equal(boxes, same_boxes) and emb.shape == det_emb.shape
    x = torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)
    inside = (boxes[:, 0] > 0) & (boxes[:, 1] > 0) & (boxes[:, 2] < 128) & (boxes[:, 3] < 128)  # not clipped
    assert inside.any()
    with torch.no_grad():
        expected = shapes_kb.model.embedder(crop_boxes(x, torch.from_numpy(boxes[inside]), shapes_kb.model.card.image_size))
    assert torch.allclose(emb[torch.from_numpy(inside)], expected, atol=1e-5)
    assert not torch.allclose(emb, det_emb, atol=1e-3)
    kb = tmp_path / "kb"
    enable_regions(kb, str(weights), "model")
    assert kb_proposer(kb, shapes_kb.model).embedding == "model"
    with pytest.raises(ValueError, match="needs detector weights"):
        enable_regions(tmp_path / "kb2", None, "model")
    with pytest.raises(ValueError, match="region embedding must be one of"):
        DetectorProposer(shapes_kb.model, str(weights), embedding="grid")


def test_cli_builds_and_adds_detector_regions_embedded_by_the_model(tmp_path, shapes_kb, capsys):
    from metricvision.localization.detector import QueryDetector
    from metricvision.localization.train import save_detector

    folder = tmp_path / "scenes"
    folder.mkdir()
    for n, (shape, color) in enumerate([("circle", "red"), ("square", "blue")]):
        scene(draw(shape, color, 28), (30 + 60 * n, 60), side=160).save(folder / f"{n}.png")
    weights = tmp_path / "det.safetensors"
    torch.manual_seed(0)  # the untrained head's proposals depend on its initialization
    save_detector(QueryDetector(shapes_kb.model.embedder, hidden=8), weights)
    kb, ckpt = tmp_path / "kb", str(shapes_kb.path / shapes_kb.card.checkpoint)
    assert main(["kb", "build", str(kb), "--from-folder", str(folder), "--checkpoint", ckpt, "--detector", str(weights),
                 "--region-embedding", "model", "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert 2 <= built["regions"] <= 2 * 30
    assert json.loads((kb / "regions" / "proposer.json").read_text())["embedding"] == "model"
    assert main(["kb", "add", str(kb), "--from-folder", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["regions"] == built["regions"]
    assert main(["search", str(kb), "--image", str(folder / "0.png"), "--k", "2", "--json"]) == 0
    assert all(hit["regions"] for hit in json.loads(capsys.readouterr().out))
    assert main(["kb", "build", str(tmp_path / "kb2"), "--from-folder", str(folder), "--checkpoint", ckpt, "--regions",
                 "--region-embedding", "model"]) != 0
    assert "--region-embedding model needs --detector" in capsys.readouterr().err and not (tmp_path / "kb2").exists()


def test_detector_trained_on_another_model_proposes_while_the_kb_model_embeds(tmp_path, shapes_kb, capsys):
    from metricvision.kb.model import ImageTextModel, save_image_model
    from metricvision.kb.regions import DetectorProposer, kb_proposer
    from metricvision.localization.crops import crop_boxes
    from metricvision.localization.detector import QueryDetector
    from metricvision.localization.train import save_detector

    ckpt = str(shapes_kb.path / shapes_kb.card.checkpoint)
    other = ImageTextModel.from_checkpoint(ckpt)  # the detector's model: another backbone than the KB's
    torch.manual_seed(0)
    with torch.no_grad():
        for p in other.embedder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_image_model(other.embedder, tmp_path / "other.safetensors", image_size=32, text_model="hashing")
    weights = tmp_path / "det.safetensors"
    save_detector(QueryDetector(other.embedder, hidden=8), weights)
    image = np.asarray(scene(draw("circle", "red", 28), (40, 40), side=128))
    boxes, emb = DetectorProposer(shapes_kb.model, str(weights), max_regions=6, embedding="model",
                                  detector_model=str(tmp_path / "other.safetensors"))(image)
    own_boxes, _ = DetectorProposer(other, str(weights), max_regions=6)(image)
    kb_boxes, _ = DetectorProposer(shapes_kb.model, str(weights), max_regions=6)(image)
    assert np.array_equal(boxes, own_boxes) and not np.array_equal(boxes, kb_boxes)  # the head runs on its own backbone
    x = torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)
    inside = torch.from_numpy((boxes[:, :2] > 0).all(1) & (boxes[:, 2:] < 128).all(1))  # not clipped
    assert inside.any()
    with torch.no_grad():
        expected = shapes_kb.model.embedder(crop_boxes(x, torch.from_numpy(boxes)[inside], 32))
    assert torch.allclose(emb[inside], expected, atol=1e-5)
    with pytest.raises(ValueError, match="needs --detector WEIGHTS and --region-embedding model"):
        DetectorProposer(shapes_kb.model, str(weights), detector_model=str(tmp_path / "other.safetensors"))

    folder = tmp_path / "scenes"
    folder.mkdir()
    Image.fromarray(image).save(folder / "0.png")
    kb = tmp_path / "kb"
    assert main(["kb", "build", str(kb), "--from-folder", str(folder), "--checkpoint", ckpt, "--detector", str(weights),
                 "--region-embedding", "model", "--detector-model", str(tmp_path / "other.safetensors"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["regions"] == len(DetectorProposer(other, str(weights))(image)[0])
    config = json.loads((kb / "regions" / "proposer.json").read_text())
    assert config["detector_model"] == str((tmp_path / "other.safetensors").resolve())
    assert np.array_equal(kb_proposer(kb, shapes_kb.model)(image)[0][:6], boxes)  # what `kb add` will propose
    assert main(["kb", "build", str(tmp_path / "kb2"), "--from-folder", str(folder), "--checkpoint", ckpt, "--detector",
                 str(weights), "--detector-model", str(tmp_path / "other.safetensors")]) != 0
    assert "needs --detector WEIGHTS and --region-embedding model" in capsys.readouterr().err
    assert not (tmp_path / "kb2").exists()


def test_box_refiner_moves_detector_regions_and_keeps_their_crops_embeddings(tmp_path, shapes_kb, capsys):
    from metricvision.kb.regions import DetectorProposer, kb_proposer
    from metricvision.localization.detector import QueryDetector
    from metricvision.localization.refine import BoxRefiner, apply_offsets, save_refiner
    from metricvision.localization.train import save_detector

    ckpt = str(shapes_kb.path / shapes_kb.card.checkpoint)
    weights, refiner = tmp_path / "det.safetensors", tmp_path / "refiner.safetensors"
    torch.manual_seed(0)
    save_detector(QueryDetector(shapes_kb.model.embedder, hidden=8), weights)
    shrink = BoxRefiner(shapes_kb.model.embedder.features(torch.zeros(1, 3, 32, 32)).shape[1], mid=4, hidden=4)
    with torch.no_grad():
        shrink.net[-1].bias.copy_(torch.tensor([0.05, 0.05, -0.05, -0.05]))  # every box loses a tenth of its crop side
    save_refiner(shrink, refiner, side=32)
    image = np.asarray(scene(draw("circle", "red", 28), (40, 40), side=128))
    plain, plain_emb = DetectorProposer(shapes_kb.model, str(weights), max_regions=6, embedding="model")(image)
    boxes, emb = DetectorProposer(shapes_kb.model, str(weights), max_regions=6, embedding="model", refiner=str(refiner))(image)
    inside = (plain[:, :2] > 0).all(1) & (plain[:, 2:] < 128).all(1)  # not clipped before or after
    assert inside.any()
    moved = apply_offsets(torch.from_numpy(plain[inside]), torch.tensor([[0.05, 0.05, -0.05, -0.05]]).expand(int(inside.sum()), 4))
    assert np.allclose(boxes[inside], moved.numpy(), atol=1e-3)
    assert torch.allclose(emb, plain_emb, atol=1e-5)  # regions keep their proposals' crops' embeddings
    with pytest.raises(ValueError, match="box refiner .* needs --detector WEIGHTS and --region-embedding model"):
        DetectorProposer(shapes_kb.model, str(weights), refiner=str(refiner))

    folder = tmp_path / "scenes"
    folder.mkdir()
    Image.fromarray(image).save(folder / "0.png")
    kb = tmp_path / "kb"
    assert main(["kb", "build", str(kb), "--from-folder", str(folder), "--checkpoint", ckpt, "--detector", str(weights),
                 "--region-embedding", "model", "--refiner", str(refiner), "--json"]) == 0
    capsys.readouterr()
    assert json.loads((kb / "regions" / "proposer.json").read_text())["refiner"] == str(refiner.resolve())
    assert np.array_equal(kb_proposer(kb, shapes_kb.model)(image)[0][:6], boxes)  # what `kb add` will propose
    assert main(["kb", "build", str(tmp_path / "kb2"), "--from-folder", str(folder), "--checkpoint", ckpt, "--detector",
                 str(weights), "--refiner", str(tmp_path / "missing.safetensors")]) != 0
    assert not (tmp_path / "kb2").exists()
