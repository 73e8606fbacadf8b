import numpy as np
import pytest
import torch

from metricvision.kb.model import ImageTextModel, ModelCard
from metricvision.localization.detector import QueryDetector
from metricvision.localization.localizers import LOCALIZERS
from metricvision.localization.rescore import (FEATURES, ContextRescorer, context_features, cross_validated_ap,
                                               match_labels)
from metricvision.localization.train import save_detector


def test_context_features_follow_their_definitions():
    boxes = np.array([[0, 0, 10, 10], [2, 2, 8, 8], [50, 50, 70, 70], [0, 0, 10, 12]], np.float64)
    logp = np.log(np.array([0.9, 0.5, 0.8, 0.2]))
    cos = np.array([0.8, 0.7, 0.78, 0.1])
    keep = np.array([0, 2, 1])  # NMS kept these, best first; proposal 3 was suppressed
    base = np.array([0.5, 0.4, 0.1])
    f = dict(zip(FEATURES, context_features(boxes, logp, cos, keep, base, query_crowding=0.3).T))
    assert np.allclose(f["cos"], [0.8, 0.78, 0.7]) and np.allclose(f["rank"], [0, 1, 2])
    assert np.allclose(f["cos_to_best_kept"], [0, -0.02, -0.1]) and np.allclose(f["margin_to_runner_up"], [0.02, -0.02, -0.1])
    assert np.allclose(f["cos_to_best_all"], [0, -0.02, -0.1])
    assert np.allclose(f["cos_z"], (np.array([0.8, 0.78, 0.7]) - cos.mean()) / cos.std(), atol=1e-4)
    assert np.allclose(f["log_area_rel"], np.log(np.array([100, 400, 36]) / np.median([100, 36, 400, 120])))
    # box 1 (6 x 6) lies inside box 0, which ranks above it: IoU 0.36, all of it inside a better box
    assert np.allclose(f["iou_with_better"], [0, 0, 0.36]) and np.allclose(f["inside_better"], [0, 0, 1])
    assert np.allclose(f["contains_better"], [0, 0, 0.36])
    assert np.allclose(f["rivals"], [1, 1, 2]) and np.allclose(f["query_crowding"], 0.3)
    # box 0's cluster: itself and proposal 3 (IoU 100 / 120); box 1's: itself alone (IoU 0.36 with box 0)
    assert np.allclose(f["cluster_size"], [2, 1, 1]) and np.allclose(f["cluster_cos"], [0.45, 0.78, 0.7])
    assert np.allclose(f["cluster_logp"], np.log([0.9, 0.8, 0.5]))
    assert context_features(boxes, logp, cos, np.zeros(0, int), np.zeros(0)).shape == (0, len(FEATURES))


def test_match_labels_count_a_duplicate_and_a_loose_box_as_false():
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float64)
    kept = np.array([[0, 0, 10, 10], [0, 0, 10, 9], [20, 20, 26, 26], [21, 21, 30, 30]], np.float64)
    assert match_labels(kept, gt).tolist() == [True, False, False, True]
    assert match_labels(kept, np.zeros((0, 4))).tolist() == [False] * 4


def _miscalibrated_scenes(n=120, seed=0):
    """Scenes where each query's cosines carry a random offset: the true box is the image's best, but its absolute
    score is not comparable across queries (as with a query that resembles everything)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = 8
        xy = rng.uniform(0, 400, (k, 2))
        boxes = np.concatenate([xy, xy + 40], 1)
        cos = rng.uniform(0.2, 0.6, k) + rng.uniform(0, 0.4)  # the offset
        has_target = rng.random() < 0.7
        if has_target:
            cos[0] = cos.max() + 0.15
        keep = np.argsort(-cos)
        base = np.exp(10 * (cos[keep] - 1))
        gt = boxes[:1] if has_target else np.zeros((0, 4))
        feats = context_features(boxes, np.zeros(k), cos, keep, base)
        out.append((feats, match_labels(boxes[keep], gt), boxes[keep], base, gt))
    return out


def test_the_rescorer_learns_what_a_scores_place_in_its_image_says_and_cross_validation_shows_it():
    data = _miscalibrated_scenes()
    cv = cross_validated_ap(*[list(x) for x in zip(*data)])
    assert cv["rescored"] > cv["base"] + 0.1, cv
    model = ContextRescorer().fit([d[0] for d in data], [d[1] for d in data])
    test = _miscalibrated_scenes(seed=1)
    p = [model.score(d[0]) for d in test]
    assert all(((q >= 0) & (q <= 1)).all() for q in p)
    with pytest.raises(ValueError, match="true and false"):
        ContextRescorer().fit([d[0] for d in data], [np.zeros(len(d[1]), bool) for d in data])


@pytest.mark.parametrize("context", ["always", "auto", "never"])
def test_the_localizer_fits_its_context_rescorer_on_validation_images(context, tmp_path):
    model = ImageTextModel(ModelCard(backbone="mobilenet_v2", image_size=32))
    save_detector(QueryDetector(model.embedder, hidden=8), tmp_path / "det.safetensors")
    loc = LOCALIZERS.create("query_detector_model_crops", model=model, weights=str(tmp_path / "det.safetensors"),
                            proposals=10, max_boxes=5, context=context, vote=0.0)
    torch.manual_seed(0)
    images = [torch.rand(3, 96, 96) for _ in range(10)]
    prepared = [loc.prepare(im) for im in images]
    queries = torch.nn.functional.normalize(torch.randn(10, model.dim), dim=1)
    gt = [p[0][p[0][:, 0].argmin()][None].numpy() for p in prepared]  # a proposal of each image is its target
    chosen = loc.fit(prepared, queries, gt)
    assert (loc.context is not None) == chosen.get("context", False)
    if context != "never":
        assert set(chosen["context_cv_AP50"]) == {"base", "rescored"}
    if context == "always":
        out = loc.boxes(prepared[0], queries[:1])[0]
        assert np.all(np.diff(out[:, 4]) <= 0) and ((out[:, 4] >= 0) & (out[:, 4] <= 1)).all()
        assert set(map(tuple, out[:, :4])) <= set(map(tuple, prepared[0][0].numpy().astype(np.float64)))
    if context == "auto":  # val scenes without a target: nothing to learn, the base scores stay
        assert loc.fit(prepared, queries, [np.zeros((0, 4))] * len(prepared))["context"] is False and loc.context is None
    if context == "never":
        assert "context" not in chosen
    with pytest.raises(ValueError, match="context must be"):
        LOCALIZERS.create("query_detector_model_crops", model=model, weights=str(tmp_path / "det.safetensors"), context=True)
