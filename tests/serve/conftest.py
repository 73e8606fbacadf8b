import contextlib
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kb"))  # the drawn-shapes helpers

from shapes import tiny_kb  # noqa: E402


@pytest.fixture(scope="session")
def shapes_kb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a KB of drawn shapes with a text-aligned model, built once per session."""
    return tiny_kb(Path(tmp_path_factory.mktemp("serve_shapes"))).path


@contextlib.contextmanager
def running(app) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port; yields the base URL."""
    uvicorn = pytest.importorskip("uvicorn")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        if time.time() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture()
def kb_copy(shapes_kb_path, tmp_path) -> Path:
    """A private copy of the shapes KB (tests that write or damage it)."""
    return Path(shutil.copytree(shapes_kb_path, tmp_path / "kb"))
