"""Classification and proxy losses against pytorch-metric-learning 2.9.0 with the same weights, float64."""
import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml

from loss_helpers import assert_same, batch
from metricvision.losses import create_loss

C, D = 6, 16


def _copy(ours, theirs, attr: str, transpose: bool) -> None:
    ours.double()
    theirs.double()
    w = getattr(theirs, attr)
    with torch.no_grad():
        w.copy_(ours.proxies.T if transpose else ours.proxies)


CASES = [
    ("normalized_softmax", dict(temperature=0.05), lambda: pml.NormalizedSoftmaxLoss(C, D, temperature=0.05), "W", True),
    ("cosface", dict(margin=0.35, scale=64.0), lambda: pml.CosFaceLoss(C, D, margin=0.35, scale=64), "W", True),
    ("arcface", dict(margin=0.5, scale=64.0), lambda: pml.ArcFaceLoss(C, D, margin=math.degrees(0.5), scale=64), "W", True),
    ("arcface", dict(margin=0.2, scale=30.0), lambda: pml.ArcFaceLoss(C, D, margin=math.degrees(0.2), scale=30), "W", True),
    (
        "subcenter_arcface",
        dict(margin=0.5, scale=64.0, centers_per_class=3),
        lambda: pml.SubCenterArcFaceLoss(num_classes=C, embedding_size=D, margin=math.degrees(0.5), scale=64, sub_centers=3),
        "W",
        True,
    ),
    (
        "soft_triple",
        dict(centers_per_class=10, la=20.0, gamma=0.1, margin=0.01),
        lambda: pml.SoftTripleLoss(C, D, centers_per_class=10, la=20, gamma=0.1, margin=0.01),
        "fc",
        True,
    ),
    ("proxy_nca", dict(softmax_scale=1.0), lambda: pml.ProxyNCALoss(C, D, softmax_scale=1), "proxies", False),
    ("proxy_nca_pp", dict(temperature=1 / 9), lambda: pml.ProxyNCALoss(C, D, softmax_scale=9), "proxies", False),
    ("proxy_anchor", dict(alpha=32.0, margin=0.1), lambda: pml.ProxyAnchorLoss(C, D, alpha=32, margin=0.1), "proxies", False),
    ("proxy_anchor", dict(alpha=16.0, margin=0.2), lambda: pml.ProxyAnchorLoss(C, D, alpha=16, margin=0.2), "proxies", False),
]


@pytest.mark.parametrize("name,kwargs,theirs,attr,transpose", CASES)
def test_values_and_gradients(name, kwargs, theirs, attr, transpose):
    torch.manual_seed(0)
    x, y = batch(n_classes=C)
    ours, ref = create_loss(name, num_classes=C, embedding_dim=D, **kwargs), theirs()
    _copy(ours, ref, attr, transpose)
    assert_same(lambda e: ours(e, y).value, lambda e: ref(e, y), x)
    ours.zero_grad()
    ref.zero_grad()
    ours(x, y).value.backward()
    ref(x, y).backward()
    ref_grad = getattr(ref, attr).grad
    torch.testing.assert_close(ours.proxies.grad, ref_grad.T if transpose else ref_grad, rtol=1e-6, atol=1e-9)


def test_arcface_fallback_beyond_pi_minus_margin():
    """With theta > pi - m the target logit is cos(theta) - m sin(m) (PML and insightface)."""
    loss = create_loss("arcface", num_classes=2, embedding_dim=2, margin=0.5, scale=1.0).double()
    with torch.no_grad():
        loss.proxies.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    theta = math.pi - 0.2
    x = torch.tensor([[math.cos(theta), math.sin(theta)]], dtype=torch.float64)
    target = math.cos(theta) - 0.5 * math.sin(0.5)
    other = math.cos(theta - math.pi / 2)
    expected = -F.log_softmax(torch.tensor([target, other]), 0)[0]
    torch.testing.assert_close(loss(x, torch.tensor([0])).value, expected.double())


def test_softmax_is_cross_entropy_over_dot_products():
    x, y = batch(n_classes=C)
    loss = create_loss("softmax", num_classes=C, embedding_dim=D).double()
    assert_same(lambda e: loss(e, y).value, lambda e: F.cross_entropy(e @ loss.proxies.T.detach(), y), x)


def test_proxies_are_own_lr_parameters():
    for name in ("arcface", "soft_triple", "proxy_anchor", "normalized_softmax"):
        loss = create_loss(name, num_classes=C, embedding_dim=D)
        assert [p is loss.proxies for p in loss.own_lr_parameters()] == [True]


def test_soft_triple_regulariser_matches_the_paper_loop():
    loss = create_loss("soft_triple", num_classes=3, embedding_dim=D, centers_per_class=4, tau=0.2).double()
    w = F.normalize(loss.proxies.detach(), dim=1).view(3, 4, D)
    total = sum(
        math.sqrt(2 + 1e-10 - 2 * float(w[c, t] @ w[c, s])) for c in range(3) for t in range(4) for s in range(t + 1, 4)
    )
    torch.testing.assert_close(loss._spread().detach(), torch.tensor(total / (3 * 4 * 3), dtype=torch.float64))
