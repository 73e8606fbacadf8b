from pathlib import Path

import pytest

from shapes import tiny_kb


@pytest.fixture(scope="session")
def shapes_kb(tmp_path_factory: pytest.TempPathFactory):
    """A KB of drawn shapes with a text-aligned model, built once per session."""
    return tiny_kb(Path(tmp_path_factory.mktemp("shapes")))
