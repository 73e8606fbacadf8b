"""`metricvision kb from-run`: a train run's model as an image model checkpoint (KB, scene benchmark)."""
import pytest
import torch

from metricvision.cli import main
from metricvision.config import load_recipe
from metricvision.engine.runs import load_run
from metricvision.engine.trainer import Trainer
from metricvision.kb.model import ImageTextModel


def test_a_run_becomes_an_image_model_with_the_same_embeddings(tmp_path, emoji_small, capsys):
    train, test = emoji_small
    recipe = load_recipe("default", ["model.backbone=small_cnn", "model.pretrained=false", "model.pooling=gem",
                                     "data.image_size=24", "data.batch_size=16", "train.epochs=1", "eval.clustering=false"])
    Trainer(recipe, tmp_path / "run", train, test).fit()
    assert main(["kb", "from-run", str(tmp_path / "run"), str(tmp_path / "model.safetensors")]) == 0
    model = ImageTextModel.from_checkpoint(tmp_path / "model.safetensors")
    _, trained = load_run(tmp_path / "run")
    assert model.card.image_size == 24 and model.card.pooling == "gem" and model.card.text_model is None
    x = torch.rand(3, 3, 24, 24)
    with torch.no_grad():
        assert torch.allclose(model.embedder(x), trained(x), atol=1e-6)
    assert main(["kb", "from-run", str(tmp_path / "nothing"), str(tmp_path / "m.safetensors")]) != 0
    assert "is " + str(tmp_path / "nothing") + " a run folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not aligned to a text model"):
        model.text
