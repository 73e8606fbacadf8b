"""Icons: built from two tiny themes in the freedesktop layout (index.theme, SVG and PNG icons)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metricvision.data import DATASETS, check_class_disjoint
from metricvision.data.icons import build, theme_sources

pytest.importorskip("cairosvg", reason="cairosvg (extra 'data') rasterizes SVG icons")

INDEX = """[Icon Theme]
Name={name}
Directories={dirs}
"""
SECTION = "\n[{d}]\nSize={size}\nContext={context}\nType={type}\n"


def svg(colour: str, shape: str, entity: bool = False) -> str:
    """A 16 px SVG circle or square; ``entity``: with an XML entity declaration, as Illustrator writes them."""
    circle, square = f'<circle cx="8" cy="8" r="6" fill="{colour}"/>', f'<rect x="2" y="2" width="12" height="12" fill="{colour}"/>'
    body = circle if shape == "circle" else square
    doctype = '<!DOCTYPE svg [<!ENTITY ns_svg "http://www.w3.org/2000/svg">]>' if entity else ""
    return f'{doctype}<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 16 16">{body}</svg>'


def write_theme(root: Path, name: str, dirs: dict) -> None:
    """A theme folder: index.theme listing ``dirs`` ({dir: (size, context, type, {file: content})})."""
    theme = root / name
    theme.mkdir(parents=True)
    text = INDEX.format(name=name, dirs=",".join(dirs))
    for d, (size, context, kind, files) in dirs.items():
        text += SECTION.format(d=d, size=size, context=context, type=kind)
        (theme / d).mkdir(parents=True)
        for fname, content in files.items():
            if isinstance(content, Image.Image):
                content.save(theme / d / fname)
            else:
                (theme / d / fname).write_text(content)
    (theme / "index.theme").write_text(text)


@pytest.fixture(scope="module")
def icons_root(tmp_path_factory) -> Path:
    """usr/share/icons with themes Papirus (SVG, 48 and 32 px) and Tango (PNG + scalable SVG)."""
    root = tmp_path_factory.mktemp("icons") / "usr" / "share" / "icons"
    write_theme(root, "Papirus", {
        "48x48/apps": (48, "Applications", "Fixed", {
            "firefox.svg": svg("orange", "circle"), "gimp.svg": svg("gray", "circle"), "only-here.svg": svg("red", "rect"),
            "gimp-symbolic.svg": svg("black", "rect"), "broken.svg": svg("pink", "rect")}),
        "32x32/apps": (32, "Applications", "Fixed", {"firefox.svg": svg("orange", "rect")}),
        "16x16/apps": (16, "Applications", "Fixed", {"firefox.svg": svg("yellow", "rect")}),
        "48x48/places": (48, "Places", "Fixed", {"folder.svg": svg("blue", "rect"), "user-home.svg": svg("navy", "circle")}),
        "48x48/emblems": (48, "Emblems", "Fixed", {"emblem-ok.svg": svg("green", "circle")}),
    })
    write_theme(root, "Tango", {
        "32x32/apps": (32, "Applications", "Fixed", {"firefox.png": Image.new("RGBA", (32, 32), (200, 80, 0, 255)),
                                                      "gimp.png": Image.new("RGBA", (32, 32), (90, 90, 90, 128)),
                                                      "broken.png": "not a PNG"}),
        "scalable/places": (48, "Places", "Scalable", {"folder.svg": svg("steelblue", "circle", entity=True),
                                                       "user-home.svg": svg("steelblue", "circle", entity=True)}),
        "32x32/emblems": (32, "Emblems", "Fixed", {"emblem-ok.png": Image.new("RGB", (32, 32), "green")}),
    })
    (root / "Tango" / "32x32" / "apps" / "mozilla.png").symlink_to("firefox.png")
    return root


def test_theme_sources_reads_index_theme(icons_root):
    papirus = theme_sources(icons_root / "Papirus")
    assert [(size, cat) for size, cat, _ in papirus["firefox"]] == [(48, "apps"), (32, "apps")]  # 16 px not a design size
    assert "gimp-symbolic" not in papirus and "emblem-ok" not in papirus  # symbolic icons, emblems context
    tango = theme_sources(icons_root / "Tango")
    assert "mozilla" not in tango and tango["folder"][0][0] == 0  # an alias symlink; scalable = 0
    assert "user-home" in papirus and "user-home" not in tango  # Tango draws it as its folder: an alias
    with pytest.raises(FileNotFoundError, match="index.theme not found"):
        theme_sources(icons_root / "Nope")


def test_build_split_is_class_disjoint_and_deterministic(icons_root, tmp_path):
    out = tmp_path / "icons_24.npz"
    counts = build(icons_root, out, size=24, themes=["Papirus", "Tango"])
    # firefox (2 Papirus sizes + Tango), folder (both), gimp (both); only-here and user-home in one theme;
    # broken is unreadable in Tango, so left in one theme
    assert counts["identities"] == 3 and counts["images"] == 7 and counts["identities_apps"] == 2
    assert counts["unreadable_files"] == 1
    splits = DATASETS.create("icons", path=str(out))
    check_class_disjoint(splits["train"], splits["test"])
    names = {s.meta["name"]: s.label for part in splits.values() for s in part}
    assert names == {"firefox": 0, "folder": 1, "gimp": 2}
    assert {s.meta["name"] for s in splits["train"]} == {"firefox", "gimp"}
    firefox = [s for s in splits["train"] if s.meta["name"] == "firefox"]
    assert sorted((s.meta["theme"], s.meta["size"]) for s in firefox) == [("Papirus", 32), ("Papirus", 48), ("Tango", 32)]
    img = firefox[0].image
    assert img.shape == (24, 24, 3) and img.dtype == np.uint8 and (img[0, 0] == 255).all() and img[12, 12, 2] < 100
    semi = next(s for s in splits["train"] if s.meta["name"] == "gimp" and s.meta["theme"] == "Tango").image
    assert 150 < semi[5, 5, 0] < 255  # half-transparent PNG composited on white
    out2 = tmp_path / "again.npz"
    build(icons_root, out2, size=24, themes=["Papirus", "Tango"])
    again = DATASETS.create("icons", path=str(out2))
    assert [(s.label, s.meta["theme"]) for s in again["test"]] == [(s.label, s.meta["theme"]) for s in splits["test"]]
    assert DATASETS.info("icons").protocol == "retrieval" and DATASETS.info("icons").licence


def test_missing_file_and_no_shared_names(icons_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="metricvision data fetch icons"):
        DATASETS.create("icons", path=str(tmp_path / "none.npz"))
    with pytest.raises(ValueError, match="no icon name is drawn by >= 2"):
        build(icons_root, tmp_path / "x.npz", themes=["Papirus"])
