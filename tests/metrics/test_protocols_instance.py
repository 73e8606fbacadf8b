"""Revisited Oxford/Paris and re-ID against ports of revisitop's compute_map and torchreid's eval_market1501."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metricvision.data.sample import Sample
from metricvision.metrics import PROTOCOLS, average_precision, mean_average_precision, reid_scores, revisited_scores
from metric_references import ref_compute_map, ref_eval_market1501


def test_ap_junk_before_positive_hand_worked():
    # ranking: junk, pos, neg, pos -> positives at 0 and 2 once the junk is discounted
    ap, adjusted = average_precision(np.array([1, 3]), np.array([0]), 2)
    assert list(adjusted) == [0, 2]
    assert ap == pytest.approx((1 + 1) / 2 / 2 + (1 / 2 + 2 / 3) / 2 / 2)
    # a query whose positives are all junk in this setup has no positives: left out
    out = mean_average_precision([np.array([], int), np.array([0])], [np.array([3]), np.array([], int)])
    assert out["map"] == 1.0 and out["mp@5"] == 1.0


def test_revisited_matches_revisitop_reference():
    rng = np.random.default_rng(0)
    nq, ndb, dim = 6, 60, 8
    q, db = F.normalize(torch.randn(nq, dim), dim=1), F.normalize(torch.randn(ndb, dim), dim=1)
    gnd = []
    for i in range(nq):
        perm = rng.permutation(ndb)
        gnd.append({"easy": list(perm[:4]), "hard": list(perm[4:4 + (i % 3)]), "junk": list(perm[8:12])})
    ours = revisited_scores(q, db, gnd)
    ranks = np.argsort(-(db @ q.T).numpy(), axis=0, kind="stable")
    for setup, ok, junk in (("easy", ("easy",), ("junk", "hard")), ("medium", ("easy", "hard"), ("junk",)), ("hard", ("hard",), ("junk", "easy"))):
        g = [{"ok": sum((x[k] for k in ok), []), "junk": sum((x[k] for k in junk), [])} for x in gnd]
        m, pr = ref_compute_map(ranks.copy(), g)
        assert ours[f"{setup}_map"] == pytest.approx(m)
        assert [ours[f"{setup}_mp@{k}"] for k in (1, 5, 10)] == pytest.approx(list(pr))


def colour(value: float, size: int = 8) -> np.ndarray:
    return np.full((size, size, 3), value, np.uint8)


def mean_colour_embed(samples):
    x = torch.tensor(np.stack([np.asarray(s.image, np.float32).reshape(-1, 3).mean(0) for s in samples]))
    return F.normalize(torch.stack([x[:, 0], 255 - x[:, 0]], 1), dim=1)


def test_revisited_protocol_crops_queries_to_their_box():
    db = [Sample(colour(v), split="db") for v in (20, 200, 120)]
    q_image = colour(20)
    q_image[:, 4:] = 200  # the box (right half) shows image 1; the whole query looks like image 2
    query = Sample(q_image, bbox=(4, 0, 8, 8), meta={"easy": [1], "hard": [], "junk": []})
    with pytest.warns(UserWarning, match="revisited hard: no query has a positive"):
        out = PROTOCOLS.get("roxford5k")(mean_colour_embed, {"query": [query], "db": db})
    assert out["easy_map"] == 1.0 and out["medium_mp@1"] == 1.0
    assert np.isnan(out["hard_map"]) and np.isnan(out["hard_mp@5"])  # no hard positive: undefined, not 0


def test_reid_matches_torchreid_reference():
    rng = np.random.default_rng(1)
    nq, ng = 40, 300
    q, g = F.normalize(torch.randn(nq, 8), dim=1), F.normalize(torch.randn(ng, 8), dim=1)
    g[10] = g[11]  # a tie
    qp, gp = rng.integers(0, 10, nq), rng.integers(0, 10, ng)
    qc, gc = rng.integers(0, 3, nq), rng.integers(0, 3, ng)
    qp[0], gp[gp == 0], qc[0] = 0, 1, 0
    gp[:2], gc[:2] = 0, 0  # query 0's only matches share its camera: left out
    ours = reid_scores(q, qp, qc, g, gp, gc, query_chunk=7)
    cmc, m, valid = ref_eval_market1501(-(q @ g.T).numpy(), qp, gp, qc, gc)
    assert ours["map"] == pytest.approx(m, abs=1e-6)
    assert [ours[f"rank{r}"] for r in (1, 5, 10, 20)] == pytest.approx([cmc[r - 1] for r in (1, 5, 10, 20)], abs=1e-6)
    assert ours["num_queries"] == valid < nq


def test_reid_same_camera_match_removed_hand_worked():
    q = torch.tensor([[1.0, 0.0]])
    g = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=1)
    # gallery 0: same person, same camera (removed); gallery 1: other person; gallery 2: same person, other camera
    out = reid_scores(q, np.array([5]), np.array([0]), g, np.array([5, 7, 5]), np.array([0, 1, 1]))
    assert out["rank1"] == 0.0 and out["rank5"] == 1.0 and out["map"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no query has a gallery match"):
        reid_scores(q, np.array([5]), np.array([0]), g[:1], np.array([5]), np.array([0]))


def test_reid_protocol_keeps_distractors():
    vecs = {"q": [1.0, 0.0], "d": [0.99, 0.14], "g": [0.9, 0.43]}
    embed = lambda ss: F.normalize(torch.tensor([vecs[s.meta["k"]] for s in ss]), dim=1)  # noqa: E731
    splits = {"query": [Sample("q.jpg", label=3, camera=0, meta={"k": "q"})],
              "gallery": [Sample("d.jpg", label=0, camera=1, meta={"k": "d"}), Sample("g.jpg", label=3, camera=1, meta={"k": "g"})]}
    out = PROTOCOLS.get("market1501")(embed, splits)
    assert out["rank1"] == 0.0 and out["map"] == pytest.approx(0.5)
