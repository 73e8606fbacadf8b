"""Fetch Debian packages as data: `apt-get download` into a folder, unpack with `dpkg-deb -x`.

Nothing is installed system-wide; the unpacked tree lives in the caller's (temporary) folder.
"""
from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Sequence, TypeVar

T = TypeVar("T")

_LICENSE_LINE = re.compile(r"^License:\s*(\S.*)$", re.MULTILINE)


def _run(cmd: List[str], cwd: Path) -> None:
    try:
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True, timeout=1800)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{cmd[0]} is needed to fetch Debian packages (a Debian or Ubuntu system)") from e
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"`{' '.join(cmd)}` failed: {e.stderr.strip()[-500:]}") from e


def fetch_debs(packages: Sequence[str], dest: Path) -> Path:
    """Download ``packages`` with `apt-get download` into ``dest`` and unpack them all into ``dest``/root.

    Returns:
        The unpacked root (holding usr/share/...).
    """
    dest.mkdir(parents=True, exist_ok=True)
    dest.chmod(0o755)  # lets apt's sandbox user write there
    _run(["apt-get", "download", *packages], dest)
    root = dest / "root"
    for deb in sorted(dest.glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(root)], dest)
        deb.unlink()
    return root


def package_licences(root: Path, packages: Sequence[str]) -> Dict[str, str]:
    """Licence names of each unpacked package, read from usr/share/doc/<pkg>/copyright ("License:" lines)."""
    out = {}
    for pkg in packages:
        path = root / "usr" / "share" / "doc" / pkg / "copyright"
        text = path.read_text(errors="replace") if path.exists() else ""
        names = list(dict.fromkeys(m.strip() for m in _LICENSE_LINE.findall(text)))
        out[pkg] = ", ".join(names) or "see its copyright file"
    return out


def print_licences(licences: Dict[str, str]) -> None:
    """One line per package: its licences."""
    for pkg, lic in licences.items():
        print(f"{pkg}: licence {lic}", flush=True)


def build_from_packages(packages: Sequence[str], build: Callable[[Path, Dict[str, str]], T]) -> T:
    """Download and unpack ``packages`` into a temporary folder, print their licences, and return
    ``build(root, licences)`` (root: the unpacked tree, e.g. root / "usr" / "share" / ...)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = fetch_debs(list(packages), Path(tmp))
        licences = package_licences(root, list(packages))
        print_licences(licences)
        return build(root, licences)
