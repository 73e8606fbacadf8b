"""Cross-batch memory: the queue itself, and any loss with memory vs pytorch-metric-learning's XBM."""
import sys
from pathlib import Path

import pytest
import torch
from pytorch_metric_learning import distances, losses as pml

sys.path.insert(0, str(Path(__file__).parent / "losses"))
from loss_helpers import batch  # noqa: E402

from metricvision.losses import create_loss  # noqa: E402
from metricvision.memory import CrossBatchMemory  # noqa: E402

COS = distances.CosineSimilarity


def test_queue_is_fifo_with_unique_ids():
    mem = CrossBatchMemory(size=5, dim=2)
    ids = [mem.enqueue(torch.full((2, 2), float(i)), torch.tensor([i, i])) for i in range(4)]
    assert len(mem) == 5
    emb, labels, held = mem.contents()
    assert sorted(held.tolist()) == [3, 4, 5, 6, 7]  # the two oldest batches were overwritten
    assert torch.equal(labels[held.argsort()], torch.tensor([1, 2, 2, 3, 3]))
    assert torch.equal(ids[3], torch.tensor([6, 7]))
    with pytest.raises(ValueError, match="does not fit"):
        mem.enqueue(torch.zeros(6, 2), torch.zeros(6))


@pytest.mark.parametrize(
    "name,kwargs,theirs",
    [
        ("contrastive", dict(pos_margin=1.0, neg_margin=0.5), lambda: pml.ContrastiveLoss(pos_margin=1.0, neg_margin=0.5, distance=COS())),
        ("multi_similarity", dict(), lambda: pml.MultiSimilarityLoss()),
        ("triplet", dict(margin=0.1), lambda: pml.TripletMarginLoss(margin=0.1, distance=COS())),
        ("ntxent", dict(temperature=0.1), lambda: pml.NTXentLoss(temperature=0.1)),
    ],
)
def test_memory_loss_matches_pml_cross_batch_memory(name, kwargs, theirs):
    """Three steps through a memory smaller than three batches (wraps around)."""
    ours = create_loss("xbm", loss=name, loss_kwargs=kwargs, memory_size=40, embedding_dim=16).double()
    ref = pml.CrossBatchMemory(theirs(), embedding_size=16, memory_size=40)
    for step in range(3):
        x, y = batch(n_classes=4, per_class=4, seed=10 + step)
        a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        va, vb = ours(a, y).value, ref(b, y)
        va.backward()
        vb.backward()
        torch.testing.assert_close(va, vb.double(), rtol=1e-6, atol=1e-12)
        scale = b.grad.abs().max()
        torch.testing.assert_close(a.grad / scale, b.grad / scale, rtol=1e-6, atol=1e-6)
    assert len(ours.memory) == 40


def test_proxies_and_memory_together():
    """A proxy loss with memory scores the batch against [proxies; memory]: the first
    call sees only the batch copy (self pairs ignored), later calls see past batches."""
    loss = create_loss("xbm", loss="normalized_softmax", loss_kwargs=dict(num_classes=4, embedding_dim=16),
                       memory_size=64, embedding_dim=16)
    x1, y1 = batch(n_classes=4, per_class=4, seed=1)
    x2, y2 = batch(n_classes=4, per_class=4, seed=2)
    alone = create_loss("normalized_softmax", num_classes=4, embedding_dim=16)
    alone.load_state_dict(loss.loss.state_dict())
    x1, x2 = x1.float(), x2.float()
    v1 = loss(x1, y1)
    assert v1.logs["memory_items"] == 16
    v2 = loss(x2.requires_grad_(True), y2)
    v2.value.backward()
    assert loss.loss.proxies.grad is not None and x2.grad.abs().sum() > 0
    assert not torch.isclose(v2.value, alone(x2, y2).value)
    assert loss.own_lr_parameters() == [loss.loss.proxies]


def test_image_text_contrastive_with_memory():
    """Queries (images) and references (texts) are different sets; memory adds past images."""
    loss = create_loss("xbm", loss="infonce", memory_size=32, embedding_dim=16)
    img, y = batch(n_classes=8, per_class=1, seed=3)
    txt, _ = batch(n_classes=8, per_class=1, seed=4)
    out = loss(img.float().requires_grad_(True), y, txt.float(), y)
    assert torch.isfinite(out.value) and out.logs["memory_items"] == 8
