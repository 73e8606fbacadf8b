import numpy as np
import pytest
import torch

from metricvision.data.scenes import SceneConfig, build_scenes
from metricvision.kb.model import ImageTextModel, ModelCard
from metricvision.localization.detector import QueryDetector
from metricvision.localization.localizers import LOCALIZERS
from metricvision.localization.prm import (image_logits, local_peaks, map_maxima, peak_instances, peak_stimulation,
                                          response_pointing, train_weak)
from metricvision.localization.refine import crop_maps
from metricvision.localization.train import identity_references, read_scenes, save_detector, scene_features
from metricvision.metrics.detection import detection_ap, mask_ap


def test_local_peaks_equal_a_loop():
    torch.manual_seed(0)
    maps = torch.randn(2, 3, 7, 9)
    ref = torch.zeros_like(maps, dtype=torch.bool)
    for n in range(2):
        for r in range(3):
            for i in range(7):
                for j in range(9):
                    window = maps[n, r, max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2]
                    ref[n, r, i, j] = maps[n, r, i, j] == window.max()
    assert torch.equal(local_peaks(maps), ref)


def test_peak_stimulation_averages_the_peaks_and_only_they_get_gradient():
    maps = torch.tensor([[[[5.0, 1.0, 2.0, 4.0], [0.5, 0.2, 0.3, 0.1], [0.4, 0.6, 0.7, 3.0]]]], requires_grad=True)
    logit = peak_stimulation(maps)  # peaks: 5, 4 and 3
    assert torch.allclose(logit, torch.tensor([[4.0]]))
    logit.sum().backward()
    assert torch.equal(torch.nonzero(maps.grad[0, 0]), torch.tensor([[0, 0], [0, 3], [2, 3]]))


def test_max_pooling_gives_each_maps_maximum_and_unknown_pools_are_refused():
    maps = torch.randn(2, 3, 5, 4)
    assert torch.equal(image_logits(maps, "max"), maps.amax(dim=(2, 3)))
    assert torch.equal(image_logits(maps, "peaks"), peak_stimulation(maps))
    with pytest.raises(ValueError, match="pool must be one of"):
        image_logits(maps, "mean")


def test_peaks_below_the_median_do_not_count():
    maps = torch.tensor([[[[0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, -5.0, -5.0],
                           [-5.0, -5.0, -5.0, -5.0, -2.0]]]])
    # local peaks: 1.0, the zeros of the plateau not next to 1.0, and -2.0 (below the median 0.0, left out)
    assert local_peaks(maps)[0, 0, 3, 4]
    peaks = local_peaks(maps) & (maps >= 0.0)
    assert torch.allclose(peak_stimulation(maps), (maps * peaks).sum() / peaks.sum())
    assert not torch.allclose(peak_stimulation(maps), (maps * local_peaks(maps)).sum() / local_peaks(maps).sum())


def test_filled_box_masks_give_the_box_ap():
    rng = np.random.default_rng(0)
    gts, preds, scores, gm, pm = [], [], [], [], []
    for _ in range(5):
        g = np.sort(rng.integers(0, 60, (3, 2, 2)), axis=2).transpose(0, 2, 1).reshape(3, 4)[:, [0, 2, 1, 3]] + [0, 0, 4, 4]
        p = np.clip(g + rng.integers(-6, 7, g.shape), 0, 64)
        p[:, 2:] = np.maximum(p[:, 2:], p[:, :2] + 1)
        gts.append(g.astype(float)); preds.append(p.astype(float)); scores.append(rng.random(3))
        for boxes, out in ((g, gm), (p, pm)):
            m = np.zeros((len(boxes), 64, 64), bool)
            for k, (x0, y0, x1, y1) in enumerate(boxes):
                m[k, y0:y1, x0:x1] = True
            out.append(m)
    box = detection_ap(preds, scores, gts)
    mask = mask_ap(pm, scores, gm)
    assert mask["AP50"] == pytest.approx(box["AP50"]) and mask["AP"] == pytest.approx(box["AP"])


@pytest.mark.parametrize("pool", ["peaks", "max"])
def test_weak_training_lowers_its_loss(pool):
    model = ImageTextModel(ModelCard(backbone="mobilenet_v2", image_size=32))
    det = QueryDetector(model.embedder, hidden=8)
    feats = det.features(torch.rand(4, 3, 64, 64)).half()
    refs = [torch.nn.functional.normalize(torch.randn(5, model.dim), dim=1)]
    present = [torch.tensor([0, 1]), torch.tensor([2]), torch.tensor([3, 3]), torch.tensor([4])]
    logs = train_weak(det, feats, present, refs, torch.arange(5), (64, 64), steps=20, batch_size=4, negatives=2,
                      log_every=10, pool=pool)
    assert logs[-1]["weak"] < logs[0]["weak"]


