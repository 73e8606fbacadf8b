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
    captured = capsys.readouterr()
    trained = json.loads(captured.out)
    for bar in ("epoch 1/1", "embedding", "evaluating: leave-one-out k-NN"):  # progress on stderr
        assert bar in captured.err
    assert 0 < trained["precision@1"] <= 1 and (run / "report.html").exists() and (run / "model_card.json").exists()
    html = (run / "report.html").read_text()
    for alt in ("loss curve", "recall curve", "query grid", "precision-recall curve"):
        assert f"<img alt='{alt}' src='data:image/png;base64," in html
    assert "<circle " in html and "Classes that fail most" in html
    assert main(["evaluate", str(run), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["map@r"] == pytest.approx(trained["map@r"], abs=1e-6)
    out = tmp_path / "emb.npz"
    assert main(["embed", str(run), "--dataset", "emoji", "--split", "test", "--out", str(out), "--json"]) == 0
    with np.load(out) as z:
        assert z["embeddings"].shape == (3800, 128) and z["labels"].shape == (3800,)


def test_embed_makes_the_evaluations_descriptors_multiscale_and_whitened(tmp_path, capsys):
    """`embed` uses the run's eval.scales and the whitening its evaluation fitted: its vectors score as metrics.json."""
    from metricvision.metrics.evaluate import evaluate_retrieval

    run, out = tmp_path / "run", tmp_path / "emb.npz"
    sets = ["--set", "eval.whitening=pca", "--set", "eval.scales=[1.0,0.5]", "--set", "data.image_size=24"]
    assert main(["train", *FAST, *sets, "--out", str(run), "--json", "--no-report"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert (run / "whitening.npz").exists()
    assert main(["embed", str(run), "--dataset", "emoji", "--split", "test", "--out", str(out)]) == 0
    with np.load(out) as z:
        ours = evaluate_retrieval(z["embeddings"], z["labels"], clustering=False)
    assert ours["map@r"] == pytest.approx(trained["map@r"], abs=1e-5)
    (run / "whitening.npz").unlink()
    assert main(["embed", str(run), "--dataset", "emoji", "--out", str(out)]) == 2
    assert "run `metricvision evaluate" in capsys.readouterr().err


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


def _parsers(parser):
    """Every (command path, parser) of the CLI, sub-commands included."""
    import argparse

    out = [("metricvision", parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += [(f"{path} {name}" if path == "metricvision" else path, p) for path, p in _parsers(sub)]
    return out


def test_help_does_not_import_torch():
    code = "import sys; from metricvision.cli import build_parser; build_parser(); print(sorted(m for m in ('torch', 'sklearn', 'numba') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_option_has_help():
    from metricvision.cli import build_parser

    missing = [f"{path} {a.option_strings[0] if a.option_strings else a.dest}"
               for path, p in _parsers(build_parser()) for a in p._actions
               if a.help is None and a.dest != "help" and not a.__class__.__name__.startswith("_SubParsers")]
    assert missing == []


def test_nested_results_print_as_tables(capsys):
    from metricvision.cli import print_result

    print_result({"composed": {"image only": {"recall@1": 0.1, "recall@5": 0.25}, "text only": {"recall@1": 0.0, "recall@5": 0.5},
                               "triplets": {"train": 3}}, "seconds": 1.5}, as_json=False)
    assert capsys.readouterr().out.splitlines() == [
        "composed:", "              recall@1  recall@5", "  image only    0.1000    0.2500",
        "  text only     0.0000    0.5000", "  triplets:", "    train  3", "seconds  1.5000"]


def _lines(stderr):
    """stderr lines as a terminal shows them: what progress bars drew before a carriage return is gone."""
    return [line.split("\r")[-1] for line in stderr.split("\n") if line.split("\r")[-1]]


def _image_folder(root, n=3):
    from PIL import Image

    for i in range(n):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 20), (40 * i, 90, 200)).save(root / f"c{i % 2}" / f"{i}.png")
    (root / "c0" / "empty.png").write_bytes(b"")
    return root / "c0" / "empty.png"


def test_data_check_opens_every_image(tmp_path, capsys):
    empty = _image_folder(tmp_path / "folder")
    assert main(["data", "check", "folder", str(tmp_path / "folder")]) == 2
    err = _lines(capsys.readouterr().err)
    assert err[0] == f"metricvision data: error: {tmp_path / 'folder'}: 1 of 4 images are unreadable:"
    assert err[1] == f"  empty (zero-byte) image {empty}"
    empty.unlink()
    assert main(["data", "check", "folder", str(tmp_path / "folder"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unreadable"] == 0


def test_data_check_csv_binary_names_the_file(tmp_path, capsys):
    bad = tmp_path / "list.csv"
    bad.write_bytes(b"path,label\n\x92\x00\xff binary")
    assert main(["data", "check", "csv", str(bad)]) == 2
    assert _lines(capsys.readouterr().err)[0] == (
        f"metricvision data: error: {bad} is not a UTF-8 text file (byte 0x92 at offset 11); expected a csv with a header "
        "holding 'path' and 'label' columns (optional 'split'), paths relative to the csv")


@pytest.fixture()
def tiny_run(tmp_path):
    """A run folder (recipe.yaml + checkpoint) of an untrained small CNN, in the format `train` writes."""
    import yaml

    from metricvision.config import load_recipe
    from metricvision.engine.builders import build_model
    from metricvision.engine.checkpoint import save_checkpoint

    recipe = load_recipe("default", ["model.backbone=small_cnn", "model.pretrained=false", "data.image_size=16"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict()))
    save_checkpoint(run / "checkpoint.safetensors", {"model": build_model(recipe)}, None, {"epoch": 0})
    return run


def test_embed_skips_unreadable_images(tmp_path, tiny_run, capsys):
    empty = _image_folder(tmp_path / "folder")
    out = tmp_path / "emb.npz"
    assert main(["embed", str(tiny_run), "--images", str(tmp_path / "folder"), "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["embedded"] == 3 and json.loads(captured.out)["skipped"] == 1
    listed = tmp_path / "emb.npz.unreadable.txt"
    assert (f"warning: 1 of 4 images are unreadable:\n  empty (zero-byte) image {empty.resolve()}\n"
            f"they are skipped (all listed in {listed}; --strict stops instead)") in "\n".join(_lines(captured.err))
    assert "embedding" in captured.err  # the progress bar
    assert listed.read_text().split("\t")[0] == str(empty.resolve())
    with np.load(out) as z:
        assert z["embeddings"].shape[0] == 3 and str(empty.resolve()) not in z["paths"]
    assert main(["embed", str(tiny_run), "--images", str(tmp_path / "folder"), "--out", str(out), "--strict"]) == 2
    assert _lines(capsys.readouterr().err)[0] == "metricvision embed: error: 1 of 4 images are unreadable:"


def test_kb_build_skips_unreadable_images(tmp_path, capsys):
    _image_folder(tmp_path / "folder")
    kb = tmp_path / "kb"
    assert main(["kb", "build", str(kb), "--from-folder", str(tmp_path / "folder"), "--image-size", "32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["items"] == 3 and out["skipped"] == 1 and (kb / "unreadable.txt").exists()
    assert main(["kb", "add", str(kb), "--from-folder", str(tmp_path / "folder"), "--strict"]) == 2
    assert "1 of 4 images are unreadable" in capsys.readouterr().err
