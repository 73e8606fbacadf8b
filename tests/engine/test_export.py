"""`metricvision export`: ONNX Runtime and TorchScript give PyTorch's embeddings; `info` reads the model card."""
import json

import numpy as np
import pytest
import torch
import yaml

from metricvision.cli import main
from metricvision.config import load_recipe
from metricvision.data.emoji import load_emoji
from metricvision.engine.builders import build_model
from metricvision.engine.card import model_card, write_model_card
from metricvision.engine.checkpoint import save_checkpoint
from metricvision.engine.runs import load_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder in the format `train` writes: a small CNN with GeM pooling and random (not default) BN statistics."""
    recipe = load_recipe("default", ["model.backbone=small_cnn", "model.pretrained=false", "data.image_size=24"])
    run = tmp_path_factory.mktemp("run")
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict()))
    torch.manual_seed(0)
    model = build_model(recipe)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    save_checkpoint(run / "checkpoint.safetensors", {"model": model}, None, {"epoch": 3})
    test = load_emoji("test")[:40]
    write_model_card(run, model_card(recipe, {"precision@1": 0.5, "warnings": ["stopped at epoch 3/12 by train.max_minutes"]}, test, test, 3))
    return run


def _inputs(run, n=7):
    """(n, 3, S, S) emoji images prepared exactly as the exported json says, and PyTorch's embeddings of them."""
    from metricvision.commands import _embed_fn

    recipe, model = load_run(run)
    samples = load_emoji("test")[:n]
    size = recipe.data.image_size
    from metricvision.data.transforms import TRANSFORMS

    x = torch.stack([TRANSFORMS.create("eval", size=size)(s.image) for s in samples])
    return x, _embed_fn(model, size)(samples).numpy()


@pytest.mark.slow
def test_onnx_equals_pytorch(run, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "embedder.onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(out), "--json"]) == 0
    written = json.loads(capsys.readouterr().out)
    meta = json.loads((tmp_path / "embedder.onnx.json").read_text())
    assert written["model"] == str(out) and meta["image_size"] == 24 and meta["input_name"] == "images"
    assert "resize to 24 x 24" in " ".join(meta["preprocessing"]["steps"])
    x, expected = _inputs(run)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(["embeddings"], {"images": x.numpy()})[0]  # a batch size other than the export example's
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_torchscript_equals_pytorch(run, tmp_path, capsys):
    assert main(["export", str(run), "--format", "torchscript", "--json"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert written["model"] == str(run / "model.pt") and (run / "model.pt.json").exists()
    x, expected = _inputs(run)
    np.testing.assert_allclose(torch.jit.load(written["model"])(x).numpy(), expected, atol=1e-5)


def test_info_prints_the_model_card(run, capsys):
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert "licence" in out and "google: Apache-2.0 (Noto Emoji, Google)" in out
    assert "epochs       3/12" in out and "stopped at epoch 3/12 by train.max_minutes" in out
    assert main(["info", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["data"]["dataset"] == "emoji"


def test_info_on_a_folder_without_card(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    assert "model_card.json not found: is" in capsys.readouterr().err
