"""load_references: the banks of the hubness correction, from images or from the classes' names."""
import pytest
import torch

from metricvision.data.emoji import emoji_splits
from metricvision.kb.model import ImageTextModel, ModelCard
from metricvision.kb.references import load_references, parse_dataset_spec


def test_caption_references_are_each_training_class_name_embedded_by_the_text_side():
    aligned = ImageTextModel(ModelCard(backbone="mobilenet_v2", pooling="avg", dim=384, head=True, image_size=32,
                                       text_model="hashing"))
    refs = load_references("captions:emoji:train?hold_out=scene_val", aligned)
    train = emoji_splits(hold_out="scene_val")["train"]
    names = list(dict.fromkeys(s.caption for s in train))  # one name per class (captions are the class names)
    assert refs.shape == (len({s.label for s in train}), 384) == (len(names), 384)
    assert torch.allclose(refs, aligned.encode_text(names), atol=1e-6)
    everything = load_references("captions:emoji", aligned)  # the whole train split: the held-out names too
    assert len(everything) == len({s.label for s in emoji_splits()["train"]}) > len(refs)
    with pytest.raises(ValueError, match="KEY=VALUE pairs joined by '&', got 'hold_out'"):
        load_references("captions:emoji:train?hold_out", aligned)
    with pytest.raises(ValueError, match="hold_out must be '' or 'scene_val', got 'all'"):
        load_references("captions:emoji:train?hold_out=all", aligned)
    with pytest.raises(ValueError, match="not aligned to a text model"):
        load_references("captions:emoji", ImageTextModel(ModelCard(backbone="mobilenet_v2", image_size=32)))


def test_dataset_specs_name_a_split_and_options():
    assert parse_dataset_spec("emoji") == ("emoji", "train", {})
    assert parse_dataset_spec("emoji:test?hold_out=scene_val&path=x.npz") == (
        "emoji", "test", {"hold_out": "scene_val", "path": "x.npz"})
