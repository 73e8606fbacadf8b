import math

import pytest
import torch
import torch.nn.functional as F

from metricvision.losses import LOSSES, create_loss
from metricvision.losses.distillation import _angles, _distances


def _emb(n=12, d=6, seed=0):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


@pytest.mark.parametrize("name", ["kd", "rkd_distance", "rkd_angle", "rank_distillation"])
def test_zero_when_student_equals_teacher(name):
    t = _emb()
    loss = create_loss(name)
    assert float(loss(t.clone().requires_grad_(), t).value) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", ["kd", "rkd_distance", "rkd_angle", "rank_distillation"])
def test_positive_and_differentiable_when_different(name):
    t, s = _emb(seed=0), _emb(seed=1).requires_grad_()
    out = create_loss(name)(s, t)
    assert float(out.value) > 1e-4
    out.value.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_registered():
    for name in ["kd", "rkd_distance", "rkd_angle", "rank_distillation"]:
        assert name in LOSSES


def test_rkd_is_invariant_to_scale_and_rotation():
    t = torch.randn(10, 4, generator=torch.Generator().manual_seed(3))
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(4)))
    s = 3.0 * t @ q
    for name in ["rkd_distance", "rkd_angle"]:
        assert float(create_loss(name)(s, t).value) == pytest.approx(0.0, abs=1e-5)


def test_distances_and_angles_from_gram_match_loop():
    e = torch.randn(5, 3, generator=torch.Generator().manual_seed(5)).double()
    G = e @ e.T
    assert torch.allclose(_distances(G), torch.cdist(e, e), atol=1e-6)
    A = _angles(G)
    for i, j, k in [(0, 1, 2), (3, 0, 4), (2, 4, 1)]:
        u, v = e[i] - e[j], e[k] - e[j]
        assert float(A[i, j, k]) == pytest.approx(float(u @ v / (u.norm() * v.norm())), abs=1e-6)


def test_kd_matches_hinton_formula_on_logits():
    s = torch.randn(4, 5, generator=torch.Generator().manual_seed(6))
    t = torch.randn(4, 5, generator=torch.Generator().manual_seed(7))
    loss = create_loss("kd", temperature=2.0, scale=1.0)
    ref = F.kl_div(F.log_softmax(s / 2, 1), F.softmax(t / 2, 1), reduction="batchmean") * 4
    assert float(loss.compute(s, t).value) == pytest.approx(float(ref), rel=1e-5)


def test_rank_distillation_matches_plackett_luce_loop():
    s = torch.randn(3, 6, generator=torch.Generator().manual_seed(8)).double()
    t = torch.randn(3, 6, generator=torch.Generator().manual_seed(9)).double()
    loss = create_loss("rank_distillation", k=3, beta=2.0)

    def nll(scores, order):
        total = 0.0
        remaining = list(range(6))
        for m in order:
            total += math.log(sum(math.exp(2.0 * scores[r]) for r in remaining)) - 2.0 * scores[m]
            remaining.remove(m)
        return total

    ref = 0.0
    for i in range(3):
        order = t[i].topk(3).indices.tolist()
        ref += max(0.0, nll(s[i].tolist(), order) - nll(t[i].tolist(), order))
    assert float(loss.compute(s, t).value) == pytest.approx(ref / 3 / 3, rel=1e-6)


def test_rank_distillation_zero_for_monotone_student_ranking_more_confidently():
    t = torch.randn(4, 7, generator=torch.Generator().manual_seed(10))
    loss = create_loss("rank_distillation", k=4)
    assert float(loss.compute(3 * t, t).value) == 0.0
    assert float(loss.compute(-t, t).value) > 0.0


def test_different_dimensions_and_errors():
    out = create_loss("rkd_angle")(_emb(8, 3), _emb(8, 16))
    assert torch.isfinite(out.value)
    with pytest.raises(ValueError, match="batches differ"):
        create_loss("kd")(_emb(4), _emb(5))
    with pytest.raises(ValueError, match="must be 'dot'"):
        create_loss("rkd_distance", similarity_kind="cosine")
    with pytest.raises(ValueError, match="temperature"):
        create_loss("kd", temperature=0)


def test_tiny_batches_give_zero_with_graph():
    for name in ["rkd_distance", "rkd_angle", "rank_distillation"]:
        s = _emb(1).requires_grad_()
        out = create_loss(name)(s, _emb(1))
        out.value.backward()
        assert float(out.value) == 0.0


def test_embedding_distillation_is_the_mean_squared_distance():
    s, t = _emb(6, seed=1), _emb(6, seed=2)
    s.requires_grad_(True)
    out = create_loss("embedding_distillation")(s, t)
    assert torch.isclose(out.value, sum(((a - b) ** 2).sum() for a, b in zip(s, t)) / 6)
    out.value.backward()
    assert s.grad.abs().sum() > 0 and create_loss("embedding_distillation")(t, t).value == 0
    with pytest.raises(ValueError, match="one shape, got student \\(6, 8\\) and teacher \\(6, 4\\)"):
        create_loss("embedding_distillation")(torch.zeros(6, 8), torch.zeros(6, 4))
