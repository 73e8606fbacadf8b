"""Glyphs: built from font files of this machine copied into the fonts packages' layout."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import ImageFont

from metricvision.data import DATASETS, check_class_disjoint
from metricvision.data.glyphs import SCRIPTS, build, font_files, render_glyph

SYSTEM_FONTS = font_files(Path("/usr/share/fonts")) if Path("/usr/share/fonts").is_dir() else []
pytestmark = pytest.mark.skipif(not SYSTEM_FONTS, reason="no .ttf / .otf font under /usr/share/fonts to render glyphs with")


@pytest.fixture(scope="module")
def glyphs_file(tmp_path_factory) -> Path:
    """A 16 px glyphs file from up to three system fonts, every character drawn by one font kept."""
    tmp = tmp_path_factory.mktemp("glyphs")
    fonts_root = tmp / "usr" / "share" / "fonts" / "truetype"
    fonts_root.mkdir(parents=True)
    for f in SYSTEM_FONTS[:3]:
        shutil.copy(f, fonts_root / f.name)
    out = tmp / "glyphs_16.npz"
    counts = build(tmp / "usr" / "share" / "fonts", out, size=16, min_fonts=1)
    assert counts["images"] >= counts["identities"] > 0 and counts["fonts"] <= 3
    return out


def test_render_glyph_keeps_the_em_box():
    font = ImageFont.truetype(str(SYSTEM_FONTS[0]), 64)
    small, capital = render_glyph(font, "o", 32), render_glyph(font, "O", 32)
    if small is None or capital is None:
        pytest.skip(f"{SYSTEM_FONTS[0].name} has no Latin 'o'")
    assert small.shape == (32, 32) and small.dtype == np.uint8
    assert (small < 128).sum() < (capital < 128).sum()  # x-height vs cap height survive the resize
    assert render_glyph(font, " ", 32) is None


def test_splits_are_class_disjoint_and_deterministic(glyphs_file):
    retrieval = DATASETS.create("glyphs", path=str(glyphs_file))
    check_class_disjoint(retrieval["train"], retrieval["test"])
    assert {s.label % 2 for s in retrieval["train"]} == {0} and {s.label % 2 for s in retrieval["test"]} == {1}
    s = retrieval["train"][0]
    assert s.image.shape == (16, 16) and s.caption == s.meta["char"] and s.meta["font"] and s.meta["script"] in SCRIPTS
    assert {s.label for s in retrieval["train"]}.isdisjoint({s.label for s in retrieval["test"]})
    fewshot = DATASETS.create("glyphs_fewshot", path=str(glyphs_file))
    check_class_disjoint(fewshot["train"], fewshot["test"])
    assert all(SCRIPTS[s.meta["script"]][1] for s in fewshot["train"])
    assert not any(SCRIPTS[s.meta["script"]][1] for s in fewshot["test"])
    rebuilt = glyphs_file.parent / "again.npz"
    build(glyphs_file.parent / "usr" / "share" / "fonts", rebuilt, size=16, min_fonts=1)
    again = DATASETS.create("glyphs", path=str(rebuilt))
    assert [(s.label, s.meta["font"]) for s in again["test"]] == [(s.label, s.meta["font"]) for s in retrieval["test"]]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(again["test"], retrieval["test"]))
    assert DATASETS.info("glyphs_fewshot").protocol == "fewshot" and DATASETS.info("glyphs").protocol == "retrieval"


def test_errors_name_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="metricvision data fetch glyphs"):
        DATASETS.create("glyphs_fewshot", path=str(tmp_path / "none.npz"))
    with pytest.raises(FileNotFoundError, match="no .ttf / .otf font under"):
        build(tmp_path, tmp_path / "x.npz")
