"""`metricvision train` on any registered dataset: a plain image folder, leak refusal, evaluation-only
datasets, and `metricvision evaluate` rerunning (or changing) a run's protocol."""
import json

import pytest
from native_datasets import (TINY, sets, write_brown, write_class_folder, write_csv, write_cub, write_lfw, write_market1501,
                             write_roxford5k)

from metricvision.cli import main


def test_folder_trains_on_a_recorded_class_disjoint_split_and_evaluate_reruns_it(tmp_path, capsys):
    root, run = write_class_folder(tmp_path / "folder", classes=6, per_class=4), tmp_path / "run"
    overrides = TINY + ["data.dataset=folder", f"data.path={root}", "train.epochs=2", "train.eval_every=1"]
    assert main(["train", "default", *sets(overrides), "--out", str(run), "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    record = json.loads((run / "splits.json").read_text())
    assert record["train"]["classes"] == ["class_00", "class_01", "class_02"]
    assert record["eval"] == {"dataset": "folder", "path": str(root), "protocol": "retrieval",
                              "splits": {"train": {"samples": 12, "classes": ["class_00", "class_01", "class_02"]},
                                         "test": {"samples": 12, "classes": ["class_03", "class_04", "class_05"]}}}
    epochs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if '"epoch"' in line]
    assert "test_recall@1" in epochs[0] and "test_nmi" not in epochs[0]
    assert main(["evaluate", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["map@r"] == pytest.approx(trained["map@r"], abs=1e-6)
    cub = write_cub(tmp_path / "cub", classes=2, per_class=3)
    assert main(["evaluate", str(run), "--dataset", "cub", "--data", str(cub.parent), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_queries"] == 6
    out = tmp_path / "cub.npz"
    assert main(["embed", str(run), "--dataset", "cub", "--data", str(cub), "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"embedded": 6, "dim": 16, "out": str(out)}
    assert main(["evaluate", str(run), "--protocol", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "unknown protocol 'nosuch'; expected one of:" in err and "retrieval" in err and "lfw" in err
    assert "--dataset" in err and "--reader" in err and "reader=" not in err


def test_train_on_identities_evaluate_on_lfw_pairs(tmp_path, capsys):
    overrides = TINY + ["data.dataset=folder", f"data.path={write_class_folder(tmp_path / 'ids', classes=4)}",
                        "data.options={test_fraction: 0}", "eval.dataset=lfw", f"eval.path={write_lfw(tmp_path / 'lfw')}"]
    assert main(["train", "default", *sets(overrides), "--out", str(tmp_path / "run"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert {"accuracy", "accuracy_std", "threshold", "tar@far=0.001"} <= set(metrics) and "recall@1" not in metrics
    assert main(["evaluate", str(tmp_path / "run"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(metrics["accuracy"])


def test_train_on_one_brown_subset_evaluate_on_the_others(tmp_path, capsys):
    liberty, notredame, yosemite = (write_brown(tmp_path / n, first=4 * i) for i, n in enumerate(("liberty", "notredame", "yosemite")))
    run = tmp_path / "run"
    overrides = TINY + ["data.dataset=brown", f"data.path={liberty}", "data.crop=true", f"eval.path={notredame}",
                        f"eval.also={{yosemite: {{path: {yosemite}}}}}"]
    assert main(["train", "default", *sets(overrides), "--out", str(run), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert {"fpr95", "yosemite/fpr95"} <= set(metrics) and all(0 <= metrics[k] <= 1 for k in ("fpr95", "yosemite/fpr95"))
    record = json.loads((run / "splits.json").read_text())
    assert record["eval"]["path"] == str(notredame) and record["also"]["yosemite"]["protocol"] == "brown"
    assert "<td>yosemite/fpr95</td>" in (run / "report.html").read_text()
    assert main(["evaluate", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx({k: v for k, v in metrics.items() if "/" in k or k == "fpr95"})
    same = TINY + ["data.dataset=brown", f"data.path={liberty}"]  # evaluating on the training subset leaks 3D points
    assert main(["train", "default", *sets(same), "--out", str(tmp_path / "leak")]) == 2
    assert "splits 'patches' and 'left' leak classes" in capsys.readouterr().err


def test_train_on_a_landmark_csv_evaluate_on_revisited_oxford(tmp_path, capsys):
    overrides = TINY + ["data.dataset=csv", f"data.path={write_csv(tmp_path / 'landmarks')}", "data.options={test_fraction: 0}",
                        "eval.dataset=roxford5k", f"eval.path={write_roxford5k(tmp_path).parent}"]
    assert main(["train", "default", *sets(overrides), "--out", str(tmp_path / "run"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    for setup in ("easy", "medium", "hard"):
        assert 0 < metrics[f"{setup}_map"] <= 1 and f"{setup}_mp@1" in metrics


def test_train_and_evaluate_market1501_reid(tmp_path, capsys):
    run = tmp_path / "run"
    overrides = TINY + ["data.dataset=market1501", f"data.path={write_market1501(tmp_path / 'market')}"]
    assert main(["train", "default", *sets(overrides), "--out", str(run), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert {"rank1", "rank5", "map"} <= set(metrics) and metrics["num_queries"] == 3
    assert json.loads((run / "splits.json").read_text())["eval"]["splits"]["query"]["classes"] == [4, 5, 6]


def test_leaking_evaluation_only_and_pathless_datasets_are_refused(tmp_path, capsys):
    for split in ("train", "test"):  # the same class names on both sides
        write_class_folder(tmp_path / "leak" / split, classes=2, per_class=2)
    out = ["--out", str(tmp_path / "run")]
    assert main(["train", *sets(TINY + ["data.dataset=folder", f"data.path={tmp_path / 'leak'}"]), *out]) == 2
    assert "splits 'train' and 'test' leak classes" in capsys.readouterr().err
    assert main(["train", *sets(TINY + ["data.dataset=lfw", f"data.path={write_lfw(tmp_path / 'lfw')}"]), *out]) == 2
    err = capsys.readouterr().err
    assert "dataset 'lfw' is for evaluation only" in err and "eval.dataset=lfw" in err
    assert main(["train", *sets(TINY + ["data.dataset=cub"]), *out]) == 2
    assert "dataset 'cub' needs a path" in capsys.readouterr().err
    assert main(["train", *sets(TINY + ["eval.protocol=nosuch"]), *out]) == 2
    assert "unknown protocol 'nosuch'" in capsys.readouterr().err
    assert main(["train", *sets(TINY + ["eval.params={gamma: 1}"]), *out]) == 2
    assert "bad eval.params for protocol 'retrieval'" in capsys.readouterr().err
