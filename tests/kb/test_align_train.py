import pytest
import torch

from metricvision.data import Sample
from metricvision.kb.align import _pick_variants, caption_variants, split_backbone, train_alignment
from metricvision.models import Embedder
from metricvision.models.text import create_text_encoder
from shapes import shape_classes


def test_caption_variants_use_the_emoji_metadata():
    s = Sample(image=None, label=3, caption="waving hand",
               meta={"subcategory": "hand-fingers-open", "short_names": ["wave", "hello_hand"]})
    assert caption_variants(s) == ["waving hand", "waving hand, hand fingers open", "wave hello hand",
                                   "an emoji of waving hand"]
    assert caption_variants(Sample(image=None, label=0, caption="red circle")) == ["red circle", "an emoji of red circle"]


def test_pick_variants_draws_one_text_of_each_class():
    owner = torch.tensor([0, 0, 0, 1, 2, 2])
    seen = set()
    for _ in range(50):
        picked = _pick_variants(owner, 3)
        assert owner[picked].tolist() == [0, 1, 2]
        seen.add(int(picked[0]))
    assert seen == {0, 1, 2}
    with pytest.raises(ValueError, match="1 have none"):
        _pick_variants(owner, 4)


def test_split_backbone_refuses_too_many_blocks():
    e = Embedder("mobilenet_v2", pooling="avg", dim=8, pretrained=False)
    trunk, top = split_backbone(e, 2)
    assert len(trunk) + len(top) == len(e.backbone) and len(top) == 2
    with pytest.raises(ValueError, match="tune_blocks must be in"):
        split_backbone(e, len(e.backbone) + 1)


def test_tuned_blocks_change_and_the_rest_stays():
    reference = Embedder("mobilenet_v2", pooling="avg", dim=0, pretrained=True).backbone.state_dict()
    model, logs = train_alignment(shape_classes(), create_text_encoder("hashing"), image_size=32, epochs=2,
                                  batch_size=8, tune_blocks=1)
    state = model.embedder.backbone.state_dict()
    last = str(len(model.embedder.backbone) - 1)
    changed = {k.split(".")[0] for k in state if not torch.equal(state[k], reference[k])}
    assert changed == {last} and len(logs) == 2


def test_alignment_starts_from_a_trained_runs_backbone_and_pooling(tmp_path, emoji_small):
    from metricvision.config import load_recipe
    from metricvision.engine.runs import load_run
    from metricvision.engine.trainer import Trainer

    train, test = emoji_small
    run = tmp_path / "run"
    recipe = load_recipe("default", ["model.backbone=small_cnn", "model.pretrained=false", "data.image_size=32", "model.dim=16",
                                     "data.batch_size=16", "train.epochs=1", "optim.warmup_steps=2", "eval.clustering=false"])
    Trainer(recipe, run, train, test).fit()
    _, trained = load_run(run)
    model, _ = train_alignment(shape_classes(), create_text_encoder("hashing"), backbone="small_cnn", image_size=32,
                               epochs=1, batch_size=8, init_run=str(run))
    assert model.card.pooling == "gem" and float(model.embedder.pool.p) == float(trained.pool.p)
    for k, v in trained.backbone.state_dict().items():
        assert torch.equal(model.embedder.backbone.state_dict()[k], v), k
    with pytest.raises(ValueError, match="has backbone 'small_cnn', expected 'mobilenet_v2'"):
        train_alignment(shape_classes(), create_text_encoder("hashing"), image_size=32, epochs=1, init_run=str(run))


def test_alignment_with_taps_trains_the_hypercolumn_head_and_round_trips(tmp_path):
    from metricvision.kb.model import ImageTextModel, save_image_model

    samples = shape_classes()
    model, logs = train_alignment(samples, create_text_encoder("hashing"), image_size=32, epochs=2, batch_size=8,
                                  taps=[13, 16])
    assert model.card.taps == [13, 16] and model.embedder.head.in_features == 1280 + 96 + 160 and len(logs) == 2
    card = save_image_model(model.embedder, tmp_path / "m.safetensors", 32, "hashing")
    again = ImageTextModel.from_checkpoint(card.checkpoint)
    assert again.card.taps == [13, 16] and again.embedder.taps == (13, 16)
    images = [s.image for s in samples[:4]]
    torch.testing.assert_close(again.encode_images(images), model.encode_images(images))
    with pytest.raises(ValueError, match=r"tune_blocks needs an embedder without taps"):
        train_alignment(samples, create_text_encoder("hashing"), image_size=32, epochs=1, tune_blocks=1, taps=[13])
