"""Fashion-MNIST: built from tiny idx files in dataset-fashion-mnist's package layout."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from metricvision.data import DATASETS, check_class_disjoint
from metricvision.data.fashion import FILES, build, power_law_counts, read_idx


def write_idx(path: Path, array: np.ndarray) -> None:
    """An unsigned-byte idx file (gzip), as the package ships them."""
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">i4").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def fashion_file(tmp_path_factory) -> Path:
    """A dataset file from idx files of 40 train (4 per class) and 20 test (2 per class) 28 x 28 images."""
    tmp = tmp_path_factory.mktemp("fashion")
    idx_dir = tmp / "usr" / "share" / "datasets" / "fashion-mnist"
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 20)):
        images_file, labels_file = FILES[split]
        write_idx(idx_dir / images_file, rng.integers(0, 256, (n, 28, 28)))
        write_idx(idx_dir / labels_file, np.arange(n) % 10)
    out = tmp / "cache" / "fashion_mnist.npz"
    assert build(idx_dir, out) == {"images": 60, "identities": 10, "images_train": 40, "images_test": 20}
    return out


def test_read_idx_checks_magic_and_size(tmp_path):
    write_idx(tmp_path / "a.gz", np.arange(6).reshape(2, 3))
    assert read_idx(tmp_path / "a.gz").tolist() == [[0, 1, 2], [3, 4, 5]]
    (tmp_path / "bad").write_bytes(b"\x00\x00\x09\x01" + np.array([3], ">i4").tobytes() + b"abc")
    with pytest.raises(ValueError, match="not an unsigned-byte idx file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(b"\x00\x00\x08\x01" + np.array([5], ">i4").tobytes() + b"abc")
    with pytest.raises(ValueError, match="header says"):
        read_idx(tmp_path / "short")


def test_retrieval_split_is_class_disjoint_and_deterministic(fashion_file):
    splits = DATASETS.create("fashion", path=str(fashion_file))
    check_class_disjoint(splits["train"], splits["test"])
    assert {s.label for s in splits["train"]} == set(range(5)) and {s.label for s in splits["test"]} == set(range(5, 10))
    assert len(splits["train"]) + len(splits["test"]) == 60
    again = DATASETS.create("fashion", path=str(fashion_file))
    assert [s.label for s in again["test"]] == [s.label for s in splits["test"]]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(again["test"], splits["test"]))
    s = splits["test"][0]
    assert s.image.shape == (28, 28) and s.meta["category"] == "Sandal" and DATASETS.info("fashion").protocol == "retrieval"


def test_benchmark_views(fashion_file):
    inc = DATASETS.create("fashion_incremental", path=str(fashion_file))
    assert len(inc["train"]) == 40 and len(inc["test"]) == 20
    assert DATASETS.info("fashion_incremental").protocol == "incremental"
    lt = DATASETS.create("fashion_longtail", path=str(fashion_file), imbalance=4.0)
    sizes = np.bincount([s.label for s in lt["train"]], minlength=10)
    assert sizes.tolist() == power_law_counts(4, 10, 4.0) and sizes[0] == 4 and sizes[-1] == 1
    op = DATASETS.create("fashion_openset", path=str(fashion_file))
    assert {s.label for s in op["train"]} == set(range(6)) == {s.label for s in op["test"]}
    assert len(op["open"]) == 8 and {s.label for s in op["open"]} == {-1}
    assert DATASETS.info("fashion_openset").splits == ("train", "test", "open")


def test_power_law_counts_and_bad_options(fashion_file):
    assert power_law_counts(6000, 10, 100.0)[0] == 6000 and power_law_counts(6000, 10, 100.0)[-1] == 60
    with pytest.raises(ValueError, match="imbalance must be >= 1"):
        power_law_counts(10, 10, 0.5)
    with pytest.raises(ValueError, match="train_classes must be in"):
        DATASETS.create("fashion", path=str(fashion_file), train_classes=10)


def test_missing_file_names_the_fetch_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="metricvision data fetch fashion"):
        DATASETS.create("fashion", path=str(tmp_path / "none.npz"))


def test_data_list_says_which_datasets_are_fetched_with_size_and_licences(fashion_file, monkeypatch, tmp_path, capsys):
    import json

    from metricvision.cli import main
    from metricvision.data.fashion import default_path

    monkeypatch.setenv("METRICVISION_CACHE", str(tmp_path))
    build(fashion_file.parent.parent / "usr" / "share" / "datasets" / "fashion-mnist", default_path(),
          {"dataset-fashion-mnist": "Expat"})
    assert main(["data", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["datasets"]
    for name in ("fashion", "fashion_openset"):
        assert listed[name]["fetched"] is True and listed[name]["file"] == str(default_path())
        assert listed[name]["package_licences"] == {"dataset-fashion-mnist": "Expat"} and listed[name]["megabytes"] >= 0
    assert listed["icons"]["fetched"] is False and listed["glyphs_fewshot"]["fetched"] is False
    assert listed["emoji"]["source"] == "package" and listed["cub"]["source"] == "path"
    assert main(["data", "list"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "NOT FETCHED (run `metricvision data fetch icons`)" in rows["icons"]
    assert f"fetched: {default_path()}" in rows["fashion"] and "built in" not in rows["fashion"]
    assert "ships with the package" in rows["emoji"] and "path required" in rows["cub"]
