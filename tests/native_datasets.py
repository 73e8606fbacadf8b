"""Tiny datasets written in their benchmarks' native layouts, for reader and end-to-end tests.

The pictures are real: renderings of the shipped emoji dataset, one identity per class,
saved as image files where each benchmark keeps them.
"""
from __future__ import annotations

import pickle
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image


# overrides making any recipe train in seconds on a tiny dataset
TINY = ["model.backbone=small_cnn", "model.pretrained=false", "model.pooling=avg", "model.dim=16", "data.image_size=16",
        "data.num_workers=0", "data.batch_size=8", "data.samples_per_class=4", "train.epochs=1", "train.eval_every=0",
        "optim.warmup_steps=1", "train.threads=1"]


def sets(overrides: Sequence[str]) -> List[str]:
    """["--set", o1, "--set", o2, ...] for `metricvision train`."""
    return [a for o in overrides for a in ("--set", o)]


def touch(path: Path, size=(8, 8)) -> Path:
    """A flat-colour image file at ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(path)
    return path


def write_gnd(root: Path, name: str, gnd, imlist, qimlist) -> None:
    """gnd_<name>.pkl of the revisited Oxford / Paris layout."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"gnd_{name}.pkl", "wb") as f:
        pickle.dump({"gnd": gnd, "imlist": imlist, "qimlist": qimlist}, f)


def write_plain(tmp_path: Path) -> Path:
    """A pickle of plain data only."""
    p = tmp_path / "plain.pkl"
    p.write_bytes(pickle.dumps({"a": [1, 2.5, "s", (1, 2)], "b": {3}}))
    return p


@lru_cache(maxsize=1)
def _renderings() -> Tuple[Tuple[np.ndarray, ...], ...]:
    """Per emoji identity with 12 renderings (vendor x skin tone), its (40, 40, 3) uint8 images."""
    from metricvision.data.emoji import load_emoji

    by: Dict[int, List[np.ndarray]] = defaultdict(list)
    for s in load_emoji("all"):
        by[s.label].append(s.image)
    return tuple(tuple(v) for _, v in sorted(by.items()) if len(v) >= 12)


def pictures(n_classes: int, per_class: int, first: int = 0) -> List[List[np.ndarray]]:
    """``per_class`` renderings (<= 12) of each of ``n_classes`` emoji identities, from the ``first``-th on."""
    return [list(v[:per_class]) for v in _renderings()[first : first + n_classes]]


