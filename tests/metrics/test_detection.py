import contextlib
import io
import math

import numpy as np
import pytest

from metricvision.metrics.detection import bootstrap_ap, detection_ap, pairwise_iou, pointing_game

pycocotools = pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402


def coco_reference(pred_boxes, pred_scores, gt_boxes, pred_labels=None, gt_labels=None, gt_areas=None):
    """AP, AP50, AP75, small/medium/large from pycocotools' COCOeval (boxes as x0 y0 x1 y1)."""
    cats = set()
    images, anns, dets = [], [], []
    for i, gts in enumerate(gt_boxes):
        images.append({"id": i + 1, "width": 1000, "height": 1000})
        for j, b in enumerate(np.asarray(gts, float).reshape(-1, 4)):
            c = 1 if gt_labels is None else int(gt_labels[i][j])
            area = (b[2] - b[0]) * (b[3] - b[1]) if gt_areas is None else float(gt_areas[i][j])
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": c, "iscrowd": 0, "area": float(area),
                         "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
            cats.add(c)
        for j, (b, s) in enumerate(zip(np.asarray(pred_boxes[i], float).reshape(-1, 4), pred_scores[i])):
            c = 1 if pred_labels is None else int(pred_labels[i][j])
            dets.append({"image_id": i + 1, "category_id": c, "score": float(s),
                         "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
            cats.add(c)
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": c, "name": str(c)} for c in sorted(cats)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return dict(zip(["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"], ev.stats[:6].tolist()))


def ours(pb, ps, gb, pl=None, gl=None, ga=None):
    if pl is not None:  # our labels start anywhere; COCO's category ids are what the reference got
        pl = [np.asarray(x) for x in pl]
    return detection_ap(pb, ps, gb, pl, gl, ga)


def random_case(seed, n_images=6, n_cats=1, ties=False):
    rng = np.random.default_rng(seed)
    pb, ps, pl, gb, gl = [], [], [], [], []
    for i in range(n_images):
        m = int(rng.integers(0, 5))
        xy = rng.uniform(0, 300, (m, 2))
        wh = rng.uniform(8, 200, (m, 2))
        g = np.hstack([xy, xy + wh])
        dets = []
        for b in g:  # jittered copies of the ground truth, some twice
            for _ in range(int(rng.integers(0, 3))):
                dets.append(b + rng.normal(0, 0.12 * (b[2] - b[0]), 4))
        for _ in range(int(rng.integers(0, 4))):  # pure false positives
            x, y = rng.uniform(0, 300, 2)
            w, h = rng.uniform(8, 200, 2)
            dets.append(np.array([x, y, x + w, y + h]))
        d = np.array(dets).reshape(-1, 4)
        d[:, 2:] = np.maximum(d[:, 2:], d[:, :2] + 1)
        s = rng.integers(0, 3, len(d)).astype(float) / 2 if ties else rng.random(len(d))
        gb.append(g)
        gl.append(rng.integers(1, n_cats + 1, m))
        pb.append(d)
        ps.append(s)
        pl.append(rng.integers(1, n_cats + 1, len(d)))
    return pb, ps, pl, gb, gl


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n_cats,ties", [(1, False), (1, True), (3, False), (3, True)])
def test_equals_pycocotools_on_random_cases(seed, n_cats, ties):
    pb, ps, pl, gb, gl = random_case(seed, n_cats=n_cats, ties=ties)
    if not sum(len(p) for p in pb):
        pytest.skip("pycocotools cannot load an empty result list")
    ref = coco_reference(pb, ps, gb, pl, gl)
    got = ours(pb, ps, gb, pl, gl)
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


@pytest.mark.parametrize("ties", [False, True])
def test_bootstrap_equals_detection_ap_on_each_resample(ties):
    pb, ps, _, gb, _ = random_case(7, n_images=8, ties=ties)
    got = bootstrap_ap(pb, ps, gb, n_boot=6, seed=3)
    rng = np.random.default_rng(3)  # the resamples the docstring promises: n images drawn with replacement per round
    for r in range(6):
        idx = rng.integers(0, len(gb), len(gb))
        ref = detection_ap([pb[i] for i in idx], [ps[i] for i in idx], [gb[i] for i in idx])
        assert (got["AP50"][r], got["AP"][r]) == pytest.approx((ref["AP50"], ref["AP"]), abs=1e-12)
    assert np.ptp(got["AP50"]) > 0  # the resamples differ


def test_bootstrap_pairs_methods_and_checks_input():
    pb, _, _, gb, _ = random_case(1, n_images=12)
    ps = [pairwise_iou(p, g).max(1, initial=0.0) for p, g in zip(pb, gb)]  # a good ranking: true positives first
    a = bootstrap_ap(pb, ps, gb, n_boot=50, seed=0)
    b = bootstrap_ap(pb, [-s for s in ps], gb, n_boot=50, seed=0)  # the same resamples, the ranking reversed
    assert np.array_equal(a["AP50"], bootstrap_ap(pb, ps, gb, n_boot=50, seed=0)["AP50"])
    assert (a["AP50"] >= b["AP50"]).mean() > 0.9
    with pytest.raises(ValueError, match="one entry per image"):
        bootstrap_ap(pb[:-1], ps, gb)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ap(pb, ps, gb, n_boot=0)
    no_targets = bootstrap_ap([np.array([[0, 0, 5, 5]])], [np.ones(1)], [np.zeros((0, 4))], n_boot=3)
    assert np.isnan(no_targets["AP50"]).all() and np.isnan(no_targets["AP"]).all()


def test_hand_made_case():
    gt = [np.array([[0, 0, 10, 10], [20, 20, 40, 40]]), np.array([[0, 0, 100, 100]]), np.zeros((0, 4))]
    det = [np.array([[0, 0, 10, 10], [21, 21, 40, 40], [50, 50, 60, 60]]), np.zeros((0, 4)),
           np.array([[5, 5, 15, 15]])]
    score = [np.array([0.9, 0.8, 0.95]), np.zeros(0), np.array([0.85])]
    got = detection_ap(det, score, gt)
    # ranked: fp (0.95), tp (0.9), fp (0.85), tp at IoU 0.9025 (0.8); three ground truths
    pr50 = np.zeros(101)
    pr50[:34] = 0.5  # recall 1/3 and 2/3 reached at precision 1/2
    pr50[34:67] = 0.5
    assert got["AP50"] == pytest.approx(pr50.mean())
    assert got == pytest.approx(coco_reference(det, score, gt), abs=1e-12)


def test_edge_cases():
    gt = [np.array([[0, 0, 10, 10]])]
    assert detection_ap([np.zeros((0, 4))], [np.zeros(0)], gt)["AP"] == 0.0
    assert detection_ap([np.array([[0, 0, 10, 10]])], [np.array([1.0])], gt)["AP"] == pytest.approx(1.0)
    assert detection_ap([np.array([[0, 0, 10, 10]])], [np.array([1.0])], [np.zeros((0, 4))])["AP"] == -1.0
    # a counted ground truth beats an ignored (large) one for the same detection
    areas = [np.array([100.0, 1e9])]
    two = [np.array([[0, 0, 10, 10], [0, 0, 10, 10]])]
    assert detection_ap([np.array([[0, 0, 10, 10]])], [np.array([1.0])], two, gt_areas=areas)["AP_small"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one entry per image"):
        detection_ap([], [], gt)
    with pytest.raises(ValueError, match="disagree in length"):
        detection_ap([np.zeros((2, 4))], [np.zeros(1)], gt)
    assert pairwise_iou(np.array([[0, 0, 2, 2]]), np.array([[1, 1, 3, 3]]))[0, 0] == pytest.approx(1 / 7)


def test_mask_areas_decide_the_size_range():
    gt = [np.array([[0, 0, 40, 40], [100, 100, 110, 110]])]
    det = [np.array([[0, 0, 40, 40], [100, 100, 110, 110]])]
    areas = [np.array([30.0 * 30, 100.0])]  # the first object's mask is small though its box is medium
    got = detection_ap(det, [np.array([0.9, 0.8])], gt, gt_areas=areas)
    ref = coco_reference(det, [np.array([0.9, 0.8])], gt, gt_areas=areas)
    assert got == pytest.approx(ref, abs=1e-12)
    assert got["AP_small"] == pytest.approx(1.0) and got["AP_medium"] == -1.0


def test_pointing_game_equals_a_pixel_loop():
    rng = np.random.default_rng(0)
    masks, points, hits, counted, tol = [], [], 0, 0, 2.0
    for i in range(30):
        m = np.zeros((int(rng.integers(0, 3)), 20, 24), bool)
        for k in range(len(m)):
            y, x = rng.integers(0, 16), rng.integers(0, 20)
            m[k, y : y + int(rng.integers(1, 5)), x : x + int(rng.integers(1, 5))] = True
        point = None if i % 7 == 0 else (float(rng.uniform(0, 24)), float(rng.uniform(0, 20)))
        masks.append(m)
        points.append(point)
        if m.any():
            counted += 1
            near = [math.dist(point, (min(max(point[0], x), x + 1), min(max(point[1], y), y + 1))) <= tol
                    for y in range(20) for x in range(24) if m[:, y, x].any()] if point is not None else [False]
            hits += any(near)
    got = pointing_game(points, masks, tolerance=tol)
    one = np.zeros((1, 5, 6), bool)
    one[0, 2, 3] = True  # the pixel [3, 4) x [2, 3)
    assert pointing_game([(3.5, 2.2), (4.1, 2.5), (4.1, 2.5)], [one, one, one], tolerance=0.0)["pointing"] == pytest.approx(1 / 3)
    assert pointing_game([(4.1, 2.5)], [one], tolerance=0.1)["pointing"] == 1.0
    assert 0 < hits < counted and got == {"pointing": hits / counted, "images": counted}
    assert pointing_game([None], [np.zeros((0, 5, 5), bool)])["pointing"] == -1.0
    with pytest.raises(ValueError, match="one point per image"):
        pointing_game([None], [])
