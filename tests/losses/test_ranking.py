"""Ranking losses: FastAP and Smooth-AP against pytorch-metric-learning, Recall@k against a loop."""
import torch
from pytorch_metric_learning import losses as pml

from loss_helpers import assert_same, batch
from metricvision.losses import create_loss
from metricvision.similarity import relevance_from_labels, similarity


def test_fastap_matches_pml():
    x, y = batch(n_classes=5, per_class=4)
    for bins in (10, 4):
        ours, ref = create_loss("fastap", num_bins=bins), pml.FastAPLoss(num_bins=bins)
        assert_same(lambda e: ours(e, y).value, lambda e: ref(e, y), x)


def test_smooth_ap_matches_pml_when_the_query_ranks_itself():
    """PML ranks the query itself as a positive; with that relevance our compute() agrees.

    PML needs sorted labels and as many classes as samples per class.
    """
    x, _ = batch(n_classes=4, per_class=4)
    y = torch.arange(4).repeat_interleave(4)
    ours, ref = create_loss("smooth_ap", temperature=0.01), pml.SmoothAPLoss(temperature=0.01)
    rel = relevance_from_labels(y, y)
    # PML accumulates AP in a float32 buffer, hence the looser tolerance
    assert_same(lambda e: ours.compute(similarity(e, e), rel).value, lambda e: ref(e, y), x, rtol=2e-6)


def _smooth_rank(row, valid, p, tau):
    return 1 + sum(torch.sigmoid((row[k] - row[p]) / tau) for k in range(len(row)) if valid[k] and k != p)


def test_smooth_ap_and_recall_at_k_match_the_paper_loops():
    x, y = batch(n_classes=4, per_class=3, seed=5)
    r, ry = batch(n_classes=4, per_class=5, seed=6)
    S = similarity(x, r)
    rel = relevance_from_labels(y, ry)
    rel[0, :3] = -1  # ignored references are not ranked
    ap_loss, rk_loss = [], []
    ks, t1, t2 = (1, 2, 4), 0.05, 1.0
    for q in range(len(x)):
        valid, pos = rel[q] >= 0, (rel[q] == 1).nonzero().flatten().tolist()
        if not pos:
            continue
        pos_valid = rel[q] == 1
        ap = sum(_smooth_rank(S[q], pos_valid, p, 0.01) / _smooth_rank(S[q], valid, p, 0.01) for p in pos) / len(pos)
        ap_loss.append(1 - ap)
        ranks = [_smooth_rank(S[q], valid, p, t1) for p in pos]
        rk_loss.append(
            sum(1 - sum(torch.sigmoid((k - rk) / t2) for rk in ranks) / min(k, len(pos)) for k in ks) / len(ks)
        )
    smooth = create_loss("smooth_ap", temperature=0.01).compute(S, rel).value
    recall = create_loss("recall_at_k", ks=ks, temperature_rank=t1, temperature_k=t2).compute(S, rel).value
    torch.testing.assert_close(smooth, torch.stack(ap_loss).mean())
    torch.testing.assert_close(recall, torch.stack(rk_loss).mean())


def test_smooth_ap_chunks_equal_one_pass(monkeypatch):
    import metricvision.losses.ranking as ranking

    x, y = batch(n_classes=6, per_class=4)
    full = create_loss("smooth_ap")(x, y).value
    monkeypatch.setattr(ranking, "_CHUNK_ELEMENTS", 50)
    torch.testing.assert_close(create_loss("smooth_ap")(x, y).value, full)


def test_ranking_losses_prefer_the_right_order():
    """A row whose positives come first scores a lower loss than the reversed row."""
    y = torch.tensor([0, 0, 1, 1, 1])
    good = torch.tensor([[1.0, 0.9, 0.1, 0.0, -0.1]])
    rel = relevance_from_labels(torch.tensor([0]), y)
    for name in ("fastap", "smooth_ap", "recall_at_k"):
        loss = create_loss(name)
        assert loss.compute(good, rel).value < loss.compute(-good, rel).value, name
