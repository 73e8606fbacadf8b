import numpy as np
import pytest

pytest.importorskip("faiss")

from metricvision.index import INDEXES, FaissIndex, FlatIndex, create_index


def recall(ids: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids, ref)]))


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_faiss_flat_equals_flat_index(data, metric):
    x, q = data
    ours, peer = create_index("flat", 32, metric), create_index("faiss:Flat", 32, metric)
    assert isinstance(ours, FlatIndex) and isinstance(peer, FaissIndex)
    ids = np.arange(len(x)) * 7 + 3
    ours.add(x, ids)
    peer.add(x[:1000], ids[:1000])
    peer.add(x[1000:], ids[1000:])  # incremental add
    s1, i1 = ours.search(q, 10)
    s2, i2 = peer.search(q, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, atol=1e-4)


@pytest.mark.parametrize(
    "spec,params,min_recall",
    [("HNSW32", "efSearch=64", 0.95), ("IVF16,Flat", "nprobe=4", 0.9), ("IVF16,SQ8", "nprobe=4", 0.9), ("IVF16,PQ16x4", "nprobe=4", 0.15)],
)
def test_fast_index_recall_against_exact(data, spec, params, min_recall):
    x, q = data
    exact = FlatIndex(32)
    exact.add(x)
    index = create_index(spec, 32, params=params)
    assert not isinstance(index, FlatIndex)
    index.add(x[:3000])  # trains on the first add
    index.add(x[3000:])  # no rebuild
    assert len(index) == len(x)
    _, ids = index.search(q, 10)
    assert recall(ids, exact.search(q, 10)[1]) >= min_recall


def test_explicit_train_and_too_few_points(data):
    x, _ = data
    index = FaissIndex(32, "IVF16,Flat")
    assert not index.is_trained
    index.train(x)
    assert index.is_trained and len(index) == 0
    with pytest.raises(ValueError, match="IVF64"):
        FaissIndex(32, "IVF64,Flat").add(x[:10])


@pytest.mark.parametrize("spec", ["faiss:Flat", "HNSW16", "IVF8,Flat"])
def test_remove_then_search_never_returns_removed(data, spec):
    x, q = data
    index = create_index(spec, 32, params="nprobe=8" if "IVF" in spec else None)
    index.add(x)
    drop = np.arange(0, len(x), 2)
    assert index.remove(np.concatenate([drop, [10**9]])) == len(drop)
    assert index.remove(drop[:3]) == 0  # already gone
    assert len(index) == len(x) - len(drop)
    _, ids = index.search(q, 20)
    assert not np.isin(ids, drop).any() and (ids >= 0).all()
    exact = FlatIndex(32)
    exact.add(x[1::2], np.arange(1, len(x), 2))
    assert recall(ids, exact.search(q, 20)[1]) >= 0.9


def test_hnsw_rejects_reusing_a_removed_id(data):
    x, _ = data
    index = FaissIndex(32, "HNSW16")
    index.add(x[:100])
    index.remove([5])
    with pytest.raises(ValueError, match="5"):
        index.add(x[:1], [5])


def test_padding_when_fewer_than_k(data):
    x, q = data
    for spec in ["faiss:Flat", "HNSW16"]:
        index = create_index(spec, 32)
        s, i = index.search(q[:2], 3)  # empty
        assert (i == -1).all() and np.isneginf(s).all()
        index.add(x[:4])
        s, i = index.search(q[:2], 6)
        assert s.shape == i.shape == (2, 6) and s.dtype == np.float32 and i.dtype == np.int64
        assert (i[:, 4:] == -1).all() and np.isneginf(s[:, 4:]).all() and (i[:, :4] >= 0).all()


@pytest.mark.parametrize("spec", ["HNSW16", "IVF8,PQ8x4"])
def test_save_load_roundtrip(tmp_path, data, spec):
    x, q = data
    index = FaissIndex(32, spec, params="nprobe=8" if "IVF" in spec else None)
    index.add(x, np.arange(len(x)) + 100)
    index.remove([100, 101])
    index.save(tmp_path / "i.npz")
    loaded = INDEXES.get("faiss").load(tmp_path / "i.npz")
    assert len(loaded) == len(index) and loaded.spec == spec
    for a, b in zip(index.search(q, 5), loaded.search(q, 5)):
        np.testing.assert_array_equal(a, b)


def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="Bogus7"):
        FaissIndex(8, "Bogus7")
    with pytest.raises(ValueError, match="cosine"):
        FaissIndex(8, "Flat", metric="cosine")
    with pytest.raises(ValueError, match="params"):
        create_index("flat", 8, params="nprobe=2")
    with pytest.raises(ValueError, match="dimension 8"):
        FaissIndex(8, "Flat").add(np.zeros((2, 4), np.float32))
