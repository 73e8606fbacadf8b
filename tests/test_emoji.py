"""The shipped emoji dataset and its class-disjoint split."""
import numpy as np
import pytest

from metricvision.data import Sample, check_class_disjoint
from metricvision.data.emoji import load_emoji


def test_split_is_class_disjoint_and_covers_all():
    train, test, every = load_emoji("train"), load_emoji("test"), load_emoji("all")
    assert len(train) + len(test) == len(every) > 7000
    check_class_disjoint(train, test)
    ident = {s.label for s in every}
    assert {s.label for s in train} | {s.label for s in test} == ident
    assert abs(len({s.label for s in train}) - len(ident) / 2) <= 1


def test_identity_shared_across_vendors_and_tones():
    samples = load_emoji("all")
    by_label = {}
    for s in samples:
        by_label.setdefault(s.label, []).append(s)
    thumbs = next(v for v in by_label.values() if v[0].meta["name"] == "thumbs up sign")
    assert {s.meta["vendor"] for s in thumbs} == {"google", "twitter"}
    assert len(thumbs) == 12  # 2 vendors x (default + 5 skin tones)
    s = thumbs[0]
    assert s.image.shape == (40, 40, 3) and s.image.dtype == np.uint8
    assert s.meta["category"] == "People & Body" and s.caption == "thumbs up sign"


def test_leaky_split_is_refused():
    with pytest.raises(ValueError, match="not class-disjoint: 1 classes"):
        check_class_disjoint([Sample(image=None, label=3)], [Sample(image=None, label=3), Sample(image=None, label=4)])


def test_bad_split_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        load_emoji("val")
    with pytest.raises(FileNotFoundError, match="metricvision data fetch emoji"):
        load_emoji("train", tmp_path / "nope.npz")
