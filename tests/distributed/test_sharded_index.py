"""Sharded search (local and over Ray actors) returns exactly the single-index results."""
from __future__ import annotations

import numpy as np
import pytest

from metricvision.index import FlatIndex
from metricvision.index.sharded import ShardedIndex, build_ivf_from_shards, merge_topk
from metricvision.metrics import evaluate_retrieval

D = 16


def _data(n: int = 300, nq: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, D)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = rng.standard_normal((nq, D)).astype(np.float32)
    return x, q


def _reference(x: np.ndarray, q: np.ndarray, k: int, metric: str = "ip"):
    flat = FlatIndex(D, metric)
    flat.add(x, np.arange(100, 100 + len(x)))
    return flat.search(q, k)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_local_shards_equal_one_exact_index(metric: str) -> None:
    x, q = _data()
    sharded = ShardedIndex(D, num_shards=3, metric=metric)
    sharded.add(x[:100], np.arange(100, 200))
    sharded.add(x[100:], np.arange(200, 400))
    assert sharded.shard_sizes() == [100, 100, 100] and len(sharded) == 300
    ref_s, ref_i = _reference(x, q, 10, metric)
    got_s, got_i = sharded.search(q, 10)
    np.testing.assert_array_equal(got_i, ref_i)
    np.testing.assert_allclose(got_s, ref_s, rtol=1e-5, atol=1e-5)


def test_merge_topk_pads_when_shards_hold_fewer_than_k() -> None:
    a = (np.array([[0.9, -np.inf]], np.float32), np.array([[3, -1]]))
    b = (np.array([[0.95, 0.1]], np.float32), np.array([[7, 8]]))
    s, i = merge_topk([a, b], 5)
    assert i.tolist() == [[7, 3, 8, -1, -1]]
    assert np.isneginf(s[0, 3:]).all()


@pytest.mark.distributed
def test_ray_shards_equal_one_exact_index_in_search_and_evaluation(ray_local) -> None:
    x, q = _data()
    labels = np.repeat(np.arange(30), 10)
    sharded = ShardedIndex(D, num_shards=2, use_ray=True)
    got = evaluate_retrieval(x, labels, clustering=False, index=sharded)  # adds x with ids 0..N-1
    assert got == evaluate_retrieval(x, labels, clustering=False)
    assert sharded.shard_sizes() == [150, 150]
    flat = FlatIndex(D)
    flat.add(x)
    ref_s, ref_i = flat.search(q, 7)
    got_s, got_i = sharded.search(q, 7)
    np.testing.assert_array_equal(got_i, ref_i)
    np.testing.assert_allclose(got_s, ref_s, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("on_disk", [False, True])
def test_ivf_merged_from_shards_equals_ivf_built_at_once(tmp_path, on_disk: bool) -> None:
    pytest.importorskip("faiss")
    from metricvision.index.faiss_index import FaissIndex

    x, q = _data(n=600)
    ids = np.arange(1000, 1600)
    shards = [(x[:250], ids[:250]), (x[250:], ids[250:])]
    merged = build_ivf_from_shards(shards, x, "IVF8,Flat", out_dir=tmp_path, on_disk=on_disk)
    assert len(merged) == 600
    whole = FaissIndex(D, "IVF8,Flat", "ip")
    whole.train(x)
    whole.add(x, ids)
    for nprobe in (1, 8):
        merged._index.nprobe = whole._index.nprobe = nprobe
        got_s, got_i = merged.search(q, 10)
        ref_s, ref_i = whole.search(q, 10)
        np.testing.assert_array_equal(got_i, ref_i)
        np.testing.assert_allclose(got_s, ref_s, rtol=1e-6)
    # probing every list is exact search
    flat = FlatIndex(D)
    flat.add(x, ids)
    np.testing.assert_array_equal(got_i, flat.search(q, 10)[1])
    if on_disk:
        merged.save(tmp_path / "merged.npz")
        again = FaissIndex.load(tmp_path / "merged.npz")
        again._index.nprobe = 8
        np.testing.assert_array_equal(again.search(q, 10)[1], got_i)
