import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kb"))  # the drawn-shapes helpers

from shapes import tiny_kb  # noqa: E402


@pytest.fixture(scope="session")
def shapes_kb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a KB of drawn shapes with a text-aligned model, built once per session."""
    return tiny_kb(Path(tmp_path_factory.mktemp("serve_shapes"))).path
