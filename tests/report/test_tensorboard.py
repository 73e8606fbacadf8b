"""`train.tensorboard: true` writes each epoch's record as TensorBoard scalars under the run folder."""
import pytest

from metricvision.config import load_recipe
from metricvision.engine.trainer import Trainer

TINY = ["model.backbone=small_cnn", "model.pretrained=false", "model.pooling=avg", "data.image_size=16",
        "data.batch_size=16", "train.epochs=2", "optim.warmup_steps=2", "eval.clustering=false"]


def test_epoch_records_reach_tensorboard(tmp_path, emoji_small):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    train, test = emoji_small
    trainer = Trainer(load_recipe("default", TINY + ["train.tensorboard=true"]), tmp_path / "run", train, test)
    trainer.fit()
    acc = event_accumulator.EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    assert {"loss", "lr", "seconds"} <= set(acc.Tags()["scalars"])
    logged = [(e.step, e.value) for e in acc.Scalars("loss")]
    assert logged == [(r["epoch"], pytest.approx(r["loss"])) for r in trainer.history["epochs"]]


def test_off_by_default(tmp_path, emoji_small):
    train, test = emoji_small
    Trainer(load_recipe("default", TINY + ["train.epochs=1"]), tmp_path / "run", train, test).fit()
    assert not (tmp_path / "run" / "tensorboard").exists()
