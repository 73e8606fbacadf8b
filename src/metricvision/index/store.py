"""IndexStore: numbered versions of an index in one folder, committed atomically.

Layout::

    DIR/v000001/index.bin + manifest.json
    DIR/v000002/...
    DIR/CURRENT          "v000002": the committed version, replaced atomically
    DIR/WRITER           the writer lock (flock) and the PID of the process holding it
    DIR/v000002/LEASE    readers hold a shared flock on it while they use the version

A version is written under ``DIR/.tmp-v000003-PID`` and renamed into place, and only
then does CURRENT move, so a crash at any point leaves the previous version readable.
One writer at a time (``writer()``); ``prune`` never deletes a version a reader holds
(``acquire()``), in this process or another: the kernel drops a dead reader's lock.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from metricvision._atomic import atomic_write
from metricvision.index.base import INDEXES, Index

FORMAT = 1
INDEX_FILE = "index.bin"
MANIFEST = "manifest.json"
LEASE = "LEASE"
WRITER = "WRITER"
_VERSION = re.compile(r"^v(\d{6})$")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (versions share unchanged files), copying when the file system refuses."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def registered_name(index: Index) -> str:
    """The INDEXES name under which ``type(index)`` is registered."""
    for name in INDEXES.names():
        if INDEXES.get(name) is type(index):
            return name
    raise ValueError(f"{type(index).__name__} is not a registered index; expected one of: {', '.join(INDEXES.names())}")


class StoreBusy(RuntimeError):
    """Another writer holds the store's writer lock."""


