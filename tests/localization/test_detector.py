import numpy as np
import pytest
import torch

from metricvision.data.emoji import load_emoji
from metricvision.data.scenes import SceneConfig, build_scenes
from metricvision.localization.detector import QueryDetector, assign_targets
from metricvision.localization.train import image_tensor, load_detector, read_scenes, save_detector, train_detector
from metricvision.metrics.detection import pairwise_iou
from metricvision.models import Embedder


def test_assignment_follows_fcos_centre_sampling():
    boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0], [16.0, 16.0, 32.0, 32.0], [100.0, 100.0, 104.0, 104.0]])
    a = assign_targets(boxes, (8, 8), (128, 128), radius=1.5)
    ref = -torch.ones(8, 8, dtype=torch.long)
    for i in range(8):
        for j in range(8):
            cx, cy = (j + 0.5) * 16, (i + 0.5) * 16
            best = None
            for k, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
                near = abs(cx - (x0 + x1) / 2) <= 24 and abs(cy - (y0 + y1) / 2) <= 24
                centre_cell = (i, j) == (int((y0 + y1) / 2 / 16), int((x0 + x1) / 2 / 16))
                if (x0 < cx < x1 and y0 < cy < y1 and near) or centre_cell:
                    if best is None or (x1 - x0) * (y1 - y0) < best[1]:
                        best = (k, (x1 - x0) * (y1 - y0))
            if best:
                ref[i, j] = best[0]
    assert torch.equal(a, ref)
    assert (a == 2).sum() == 1 and (a == 1).sum() == 1


@pytest.mark.slow
def test_a_few_steps_put_a_box_on_a_planted_object(tmp_path):
    torch.manual_seed(0)
    cfg = SceneConfig(size=128, sides=(40, 56), max_rotation=10.0, targets=(1, 1), distractors=(1, 2), blur=0.0)
    scenes = read_scenes(build_scenes(tmp_path / "s", "train", 4, seed=0, cfg=cfg))
    embedder = Embedder("mobilenet_v2", "avg", 0, pretrained=True)
    ids = sorted({int(i) for x in scenes.identities for i in x})
    other = {s.label: s.image for s in load_emoji("train") if s.meta["vendor"] == "twitter" and s.meta["tone"] == ""}
    refs = embedder.encode(torch.from_numpy(np.stack([other[i] for i in ids])).permute(0, 3, 1, 2).float() / 255)
    det = QueryDetector(embedder, hidden=64)
    logs = train_detector(det, scenes, torch.tensor(ids), [refs], steps=150, batch_size=4, lr=3e-3, log_every=50)
    assert logs[-1]["loss"] < logs[0]["loss"]
    save_detector(det, tmp_path / "det.safetensors")
    det, crop = load_detector(tmp_path / "det.safetensors", embedder)
    assert crop is None
    target = scenes.queries[0]["identity"]
    found = det.detect(image_tensor(scenes.images[0])[None], refs[[ids.index(target)]], max_boxes=1)[0][0]
    gt = scenes.boxes[0][scenes.identities[0] == target]
    assert pairwise_iou(found[:, :4], gt).max() >= 0.5
