"""The `metricvision` command end to end: train, evaluate, embed, data, errors."""
import json
import subprocess
import sys

import numpy as np
import pytest

from metricvision.cli import main

FAST = ["--set", "model.backbone=small_cnn", "--set", "model.pretrained=false", "--set", "data.image_size=16",
        "--set", "data.batch_size=256", "--set", "train.epochs=1", "--set", "eval.clustering=false"]


def test_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "metricvision.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("train", "evaluate", "embed", "data"):
        assert cmd in out


def test_train_evaluate_embed(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *FAST, "--out", str(run), "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert 0 < trained["precision@1"] <= 1 and (run / "report.html").exists()
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64") == 3  # loss curve, Recall@K curve, query grid
    assert main(["evaluate", str(run), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["map@r"] == pytest.approx(trained["map@r"], abs=1e-6)
    out = tmp_path / "emb.npz"
    assert main(["embed", str(run), "--dataset", "emoji", "--split", "test", "--out", str(out), "--json"]) == 0
    with np.load(out) as z:
        assert z["embeddings"].shape == (3800, 128) and z["labels"].shape == (3800,)


def test_errors_are_one_line_with_exit_2(tmp_path, capsys):
    assert main(["train", "--set", "train.epochs=x"]) == 2
    assert "train.epochs must be int, got 'x'" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "recipe.yaml not found" in capsys.readouterr().err
    assert main(["data", "check", "emoji", str(tmp_path / "none.npz")]) == 2
    assert "not found" in capsys.readouterr().err


def test_data_list_shows_every_dataset_with_its_metadata(capsys):
    from metricvision.data import DATASETS

    assert main(["data", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["datasets"]
    assert sorted(listed) == DATASETS.names() and len(listed) >= 18
    assert listed["cub"]["protocol"] == "retrieval" and listed["cub"]["needs_path"] and listed["cub"]["licence"]
    assert listed["emoji"]["needs_path"] is False and listed["lfw"]["train_split"] is None
    assert main(["data", "list"]) == 0
    table = capsys.readouterr().out
    for name in DATASETS.names():
        assert f"\n{name} " in "\n" + table
