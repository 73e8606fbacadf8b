import json
import sqlite3

import numpy as np
import pytest
from PIL import Image

from metricvision.kb.query import search
from metricvision.kb.sources import samples_from_folder
from metricvision.kb.store import KnowledgeBase
from shapes import shape_classes, write_folder


def test_layout_items_card_and_pngs(shapes_kb):
    root = shapes_kb.path
    version = (root / "index" / "CURRENT").read_text().strip()
    manifest = json.loads((root / "index" / version / "manifest.json").read_text())
    card = json.loads((root / "model_card.json").read_text())
    assert manifest["ntotal"] == 24 and manifest["kind"] == "flat" and set(manifest["files"]) == {"index.bin", "items.sqlite"}
    assert card["dim"] == 384 and card["text_model"] == "hashing" and card["checkpoint_sha256"]
    with sqlite3.connect(root / "index" / version / "items.sqlite") as db:
        rows = db.execute("SELECT id, image, caption, label, metadata FROM items ORDER BY id").fetchall()
    assert len(rows) == 24 and rows[0][2] == "red circle" and json.loads(rows[0][4])["shape"] == "circle"
    png = Image.open(root / rows[0][1])
    assert png.format == "PNG" and np.array_equal(np.asarray(png.convert("RGB")), shape_classes()[0].image)


def test_reopened_kb_finds_each_image_first(shapes_kb):
    kb = KnowledgeBase.open(shapes_kb.path)
    samples = shape_classes()
    for i in (0, 7, 23):
        hits = search(kb, image=samples[i].image, k=3)
        assert hits[0]["id"] == i and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_text_search_and_filters(shapes_kb):
    hits = search(shapes_kb, text="blue square", k=2)
    assert {h["caption"] for h in hits} == {"blue square"}
    hits = search(shapes_kb, text="blue square", k=5, filters={"color": "red"})
    assert len(hits) == 5 and all(h["metadata"]["color"] == "red" for h in hits)
    assert search(shapes_kb, text="x", k=3, filters={"color": "purple"}) == []
    assert {h["label"] for h in search(shapes_kb, text="x", k=24, filters={"label": [1, 2]})} == {1, 2}
    with pytest.raises(ValueError, match="alphanumeric"):
        shapes_kb.allowed_ids({"a') OR 1=1 --": 1})


def test_repeated_text_queries_are_encoded_once(shapes_kb):
    from metricvision.kb.query import encode_text_cached

    first = search(shapes_kb, text="yellow triangle zq", k=3)
    hits = encode_text_cached.cache_info().hits
    assert search(shapes_kb, text="yellow triangle zq", k=3) == first
    assert encode_text_cached.cache_info().hits == hits + 1


def test_get_unknown_id(shapes_kb):
    assert shapes_kb.get(3)["caption"] == shape_classes()[3].caption
    with pytest.raises(KeyError, match="no item with id 999"):
        shapes_kb.get(999)


def test_add_appends_and_a_failed_write_leaves_previous_version(tmp_path, shapes_kb):
    csv_path = write_folder(tmp_path / "folder")
    kb = KnowledgeBase.create(tmp_path / "kb", shapes_kb.model)
    first = kb.add(samples_from_folder(tmp_path / "folder", csv_path)[:10])
    second = kb.add(samples_from_folder(tmp_path / "folder", csv_path)[10:])
    assert first == list(range(10)) and second == list(range(10, 24)) and kb.version == 3
    assert kb.get(12)["metadata"] == {"color": shape_classes()[12].meta["color"]}
    # images are copied in: the KB folder is self-contained
    assert kb.image_path(12) == kb.path / "images" / "12.png"
    assert kb.image_path(12).read_bytes() == (tmp_path / "folder" / "12.png").read_bytes()
    with pytest.raises(ValueError, match="dimension 384"):
        kb.add_embedded(shape_classes()[:2], np.zeros((2, 5), np.float32))
    reopened = KnowledgeBase.open(tmp_path / "kb")
    assert len(reopened) == 24 and reopened.version == 3
    assert search(reopened, image=shape_classes()[5].image, k=1)[0]["id"] == 5
    assert reopened.store.versions() == [2, 3]  # older versions are pruned, the previous one stays


def test_faiss_index_spec(tmp_path, shapes_kb):
    pytest.importorskip("faiss")
    kb = KnowledgeBase.create(tmp_path / "kb", shapes_kb.model, index_spec="HNSW16")
    kb.add(shape_classes())
    reopened = KnowledgeBase.open(tmp_path / "kb")
    assert reopened.manifest["kind"] != "flat" and len(reopened) == 24
    assert search(reopened, image=shape_classes()[9].image, k=1)[0]["id"] == 9


def test_create_refuses_existing_and_open_missing(tmp_path, shapes_kb):
    with pytest.raises(FileExistsError, match="already holds"):
        KnowledgeBase.create(shapes_kb.path, shapes_kb.model)
    with pytest.raises(FileNotFoundError, match="no knowledge base"):
        KnowledgeBase.open(tmp_path / "nothing")


def test_folder_without_csv_labels_subfolders(tmp_path):
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / cls / f"a_{cls}.png")
    samples = samples_from_folder(tmp_path)
    assert [(s.label, s.caption) for s in samples] == [(0, "a cats"), (1, "a dogs")]


def test_bad_captions_csv(tmp_path):
    (tmp_path / "c.csv").write_text("file,text\nx.png,a\n")
    with pytest.raises(ValueError, match="missing \\['caption', 'image'\\]"):
        samples_from_folder(tmp_path, tmp_path / "c.csv")
    (tmp_path / "d.csv").write_text("image,caption\nmissing.png,a\n")
    with pytest.raises(FileNotFoundError, match="line 2: image .*missing.png not found"):
        samples_from_folder(tmp_path, tmp_path / "d.csv")
