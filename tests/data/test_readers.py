"""Each dataset reader on a tiny copy of its benchmark's native layout, plus its error messages."""
import pickle

import numpy as np
import pytest
from native_datasets import touch, write_gnd, write_plain
from scipy.io import savemat

from metricvision.data import DATASETS, check_dataset
from metricvision.data.readers import DatasetFormatError, crop_to_box, load_plain_pickle


def test_registry_lists_every_family():
    assert {"emoji", "cub", "cars196", "sop", "inshop", "roxford5k", "rparis6k", "revisitop1m", "market1501", "dukemtmc", "lfw",
            "brown", "hpatches", "miniimagenet", "imagenet_lt", "places_lt", "folder", "csv"} <= set(DATASETS.names())
    with pytest.raises(KeyError, match="expected one of"):
        check_dataset("mnist", ".")


def test_cub_first_100_classes_train(tmp_path):
    root = tmp_path / "CUB_200_2011"
    lines, labels = [], []
    for i, c in enumerate([1, 100, 101, 200], start=1):
        rel = f"{c:03d}.Bird/img{i}.jpg"
        touch(root / "images" / rel)
        lines.append(f"{i} {rel}")
        labels.append(f"{i} {c}")
    (root / "images.txt").write_text("\n".join(lines) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    splits = DATASETS.get("cub")(tmp_path)
    assert [s.label for s in splits["train"]] == [0, 99] and [s.label for s in splits["test"]] == [100, 199]
    assert check_dataset("cub", tmp_path)["test_classes"] == 2
    (root / "image_class_labels.txt").write_text("1 one\n")
    with pytest.raises(DatasetFormatError, match="image_class_labels.txt"):
        DATASETS.get("cub")(tmp_path)
    (root / "image_class_labels.txt").unlink()
    with pytest.raises(FileNotFoundError, match="image_class_labels.txt not found .* expected lines"):
        DATASETS.get("cub")(tmp_path)


def test_cars_mat_first_98_classes_train(tmp_path):
    ann = np.array([("car_ims/000001.jpg", 1, 2, 3, 4, 98, 0), ("car_ims/000002.jpg", 5, 6, 7, 8, 99, 1)],
                   dtype=[("relative_im_path", "O"), ("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"),
                          ("bbox_y2", "O"), ("class", "O"), ("test", "O")])
    savemat(tmp_path / "cars_annos.mat", {"annotations": ann.reshape(1, -1), "class_names": np.array(["a", "b"], dtype=object)})
    splits = DATASETS.get("cars196")(tmp_path)
    assert splits["train"][0].label == 97 and splits["test"][0].label == 98
    assert splits["test"][0].bbox == (5, 6, 7, 8) and splits["test"][0].image == tmp_path / "car_ims/000002.jpg"
    savemat(tmp_path / "cars_annos.mat", {"other": np.zeros(3)})
    with pytest.raises(DatasetFormatError, match="cars_annos.mat: expected 'annotations'"):
        DATASETS.get("cars196")(tmp_path)


def test_sop_split_files(tmp_path):
    header = "image_id class_id super_class_id path\n"
    (tmp_path / "Ebay_train.txt").write_text(header + "1 1 1 bicycle_final/a.JPG\n2 1 1 bicycle_final/b.JPG\n")
    (tmp_path / "Ebay_test.txt").write_text(header + "3 11319 2 cabinet_final/c.JPG\n")
    splits = DATASETS.get("sop")(tmp_path)
    assert [s.label for s in splits["train"]] == [0, 0] and splits["test"][0].label == 11318
    assert splits["test"][0].meta["super_class"] == 1
    (tmp_path / "Ebay_test.txt").write_text(header + "3 x 2 cabinet_final/c.JPG\n")
    with pytest.raises(DatasetFormatError, match="Ebay_test.txt.*non-integer 'x'"):
        DATASETS.get("sop")(tmp_path)


def test_inshop_query_gallery(tmp_path):
    (tmp_path / "list_eval_partition.txt").write_text(
        "3\nimage_name item_id evaluation_status\n"
        "img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train\n"
        "img/MEN/Denim/id_00000080/01_1_front.jpg id_00000080 query\n"
        "img/MEN/Denim/id_00000080/01_2_side.jpg id_00000080 gallery\n")
    splits = DATASETS.get("inshop")(tmp_path)
    assert {k: len(v) for k, v in splits.items()} == {"train": 1, "query": 1, "gallery": 1}
    assert splits["query"][0].label == splits["gallery"][0].label == 80


def test_revisited_gnd_pickle_with_numpy_arrays(tmp_path):
    gnd = [{"bbx": [1.0, 2.0, 30.5, 40.0], "easy": np.array([0]), "hard": [1], "junk": np.array([2], np.int64)}]
    write_gnd(tmp_path / "roxford5k", "roxford5k", gnd, ["a", "b", "c"], ["a"])
    splits = DATASETS.get("roxford5k")(tmp_path)
    q = splits["query"][0]
    assert q.bbox == (1.0, 2.0, 30.5, 40.0) and q.meta == {"easy": [0], "hard": [1], "junk": [2]}
    assert [s.image.name for s in splits["db"]] == ["a.jpg", "b.jpg", "c.jpg"]
    (tmp_path / "revisitop1m" / "jpg").mkdir(parents=True)
    (tmp_path / "revisitop1m" / "revisitop1m.txt").write_text("x/1.jpg\nx/2.jpg\n")
    with_1m = DATASETS.get("roxford5k")(tmp_path, distractors=tmp_path)
    assert len(with_1m["db"]) == 5 and with_1m["db"][-1].meta["distractor"]


def test_revisited_refuses_code_in_pickle_and_bad_indices(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "gnd_rparis6k.pkl").write_bytes(pickle.dumps({"gnd": [Evil()], "imlist": [], "qimlist": ["q"]}))
    with pytest.raises(DatasetFormatError, match="builtins.print' is not allowed"):
        DATASETS.get("rparis6k")(tmp_path)
    write_gnd(tmp_path, "rparis6k", [{"bbx": [0, 0, 1, 1], "easy": [5], "hard": [], "junk": []}], ["a"], ["q"])
    with pytest.raises(DatasetFormatError, match="refers to image 5"):
        DATASETS.get("rparis6k")(tmp_path)
    (tmp_path / "gnd_rparis6k.pkl").unlink()
    with pytest.raises(FileNotFoundError, match="gnd_rparis6k.pkl not found.*imlist"):
        DATASETS.get("rparis6k")(tmp_path)
    assert load_plain_pickle(write_plain(tmp_path), "x") == {"a": [1, 2.5, "s", (1, 2)], "b": {3}}


@pytest.mark.parametrize("kind,names", [
    ("market1501", ["0002_c1s1_000451_03.jpg", "-1_c1s1_000001_00.jpg", "0000_c6s1_000002_00.jpg"]),
    ("dukemtmc", ["0002_c2_f0046182.jpg", "-1_c1_f0000001.jpg", "0000_c8_f0000002.jpg"]),
])
def test_reid_file_names(tmp_path, kind, names):
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        for n in names:
            touch(tmp_path / folder / n)
    splits = DATASETS.get(kind)(tmp_path)
    gallery = splits["gallery"]
    assert sorted((s.label, s.camera) for s in gallery) == sorted([(2, int(names[0].split("_c")[1][0]) - 1), (0, int(names[2].split("_c")[1][0]) - 1)])
    touch(tmp_path / "query" / "bad.jpg")
    with pytest.raises(DatasetFormatError, match="bad.jpg: expected a file name"):
        DATASETS.get(kind)(tmp_path)


def test_lfw_pairs_folds(tmp_path):
    lines = ["2\t1", "A\t1\t2", "A\t1\tB\t1", "B\t1\t2", "B\t2\tA\t2"]
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    splits = DATASETS.get("lfw")(tmp_path)
    left, right = splits["left"], splits["right"]
    assert [s.meta["fold"] for s in left] == [0, 0, 1, 1] and [s.meta["same"] for s in left] == [True, False, True, False]
    assert right[1].image == tmp_path / "B" / "B_0001.jpg" and left[0].label == right[0].label != right[1].label
    (tmp_path / "pairs.txt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DatasetFormatError, match="header announces 2 x 2 x 1 pairs, found 3"):
        DATASETS.get("lfw")(tmp_path)


def test_brown_info_and_m50(tmp_path):
    (tmp_path / "info.txt").write_text("".join(f"{p} 0\n" for p in [0, 0, 1, 1, 2] + [3] * 300))
    (tmp_path / "m50_2_2_0.txt").write_text("0 0 0 1 0 0 0\n2 1 0 4 2 0 0\n")
    (tmp_path / "m50_1_1_0.txt").write_text("0 0 0 1 0 0 0\n")
    splits = DATASETS.get("brown")(tmp_path)
    assert [s.meta["same"] for s in splits["left"]] == [True, False]
    last = splits["patches"][300]
    assert last.image.name == "patches0001.bmp" and last.bbox == (44 * 64 - 16 * 64 * 2, 64 * 2, 44 * 64 - 16 * 64 * 2 + 64, 64 * 3)
    (tmp_path / "m50_2_2_0.txt").write_text("0 0 0 999 0 0 0\n")
    with pytest.raises(DatasetFormatError, match="patch 999 is outside info.txt"):
        DATASETS.get("brown")(tmp_path)


def test_hpatches_sequences(tmp_path):
    for seq in ("i_ajuntament", "v_boat"):
        for name in ("ref", "e1", "h1"):
            touch(tmp_path / "hpatches-release" / seq / f"{name}.png", (65, 65 * 3))
    samples = DATASETS.get("hpatches")(tmp_path)["test"]
    assert len(samples) == 18 and len({s.label for s in samples}) == 6
    assert samples[1].bbox == (0, 65, 65, 130)
    touch(tmp_path / "hpatches-release" / "v_boat" / "t1.png", (64, 65))
    with pytest.raises(DatasetFormatError, match="t1.png: expected a 65-pixel-wide"):
        DATASETS.get("hpatches")(tmp_path)


def test_miniimagenet_csv(tmp_path):
    for split, wnid in (("train", "n01"), ("val", "n02"), ("test", "n03")):
        (tmp_path / f"{split}.csv").write_text(f"filename,label\n{wnid}0001.jpg,{wnid}\n{wnid}0002.jpg,{wnid}\n")
    splits = DATASETS.get("miniimagenet")(tmp_path)
    assert [splits[s][0].label for s in ("train", "val", "test")] == [0, 1, 2]
    (tmp_path / "val.csv").unlink()
    with pytest.raises(FileNotFoundError, match="val.csv not found.*filename,label"):
        DATASETS.get("miniimagenet")(tmp_path)


def test_imagenet_lt_lists_and_open_set(tmp_path):
    (tmp_path / "ImageNet_LT_train.txt").write_text("train/n1/a.JPEG 0\ntrain/n2/b.JPEG 1\n")
    (tmp_path / "ImageNet_LT_test.txt").write_text("val/n1/c.JPEG 0\n")
    (tmp_path / "ImageNet_LT_open.txt").write_text("open/x.JPEG 1000\n")
    splits = DATASETS.get("imagenet_lt")(tmp_path, image_root="/data/imagenet")
    assert splits["open"][0].label == -1 and str(splits["test"][0].image) == "/data/imagenet/val/n1/c.JPEG"
    (tmp_path / "ImageNet_LT_test.txt").write_text("val/n1/c.JPEG 7\n")
    with pytest.raises(DatasetFormatError, match=r"classes \[7\] never appear"):
        DATASETS.get("imagenet_lt")(tmp_path)


def test_folder_and_csv(tmp_path):
    for split in ("train", "test"):
        touch(tmp_path / "f" / split / ("cat" if split == "train" else "dog") / "1.png")
        touch(tmp_path / "f" / split / "bird" / "2.png")
    splits = DATASETS.get("folder")(tmp_path / "f")
    assert {s.label for s in splits["train"]} == {0, 1} and {s.label for s in splits["test"]} == {0, 2}
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "data.csv").write_text("path,label,split\na.png,cat,train\nb.png,dog,test\n")
    splits = DATASETS.get("csv")(tmp_path / "c")
    assert splits["train"][0].label == 0 and splits["test"][0].label == 1
    with pytest.raises(FileNotFoundError, match="2 of 2 images of csv are missing"):
        check_dataset("csv", tmp_path / "c" / "data.csv")


def test_crop_to_box(tmp_path):
    path = touch(tmp_path / "im.png", (20, 10))
    from metricvision.data.sample import Sample

    cropped = crop_to_box(Sample(path, bbox=(2.4, 1.6, 12.5, 9.0)))
    assert cropped.image.shape == (7, 10, 3) and cropped.bbox is None
    from metricvision.data.sample import SampleDataset

    assert SampleDataset([Sample(path, bbox=(2.4, 1.6, 12.5, 9.0))], crop=True)[0][0].shape == (3, 7, 10)
    assert SampleDataset([Sample(path, bbox=(2.4, 1.6, 12.5, 9.0))])[0][0].shape == (3, 10, 20)
