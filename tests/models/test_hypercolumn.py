"""Hypercolumn taps of the Embedder: against a plain loop over the backbone's layers."""
import pytest
import torch
import torch.nn.functional as F

from metricvision.models import Embedder


def _loop(emb: Embedder, x: torch.Tensor, taps):
    """(last map, tapped maps) by running the backbone's children one by one."""
    h, tapped = (x - emb.mean) / emb.std, []
    for i, layer in enumerate(emb.backbone):
        h = layer(h)
        if i in taps:
            tapped.append(h)
    return h, tapped


def test_taps_pool_normalize_each_part_then_the_head():
    torch.manual_seed(0)
    emb = Embedder("small_cnn", pooling="avg", dim=8, taps=(2, 4)).eval()
    x = torch.rand(3, 3, 32, 32)
    last, tapped = _loop(emb, x, (2, 4))
    assert emb.parts == (last.shape[1], tapped[0].shape[1], tapped[1].shape[1]) == (256, 64, 128)
    pooled = [last.mean((2, 3))] + [t.mean((2, 3)) for t in tapped]  # a global average of a map equals that of its pooled grid
    reference = F.normalize(emb.head(torch.cat([F.normalize(p, dim=1) for p in pooled], 1)), dim=1)
    torch.testing.assert_close(emb(x), reference, atol=1e-5, rtol=1e-4)
    # dense: each tapped map average-pooled to the last grid, every part normalized per location
    cells = [last] + [F.adaptive_avg_pool2d(t, last.shape[-2:]) for t in tapped]
    f = torch.cat([F.normalize(c, dim=1) for c in cells], 1)
    dense = F.normalize(torch.einsum("nchw,dc->ndhw", f, emb.head.weight) + emb.head.bias.view(1, -1, 1, 1), dim=1)
    torch.testing.assert_close(emb.dense(x), dense, atol=1e-5, rtol=1e-4)
    assert emb.features(x).shape == (3, 256 + 64 + 128, 4, 4)


def test_without_taps_nothing_changes():
    torch.manual_seed(0)
    emb = Embedder("small_cnn", pooling="gem", dim=8).eval()
    x = torch.rand(2, 3, 32, 32)
    assert emb.taps == () and emb.parts == (256,)
    torch.testing.assert_close(emb(x), F.normalize(emb.head(emb.pool(emb.backbone((x - emb.mean) / emb.std))), dim=1))


@pytest.mark.parametrize("taps", [(7,), (4, 2), (2, 2), (-1,)])
def test_bad_taps_are_named(taps):
    with pytest.raises(ValueError, match=r"taps must be distinct increasing indices in \[0, 5\]"):
        Embedder("small_cnn", pooling="avg", dim=8, taps=taps)


def test_detector_and_crop_embedder_refuse_a_hypercolumn():
    from metricvision.localization.crops import CropEmbedder
    from metricvision.localization.detector import QueryDetector

    emb = Embedder("small_cnn", pooling="avg", dim=8, taps=(4,))
    with pytest.raises(ValueError, match=r"without taps.*\[4\]"):
        QueryDetector(emb)
    with pytest.raises(ValueError, match=r"without taps.*\[4\]"):
        CropEmbedder(emb, split=3)
