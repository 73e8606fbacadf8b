"""Dense classification trains the backbone through the Trainer; implanting evaluates a run."""
import pytest
import torch

from metricvision.config import load_recipe
from metricvision.engine.trainer import Trainer
from metricvision.supervision.dense import DenseClassification
from metricvision.supervision.fewshot import dense_classification_loss

TINY = ["model.pretrained=false", "data.image_size=72", "data.batch_size=16", "data.samples_per_class=4",
        "train.epochs=1", "optim.warmup_steps=2", "model.dim=16", "eval.params.n_way=3", "eval.params.n_query=1",
        "eval.params.episodes=5"]


def test_dense_recipe_trains_the_backbone_on_its_maps(tmp_path, emoji_small):
    train, test = emoji_small
    t = Trainer(load_recipe("fewshot_dense", TINY), tmp_path / "run", train, test)
    (hook,) = [h for h in t.hooks if isinstance(h, DenseClassification)]
    conv = next(t.model.backbone.parameters()).detach().clone()
    w = hook.classifier.weight.detach().clone()
    x = torch.rand(4, 3, 72, 72)
    t.model.train()
    z = t.model(x)
    idx = torch.tensor([0, 1, 2, 3])
    assert hook.maps_.shape[-2:] == (5, 5)  # kept from that very forward pass
    want = dense_classification_loss(t.model.features(x), torch.tensor([train[i].label for i in idx]), hook.classifier)
    assert torch.allclose(hook.extra_loss(t, idx, z).value, want, atol=1e-5)
    metrics = t.fit()
    assert {"accuracy", "ci95", "episodes"} <= set(metrics) and 0 <= metrics["accuracy"] <= 1
    assert not torch.equal(next(t.model.backbone.parameters()).detach(), conv)  # the backbone learned
    assert not torch.equal(hook.classifier.weight.detach(), w)  # so did the classifier (in the optimizer)
    t2 = Trainer(load_recipe("fewshot_dense", TINY), tmp_path / "run", train, test)
    assert t2.restore()  # the classifier is in the checkpoint
    (h2,) = [h for h in t2.hooks if isinstance(h, DenseClassification)]
    assert torch.equal(h2.classifier.weight, hook.classifier.weight.detach())


def test_dense_refuses_small_maps(tmp_path, emoji_small):
    train, test = emoji_small
    with pytest.raises(ValueError, match="maps of at least 5 x 5, got 3 x 3 at data.image_size=40"):
        Trainer(load_recipe("fewshot_dense", TINY + ["data.image_size=40"]), tmp_path / "run", train, test)
    with pytest.raises(ValueError, match="maps of at least 5 x 5, got 3 x 3 at data.image_size=72"):  # the last stride kept
        Trainer(load_recipe("fewshot_dense", TINY + ["model.last_stride=2"]), tmp_path / "run", train, test)
    with pytest.raises(ValueError, match=r"model.taps must be empty, got \[13\]"):  # its maps would not be the hypercolumn
        Trainer(load_recipe("fewshot_dense", TINY + ["model.taps=[13]"]), tmp_path / "run", train, test)


@pytest.mark.slow  # embeds the emoji test split (about 30 s on a loaded 2-core machine)
def test_implant_command_evaluates_a_dense_run(tmp_path, emoji_small):
    import json

    from metricvision.cli import main
    from metricvision.engine.runs import load_run

    train, test = emoji_small
    run = tmp_path / "run"
    Trainer(load_recipe("fewshot_dense", TINY + ["eval.clustering=false"]), run, train, test).fit()
    # the command reads the run's evaluation dataset (emoji test: 2 renderings per identity in the real split)
    assert main(["implant", str(run), "--n-way", "3", "--k-shot", "1", "--n-query", "1", "--episodes", "3",
                 "--steps", "2", "--layers", "3", "--json"]) == 0
    result = json.loads((run / "implant.json").read_text())
    assert result["episodes"] == 3 and 0 <= result["accuracy"] <= 1 and 0 <= result["frozen_accuracy"] <= 1
    assert result["layers"] == 3


def test_implants_run_beside_each_of_the_last_conv_layers():
    from metricvision.models.backbones import small_cnn
    from metricvision.supervision.implant import BackboneImplant, block_maps, conv_layers, split_last_layers

    backbone, _ = small_cnn()
    backbone.eval()
    layers = conv_layers(backbone)  # 4 blocks of 2 convolutions, each with its norm / activation / pooling
    assert len(layers) == 8 and all(isinstance(l[0], torch.nn.Conv2d) for l in layers)
    assert isinstance(layers[1][-1], torch.nn.MaxPool2d)
    x = torch.rand(2, 3, 40, 40)
    stem, units = split_last_layers(backbone, 2)
    assert torch.equal(torch.nn.Sequential(stem, *units)(x), backbone(x))  # the cut changes nothing
    inputs, last = block_maps(backbone, x, layers=2)
    assert [tuple(i.shape) for i in inputs] == [(2, 128, 5, 5), (2, 256, 5, 5)] and last.shape == (2, 256, 5, 5)
    inputs = [i.requires_grad_(True) for i in inputs]
    imp = BackboneImplant([128, 256], 8, [1, 1])
    out = imp(inputs, last)
    # the original maps come first, unchanged; the implant stream starts at the first implanted layer
    assert out.shape == (2, 256 + 8, 5, 5) and torch.equal(out[:, :256], last)
    out[:, 256:].sum().backward()
    assert inputs[0].grad.abs().sum() > 0 and inputs[1].grad.abs().sum() > 0
    with pytest.raises(ValueError, match="layers must be in \\[1, 7\\] for this backbone \\(8 conv layers\\), got 8"):
        split_last_layers(backbone, 8)
