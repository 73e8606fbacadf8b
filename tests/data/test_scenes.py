import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from metricvision.data.emoji import load_emoji
from metricvision.data.scenes import SceneConfig, build_scenes, emoji_alpha, make_scene, rle_decode, rle_encode

SMALL = SceneConfig(size=128, sides=(16, 40), distractors=(2, 4))


def test_rle_round_trip_and_equals_pycocotools():
    mask_utils = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    for mask in [rng.random((7, 5)) > 0.5, np.ones((3, 4), bool), np.zeros((4, 3), bool), np.eye(6, dtype=bool)]:
        rle = rle_encode(mask)
        assert np.array_equal(rle_decode(rle), mask)
        ref = mask_utils.frPyObjects(rle, *rle["size"])
        assert np.array_equal(mask_utils.decode(ref).astype(bool), mask)
        assert mask_utils.area(ref) == mask.sum()


def test_alpha_keeps_white_inside_the_outline():
    img = np.full((20, 20, 3), 255, np.uint8)
    img[4:16, 4:16] = (200, 0, 0)
    img[8:12, 8:12] = 255  # white eye inside the object
    alpha = emoji_alpha(img)
    assert alpha[10, 10] == 1 and alpha[5, 5] == 1 and alpha[0, 0] == 0 and alpha.sum() == 144


def test_mask_is_the_pasted_alpha():
    emoji = load_emoji("test")[0].image
    cfg = SceneConfig(size=96, sides=(32, 32), max_rotation=0.0, blur=0.0)
    scene, masks = make_scene(Image.new("RGB", (96, 96), "black"), [emoji], cfg, np.random.default_rng(0))
    alpha = np.asarray(Image.fromarray((emoji_alpha(emoji) * 255).astype(np.uint8)).resize((32, 32), Image.BILINEAR))
    assert masks[0].sum() == (alpha >= 128).sum()
    ys, xs = np.nonzero(masks[0])
    assert ys.max() - ys.min() < 32 and xs.max() - xs.min() < 32
    edge = ndimage.binary_dilation(masks[0], iterations=1)  # soft alpha below 0.5 shows on the outline only
    assert (scene[masks[0]].max(axis=1) > 0).all() and scene[~edge].max() == 0


def test_occlusion_is_bounded():
    emoji = [s.image for s in load_emoji("test")[:12]]
    cfg = SceneConfig(size=64, sides=(24, 32), max_rotation=0.0, blur=0.0, max_occlusion=0.4)
    scene, masks = make_scene(Image.new("RGB", (64, 64)), emoji, cfg, np.random.default_rng(1))
    alone = []
    for k, img in enumerate(emoji):  # the same draws with each object alone give its unoccluded mask
        rng = np.random.default_rng(1)
        _, ref = make_scene(Image.new("RGB", (64, 64)), emoji[: k + 1], cfg, rng)
        alone.append(ref[k])
    assert any(m is None for m in masks) and sum(m is not None for m in masks) >= 3
    for m, full in zip(masks, alone):
        if m is not None:
            assert (m & full).sum() == m.sum() and m.sum() >= 0.6 * full.sum()


def test_build_is_deterministic_and_coco_readable(tmp_path):
    coco_mod = pytest.importorskip("pycocotools.coco")
    a = build_scenes(tmp_path / "a", "test", 3, seed=5, cfg=SMALL)
    b = build_scenes(tmp_path / "b", "test", 3, seed=5, cfg=SMALL)
    assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "a/images/000002.jpg").read_bytes() == (tmp_path / "b/images/000002.jpg").read_bytes()
    data = json.loads(a.read_text())
    test_ids = {s.label for s in load_emoji("test")}
    assert {ann["identity"] for ann in data["annotations"]} <= test_ids
    assert {im["query"]["identity"] for im in data["images"]} <= test_ids
    for im in data["images"]:
        assert (tmp_path / "a" / im["query"]["file_name"]).exists()
    coco = coco_mod.COCO(str(a))
    for ann in data["annotations"]:
        mask = coco.annToMask(ann).astype(bool)
        ys, xs = np.nonzero(mask)
        assert mask.sum() == ann["area"]
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
    train = json.loads(build_scenes(tmp_path / "t", "train", 2, cfg=SMALL).read_text())
    val = json.loads(build_scenes(tmp_path / "v", "val", 2, cfg=SMALL).read_text())
    ids = lambda d: {ann["identity"] for ann in d["annotations"]}  # noqa: E731
    assert not ids(train) & test_ids and not ids(val) & test_ids and not ids(train) & ids(val)


def test_cli_builds_scenes(tmp_path, capsys):
    from metricvision.cli import main

    assert main(["scenes", "build", "--out", str(tmp_path / "s"), "--split", "val", "--n", "2", "--size", "96", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["scenes"] == 2 and (tmp_path / "s/images/000001.jpg").exists()


def test_an_identity_model_can_leave_out_the_validation_scenes_identities(tmp_path):
    from metricvision.data.emoji import emoji_splits
    from metricvision.data.scenes import val_identities

    val = json.loads(build_scenes(tmp_path / "v", "val", 6, cfg=SMALL).read_text())
    train = json.loads(build_scenes(tmp_path / "t", "train", 6, cfg=SMALL).read_text())
    held = val_identities(load_emoji("train"))
    assert {a["identity"] for a in val["annotations"]} <= held
    assert not {a["identity"] for a in train["annotations"]} & held
    full, kept = emoji_splits()["train"], emoji_splits(hold_out="scene_val")["train"]
    assert {s.label for s in kept} == {s.label for s in full} - held and 0.15 < len(held) / len({s.label for s in full}) < 0.25
    with pytest.raises(ValueError, match="hold_out must be"):
        emoji_splits(hold_out="val")
