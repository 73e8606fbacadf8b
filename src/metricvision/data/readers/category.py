"""Category retrieval benchmarks: CUB-200-2011, Cars196, Stanford Online Products, In-Shop.

Class-disjoint splits as in the metric learning literature (Oh Song et al. 2016): the first
100 CUB classes and the first 98 Cars classes train, the rest test; SOP and In-Shop use their
own split files, In-Shop evaluates query against gallery.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from metricvision.data.readers.base import DatasetFormatError, as_int, find_root, read_rows, require
from metricvision.data.registry import Splits, register_dataset
from metricvision.data.sample import Sample


@register_dataset(
    "cub", licence="non-commercial research and education (the authors' terms)",
    description="CUB-200-2011 birds: images.txt, image_class_labels.txt; classes 1-100 train, 101-200 test",
)
def read_cub(root: str | Path) -> Splits:
    """CUB_200_2011: images.txt ("id path") and image_class_labels.txt ("id class"), classes 1-200."""
    root = find_root(root, "images.txt", ["CUB_200_2011"])
    images = read_rows(root / "images.txt", 2, "lines '<image id> <relative path>'")
    label_file = root / "image_class_labels.txt"
    labels = {r[0]: as_int(r[1], label_file, "'<image id> <class 1-200>'")
              for r in read_rows(label_file, 2, "lines '<image id> <class id>'")}
    splits: Splits = {"train": [], "test": []}
    for image_id, rel in images:
        if image_id not in labels:
            raise DatasetFormatError(f"{label_file}: image id {image_id} of images.txt has no class")
        c = labels[image_id] - 1
        split = "train" if c < 100 else "test"
        splits[split].append(Sample(root / "images" / rel, label=c, split=split))
    return splits


@register_dataset(
    "cars196", licence="non-commercial research (ImageNet-style terms)",
    description="Cars196: cars_annos.mat; classes 1-98 train, 99-196 test",
)
def read_cars(root: str | Path) -> Splits:
    """Cars196: cars_annos.mat (annotations with relative_im_path, bbox_x1..y2, class)."""
    from scipy.io import loadmat

    root = Path(root)
    mat = require(root / "cars_annos.mat", "a MATLAB file with an 'annotations' struct array")
    try:
        ann = np.atleast_1d(loadmat(mat, squeeze_me=True)["annotations"])
        rows = [(str(a["relative_im_path"]), int(a["class"]),
                 tuple(float(a[f]) for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"))) for a in ann]
    except (KeyError, ValueError, IndexError, TypeError) as e:
        raise DatasetFormatError(f"{mat}: expected 'annotations' with fields relative_im_path, class, bbox_x1..bbox_y2 ({e})") from e
    splits: Splits = {"train": [], "test": []}
    for rel, c, box in rows:
        split = "train" if c <= 98 else "test"
        splits[split].append(Sample(root / rel, label=c - 1, bbox=box, split=split))
    return splits


@register_dataset(
    "sop", licence="research use (no explicit licence)",
    description="Stanford Online Products: Ebay_train.txt / Ebay_test.txt",
)
def read_sop(root: str | Path) -> Splits:
    """Stanford Online Products: Ebay_train.txt / Ebay_test.txt ("image_id class_id super_class_id path")."""
    root = find_root(root, "Ebay_train.txt", ["Stanford_Online_Products"])
    splits: Splits = {}
    for split in ("train", "test"):
        path = root / f"Ebay_{split}.txt"
        expected = "a header then lines '<image_id> <class_id> <super_class_id> <path>'"
        splits[split] = [
            Sample(root / r[3], label=as_int(r[1], path, expected) - 1, split=split,
                   meta={"super_class": as_int(r[2], path, expected) - 1})
            for r in read_rows(path, 4, expected, skip=1)
        ]
    return splits


@register_dataset(
    "inshop", splits=("train", "query", "gallery"), licence="non-commercial research (DeepFashion agreement)",
    description="In-Shop Clothes: list_eval_partition.txt; query against gallery",
)
def read_inshop(root: str | Path) -> Splits:
    """In-Shop Clothes: list_eval_partition.txt ("image_name item_id evaluation_status"), after two header lines."""
    root = find_root(root, "list_eval_partition.txt", ["Eval", "In-shop Clothes Retrieval Benchmark"])
    path = root / "list_eval_partition.txt"
    expected = "a count line, a header, then lines '<image_name> id_<item> train|query|gallery'"
    splits: Splits = {"train": [], "query": [], "gallery": []}
    image_root = root.parent if not (root / "img").exists() and (root.parent / "img").exists() else root
    for name, item, status in read_rows(path, 3, expected, skip=2):
        if status not in splits or not item.startswith("id_"):
            raise DatasetFormatError(f"{path}: expected {expected}, got '{name} {item} {status}'")
        splits[status].append(Sample(image_root / name, label=as_int(item[3:], path, expected), split=status))
    return splits
