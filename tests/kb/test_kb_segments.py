"""Delta segments: small writes do not rewrite the base, deletions are tombstones, compaction keeps every item."""
import os
import time

import numpy as np
import pytest

from metricvision.cli import main
from metricvision.data import Sample
from metricvision.kb.live import LiveKB
from metricvision.kb.store import KnowledgeBase
from metricvision.index import FlatIndex

DIM = 384


def vectors(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def samples(n: int, tag: str) -> list:
    return [Sample(image=np.zeros((4, 4, 3), np.uint8), caption=f"{tag} item{j}", meta={"tag": tag}) for j in range(n)]


def base_inode(kb: KnowledgeBase) -> int:
    return os.stat(kb.store.path(kb.version) / "index.bin").st_ino


@pytest.fixture()
def kb(tmp_path, shapes_kb):
    kb = KnowledgeBase.create(tmp_path / "kb", shapes_kb.model)
    kb.add_embedded(samples(30, "base"), vectors(30, 0))
    return kb


def test_small_add_is_searchable_without_rewriting_the_base(kb):
    inode = base_inode(kb)
    x = vectors(2, 1)
    ids = kb.add_embedded(samples(2, "new"), x)
    assert base_inode(kb) == inode  # the base file is shared with the previous version, not rewritten
    assert [s["rows"] for s in kb.manifest["extra"]["segments"]] == [2]
    reopened = KnowledgeBase.open(kb.path)
    assert len(reopened) == 32 and reopened.search(x, 1)[1][:, 0].tolist() == ids
    assert reopened.get(ids[1])["caption"] == "new item1"
    assert set(reopened.keyword_search("new", 5)[1].tolist()) == set(ids)
    assert reopened.allowed_ids({"tag": "new"}).tolist() == ids


def test_delete_is_a_tombstone(kb):
    inode = base_inode(kb)
    new = kb.add_embedded(samples(2, "new"), vectors(2, 1))
    kb.remove([4, new[0]])
    assert base_inode(kb) == inode and kb.manifest["extra"]["tombstones"] == 2
    reopened = KnowledgeBase.open(kb.path)
    assert len(reopened) == 30 and reopened.index.tombstones.tolist() == [4, new[0]]
    everything = reopened.search(vectors(3, 2), 40)[1]
    assert not np.isin(everything, [4, new[0]]).any() and (everything >= 0).sum(1).tolist() == [30] * 3
    with pytest.raises(KeyError):
        reopened.get(4)
    assert 4 not in reopened.items([3, 4, 5]) and new[0] not in [it["id"] for it in reopened.recent(5)]
    assert reopened.keyword_search("item4", 5)[1].tolist() == []
    with pytest.raises(KeyError, match=r"no items with ids \[4\]"):
        reopened.remove([4])


def test_compaction_keeps_every_item(kb, capsys):
    kb.max_segments = 2  # the third small write merges the segments
    x = {i: v for i, v in zip(range(30), vectors(30, 0))}
    for r in range(4):
        v = vectors(3, 10 + r)
        x.update(zip(kb.add_embedded(samples(3, f"r{r}"), v), v))
        assert len(kb.index.segments) <= 2
    kb.remove([0, 31, 40])
    for i in (0, 31, 40):
        del x[i]
    assert main(["kb", "compact", str(kb.path), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"deletions_applied": 3' in out
    reopened = KnowledgeBase.open(kb.path)
    assert reopened.manifest["extra"]["segments"] == [] and reopened.index.tombstones.size == 0
    ids = sorted(x)
    ref = FlatIndex(DIM)
    ref.add(np.stack([x[i] for i in ids]), ids)
    q = vectors(5, 99)
    np.testing.assert_array_equal(reopened.search(q, len(ids))[1], ref.search(q, len(ids))[1])
    assert sorted(reopened.items(range(50))) == ids and reopened._items.count() == len(ids)


def test_segments_past_the_row_threshold_are_compacted_automatically(kb):
    kb.segment_rows = 4
    kb.add_embedded(samples(3, "a"), vectors(3, 5))
    assert len(kb.index.segments) == 1
    kb.add_embedded(samples(3, "b"), vectors(3, 6))
    assert kb.index.segments == [] and len(kb.index.base) == 36


def test_reader_follows_a_new_segment_without_reloading_the_base(kb):
    live = LiveKB(kb.path, poll_s=0.05)
    try:
        base = live.snapshot().index.base
        x = vectors(1, 7)
        item = KnowledgeBase.open(kb.path).add_embedded(samples(1, "live"), x)[0]
        deadline = time.monotonic() + 10
        while live.snapshot().search(x, 1)[1][0, 0] != item:
            assert time.monotonic() < deadline, "the reader did not follow the new version"
            time.sleep(0.02)
        assert live.snapshot().index.base is base  # shared between versions, not read again
    finally:
        live.close()


def test_each_version_matches_its_checksums(kb):
    # a file rewritten by a write (the tombstones) must not inherit the previous version's checksum
    for write in (lambda: kb.remove([1]), lambda: kb.remove([2]),
                  lambda: kb.add_embedded(samples(1, "c"), vectors(1, 8)), lambda: kb.remove([3])):
        write()
        kb.store.verify(kb.version)
        assert len(KnowledgeBase.open(kb.path)) == len(kb)
