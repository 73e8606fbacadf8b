"""Landmark training readers on tiny native layouts: a Google-Landmarks-v2 csv and SfM-120k's pickle."""
import pickle

import pytest
from PIL import Image

from metricvision.data.readers import DatasetFormatError
from metricvision.data.registry import DATASETS, check_dataset
from native_datasets import touch


def test_gldv2_csv_nested_ids_and_paths(tmp_path):
    rows = [("abc001", "7"), ("abd002", "7"), ("bcd003", "9"), ("cde004", "3"), ("cdf005", "3")]
    (tmp_path / "train.csv").write_text("id,url,landmark_id\n" + "".join(f"{i},http://x/{i}.jpg,{k}\n" for i, k in rows))
    for i, _ in rows:
        touch(tmp_path / "train" / i[0] / i[1] / i[2] / f"{i}.jpg")
    splits = DATASETS.create("gldv2", path=tmp_path)
    train = splits["train"]
    assert [s.image.name for s in train] == ["abc001.jpg", "abd002.jpg", "cde004.jpg", "cdf005.jpg"]  # 9 has one image
    assert [s.label for s in train] == [1, 1, 0, 0]  # sorted landmark ids "3", "7"
    assert check_dataset("gldv2", tmp_path)["train_classes"] == 2
    (tmp_path / "paths.csv").write_text("path,landmark_id\na.jpg,1\nb.jpg,1\n")
    assert len(DATASETS.create("gldv2", path=tmp_path / "paths.csv", min_images=1)["train"]) == 2
    (tmp_path / "bad.csv").write_text("file,label\na.jpg,1\n")
    with pytest.raises(DatasetFormatError, match="landmark_id"):
        DATASETS.create("gldv2", path=tmp_path / "bad.csv")
    assert DATASETS.info("gldv2").train_split == "train"


def test_sfm120k_pickle_layout(tmp_path):
    root = tmp_path / "train" / "retrieval-SfM-120k"
    cids = ["aa0011", "bb0012", "cc0013", "dd0024"]
    db = {m: {"cids": cids, "cluster": [5, 5, 8, 8], "qidxs": [0, 2], "pidxs": [1, 3]} for m in ("train", "val")}
    root.mkdir(parents=True)
    (root / "retrieval-SfM-120k.pkl").write_bytes(pickle.dumps(db))
    for c in cids:  # cirtorch's images are jpg files named by their cid, no extension
        (root / "ims" / c[-2:] / c[-4:-2] / c[-6:-4]).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / "ims" / c[-2:] / c[-4:-2] / c[-6:-4] / c, format="JPEG")
    splits = DATASETS.create("sfm120k", path=tmp_path)
    assert [s.label for s in splits["train"]] == [5, 5, 8, 8]
    assert splits["train"][0].meta["positive"] == 1 and splits["train"][1].meta["positive"] == -1
    assert check_dataset("sfm120k", tmp_path)["images"] == 4
    db["train"]["pidxs"] = [1, 9]
    (root / "retrieval-SfM-120k.pkl").write_bytes(pickle.dumps(db))
    with pytest.raises(DatasetFormatError, match="pair index 9 outside"):
        DATASETS.create("sfm120k", path=root)
