"""Class-split benchmarks: miniImageNet (few-shot), ImageNet-LT / Places-LT (long tail, open set)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from metricvision.data.readers.base import DatasetFormatError, as_int, find_root, label_ids, read_rows, require
from metricvision.data.registry import Splits, register_dataset
from metricvision.data.sample import Sample


@register_dataset(
    "miniimagenet", splits=("train", "val", "test"), protocol="fewshot",
    licence="ImageNet terms: non-commercial research",
    description="miniImageNet (Ravi & Larochelle split): train.csv / val.csv / test.csv and images/",
)
def read_miniimagenet(root: str | Path) -> Splits:
    """miniImageNet (Ravi & Larochelle split): train.csv / val.csv / test.csv ("filename,label") and images/.

    Class names (wnids) map to one label space across splits, so the splits stay disjoint.
    """
    root = find_root(root, "train.csv", ["mini-imagenet", "miniImageNet"])
    expected = "a header 'filename,label' then lines '<file name>,<wnid>'"
    rows = {s: read_rows(root / f"{s}.csv", 2, expected, skip=1, sep=",") for s in ("train", "val", "test")}
    ids = label_ids([r[1] for rs in rows.values() for r in rs])
    return {s: [Sample(root / "images" / r[0], label=ids[r[1]], split=s, meta={"wnid": r[1]}) for r in rs] for s, rs in rows.items()}


def read_lt_lists(root: str | Path, prefix: str, image_root: Optional[str | Path]) -> Splits:
    """<prefix>_{train,val,test,open}.txt lists ("<relative path> <label>"); open-set items get label -1."""
    root = Path(root)
    images = Path(image_root) if image_root is not None else root
    expected = "lines '<relative image path> <class id>'"
    splits: Splits = {}
    for split in ("train", "val", "test", "open"):
        path = root / f"{prefix}_{split}.txt"
        if split in ("val", "open") and not path.exists():
            continue
        require(path, expected)
        splits[split] = [Sample(images / r[0], label=-1 if split == "open" else as_int(r[1], path, expected), split=split)
                         for r in read_rows(path, 2 if split != "open" else 1, expected)]
    train_classes = {s.label for s in splits["train"]}
    unseen = {s.label for s in splits["test"]} - train_classes
    if unseen:
        raise DatasetFormatError(f"{root / (prefix + '_test.txt')}: classes {sorted(unseen)[:5]} never appear in {prefix}_train.txt")
    return splits


@register_dataset(
    "imagenet_lt", splits=("train", "val", "test", "open"), protocol="longtail", class_disjoint=False,
    licence="ImageNet terms: non-commercial research",
    description="ImageNet-LT lists ImageNet_LT_*.txt (option image_root=ImageNet folder); many / medium / few-shot",
)
def read_imagenet_lt(root: str | Path, image_root: Optional[str | Path] = None) -> Splits:
    """ImageNet-LT (Liu et al. 2019): ImageNet_LT_{train,val,test}.txt (+ _open.txt); images under ``image_root``."""
    return read_lt_lists(find_root(root, "ImageNet_LT_train.txt", ["ImageNet_LT"]), "ImageNet_LT", image_root)


@register_dataset(
    "places_lt", splits=("train", "val", "test", "open"), protocol="longtail", class_disjoint=False,
    licence="Places365 terms: non-commercial research",
    description="Places-LT lists Places_LT_*.txt (option image_root=Places365 folder); many / medium / few-shot",
)
def read_places_lt(root: str | Path, image_root: Optional[str | Path] = None) -> Splits:
    """Places-LT (Liu et al. 2019): Places_LT_{train,val,test}.txt (+ _open.txt); images under ``image_root``."""
    return read_lt_lists(find_root(root, "Places_LT_train.txt", ["Places_LT"]), "Places_LT", image_root)

