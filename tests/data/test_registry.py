"""The one dataset registry: metadata, defaults of a plain registration, and a contract over every entry."""
import pytest
from native_datasets import write_class_folder

from metricvision.data import DATASETS, DatasetInfo
from metricvision.data.registry import DatasetRegistry, split_classes
from metricvision.metrics import PROTOCOLS


def test_plain_registration_gets_sensible_defaults():
    reg = DatasetRegistry()

    @reg.register("mine")
    def read_mine(root, min_images: int = 2):
        """My dataset: one folder per class."""
        return {"train": [root], "test": [min_images]}

    @reg.register("builtin", protocol="fewshot", splits=["train", "val", "test"], licence="CC0")
    def builtin(path=None):
        return {"train": [path]}

    assert reg.info("mine") == DatasetInfo("mine", ("train", "test"), "train", "retrieval", True, True, "",
                                           "My dataset: one folder per class.")
    assert reg.create("mine", path="/d", min_images=None) == {"train": ["/d"], "test": [2]}
    assert reg.info("builtin").needs_path is False and reg.info("builtin").splits == ("train", "val", "test")
    assert reg.create("builtin") == {"train": [None]}
    with pytest.raises(ValueError, match="dataset 'mine' needs a path.*My dataset.*data.path=DIR.*nothing is downloaded"):
        reg.create("mine")
    with pytest.raises(KeyError, match="already registered"):
        reg.register("mine")(read_mine)
    with pytest.raises(TypeError, match=r"unknown dataset metadata \['protcol'\]"):
        reg.register("typo", protcol="lfw")
    with pytest.raises(KeyError, match="unknown dataset 'nosuch'; expected one of: builtin, mine"):
        reg.info("nosuch")


@pytest.mark.parametrize("name", DATASETS.names())
def test_contract_every_dataset_declares_a_usable_protocol_and_splits(name):
    info = DATASETS.info(name)
    assert info.name == name and info.description and info.licence
    assert info.protocol is None or info.protocol in PROTOCOLS
    assert info.train_split is None or info.train_split in info.splits
    if info.needs_path:
        with pytest.raises(ValueError, match=f"dataset '{name}' needs a path"):
            DATASETS.create(name)


def test_folder_split_is_class_disjoint_deterministic_and_stated(tmp_path):
    root = write_class_folder(tmp_path / "f", classes=5, per_class=2)
    a, b = DATASETS.create("folder", path=root), DATASETS.create("folder", path=root)
    names = {k: sorted({s.meta["class"] for s in v}) for k, v in a.items()}
    assert names == {"train": ["class_00", "class_01", "class_02"], "test": ["class_03", "class_04"]}
    assert [str(s.image) for s in a["test"]] == [str(s.image) for s in b["test"]]
    assert {s.split for s in a["test"]} == {"test"}
    assert set(DATASETS.create("folder", path=root, test_fraction=0)) == {"train"}
    with pytest.raises(ValueError, match=r"test_fraction must be in \[0, 1\), got 1"):
        split_classes(a["train"], 1)


def test_csv_without_split_column_is_split_by_class(tmp_path):
    (tmp_path / "d.csv").write_text("path,label\n" + "".join(f"{i}.jpg,{c}\n" for i, c in enumerate("aabbccdd")))
    splits = DATASETS.create("csv", path=tmp_path / "d.csv")
    assert [s.label for s in splits["train"]] == [0, 0, 1, 1] and [s.label for s in splits["test"]] == [2, 2, 3, 3]
