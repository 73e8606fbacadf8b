"""Backbones by name, last stride 1, transformer token grids, weights from the torch hub cache."""
import pytest
import torch
import torchvision

from metricvision.models import Embedder, WeightsNotFound, create_backbone, resolve_state_dict
from metricvision.models.l2net import l2net


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_last_stride_one_doubles_the_final_map(name):
    x = torch.rand(1, 3, 64, 128)
    net2, c2 = create_backbone(name)
    net1, c1 = create_backbone(name, last_stride=1)
    f2, f1 = net2.eval()(x), net1.eval()(x)
    assert c1 == c2 == f1.shape[1]
    assert f2.shape[-2:] == (2, 4)
    assert f1.shape[-2:] == (4, 8)


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small"])
def test_last_stride_one_on_mobilenets_doubles_the_final_map_only(name):
    x = torch.rand(1, 3, 72, 72)
    net2, _ = create_backbone(name)
    net1, _ = create_backbone(name, last_stride=1)
    strided = lambda net: [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided(net1)) == len(strided(net2)) - 1
    assert net2.eval()(x).shape[-2:] == (3, 3)
    assert net1.eval()(x).shape[-2:] == (5, 5)


def test_last_stride_refused_where_pooling_downsamples_last():
    for name in ("small_cnn", "vgg11", "densenet121"):
        with pytest.raises(ValueError, match=name):
            create_backbone(name, last_stride=1)


class _ResidualDown(torch.nn.Module):
    """A downsampling block whose shortcut strides too (no layer4)."""

    def __init__(self):
        super().__init__()
        self.main = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.short = torch.nn.Conv2d(3, 8, 1, stride=2)

    def forward(self, x):
        return self.main(x) + self.short(x)


def test_last_stride_refused_where_the_last_strided_block_has_a_strided_shortcut():
    from metricvision.models.adapters import set_last_stride

    net = _ResidualDown()
    with pytest.raises(ValueError, match="'toy' sits in a block that also downsamples elsewhere"):
        set_last_stride(net, 1, "toy")
    assert net.short.stride == (2, 2) and net.main.stride == (2, 2) and net.training  # left as it was


def test_bare_torchvision_names_and_unknown_name():
    a, ca = create_backbone("resnet18")
    b, cb = create_backbone("torchvision:resnet18")
    assert ca == cb == 512 and type(a) is type(b)
    _, c = create_backbone("convnext_tiny")
    assert c == 768
    with pytest.raises(KeyError, match="torchvision model name"):
        create_backbone("resnet_does_not_exist")


def test_torchvision_vit_grid_equals_its_own_encoder_and_takes_any_size():
    net, c = create_backbone("vit_b_16")
    vit = net.vit.eval()
    net.eval()
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        tokens = vit._process_input(x)
        tokens = vit.encoder(torch.cat([vit.class_token.expand(1, -1, -1), tokens], dim=1))
        grid = net(x)
        small = net(torch.rand(2, 3, 64, 32))
    assert c == 768 and grid.shape == (1, 768, 14, 14)
    torch.testing.assert_close(grid.flatten(2).transpose(1, 2), tokens[:, 1:], atol=1e-4, rtol=1e-4)
    assert small.shape == (2, 768, 4, 2)


def test_timm_backbones_last_stride_grid_and_normalization():
    pytest.importorskip("timm")
    net, c = create_backbone("timm:resnet18", last_stride=1)
    assert net.eval()(torch.rand(1, 3, 64, 64)).shape == (1, c, 4, 4)
    emb = Embedder("timm:vit_tiny_patch16_224", pooling="avg", dim=0).eval()
    assert emb.backbone(torch.rand(1, 3, 48, 32)).shape == (1, 192, 3, 2)
    assert emb.encode(torch.rand(2, 3, 48, 32)).shape == (2, 192)
    swin, c = create_backbone("timm:swin_tiny_patch4_window7_224")  # channels-last (N, h, w, C) output
    assert swin.eval()(torch.rand(1, 3, 224, 224)).shape == (1, c, 7, 7)
    incep = Embedder("timm:inception_v3", pooling="avg", dim=0)  # a model trained with mean = std = 0.5
    torch.testing.assert_close(incep.mean.flatten(), torch.full((3,), 0.5))


def test_weights_found_in_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("METRICVISION_CACHE", str(tmp_path / "mv"))
    with pytest.raises(WeightsNotFound, match=r"checkpoints/resnet18-<hash>\.pth"):
        resolve_state_dict("resnet18")
    reference = torchvision.models.resnet18()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    net, _ = create_backbone("resnet18", pretrained=True)
    torch.testing.assert_close(net[0].weight, reference.conv1.weight)


def test_l2net_shapes_and_per_patch_standardization():
    net, c = l2net()
    assert c == 128
    emb = Embedder("l2net", pooling="avg", dim=0).eval()
    torch.testing.assert_close(emb.mean.flatten(), torch.zeros(3))
    x = torch.rand(4, 1, 32, 32).expand(4, 3, 32, 32)
    assert emb.backbone(x).shape == (4, 128, 1, 1)
    out = emb(x)
    assert out.shape == (4, 128)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(emb(0.5 * x + 0.2), out, atol=1e-4, rtol=1e-4)  # brightness / contrast invariant
