import numpy as np
import pytest
import torch

from metricvision.kb.model import ImageTextModel, ModelCard
from metricvision.localization.detector import QueryDetector
from metricvision.localization.localizers import LOCALIZERS
from metricvision.localization.train import save_detector
from metricvision.metrics.detection import detection_ap, pairwise_iou


@pytest.fixture(scope="module")
def make(tmp_path_factory):
    model = ImageTextModel(ModelCard(backbone="mobilenet_v2", image_size=32))
    weights = tmp_path_factory.mktemp("vote") / "det.safetensors"
    save_detector(QueryDetector(model.embedder, hidden=8), weights)

    def create(**kw):
        return LOCALIZERS.create("query_detector_model_crops", model=model, weights=str(weights), **kw)
    return model, create


def _prepared(model, query, boxes, objectness, cosines):
    """A hand-made ``prepare`` output: proposals, their objectness log-probabilities and crops whose cosine with the
    (D,) unit query is as given."""
    other = torch.nn.functional.normalize(torch.randn(model.dim) - (torch.randn(model.dim) @ query) * query, dim=0)
    other = torch.nn.functional.normalize(other - (other @ query) * query, dim=0)
    cos = torch.tensor(cosines)
    emb = cos[:, None] * query[None] + (1 - cos[:, None] ** 2).sqrt() * other[None]
    return torch.tensor(boxes, dtype=torch.float32), torch.log(torch.tensor(objectness)), emb[None]


def test_voted_boxes_are_the_score_weighted_means_of_their_neighbours(make):
    model, create = make
    loc = create(vote=0.5, gamma=2.0)
    torch.manual_seed(0)
    boxes = torch.tensor([[10, 10, 50, 50], [14, 12, 52, 50], [8, 10, 46, 54], [30, 30, 70, 70], [100, 100, 140, 150.0]])
    logp, cos = torch.log(torch.tensor([0.9, 0.6, 0.7, 0.8, 0.5])), torch.tensor([0.9, 0.8, 0.85, 0.3, 0.7])
    keep = torch.tensor([0, 4, 3])
    got = loc.voted(boxes, logp, cos, keep).numpy()
    score = np.exp(2.0 * logp.numpy() + 10.0 * (cos.numpy() - 1))  # the localizer's own score of every proposal
    iou = pairwise_iou(boxes.numpy().astype(np.float64), boxes.numpy().astype(np.float64))
    for row, k in zip(got, keep.tolist()):
        near = np.flatnonzero(iou[k] >= 0.5)
        expected = (score[near, None] * boxes.numpy()[near]).sum(0) / score[near].sum()
        assert np.allclose(row, expected, atol=1e-4)
    assert np.allclose(got[1], boxes[4].numpy())  # alone in its neighbourhood: unchanged
    assert not np.allclose(got[0], boxes[0].numpy())
    off = create(vote=0.0, gamma=2.0)
    assert torch.equal(off.voted(boxes, logp, cos, keep), boxes[keep])
    # tiny objectness on every neighbour: the weights are computed from log-scores and do not underflow to 0/0
    assert torch.isfinite(loc.voted(boxes, torch.full((5,), -200.0), cos, keep)).all()


def test_fit_chooses_voting_when_the_best_box_is_off_target_and_its_neighbours_surround_the_target(make):
    model, create = make
    torch.manual_seed(0)
    query = torch.nn.functional.normalize(torch.randn(model.dim), dim=0)
    prepared, gt = [], []
    for i in range(6):  # the best-scoring proposal is shifted 14 px right (IoU 0.48), two weaker ones 2 px
        x, y = 20.0 + 30 * i, 40.0
        gt.append(np.array([[x, y, x + 40, y + 40]]))
        boxes = [[x + 14, y, x + 54, y + 40], [x + 2, y, x + 42, y + 40], [x + 2, y + 2, x + 42, y + 42], [300, 300, 340, 340]]
        prepared.append(_prepared(model, query, boxes, [0.9, 0.8, 0.8, 0.9], [0.9, 0.88, 0.88, 0.2]))
    queries = query[None].repeat(6, 1)
    loc = create(nms_iou=0.3, gamma=1.0)
    assert loc.vote == 0.0  # off until fit chooses it
    before = [loc.boxes(p, q[None])[0] for p, q in zip(prepared, queries)]
    chosen = loc.fit(prepared, queries, gt)
    assert chosen["vote"] in (0.4, 0.5) and loc.vote == chosen["vote"]
    after = [loc.boxes(p, q[None])[0] for p, q in zip(prepared, queries)]
    ap = [detection_ap([f[:, :4] for f in found], [f[:, 4] for f in found], gt)["AP50"] for found in (before, after)]
    assert ap[0] < 0.5 < ap[1], ap
    loc.vote = 0.0  # the chosen gamma and NMS threshold without voting: the same scores, other boxes
    plain = [loc.boxes(p, q[None])[0] for p, q in zip(prepared, queries)]
    assert all(np.array_equal(a[:, 4], b[:, 4]) and not np.allclose(a[:, :4], b[:, :4]) for a, b in zip(plain, after))
    given = create(nms_iou=0.3, gamma=1.0, vote=0.0)
    assert "vote" not in given.fit(prepared, queries, gt) and given.vote == 0.0


def test_a_vote_threshold_outside_zero_to_one_is_refused(make):
    _, create = make
    with pytest.raises(ValueError, match="vote must be an IoU threshold in \\[0, 1\\].*1.5"):
        create(vote=1.5)
