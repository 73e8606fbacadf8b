import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kb"))  # the drawn-shapes helpers

from shapes import tiny_kb  # noqa: E402


@pytest.fixture(scope="session")
def shapes_kb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a KB of drawn shapes with a text-aligned model, built once per session."""
    return tiny_kb(Path(tmp_path_factory.mktemp("serve_shapes"))).path


@pytest.fixture()
def kb_copy(shapes_kb_path, tmp_path) -> Path:
    """A private copy of the shapes KB (tests that write or damage it)."""
    return Path(shutil.copytree(shapes_kb_path, tmp_path / "kb"))
