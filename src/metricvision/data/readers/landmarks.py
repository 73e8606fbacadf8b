"""Landmark training data: Google Landmarks (v2) csv files and SfM-120k's tuple pickle.

Google Landmarks v2 (Weyand et al., CVPR 2020) lists train.csv rows "id,url,landmark_id"
and stores image <id> at train/<id[0]>/<id[1]>/<id[2]>/<id>.jpg; a csv may instead give a
"path" column (relative to the csv). SfM-120k (Radenovic et al., ECCV 2016 / TPAMI 2018)
follows cirtorch's layout: retrieval-SfM-120k.pkl holds, for "train" and "val", the image
names "cids", their 3D-model "cluster" ids and the query / positive index pairs "qidxs" /
"pidxs"; image <cid> is ims/<cid[-2:]>/<cid[-4:-2]>/<cid[-6:-4]>/<cid>.
"""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Dict, List

from metricvision.data.readers.base import DatasetFormatError, find_root, label_ids, load_plain_pickle, require
from metricvision.data.registry import Splits
from metricvision.data.registry import register_dataset
from metricvision.data.sample import Sample

GLD_FORMAT = "a csv with a header holding 'landmark_id' and 'id' (images train/a/b/c/<id>.jpg) or 'path' columns"
SFM_FORMAT = "a pickle of {'train': {'cids', 'cluster', 'qidxs', 'pidxs'}, 'val': {...}}"


def _keep_frequent(samples: List[Sample], min_images: int) -> List[Sample]:
    counts = Counter(s.meta["landmark"] for s in samples)
    kept = [s for s in samples if counts[s.meta["landmark"]] >= min_images]
    ids = label_ids(s.meta["landmark"] for s in kept)
    for s in kept:
        s.label = ids[s.meta["landmark"]]
    return kept


@register_dataset(
    "gldv2", splits=("train",), protocol=None, licence="images under their Wikimedia Commons licences",
    description="Google Landmarks v2 style csv (id,url,landmark_id or path,landmark_id); training only, evaluate on roxford5k / rparis6k",
)
def read_gldv2(root: str | Path, csv_name: str = "train.csv", min_images: int = 2) -> Splits:
    """Split "train" of a Google-Landmarks-style csv; label = landmark (those with >= ``min_images`` images).

    ``root`` is the folder holding ``csv_name`` (or the csv itself).
    """
    if min_images < 1:
        raise ValueError(f"min_images must be >= 1, got {min_images}")
    path = Path(root)
    path = path if path.suffix == ".csv" else require(path / csv_name, GLD_FORMAT)
    require(path, GLD_FORMAT)
    base = path.parent
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or [])
        if "landmark_id" not in fields or not fields & {"id", "path"}:
            raise DatasetFormatError(f"{path}: header {sorted(fields)}; expected {GLD_FORMAT}")
        samples = []
        for n, row in enumerate(reader, start=2):
            image = row.get("path") or ""
            if not image:
                i = row.get("id") or ""
                if len(i) < 3:
                    raise DatasetFormatError(f"{path} line {n}: image id '{i}' too short for train/a/b/c/<id>.jpg")
                image = f"train/{i[0]}/{i[1]}/{i[2]}/{i}.jpg"
            samples.append(Sample(base / image, split="train", meta={"landmark": row["landmark_id"]}))
    kept = _keep_frequent(samples, min_images)
    if not kept:
        raise DatasetFormatError(f"{path}: no landmark has {min_images} or more images")
    return {"train": kept}


def cid_path(ims: Path, cid: str) -> Path:
    """cirtorch's cid2filename: ims/<cid[-2:]>/<cid[-4:-2]>/<cid[-6:-4]>/<cid>."""
    return ims / cid[-2:] / cid[-4:-2] / cid[-6:-4] / cid


@register_dataset(
    "sfm120k", splits=("train", "val"), protocol=None, licence="research use (Flickr images)",
    description="SfM-120k (cirtorch): retrieval-SfM-120k.pkl and ims/; training only, evaluate on roxford5k / rparis6k",
)
def read_sfm120k(root: str | Path) -> Splits:
    """Splits "train" and "val"; label = 3D model (cluster); meta "positive" = the index of a query's matching image."""
    root = find_root(root, "retrieval-SfM-120k.pkl", ["train/retrieval-SfM-120k", "retrieval-SfM-120k"])
    path = root / "retrieval-SfM-120k.pkl"
    db = load_plain_pickle(path, SFM_FORMAT)
    splits: Splits = {}
    try:
        for mode in ("train", "val"):
            part = db[mode]
            cids, clusters = list(part["cids"]), [int(c) for c in part["cluster"]]
            if len(cids) != len(clusters):
                raise ValueError(f"'{mode}' has {len(cids)} cids but {len(clusters)} cluster ids")
            positives: Dict[int, int] = {int(q): int(p) for q, p in zip(part["qidxs"], part["pidxs"])}
            bad = [i for kv in positives.items() for i in kv if not 0 <= i < len(cids)]
            if bad:
                raise ValueError(f"'{mode}' pair index {bad[0]} outside its {len(cids)} images")
            splits[mode] = [
                Sample(cid_path(root / "ims", str(c)), label=k, split=mode, meta={"positive": positives.get(i, -1)})
                for i, (c, k) in enumerate(zip(cids, clusters))
            ]
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetFormatError(f"{path}: expected {SFM_FORMAT} ({e})") from e
    return splits
