"""The TIDE-style error breakdown on a hand-made case whose AP50 values are worked out by hand."""
import numpy as np
import pytest

from metricvision.metrics.detection_errors import detection_errors

T1, T2, T3 = [0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 20, 20]
O1 = [20, 0, 30, 10]
# image 0: targets T1, T2, another object O1; image 1: target T3, never detected
DETS = np.array([
    [0, 0, 10, 10],    # 0.9 on T1: true positive
    [0, 0, 10, 11],    # 0.8 on T1 again: duplicate
    [20, 0, 30, 10],   # 0.7 on O1: wrong object (cls)
    [55, 55, 65, 65],  # 0.6 IoU 25/175 with T2: localization
    [80, 80, 90, 90],  # 0.5 nothing: background
    [25, 0, 35, 10],   # 0.4 IoU 50/150 with O1: both
], float)
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])


def breakdown():
    return detection_errors([DETS, np.zeros((0, 4))], [SCORES, np.zeros(0)], [np.array([T1, T2], float), np.array([T3], float)],
                            [np.array([O1], float), np.zeros((0, 4))])


def test_each_detection_gets_its_type_and_each_fix_its_ap():
    out = breakdown()
    assert out["count"] == {"cls": 1, "loc": 1, "both": 1, "dupe": 1, "bkg": 1, "miss": 1}  # T3; T2 is boxed badly (loc)
    # 3 targets, one true positive ranked first: precision 1 up to recall 1/3 (34 of 101 recall points)
    assert out["AP50"] == pytest.approx(34 / 101)
    d = out["dAP"]
    # loc fixed: T2 found at rank 4 -> precision 1/2 on recall (1/3, 2/3] (33 points)
    assert d["loc"] == pytest.approx((34 + 33 * 0.5) / 101 - 34 / 101)
    # the other false positives come after the only true positive: dropping them changes nothing
    assert d["cls"] == d["dupe"] == d["bkg"] == d["both"] == pytest.approx(0.0)
    # missed targets removed: 1 of 2 found, precision 1 up to recall 1/2 (51 points)
    assert d["miss"] == pytest.approx(51 / 101 - 34 / 101)


def test_false_positives_ranked_first_cost_what_dropping_them_gives_back():
    scores = SCORES[::-1].copy()
    out = detection_errors([DETS], [scores], [np.array([T1, T2], float)], [np.array([O1], float)])
    # the near-copy of T1 (IoU 0.91) now matches it, at rank 5: precision 1/5 at recall 1/2 (51 points), and the exact
    # box ranks last as its duplicate; dropping one type of false positive ranked before it makes the precision 1/4
    assert out["AP50"] == pytest.approx(51 / 101 / 5)
    for kind in ("cls", "dupe", "bkg", "both"):
        expected = 51 / 101 / 4 - 51 / 101 / 5 if kind != "dupe" else 0.0
        assert out["dAP"][kind] == pytest.approx(expected), kind


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="one entry per image"):
        detection_errors([DETS], [SCORES], [], [])
    with pytest.raises(ValueError, match="t_b < t_f"):
        detection_errors([DETS], [SCORES], [np.array([T1], float)], [np.zeros((0, 4))], t_f=0.1, t_b=0.5)
