"""A damaged checkpoint is refused in a few lines that name the file and say what to do."""
import pytest
import torch
import yaml

from metricvision.cli import main
from metricvision.config import load_recipe
from metricvision.engine.checkpoint import CheckpointError, load_checkpoint, previous_version, read_info, save_checkpoint


def _save_twice(path):
    model = torch.nn.Linear(3, 2)
    save_checkpoint(path, {"m": model}, None, {"epoch": 1})
    save_checkpoint(path, {"m": model}, None, {"epoch": 2})
    return model


def test_previous_version_is_kept(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    _save_twice(path)
    assert read_info(path) == {"epoch": 2} and read_info(previous_version(path)) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors", "checkpoint.safetensors.prev"]


@pytest.mark.parametrize("damage", ["zero-byte", "truncated"])
def test_damaged_checkpoint_message(tmp_path, damage):
    path = tmp_path / "checkpoint.safetensors"
    model = _save_twice(path)
    data = path.read_bytes()
    path.write_bytes(b"" if damage == "zero-byte" else data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, {"m": model})
    first, second = str(err.value).splitlines()
    reason = "empty file, 0 bytes" if damage == "zero-byte" else f"{len(data) // 2} bytes, "
    assert first.startswith(f"checkpoint {path} is damaged ({reason}")
    assert first.endswith(") and cannot be loaded.")
    assert second.startswith(f"An earlier version (end of epoch 1) is {previous_version(path)}: `mv ")
    assert f"--out {tmp_path} --resume` continues from it." in second
    with pytest.raises(CheckpointError, match="is damaged"):
        read_info(path)


def test_damaged_checkpoint_without_earlier_version(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="No earlier version is kept beside it: copy back a good one"):
        load_checkpoint(path, {"m": torch.nn.Linear(3, 2)})


def test_evaluate_a_run_with_a_zero_byte_checkpoint(tmp_path, capsys):
    recipe = load_recipe("default", ["model.backbone=small_cnn", "model.pretrained=false"])
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict()))
    (tmp_path / "checkpoint.safetensors").write_bytes(b"")
    assert main(["evaluate", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (f"metricvision evaluate: error: checkpoint {tmp_path / 'checkpoint.safetensors'} is damaged "
                      "(empty file, 0 bytes) and cannot be loaded.")
    assert len(err) == 2 and "--resume" in err[1]
