import numpy as np
import pytest
import torch

from metricvision.kb.model import ImageTextModel, ModelCard
from metricvision.localization.detector import QueryDetector
from metricvision.localization.prm import local_peaks, peak_instances, peak_stimulation, train_weak
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
