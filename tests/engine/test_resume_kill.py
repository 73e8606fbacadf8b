"""A real SIGKILL of `metricvision train` mid-epoch, then --resume: same metrics as an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

ARGS = ["--set", "model.backbone=small_cnn", "--set", "model.pretrained=false", "--set", "data.image_size=16",
        "--set", "data.batch_size=64", "--set", "train.epochs=3", "--set", "eval.clustering=false", "--no-report"]


def train(out, *extra, wait=True):
    cmd = [sys.executable, "-m", "metricvision.cli", "train", *ARGS, "--out", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    if wait:
        assert proc.wait(timeout=900) == 0
    return proc


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(tmp_path):
    train(tmp_path / "full")
    proc = train(tmp_path / "killed", wait=False)
    log = tmp_path / "killed" / "log.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and not (log.exists() and '"event": "epoch"' in log.read_text()):
        time.sleep(0.2)
    time.sleep(1.0)  # well inside epoch 2 (an epoch here takes several seconds)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "metrics.json").exists(), "the run finished before it was killed"
    train(tmp_path / "killed", "--resume")
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    for key in ("precision@1", "r_precision", "map@r"):
        assert resumed[key] == pytest.approx(full[key], abs=1e-9), key
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert "resume" in events
