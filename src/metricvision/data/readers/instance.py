"""Instance-level benchmarks: revisited Oxford / Paris (+1M distractors) and person re-ID.

Revisited Oxford and Paris (Radenovic et al., CVPR 2018) follow revisitop's layout
(github.com/filipradenovic/revisitop, dataset.py): gnd_<name>.pkl holds 'imlist', 'qimlist'
and 'gnd', one dict per query with 'bbx' (x0, y0, x1, y1) and 'easy' / 'hard' / 'junk'
indices into imlist; images are jpg/<name>.jpg. Re-ID follows torchreid's Market1501 /
DukeMTMC-reID readers: identity and camera come from the file name, identity -1 ("junk")
is dropped, identity 0 (distractors) is kept, cameras are 0-based.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from metricvision.data.readers.base import DatasetFormatError, find_root, load_plain_pickle, read_rows, require
from metricvision.data.registry import Splits, register_dataset
from metricvision.data.sample import Sample

GND_FORMAT = "a pickle of {'imlist': [names], 'qimlist': [names], 'gnd': [{'bbx', 'easy', 'hard', 'junk'}]}"


def read_revisited(root: str | Path, name: str, distractors: Optional[str | Path] = None) -> Splits:
    """Splits "query" (bbox, meta easy / hard / junk indices into db) and "db" (+ distractors)."""
    root = find_root(root, f"gnd_{name}.pkl", [name])
    path = root / f"gnd_{name}.pkl"
    cfg = load_plain_pickle(path, GND_FORMAT)
    try:
        imlist, qimlist, gnd = list(cfg["imlist"]), list(cfg["qimlist"]), list(cfg["gnd"])
        if len(gnd) != len(qimlist):
            raise ValueError(f"{len(gnd)} gnd entries for {len(qimlist)} queries")
        queries = [
            Sample(root / "jpg" / f"{q}.jpg", instance_id=i, bbox=tuple(float(v) for v in g["bbx"]), split="query",
                   meta={kind: [int(j) for j in g.get(kind, [])] for kind in ("easy", "hard", "junk")})
            for i, (q, g) in enumerate(zip(qimlist, gnd))
        ]
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetFormatError(f"{path}: expected {GND_FORMAT} ({e})") from e
    for q in queries:
        bad = [j for kind in ("easy", "hard", "junk") for j in q.meta[kind] if not 0 <= j < len(imlist)]
        if bad:
            raise DatasetFormatError(f"{path}: query {q.instance_id} refers to image {bad[0]}, outside imlist (size {len(imlist)})")
    db = [Sample(root / "jpg" / f"{n}.jpg", instance_id=i, split="db") for i, n in enumerate(imlist)]
    if distractors is not None:
        db += read_revisitop1m(distractors)["db"]
    return {"query": queries, "db": db}


@register_dataset(
    "roxford5k", splits=("query", "db"), train_split=None, protocol="revisited", licence="research use (Flickr images)",
    description="revisited Oxford: gnd_roxford5k.pkl and jpg/; evaluation only (option distractors=R1M folder)",
)
def read_roxford5k(root: str | Path, distractors: Optional[str | Path] = None) -> Splits:
    """Revisited Oxford: gnd_roxford5k.pkl and jpg/; ``distractors`` is a revisitop1m folder."""
    return read_revisited(root, "roxford5k", distractors)


@register_dataset(
    "rparis6k", splits=("query", "db"), train_split=None, protocol="revisited", licence="research use (Flickr images)",
    description="revisited Paris: gnd_rparis6k.pkl and jpg/; evaluation only (option distractors=R1M folder)",
)
def read_rparis6k(root: str | Path, distractors: Optional[str | Path] = None) -> Splits:
    """Revisited Paris: gnd_rparis6k.pkl and jpg/; ``distractors`` is a revisitop1m folder."""
    return read_revisited(root, "rparis6k", distractors)


@register_dataset(
    "revisitop1m", splits=("db",), train_split=None, protocol=None, licence="research use (Flickr images)",
    description="R-1M distractors: revisitop1m.txt and jpg/; used through roxford5k / rparis6k's distractors option",
)
def read_revisitop1m(root: str | Path) -> Splits:
    """The R-1M distractors: revisitop1m.txt (one relative image name per line) and jpg/."""
    root = find_root(root, "revisitop1m.txt", ["revisitop1m"])
    rows = read_rows(root / "revisitop1m.txt", 1, "one image name per line", sep="\n")
    return {"db": [Sample(root / "jpg" / r[0], split="db", meta={"distractor": True}) for r in rows]}


REID_NAME = re.compile(r"^([-\d]+)_c(\d+)")
REID_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


def read_reid(root: str | Path, marker: str) -> Splits:
    """Splits train / query / gallery of a Market-1501-style folder; label = person id."""
    root = find_root(root, "query", [marker])
    splits: Splits = {}
    for split, folder in REID_DIRS.items():
        d = require(root / folder, "a folder of '<person id>_c<camera>...jpg' images")
        samples = []
        for path in sorted(d.glob("*.jpg")):
            m = REID_NAME.match(path.name)
            if m is None:
                raise DatasetFormatError(f"{path}: expected a file name '<person id>_c<camera>...jpg'")
            pid, cam = int(m.group(1)), int(m.group(2))
            if pid == -1:
                continue  # junk detections, ignored by the protocol
            samples.append(Sample(path, label=pid, camera=cam - 1, split=split))
        splits[split] = samples
    return splits


@register_dataset(
    "market1501", splits=("train", "query", "gallery"), protocol="reid", licence="research use",
    description="Market-1501: bounding_box_train/, query/, bounding_box_test/",
)
def read_market1501(root: str | Path) -> Splits:
    """Market-1501: bounding_box_train/, query/, bounding_box_test/ ('0002_c1s1_000451_03.jpg')."""
    return read_reid(root, "Market-1501-v15.09.15")


@register_dataset(
    "dukemtmc", splits=("train", "query", "gallery"), protocol="reid",
    licence="withdrawn by its authors in 2019; existing copies under their original research terms",
    description="DukeMTMC-reID: bounding_box_train/, query/, bounding_box_test/",
)
def read_dukemtmc(root: str | Path) -> Splits:
    """DukeMTMC-reID: bounding_box_train/, query/, bounding_box_test/ ('0001_c2_f0046182.jpg')."""
    return read_reid(root, "DukeMTMC-reID")