def save(path: Path, image: np.ndarray) -> str:
    """Write ``image`` to ``path`` (format from the suffix); returns the path as a string."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return str(path)


def write_cub(root: Path, classes: int = 3, per_class: int = 4) -> Path:
    """CUB_200_2011/ with images.txt, image_class_labels.txt and images/: classes 1.. train, 101.. test."""
    root = root / "CUB_200_2011"
    images, labels, i = [], [], 0
    for half, offset in ((0, 1), (classes, 101)):
        for c, pics in enumerate(pictures(classes, per_class, half), start=offset):
            for pic in pics:
                i += 1
                rel = f"{c:03d}.Bird_{c}/Bird_{c}_{i:04d}.jpg"
                save(root / "images" / rel, pic)
                images.append(f"{i} {rel}")
                labels.append(f"{i} {c}")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    return root


def write_cars196(root: Path, classes: int = 3, per_class: int = 4) -> Path:
    """cars_annos.mat (relative_im_path, bbox, class) and car_ims/: classes 1.. train, 99.. test."""
    from scipy.io import savemat

    rows = []
    for half, offset in ((0, 1), (classes, 99)):
        for c, pics in enumerate(pictures(classes, per_class, half), start=offset):
            for pic in pics:
                rel = f"car_ims/{len(rows) + 1:06d}.jpg"
                save(root / rel, pic)
                rows.append((rel, 2, 2, 37, 37, c, 0))
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    ann = np.array(rows, dtype=[(f, "O") for f in fields])
    savemat(root / "cars_annos.mat", {"annotations": ann.reshape(1, -1)})
    return root


def write_sop(root: Path, classes: int = 3, per_class: int = 4) -> Path:
    """Stanford_Online_Products/ with Ebay_train.txt, Ebay_test.txt and <super class>_final/ images."""
    root = root / "Stanford_Online_Products"
    n = 0
    for split, half in (("train", 0), ("test", classes)):
        lines = ["image_id class_id super_class_id path"]
        for c, pics in enumerate(pictures(classes, per_class, half), start=half + 1):
            for j, pic in enumerate(pics):
                n += 1
                rel = f"bicycle_final/{c}_{j}.JPG"
                save(root / rel, pic)
                lines.append(f"{n} {c} 1 {rel}")
        (root / f"Ebay_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def write_inshop(root: Path, classes: int = 3, per_class: int = 4) -> Path:
    """list_eval_partition.txt and img/: train items, then items split between query and gallery."""
    lines = []
    for half, statuses in ((0, None), (classes, ("query", "gallery"))):
        for c, pics in enumerate(pictures(classes, per_class, half), start=half + 1):
            for j, pic in enumerate(pics):
                rel = f"img/WOMEN/Dresses/id_{c:08d}/{j:02d}_1_front.jpg"
                save(root / rel, pic)
                lines.append(f"{rel} id_{c:08d} {statuses[j % 2] if statuses else 'train'}")
    (root / "list_eval_partition.txt").write_text(f"{len(lines)}\nimage_name item_id evaluation_status\n" + "\n".join(lines) + "\n")
    return root


def write_class_folder(root: Path, classes: int = 6, per_class: int = 4, first: int = 0) -> Path:
    """root/<class name>/<i>.jpg (an image folder, or an identity folder for faces)."""
    for c, pics in enumerate(pictures(classes, per_class, first)):
        for j, pic in enumerate(pics):
            save(root / f"class_{c:02d}" / f"{j}.jpg", pic)
    return root


def write_lfw(root: Path, people: int = 4, per_person: int = 3, folds: int = 10) -> Path:
    """lfw/<name>/<name>_NNNN.jpg and pairs.txt: per fold one matched and one mismatched pair."""
    names = [f"Person_{p}" for p in range(people)]
    for name, pics in zip(names, pictures(people, per_person, first=20)):
        for j, pic in enumerate(pics, start=1):
            save(root / "lfw" / name / f"{name}_{j:04d}.jpg", pic)
    lines = [f"{folds}\t1"]
    for f in range(folds):
        a, b = names[f % people], names[(f + 1) % people]
        lines += [f"{a}\t1\t{2 + f % (per_person - 1)}", f"{a}\t{1 + f % per_person}\t{b}\t1"]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root


def write_miniimagenet(root: Path, classes: int = 3, per_class: int = 6) -> Path:
    """train.csv / val.csv / test.csv ("filename,label") and images/ with disjoint wnids per split."""
    for k, split in enumerate(("train", "val", "test")):
        lines = ["filename,label"]
        for c, pics in enumerate(pictures(classes, per_class, k * classes)):
            wnid = f"n{k * classes + c:08d}"
            for j, pic in enumerate(pics):
                save(root / "images" / f"{wnid}{j:08d}.jpg", pic)
                lines.append(f"{wnid}{j:08d}.jpg,{wnid}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def write_long_tail(root: Path, prefix: str, counts: Sequence[int] = (10, 6, 2), test_per_class: int = 2) -> Path:
    """<prefix>_train.txt (long-tailed ``counts`` per class), _val.txt, _test.txt and the images under root."""
    pics = pictures(len(counts), 12)
    for split in ("train", "val", "test"):
        lines = []
        for c, n in enumerate(counts):
            take = range(n) if split == "train" else range(12 - test_per_class, 12)
            for j in take:
                rel = f"{split}/n{c:03d}/{j}.jpg"
                save(root / rel, pics[c][j % 12])
                lines.append(f"{rel} {c}")
        (root / f"{prefix}_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def write_brown(root: Path, points: int = 4, per_point: int = 4, first: int = 0) -> Path:
    """A Brown / UBC subset: patches0000.bmp (16 x 16 grid of 64 x 64 patches, row-major), info.txt
    (3D point of each patch) and m50_100_100_0.txt (matching and non-matching pairs)."""
    sheet = np.zeros((1024, 1024, 3), np.uint8)
    info, index = [], 0
    for p, pics in enumerate(pictures(points, per_point, first)):
        for pic in pics:
            row, col = divmod(index, 16)
            sheet[row * 64 : row * 64 + 64, col * 64 : col * 64 + 64] = np.asarray(Image.fromarray(pic).resize((64, 64)))
            info.append(f"{p} 0")
            index += 1
    save(root / "patches0000.bmp", sheet)
    (root / "info.txt").write_text("\n".join(info) + "\n")
    pairs = [(a, a + 1) for a in range(0, index, per_point)] + [(a, (a + per_point) % index) for a in range(0, index, per_point)]
    (root / "m50_100_100_0.txt").write_text("".join(f"{a} {a // per_point} 0 {b} {b // per_point} 0 0\n" for a, b in pairs))
    return root


def write_market1501(root: Path, ids: int = 3, per_id: int = 4) -> Path:
    """bounding_box_train/, query/, bounding_box_test/ with '<pid>_c<camera>s1_<frame>_00.jpg' files:
    training identities first, then test identities seen by camera 1 (query) and 2 (gallery)."""
    for p, pics in enumerate(pictures(2 * ids, per_id), start=1):
        for j, pic in enumerate(pics):
            folder = "bounding_box_train" if p <= ids else ("query" if j == 0 else "bounding_box_test")
            save(root / folder / f"{p:04d}_c{1 if folder == 'query' else 2}s1_{j:06d}_00.jpg", pic)
    return root


def write_csv(root: Path, classes: int = 4, per_class: int = 4, first: int = 0) -> Path:
    """root/images/<class>_<i>.jpg and root/train.csv ("path,label", no split column)."""
    lines = ["path,label"]
    for c, pics in enumerate(pictures(classes, per_class, first)):
        for j, pic in enumerate(pics):
            save(root / "images" / f"{c}_{j}.jpg", pic)
            lines.append(f"images/{c}_{j}.jpg,landmark_{c}")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root


def write_roxford5k(root: Path, landmarks: int = 3, per_landmark: int = 4) -> Path:
    """roxford5k/gnd_roxford5k.pkl and jpg/: one query per landmark (its first image, boxed) whose
    other images are "easy", one "hard" and the first of the next landmark "junk"."""
    root = root / "roxford5k"
    imlist, qimlist, gnd = [], [], []
    for k, pics in enumerate(pictures(landmarks, per_landmark + 1, first=40)):
        save(root / "jpg" / f"q{k}.jpg", pics[0])
        qimlist.append(f"q{k}")
        first = len(imlist)
        for j, pic in enumerate(pics[1:]):
            save(root / "jpg" / f"db{k}_{j}.jpg", pic)
            imlist.append(f"db{k}_{j}")
        members = list(range(first, first + per_landmark))
        gnd.append({"bbx": [2.0, 2.0, 38.0, 38.0], "easy": members[1:], "hard": members[:1],
                    "junk": [(first + per_landmark) % (landmarks * per_landmark)]})
    write_gnd(root, "roxford5k", gnd, imlist, qimlist)
    return root