class Lease:
    """A reader's hold on one version: a shared flock on its LEASE file until ``release()``.

    Attributes:
        version: the version held.
    """

    def __init__(self, version: int, fd: int) -> None:
        self.version, self._fd = version, fd

    def release(self) -> None:
        """Let ``prune`` delete the version (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = -1

    def __del__(self) -> None:
        self.release()


class IndexStore:
    """Versioned, crash-safe storage of an index (plus any extra files) in ``root``.

    Args:
        root: the store folder (created on first commit).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def versions(self) -> List[int]:
        """Committed or renamed-in version numbers, ascending."""
        if not self.root.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.root.iterdir() if (m := _VERSION.match(p.name)) and p.is_dir())

    def current(self) -> Optional[int]:
        """The version CURRENT points to, or None before the first commit."""
        pointer = self.root / "CURRENT"
        if not pointer.exists():
            return None
        name = pointer.read_text().strip()
        if not _VERSION.match(name):
            raise ValueError(f"{pointer} holds '{name}', expected a version like 'v000001'")
        return int(name[1:])

    def path(self, version: Optional[int] = None) -> Path:
        """Folder of ``version`` (default: the current one)."""
        version = self.current() if version is None else version
        if version is None:
            raise FileNotFoundError(f"no committed index version in {self.root}")
        folder = self.root / f"v{version:06d}"
        if not (folder / MANIFEST).exists():
            raise FileNotFoundError(f"version {version} not found in {self.root} (have {self.versions()})")
        return folder

    def commit(self, write: Callable[[Path], Dict[str, Any]], keep_from: Optional[int] = None,
               keep: Sequence[str] = ()) -> int:
        """Write a new version through ``write(folder) -> manifest fields`` and make it current.

        Args:
            write: fills the new version's folder and returns its manifest fields.
            keep_from: a version whose files named in ``keep`` the new version shares: they are
                hard-linked (copied where links fail) before ``write`` runs, and their checksums
                are taken from that version's manifest instead of being recomputed.
            keep: file names of ``keep_from``.

        Returns:
            The new version number.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in [*self.root.glob(".tmp-v*"), *self.root.glob(".trash-v*")]:  # left by a crashed writer
            shutil.rmtree(stale, ignore_errors=True)
        version = max(self.versions(), default=0) + 1
        tmp = self.root / f".tmp-v{version:06d}-{os.getpid()}"
        tmp.mkdir()
        try:
            previous = self.manifest(keep_from)["files"] if keep else {}
            known = {name: previous[name] for name in keep}
            for name in keep:
                _link_or_copy(self.path(keep_from) / name, tmp / name)
            fields = write(tmp)
            files = {p.name: known.get(p.name) or {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                     for p in sorted(tmp.iterdir()) if p.is_file()}
            manifest = {"format": FORMAT, "version": version, "created": time.time(), "files": files, **fields}
            with atomic_write(tmp / MANIFEST) as f:
                f.write(json.dumps(manifest, indent=2).encode())
            os.rename(tmp, self.root / f"v{version:06d}")
            (self.root / f"v{version:06d}" / LEASE).touch()
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        with atomic_write(self.root / "CURRENT") as f:
            f.write(f"v{version:06d}\n".encode())
        return version

    def save(self, index: Index, extra: Optional[Dict[str, Any]] = None) -> int:
        """Commit ``index`` (any registered index with ``save``) as a new version.

        Args:
            index: the index.
            extra: JSON-serializable fields stored in the manifest under "extra".

        Returns:
            The new version number.
        """
        kind = registered_name(index)

        def write(folder: Path) -> Dict[str, Any]:
            index.save(folder / INDEX_FILE)
            return {"kind": kind, "dim": index.dim, "ntotal": len(index), "extra": extra or {}}

        return self.commit(write)

    def manifest(self, version: Optional[int] = None) -> Dict[str, Any]:
        """The manifest of ``version`` (default: current)."""
        return json.loads((self.path(version) / MANIFEST).read_text())

    def verify(self, version: Optional[int] = None, names: Optional[Sequence[str]] = None) -> None:
        """Check the sha256 of ``version``'s files named in ``names`` (default: all) against its manifest.

        Raises:
            ValueError: naming the first file that does not match.
        """
        folder = self.path(version)
        files = self.manifest(version)["files"]
        for name in files if names is None else names:
            if _sha256(folder / name) != files[name]["sha256"]:
                raise ValueError(f"{folder / name} does not match its manifest checksum (corrupt)")

    def load(self, version: Optional[int] = None, verify: bool = True) -> Index:
        """Load ``version`` (default: current); ``verify`` checks every file's sha256."""
        if verify:
            self.verify(version)
        return INDEXES.get(self.manifest(version)["kind"]).load(self.path(version) / INDEX_FILE)

    def prune(self, keep: int = 2) -> List[int]:
        """Delete all but the newest ``keep`` versions, never the current one nor one a reader holds.

        Returns:
            The versions deleted.
        """
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        current = self.current()
        deleted = []
        for v in self.versions()[:-keep]:
            folder = self.root / f"v{v:06d}"
            if v == current:
                continue
            fd = os.open(folder / LEASE, os.O_RDONLY | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a reader holds it: a later prune deletes it
                os.close(fd)
                continue
            try:
                trash = self.root / f".trash-v{v:06d}-{os.getpid()}"
                os.rename(folder, trash)  # readers that look it up now find it gone and retry
                shutil.rmtree(trash)
                deleted.append(v)
            finally:
                os.close(fd)
        return deleted

    def acquire(self, version: Optional[int] = None) -> Lease:
        """Hold ``version`` (default: the current one) so that ``prune`` keeps it until released.

        Raises:
            FileNotFoundError: when ``version`` (given explicitly) no longer exists.
        """
        for _ in range(100):
            v = self.current() if version is None else version
            if v is None:
                raise FileNotFoundError(f"no committed index version in {self.root}")
            folder = self.root / f"v{v:06d}"
            try:
                fd = os.open(folder / LEASE, os.O_RDONLY | os.O_CREAT, 0o644)
            except FileNotFoundError:
                fd = -1
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_SH)
                if (folder / MANIFEST).exists():  # still there once held: prune cannot take it now
                    return Lease(v, fd)
                os.close(fd)
            if version is not None:
                raise FileNotFoundError(f"version {version} not found in {self.root} (have {self.versions()})")
        raise RuntimeError(f"could not hold a version of {self.root}: versions keep disappearing")

    @contextlib.contextmanager
    def writer(self, timeout: float = 60.0) -> Iterator[None]:
        """Hold the store's writer lock (waiting up to ``timeout`` seconds) for the block.

        Raises:
            StoreBusy: naming the PID of the writer that kept it past ``timeout``.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / WRITER, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = (self.root / WRITER).read_text().strip() or "unknown"
                        raise StoreBusy(f"{self.root.parent} is being written by PID {holder} "
                                        f"(waited {timeout:g} s for its writer lock)") from None
                    time.sleep(0.05)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)
