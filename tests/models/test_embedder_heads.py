"""BNNeck outputs in train / eval mode, learnable GeM exponent, channels-last option."""
import pytest
import torch
import torch.nn.functional as F

from metricvision.models import Embedder, GeM


def test_bnneck_train_and_eval_outputs():
    torch.manual_seed(0)
    emb = Embedder("small_cnn", pooling="avg", dim=16, neck="bnneck")
    x = torch.rand(6, 3, 32, 32)
    train_out = emb.train()(x)
    assert train_out.shape == (6, 32)
    before, after = train_out[:, :16], train_out[:, 16:]
    torch.testing.assert_close(before, emb.head(emb.pool(emb.features(x))))
    # training: the second half is the first standardized with the batch statistics (weight 1, shift 0)
    reference = (before - before.mean(0)) / (before.var(0, unbiased=False) + emb.neck.eps).sqrt()
    torch.testing.assert_close(after, reference, atol=1e-5, rtol=1e-4)
    assert not emb.neck.bias.requires_grad and emb.neck.weight.requires_grad
    emb.eval()
    out = emb(x)
    assert out.shape == (6, 16) and emb.dim == 16
    z = emb.head(emb.pool(emb.features(x)))
    torch.testing.assert_close(out, F.normalize(emb.neck(z), dim=1))
    with pytest.raises(ValueError, match="neck must be one of"):
        Embedder("small_cnn", neck="bn")


def test_gem_learnable_p_gets_a_gradient():
    pool = GeM(p=3.0)
    x = torch.rand(2, 4, 5, 5) + 0.1
    pool(x).sum().backward()
    assert pool.p.grad is not None and pool.p.grad.abs() > 0
    reference = x.pow(3).mean(dim=(2, 3)).pow(1 / 3)
    torch.testing.assert_close(pool(x), reference)
    frozen = GeM(p=3.0, learnable=False)
    assert not frozen.p.requires_grad


def test_channels_last_is_an_option_with_equal_outputs():
    torch.manual_seed(0)
    a = Embedder("small_cnn", dim=8).eval()
    b = Embedder("small_cnn", dim=8, channels_last=False).eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 3, 24, 24)
    assert b.features(x).is_contiguous()
    torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=1e-5)


def test_multiscale_encode_equals_the_reference_combination():
    from metricvision.models.multiscale import multiscale_embed

    torch.manual_seed(0)
    emb = Embedder("small_cnn", pooling="gem", dim=8).eval()
    x = torch.rand(3, 3, 32, 32)
    scales = [1.0, 0.75, 0.5]
    with torch.no_grad():
        reference = multiscale_embed(emb, x, scales, "gem", float(emb.pool.p))
    torch.testing.assert_close(emb.encode(x, batch_size=2, scales=scales), reference)
    torch.testing.assert_close(emb.encode(x, scales=[1.0]), emb.encode(x))
    avg = Embedder("small_cnn", pooling="avg", dim=8).eval()
    with torch.no_grad():
        torch.testing.assert_close(avg.encode(x, scales=scales), multiscale_embed(avg, x, scales, "sum"))


def test_frozen_bn_keeps_the_backbone_statistics_in_training():
    torch.manual_seed(0)
    x = torch.rand(6, 3, 32, 32)
    for frozen in (False, True):
        emb = Embedder("small_cnn", pooling="avg", dim=16, frozen_bn=frozen).train()
        bns = [m for m in emb.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert bns and emb.training and emb.head.training
        before = [m.running_mean.clone() for m in bns]
        out = emb(x)
        changed = any(not torch.equal(b, m.running_mean) for b, m in zip(before, bns))
        assert changed != frozen and all(m.training != frozen for m in bns)
        if frozen:  # the batch norms still train their affine weights, and use the running statistics
            out.sum().backward()
            assert all(m.weight.grad is not None for m in bns)
            torch.testing.assert_close(out, emb.eval()(x))
