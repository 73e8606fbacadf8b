"""A KB's text bank: each item's crowding stored at add time, text queries re-ranked by 2 cos - r (CSLS)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from metricvision.cli import main
from metricvision.kb.align import text_to_image_recall
from metricvision.kb.experiments import kb_text_recall
from metricvision.kb.hubness import CROWDING_KEY, TEXT_BANK, load_text_bank, save_text_bank
from metricvision.kb.model import ImageTextModel, ModelCard
from metricvision.kb.query import search
from metricvision.kb.store import KnowledgeBase
from shapes import shape_classes, write_folder

BANK = ["red thing", "green thing", "blue thing", "yellow thing", "a circle", "a square", "a triangle",
        "round", "pointed", "bright colour", "dark colour", "small shape"]
QUERIES = ["red circle", "blue square", "yellow triangle", "green circle", "round red", "a blue shape"]


def plain_crowding(x: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """The paper's r by a loop: each row's mean cosine to its k most similar bank rows."""
    return np.array([np.sort(bank @ v)[::-1][:k].mean() for v in x])


@pytest.fixture(scope="module")
def hub_kb(shapes_kb, tmp_path_factory):
    model = ImageTextModel.from_checkpoint(shapes_kb.path / shapes_kb.card.checkpoint)
    bank = model.encode_text(BANK)
    kb = KnowledgeBase.create(tmp_path_factory.mktemp("hub") / "kb", model, text_bank=bank, text_bank_k=3)
    kb.add(shape_classes())
    return kb, model, bank.numpy()


def test_each_item_keeps_its_crowding_among_the_bank(hub_kb):
    kb, model, bank = hub_kb
    x = model.encode_images([s.image for s in shape_classes()]).numpy()
    stored = np.array([kb.get(i)["metadata"][CROWDING_KEY] for i in range(len(x))])
    np.testing.assert_allclose(stored, plain_crowding(x, bank, 3), atol=1e-5)
    assert stored.std() > 0.01  # items differ in crowding, so the correction can change a ranking
    reopened = KnowledgeBase.open(kb.path)
    assert reopened.text_bank is not None and reopened.text_bank[1] == 3
    np.testing.assert_allclose(reopened.text_bank[0].numpy(), bank, atol=1e-6)


def test_text_queries_rank_by_2cos_minus_r_and_image_queries_by_cosine(hub_kb):
    kb, model, bank = hub_kb
    samples = shape_classes()
    x = model.encode_images([s.image for s in samples]).numpy()
    r = plain_crowding(x, bank, 3)
    changed = 0
    for text in QUERIES:
        q = model.encode_text([text]).numpy()[0]
        expected = np.argsort(-(2 * x @ q - r), kind="stable")[:5]
        hits = search(kb, text=text, k=5)
        assert [h["id"] for h in hits] == expected.tolist()
        np.testing.assert_allclose([h["score"] for h in hits], (2 * x @ q - r)[expected], atol=1e-4)
        plain = search(kb, text=text, k=5, hub_correction=False)
        assert [h["id"] for h in plain] == np.argsort(-(x @ q), kind="stable")[:5].tolist()
        changed += [h["id"] for h in hits] != [h["id"] for h in plain]
    assert changed >= 1  # the correction moves at least one ranking on these queries
    image_hits = search(kb, image=samples[3].image, k=3)
    assert image_hits[0]["id"] == 3 and image_hits[0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_crowding_follows_items_through_segments_removals_and_compaction(hub_kb, tmp_path):
    _, model, bank = hub_kb
    kb = KnowledgeBase.create(tmp_path / "kb", model, text_bank=torch.from_numpy(bank), text_bank_k=3)
    samples = shape_classes()
    for part in (samples[:10], samples[10:20], samples[20:]):  # base, then delta segments
        kb.add(part)
    kb.remove([0, 11])
    before = {h["id"]: h["score"] for h in search(kb, text="red circle", k=8)}
    kb = KnowledgeBase.open(kb.path, writer=True)
    kb.compact()
    assert len(kb) == 22 and all(CROWDING_KEY in kb.get(i)["metadata"] for i in range(1, 24) if i != 11)
    after = {h["id"]: h["score"] for h in search(kb, text="red circle", k=8)}
    assert after.keys() == before.keys() and all(after[i] == pytest.approx(before[i], abs=1e-5) for i in after)


def test_text_bank_errors_name_the_value(shapes_kb, tmp_path):
    model = ImageTextModel.from_checkpoint(shapes_kb.path / shapes_kb.card.checkpoint)
    with pytest.raises(ValueError, match=r"text bank must be \(R >= 1, 384\) embeddings .* got shape \(2, 5\)"):
        KnowledgeBase.create(tmp_path / "a", model, text_bank=torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"text bank k must be in \[1, 2\] \(the bank's size\), got 10"):
        KnowledgeBase.create(tmp_path / "b", model, text_bank=torch.ones(2, 384))
    image_only = ImageTextModel(ModelCard(backbone="mobilenet_v2", image_size=32))
    with pytest.raises(ValueError, match="needs a text-aligned model"):
        KnowledgeBase.create(tmp_path / "c", image_only, text_bank=torch.ones(12, image_only.dim))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and load_text_bank(tmp_path / "c", 384) is None


def test_cli_builds_a_kb_with_a_bank_file_and_searches_both_ways(shapes_kb, tmp_path, capsys):
    csv_path = write_folder(tmp_path / "images")
    (tmp_path / "bank.txt").write_text("\n".join(BANK) + "\n\n")
    (tmp_path / "empty.txt").write_text("\n  \n")
    ckpt = str(shapes_kb.path / shapes_kb.card.checkpoint)
    source = ["--from-folder", str(tmp_path / "images"), "--captions", str(csv_path), "--checkpoint", ckpt, "--json"]
    assert main(["kb", "build", str(tmp_path / "kb0"), *source, "--text-bank", str(tmp_path / "empty.txt")]) == 2
    assert "empty.txt holds no text" in capsys.readouterr().err and not (tmp_path / "kb0" / "model_card.json").exists()
    assert main(["kb", "build", str(tmp_path / "kb0"), *source, "--text-bank", "emoji:train"]) == 2  # images, not texts
    assert "--text-bank must be a .txt file" in capsys.readouterr().err and not (tmp_path / "kb0").exists()
    assert main(["kb", "build", str(tmp_path / "kb"), *source, "--text-bank", str(tmp_path / "bank.txt"),
                 "--text-bank-k", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["text_bank"] == len(BANK)
    kb = KnowledgeBase.open(tmp_path / "kb")
    assert kb.text_bank[1] == 4 and len(kb.text_bank[0]) == len(BANK)
    for flag, hub in (([], True), (["--no-hub-correction"], False)):
        assert main(["search", str(tmp_path / "kb"), "--text", "red circle", "--k", "4", "--json", *flag]) == 0
        got = [h["id"] for h in json.loads(capsys.readouterr().out)]
        assert got == [h["id"] for h in search(kb, text="red circle", k=4, hub_correction=hub)]



def test_the_kb_search_scores_the_names_as_the_benchmark_ranks_them(hub_kb):
    kb, model, bank = hub_kb
    samples = shape_classes()
    for hub, refs in ((False, None), (True, torch.from_numpy(bank))):
        through_kb = kb_text_recall(kb, samples, ks=(1, 2), hub_correction=hub)
        direct = text_to_image_recall(model, samples, ks=(1, 2), references=refs, hub_k=3)
        assert through_kb == {key: pytest.approx(direct[key]) for key in ("recall@1", "recall@2")}


def test_a_damaged_or_swapped_bank_file_is_named_when_the_kb_opens(hub_kb, tmp_path):
    import shutil

    kb = hub_kb[0]
    copy = Path(shutil.copytree(kb.path, tmp_path / "kb"))
    (copy / TEXT_BANK).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"text bank .*text_bank.safetensors is unusable .*remove the file"):
        KnowledgeBase.open(copy)
    save_text_bank(copy, torch.ones(4, 8), 2)
    with pytest.raises(ValueError, match=r"unusable \(text bank must be \(R >= 1, 384\) .* got shape \(4, 8\)\)"):
        KnowledgeBase.open(copy)
    (copy / TEXT_BANK).unlink()
    plain = KnowledgeBase.open(copy)
    assert plain.text_bank is None
    assert [h["id"] for h in search(plain, text="red circle", k=5)] == [
        h["id"] for h in search(kb, text="red circle", k=5, hub_correction=False)]


def test_a_bank_kb_with_regions_ranks_text_by_the_plain_cosine(hub_kb, tmp_path):
    from metricvision.kb.regions import add_regions, enable_regions, kb_proposer

    _, model, bank = hub_kb
    kb = KnowledgeBase.create(tmp_path / "kb", model, text_bank=torch.from_numpy(bank), text_bank_k=3)
    samples = shape_classes()[::3]
    ids = kb.add(samples)
    corrected = [h["id"] for h in search(kb, text="red circle", k=8)]
    enable_regions(kb.path)
    add_regions(kb.path, ids, samples, kb_proposer(kb.path, model))
    hits = search(kb, text="red circle", k=8)
    assert hits == search(kb, text="red circle", k=8, hub_correction=False) and "regions" in hits[0]
    assert [h["id"] for h in hits] != corrected  # without regions the same KB ranked otherwise
