import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from metricvision.index import FaissIndex, FlatIndex, IndexStore


def flat(n: int, seed: int = 0) -> FlatIndex:
    index = FlatIndex(8)
    index.add(np.random.default_rng(seed).standard_normal((n, 8)).astype(np.float32))
    return index


def test_versions_and_roundtrip(tmp_path):
    store = IndexStore(tmp_path / "idx")
    assert store.versions() == [] and store.current() is None
    with pytest.raises(FileNotFoundError, match="no committed"):
        store.load()
    assert store.save(flat(5), extra={"model": "m1"}) == 1
    assert store.save(flat(7)) == 2
    assert store.versions() == [1, 2] and store.current() == 2
    assert (tmp_path / "idx" / "CURRENT").read_text().strip() == "v000002"
    assert len(store.load()) == 7 and len(store.load(1)) == 5
    m = store.manifest(1)
    assert m["kind"] == "flat" and m["ntotal"] == 5 and m["extra"] == {"model": "m1"} and "index.bin" in m["files"]
    assert store.prune(keep=1) == [1] and store.versions() == [2]


def test_faiss_index_in_store(tmp_path):
    pytest.importorskip("faiss")
    index = FaissIndex(8, "HNSW8")
    index.add(np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32))
    store = IndexStore(tmp_path)
    store.save(index)
    loaded = store.load()
    assert isinstance(loaded, FaissIndex) and len(loaded) == 50


def test_exception_mid_write_keeps_previous_version(tmp_path):
    store = IndexStore(tmp_path)
    store.save(flat(5))

    def crash(folder: Path) -> dict:
        (folder / "index.bin").write_bytes(b"half an ind")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        store.commit(crash)
    assert store.current() == 1 and store.versions() == [1]
    assert len(store.load()) == 5
    assert not list(tmp_path.glob(".tmp-*"))


def _run_child(root: Path, body: str) -> int:
    code = "import os, numpy as np\nfrom metricvision.index import FlatIndex, IndexStore\n"
    code += f"store = IndexStore({str(root)!r})\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], timeout=120).returncode


@pytest.mark.slow  # starts a Python process
def test_process_killed_mid_write_keeps_previous_version(tmp_path):
    store = IndexStore(tmp_path)
    store.save(flat(5))
    rc = _run_child(tmp_path, """
        def write(folder):
            (folder / "index.bin").write_bytes(b"partial")
            os._exit(3)  # dies without any cleanup
        store.commit(write)
    """)
    assert rc == 3 and list(tmp_path.glob(".tmp-*"))  # the crash left its temporary folder
    assert store.current() == 1 and len(store.load()) == 5
    assert store.save(flat(9)) == 2 and not list(tmp_path.glob(".tmp-*"))
    assert len(store.load()) == 9


@pytest.mark.slow  # starts a Python process
def test_killed_before_current_moves_keeps_previous_version(tmp_path):
    store = IndexStore(tmp_path)
    store.save(flat(5))
    rc = _run_child(tmp_path, """
        real_replace = os.replace
        def replace(src, dst):
            if str(dst).endswith("CURRENT"):
                os._exit(4)
            real_replace(src, dst)
        os.replace = replace
        index = FlatIndex(8)
        index.add(np.ones((3, 8), np.float32))
        store.save(index)
    """)
    assert rc == 4 and store.versions() == [1, 2]  # v2 is complete but was never committed
    assert store.current() == 1 and len(store.load()) == 5
    assert store.save(flat(6)) == 3 and len(store.load()) == 6


def test_corruption_is_detected(tmp_path):
    store = IndexStore(tmp_path)
    store.save(flat(5))
    with open(store.path() / "index.bin", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="checksum"):
        store.load()
    (tmp_path / "CURRENT").write_text("latest")
    with pytest.raises(ValueError, match="latest"):
        store.current()
    json.loads((store.root / "v000001" / "manifest.json").read_text())