def test_peak_crops_box_the_peaks_and_the_crop_that_matches_the_query_wins(tmp_path):
    model = ImageTextModel(ModelCard(backbone="mobilenet_v2", image_size=32))
    save_detector(QueryDetector(model.embedder, hidden=8), tmp_path / "weak.safetensors")
    loc = LOCALIZERS.create("peak_crops", model=model, weights=str(tmp_path / "weak.safetensors"), peaks=3,
                            sides=(16, 48), shift=0.0, gamma=0.0, max_boxes=6, nms_iou=1.0)
    torch.manual_seed(0)
    image = torch.rand(3, 128, 96)
    emb, _, _ = prepared = loc.prepare(image)
    query = torch.nn.functional.normalize(torch.randn(model.dim), dim=0)
    boxes, logits, _ = loc.candidates(emb, image, query)
    grid = torch.nn.functional.normalize(emb, dim=-1) @ query  # (h, w): the untrained head's map is the dense cosine
    h, w = grid.shape
    top = torch.where(local_peaks(grid), grid, torch.tensor(-torch.inf)).reshape(-1).topk(3).indices
    centres = torch.stack([(top % w + 0.5) * 96 / w, (top // w + 0.5) * 128 / h], dim=1).repeat_interleave(2, dim=0)
    sides = torch.tensor([16.0, 48.0]).repeat(3)
    unclipped = torch.cat([centres - sides[:, None] / 2, centres + sides[:, None] / 2], dim=1)
    assert torch.allclose(boxes, unclipped.clamp(min=0).minimum(torch.tensor([96.0, 128, 96, 128])), atol=1e-4)
    assert torch.allclose(logits, (loc.detector.match[0] * grid + loc.detector.match[1]).reshape(-1)[top].repeat_interleave(2))
    with torch.no_grad():  # a query that is one candidate's crop: that box ranks first, with score exp(0) = 1
        wanted = loc.embedder.from_features(crop_maps(loc.embedder, image, boxes[3:4], loc.side))[0]
    found = loc.boxes(prepared, wanted[None])[0]
    assert np.allclose(found[0, :4], boxes[3].numpy(), atol=1e-4) and found[0, 4] == pytest.approx(1.0, abs=1e-5)
    assert np.all(np.diff(found[:, 4]) <= 0) and len(found) == 6
    loc.shift = 0.25  # the second search: 8 shifts of each peak's best side by a quarter of it
    shifted, _, cos = loc.candidates(emb, image, query)
    assert torch.equal(shifted[:6], boxes) and len(shifted) == 6 + 3 * 8
    best = cos[:6].reshape(3, 2).argmax(dim=1) + torch.tensor([0, 2, 4])
    for k in range(3):
        centre, side = unclipped[best[k]].reshape(2, 2).mean(0), sides[best[k]]
        for j, (dx, dy) in enumerate([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]):
            c = centre + torch.tensor([dx, dy]) * side / 4
            want = torch.cat([c - side / 2, c + side / 2]).clamp(min=0).minimum(torch.tensor([96.0, 128, 96, 128]))
            assert torch.allclose(shifted[6 + 8 * k + j], want, atol=1e-4)


def test_weak_training_runs_and_peaks_give_masks_with_their_boxes():
    model = ImageTextModel(ModelCard(backbone="mobilenet_v2", image_size=32))
    det = QueryDetector(model.embedder, hidden=8)
    images = torch.rand(4, 3, 64, 64)
    feats = det.features(images).half()
    refs = [torch.nn.functional.normalize(torch.randn(5, model.dim), dim=1)]
    present = [torch.tensor([0, 1]), torch.tensor([2]), torch.tensor([3, 3]), torch.tensor([4])]
    logs = train_weak(det, feats, present, refs, torch.arange(5), (64, 64), steps=20, batch_size=4, negatives=2, log_every=10)
    assert logs[-1]["weak"] < logs[0]["weak"]
    masks, boxes = peak_instances(det, feats[:1].float(), (64, 64), refs[0][0], max_peaks=3)
    assert 1 <= len(masks) <= 3 and masks.shape[1:] == (64, 64) and boxes.shape == (len(masks), 5)
    for m, b in zip(masks, boxes):
        ys, xs = np.nonzero(m)
        assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == b[:4].tolist()
    assert np.all(np.diff(boxes[:, 4]) <= 0)



def test_map_maxima_give_the_centre_of_each_maps_highest_cell():
    maps = torch.zeros(2, 4, 8)
    maps[0, 1, 6] = 1.0  # row 1, column 6 of a 4 x 8 grid over 64 x 128 px: cells of 16 x 16
    maps[1, 3, 0] = 2.0
    assert torch.equal(map_maxima(maps, (64, 128)), torch.tensor([[104.0, 24.0], [8.0, 56.0]]))

@pytest.mark.slow
def test_peak_stimulation_points_at_the_planted_objects_and_max_pooling_does_not(tmp_path):
    """On 16 small scenes (one target, 1-2 distractors, ImageNet backbone), 20 steps from image-level labels: the
    response maps' maxima fall on their identity's instances more often after peak stimulation than untrained, and
    less often after max pooling (``benchmarks/weak_pointing.py`` measures it over seeds and held-out scenes)."""
    cfg = SceneConfig(size=128, sides=(40, 56), targets=(1, 1), distractors=(1, 2), blur=0.0)
    scenes = read_scenes(build_scenes(tmp_path / "s", "train", 16, seed=0, cfg=cfg))
    model = ImageTextModel(ModelCard(backbone="mobilenet_v2", image_size=64))
    ref_ids, refs = identity_references(model, "train")
    present = [torch.from_numpy(x) for x in scenes.identities]
    rates = {}
    for pool in ("untrained", "peaks", "max"):
        torch.manual_seed(0)
        det = QueryDetector(model.embedder, hidden=64)
        feats, size = scene_features(det, scenes)
        if pool != "untrained":
            train_weak(det, feats, present, refs, ref_ids, size, steps=20, seed=0, log_every=20, pool=pool)
        rates[pool] = response_pointing(det, feats, size, scenes, ref_ids, refs[0], tolerances=(15.0,))[15.0]
    assert rates["peaks"] > rates["untrained"] + 0.05 and rates["max"] < rates["untrained"] - 0.05, rates
