import itertools
import json
from math import comb

import numpy as np
import pytest

from metricvision.cli import main
from metricvision.kb.align import chance_recall, class_captions, text_to_image_recall
from shapes import shape_classes, write_folder


def test_chance_recall_equals_enumeration():
    n, r, k = 7, 2, 3
    subsets = list(itertools.combinations(range(n), k))
    ref = np.mean([any(i < r for i in s) for s in subsets])
    assert chance_recall(np.array([r]), n, k) == pytest.approx(ref)
    assert chance_recall(np.array([1, 3]), 10, 1) == pytest.approx((0.1 + 0.3) / 2)
    assert comb(5, 6) == 0 and chance_recall(np.array([2]), 5, 4) == 1.0


def test_aligned_model_beats_chance(shapes_kb):
    m = text_to_image_recall(shapes_kb.model, shape_classes(), ks=(1, 2))
    assert m["queries"] == 12 and m["gallery"] == 24
    assert m["recall@1"] >= 0.9 > 3 * m["chance@1"]


def test_gallery_side_csls_ranks_images_by_twice_the_cosine_less_their_crowding(shapes_kb):
    samples, model = shape_classes(), shapes_kb.model
    bank = model.encode_text(["red square", "blue thing", "a green shape", "circle", "yellow triangle", "dark"])
    m = text_to_image_recall(model, samples, ks=(1, 2), references=bank, hub_k=2)
    classes, captions = class_captions(samples)
    gallery, queries = model.encode_images([s.image for s in samples]), model.encode_text(captions)
    r = [np.mean(sorted((bank @ g).tolist(), reverse=True)[:2]) for g in gallery]  # a plain loop
    hits = {1: 0, 2: 0}
    for c, q in zip(classes, queries):
        order = sorted(range(len(samples)), key=lambda i: -(2 * float(q @ gallery[i]) - r[i]))
        hits[1] += samples[order[0]].label == c
        hits[2] += c in {samples[i].label for i in order[:2]}
    assert m["recall@1"] == pytest.approx(hits[1] / len(classes)) and m["recall@2"] == pytest.approx(hits[2] / len(classes))
    assert m["queries"] == 12 and m["gallery"] == 24
    with pytest.raises(ValueError, match=r"k must be in \[1, 6\] \(the number of references\), got 7"):
        text_to_image_recall(model, samples, references=bank, hub_k=7)


def test_class_captions_needs_captions():
    s = shape_classes()
    s[2].caption = ""
    with pytest.raises(ValueError, match="label 1 has none"):
        class_captions(s)


def test_cli_build_add_search(tmp_path, shapes_kb, capsys):
    csv_path = write_folder(tmp_path / "folder")
    ckpt = str(shapes_kb.path / shapes_kb.card.checkpoint)  # stored relative to the KB folder
    assert main(["kb", "build", str(tmp_path / "kb"), "--from-folder", str(tmp_path / "folder"),
                 "--captions", str(csv_path), "--checkpoint", ckpt, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == 24
    assert main(["kb", "add", str(tmp_path / "kb"), "--from-folder", str(tmp_path / "folder"),
                 "--captions", str(csv_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == 48
    assert main(["search", str(tmp_path / "kb"), "--image", str(tmp_path / "folder" / "4.png"), "--text", "green circle",
                 "--k", "3", "--filter", "color=green", "--boxes", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and all(h["metadata"]["color"] == "green" for h in hits) and "boxes" in hits[0]
    assert main(["search", str(tmp_path / "kb"), "--text", "red square", "--k", "2"]) == 0
    assert "red square" in capsys.readouterr().out
    assert main(["search", str(tmp_path / "kb"), "--k", "2"]) == 2
    assert "needs an image, a text, or both" in capsys.readouterr().err
