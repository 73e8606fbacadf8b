"""README's python blocks run as written (in a temporary folder holding my_images/<class>/<image>.png)."""
import re
from pathlib import Path

import pytest
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_the_quickstart_blocks():
    assert len(BLOCKS) >= 3
    assert "[docs/DESIGN.md](docs/DESIGN.md)" in README.read_text()
    assert (README.parent / "docs" / "DESIGN.md").exists()


@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_python_block_runs(number, tmp_path, monkeypatch, capsys):
    for i, (cls, colour) in enumerate([("cats", "orange"), ("cats", "brown"), ("dogs", "gray"), ("dogs", "black")]):
        (tmp_path / "my_images" / cls).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (48, 48), colour).save(tmp_path / "my_images" / cls / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[number], f"README.md python block {number + 1}", "exec"), {"__name__": "__readme__"})


def test_what_readme_creates_is_ignored_by_git():
    import shutil
    import subprocess

    root = README.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    paths = ["runs/default-20260101-000000/report.html", "KB/card.json", "my_kb/card.json", "results.json",
             "runs/text_align/kb/card.json"]
    ignored = subprocess.run(["git", "check-ignore", *paths], cwd=root, capture_output=True, text=True).stdout.split()
    assert ignored == paths
