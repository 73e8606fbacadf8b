"""Mixed precision and channels-last as recipe options of the Trainer (the GPU path's CPU twin: bf16 autocast)."""
import pytest
import torch

from metricvision.config import load_recipe
from metricvision.engine.trainer import Trainer, amp_dtype

TINY = ["model.backbone=small_cnn", "model.pretrained=false", "model.pooling=avg", "data.image_size=24",
        "data.batch_size=16", "train.epochs=1", "optim.warmup_steps=1", "eval.clustering=false"]


@pytest.mark.parametrize("extra", [["train.amp=bf16"], ["train.amp=bf16", "train.channels_last=false"],
                                   ["train.amp=bf16", "model.neck=bnneck", "model.dim=0", "loss.name=bnneck_id_triplet",
                                    "loss.params={}"]])
def test_bf16_autocast_epoch_runs_and_learns(tmp_path, emoji_small, extra):
    train, test = emoji_small
    t = Trainer(load_recipe("default", TINY + extra), tmp_path, train, test)
    assert t.amp_dtype is torch.bfloat16 and not t.scaler.is_enabled()
    seen = []
    t.model.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    before = [p.detach().clone() for p in t.model.parameters()]
    record = t.train_epoch(0)
    assert seen and all(d == torch.bfloat16 for d in seen)  # the model ran under autocast
    assert torch.isfinite(torch.tensor(record["loss"]))
    assert all(p.dtype == torch.float32 for p in t.model.parameters())  # master weights stay float32
    assert any(not torch.equal(a, b) for a, b in zip(before, t.model.parameters()))


def test_amp_values_are_checked():
    assert amp_dtype("none", torch.device("cpu")) is None
    with pytest.raises(ValueError, match="train.amp must be one of"):
        amp_dtype("fp8", torch.device("cpu"))
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        amp_dtype("fp16", torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_cuda_autocast_epoch(tmp_path, emoji_small, amp):
    train, test = emoji_small
    t = Trainer(load_recipe("default", TINY + [f"train.amp={amp}", "train.device=cuda"]), tmp_path, train, test)
    assert t.scaler.is_enabled() == (amp == "fp16")
    assert torch.isfinite(torch.tensor(t.train_epoch(0)["loss"]))
