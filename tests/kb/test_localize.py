import itertools

import numpy as np
import pytest
import torch

from metricvision.kb.localize import Box, box_iou, boxes_from_map, find_peaks, nms, similarity_map, tune_box_params, upsample


def blobs(shape, centers, sigma=4.0):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return sum(a * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2)) for y, x, a in centers).astype(np.float32)


def test_similarity_map_is_cosine_per_location():
    torch.manual_seed(0)
    q, dense = torch.randn(8), torch.randn(8, 3, 4)
    ref = torch.tensor([[float(torch.cosine_similarity(q, dense[:, i, j], dim=0)) for j in range(4)] for i in range(3)])
    assert torch.allclose(similarity_map(q, dense), ref, atol=1e-6)
    with pytest.raises(ValueError, match="expected query"):
        similarity_map(torch.randn(7), dense)
    assert upsample(torch.ones(2, 2), (10, 6)).shape == (10, 6)


def test_peaks_equal_a_plain_loop():
    rng = np.random.default_rng(0)
    heat = rng.random((12, 15)).astype(np.float32)
    found = {(y, x) for y, x, _ in find_peaks(heat, window=3)}
    ref = set()
    for y, x in itertools.product(range(12), range(15)):
        nb = heat[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2]
        if heat[y, x] == nb.max():
            ref.add((y, x))
    assert found == ref
    values = [v for _, _, v in find_peaks(heat)]
    assert values == sorted(values, reverse=True)


def test_two_instances_give_two_boxes():
    heat = blobs((64, 64), [(16, 16, 0.9), (44, 48, 0.8)]) + 0.05
    boxes = boxes_from_map(heat, rel_threshold=0.5, min_score=0.3)
    assert len(boxes) == 2 and boxes[0].score > boxes[1].score
    for box, (cy, cx) in zip(boxes, [(16, 16), (44, 48)]):
        assert abs((box.x0 + box.x1) / 2 - cx - 0.5) <= 1 and abs((box.y0 + box.y1) / 2 - cy - 0.5) <= 1
    assert boxes_from_map(np.zeros((8, 8), np.float32)) == []
    with pytest.raises(ValueError, match="rel_threshold must be in"):
        boxes_from_map(heat, rel_threshold=1.5)


def test_nms_and_iou_equal_a_plain_loop():
    rng = np.random.default_rng(1)
    boxes = []
    for _ in range(30):
        x, y, w, h = rng.uniform(0, 50, 2).tolist() + rng.uniform(5, 20, 2).tolist()
        boxes.append(Box(x, y, x + w, y + h, float(rng.random())))
    ref, rest = [], sorted(boxes, key=lambda b: -b.score)
    while rest:
        best = rest.pop(0)
        ref.append(best)
        rest = [b for b in rest if box_iou(best.as_list()[:4], b.as_list()[:4]) <= 0.3]
    assert nms(boxes, 0.3) == ref
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0


def test_tune_box_params_picks_the_threshold_that_fits_held_out_maps():
    # a wide blob whose true box is its core: a high region fraction fits, a low one overgrows
    heats, gts = [], []
    for cy, cx in [(20, 20), (40, 30), (24, 44)]:
        heat = blobs((64, 64), [(cy, cx, 1.0)], sigma=6.0)
        heats.append(heat)
        ys, xs = np.nonzero(heat >= 0.75 * heat.max())
        gts.append(np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], float))
    params, score = tune_box_params(heats, gts, {"rel_threshold": [0.2, 0.75], "iou_threshold": [0.3]})
    assert params == {"rel_threshold": 0.75, "iou_threshold": 0.3} and score == pytest.approx(1.0)
    with pytest.raises(ValueError, match="as many maps"):
        tune_box_params(heats, gts[:2], {"rel_threshold": [0.5]})
