"""The re-ID, patch and landmark recipes each train one tiny epoch through `metricvision train` on copies of
their datasets in the native layouts (emoji renderings saved as image files), and their protocols' metrics reach
metrics.json."""
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from native_datasets import pictures, write_gnd
from PIL import Image

from metricvision.cli import main
from metricvision.data import DATASETS, SampleDataset

TINY = ["model.pretrained=false", "data.num_workers=0", "data.batch_size=8", "train.epochs=1", "train.eval_every=0",
        "optim.warmup_steps=1", "train.threads=1"]


def save(path: Path, image: np.ndarray, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format=fmt)


def write_reid(root: Path, duke: bool = False) -> Path:
    """Market-1501 / DukeMTMC-reID layout: 4 training identities x 4 images over 3 cameras; 3 query identities
    with 4 gallery images each (one from the query's camera: junk), and a distractor (identity 0)."""
    def name(pid: int, cam: int, frame: int) -> str:
        return f"{pid:04d}_c{cam}_f{frame:07d}.jpg" if duke else f"{pid:04d}_c{cam}s1_{frame:06d}_00.jpg"

    for i, images in enumerate(pictures(4, 4)):
        for j, im in enumerate(images):
            save(root / "bounding_box_train" / name(i + 1, j % 3 + 1, j), im)
    for i, images in enumerate(pictures(4, 5, first=4)):
        pid = 0 if i == 3 else i + 10
        for j, im in enumerate(images):
            if j == 0 and pid:
                save(root / "query" / name(pid, 1, j), im)
            else:
                save(root / "bounding_box_test" / name(pid, j % 3 + 1, j), im)
    return root


def write_brown(root: Path, points: int = 8, first: int = 0) -> Path:
    """A Brown subset: info.txt, m50_<n>_<n>_0.txt and patches0000.bmp holding two 64 x 64 patches per 3D point."""
    sheet = Image.new("L", (1024, 1024))
    index = 0
    for p, images in enumerate(pictures(points, 2, first=first)):
        for im in images:
            row, col = divmod(index, 16)
            sheet.paste(Image.fromarray(im).convert("L").resize((64, 64)), (col * 64, row * 64))
            index += 1
    root.mkdir(parents=True)
    sheet.save(root / "patches0000.bmp")
    (root / "info.txt").write_text("".join(f"{i // 2} 0\n" for i in range(index)))
    pairs = [(2 * p, p, 2 * p + 1, p) for p in range(points)]  # matching
    pairs += [(2 * p, p, (2 * p + 3) % index, ((2 * p + 3) % index) // 2) for p in range(points)]  # non-matching
    (root / f"m50_{len(pairs)}_{len(pairs)}_0.txt").write_text("".join(f"{a} {pa} 0 {b} {pb} 0 0\n" for a, pa, b, pb in pairs))
    return root


def write_sfm120k(root: Path, clusters: int = 4, per_cluster: int = 4) -> Path:
    """SfM-120k's cirtorch layout: retrieval-SfM-120k.pkl and ims/<cid[-2:]>/<cid[-4:-2]>/<cid[-6:-4]>/<cid>."""
    cids, cluster = [], []
    for c, images in enumerate(pictures(clusters, per_cluster, first=8)):
        for j, im in enumerate(images):
            cid = f"{c:02d}{j:02d}{c * 7 + j:04d}"
            save(root / "ims" / cid[-2:] / cid[-4:-2] / cid[-6:-4] / cid, im)
            cids.append(cid)
            cluster.append(100 + c)
    part = {"cids": cids, "cluster": cluster, "qidxs": list(range(0, len(cids), 2)), "pidxs": list(range(1, len(cids), 2))}
    (root / "retrieval-SfM-120k.pkl").write_bytes(pickle.dumps({"train": part, "val": part}))
    return root


def write_roxford(root: Path, landmarks: int = 3) -> Path:
    """Revisited Oxford layout: gnd_roxford5k.pkl and jpg/; one query per landmark, 3 database images each."""
    imlist, qimlist, gnd = [], [], []
    for k, images in enumerate(pictures(landmarks, 4, first=12)):
        qimlist.append(f"q{k}")
        save(root / "jpg" / f"q{k}.jpg", images[0])
        ids = []
        for j, im in enumerate(images[1:]):
            save(root / "jpg" / f"db{k}_{j}.jpg", im)
            ids.append(len(imlist))
            imlist.append(f"db{k}_{j}")
        gnd.append({"bbx": [0.0, 0.0, 40.0, 40.0], "easy": ids[:1], "hard": ids[1:], "junk": []})
    write_gnd(root, "roxford5k", gnd, imlist, qimlist)
    return root


def reid(duke):
    tiny = ["model.backbone=resnet18", "data.image_size=[32,16]", "data.samples_per_class=4"]
    return lambda tmp: tiny + [f"data.path={write_reid(tmp / 'reid', duke)}"] + (["data.sampler=camera_pk"] if duke else [])


def brown(tmp):
    return [f"data.path={write_brown(tmp / 'liberty')}", f"eval.path={write_brown(tmp / 'notredame', first=8)}"]


def landmarks(tmp):
    return ["model.backbone=resnet18", "data.image_size=32", "eval.scales=[1.0,0.75]",
            f"data.path={write_sfm120k(tmp / 'sfm')}", f"eval.path={write_roxford(tmp / 'roxford5k')}"]


REID = {"rank1", "rank5", "map"}
CASES = [
    pytest.param("reid_bot_market1501", reid(False), REID, marks=pytest.mark.slow, id="reid_bot_market1501"),
    pytest.param("reid_bot_dukemtmc", reid(True), REID, marks=pytest.mark.slow, id="reid_bot_dukemtmc"),
    pytest.param("patches_hardnet_brown", brown, {"fpr95"}, id="patches_hardnet_brown"),
    pytest.param("landmarks_gem_roxford", landmarks, {"medium_map", "hard_map"}, id="landmarks_gem_roxford"),
]


@pytest.mark.parametrize("recipe,layout,expected", CASES)
def test_task_recipe_trains_one_epoch_and_reports_its_protocol(tmp_path, capsys, recipe, layout, expected):
    run = tmp_path / "run"
    sets = [a for kv in TINY + layout(tmp_path) for a in ("--set", kv)]
    assert main(["train", recipe, *sets, "--out", str(run), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    metrics = json.loads((run / "metrics.json").read_text())
    assert expected <= set(metrics), sorted(metrics)
    assert printed == pytest.approx(metrics)
    assert all(np.isfinite(metrics[k]) for k in expected)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "epoch" and np.isfinite(e["loss"]) for e in log)


def test_brown_patches_are_cut_from_their_sheet(tmp_path):
    root = write_brown(tmp_path / "liberty")
    patches = DATASETS.create("brown", path=root)["patches"]
    x, label = SampleDataset(patches, crop=True)[3]
    assert x.shape == (3, 64, 64) and label == 1
    sheet = np.asarray(Image.open(root / "patches0000.bmp").convert("RGB"), dtype=np.float32) / 255
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), sheet[:64, 3 * 64:4 * 64])
    assert SampleDataset(patches)[3][0].shape == (3, 1024, 1024)
