"""Contract: every registered metric loss over a generic batch, in every dtype, with
separate references, with no valid pair, and under bf16 autocast."""
import inspect

import pytest
import torch

from metricvision.losses import LOSSES, MetricLoss, create_loss

C, D = 8, 16
# a negative pair alone is a valid pair for these: they are not zero without positives
NEGATIVE_TERMS = {"contrastive", "multi_similarity", "margin", "xbm"}


def build(name: str) -> MetricLoss:
    params = inspect.signature(LOSSES.get(name)).parameters
    kwargs = {k: v for k, v in (("num_classes", C), ("embedding_dim", D)) if k in params}
    return create_loss(name, **kwargs)


# distillation losses (student vs teacher scores, no labels) have their own contract
NAMES = [n for n in LOSSES.names() if isinstance(build(n), MetricLoss)]


def inputs(dtype=torch.float32, seed=0, distinct=False):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(C) if distinct else torch.arange(C).repeat_interleave(4)[torch.randperm(4 * C, generator=g)]
    return torch.randn(len(y), D, generator=g).to(dtype).requires_grad_(True), y


def check_finite(loss, x, *args):
    out = loss(x, *args)
    assert out.value.dim() == 0 and torch.isfinite(out.value), out.value
    assert all(isinstance(v, (int, float)) for v in out.logs.values())
    out.value.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    return out


def test_registry_is_covered():
    assert len(NAMES) >= 20 and "kd" not in NAMES


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_runs_in_every_dtype(name, dtype):
    loss = build(name).to(dtype)
    x, y = inputs(dtype)
    out = check_finite(loss, x, y)
    assert out.value.dtype == dtype and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_queries_and_references_are_different_sets(name):
    loss = build(name)
    x, y = inputs()
    r, ry = inputs(seed=1)
    q = x.detach()[:12].requires_grad_(True)
    out = check_finite(loss, q, y[:12], r.detach()[:20], ry[:20])
    assert out.value != 0


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_has_no_nan(name):
    loss = build(name)
    x, y = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        check_finite(loss, x, y)
        for p in loss.parameters():
            assert p.grad is None or torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_no_valid_pair_is_zero_with_gradient(name):
    loss = build(name)
    x, _ = inputs()
    out = check_finite(loss, x, torch.full((len(x),), -1))  # unlabeled: every pair ignored
    assert out.value == 0 and out.value.requires_grad
    x, y = inputs(distinct=True)  # no positive pair in the batch
    out = check_finite(loss, x, y)
    proxy_based = "num_classes" in inspect.signature(LOSSES.get(name)).parameters
    if name not in NEGATIVE_TERMS and not proxy_based:
        assert out.value == 0


@pytest.mark.parametrize("name", NAMES)
def test_accepts_a_miner(name):
    params = inspect.signature(LOSSES.get(name)).parameters
    if "miner" not in params:
        pytest.skip(f"{name} has no miner argument")
    kwargs = {k: v for k, v in (("num_classes", C), ("embedding_dim", D)) if k in params}
    loss = create_loss(name, miner="multi_similarity", **kwargs)
    x, y = inputs()
    check_finite(loss, x, y)
