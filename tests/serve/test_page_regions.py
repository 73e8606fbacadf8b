"""Regions on the web page (a KB built with --regions), in a real headless Chromium against the real server:
the best region of a hit is drawn over its image, and "search with this region" searches with the crop."""
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from live_server import running
from test_browser import CHROMIUM, DRIVER, browser, captions, wait_for  # noqa: F401  (fixtures)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kb"))
from shapes import draw  # noqa: E402
from test_regions import scene  # noqa: E402

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists() or not DRIVER.exists(),
                       reason="needs Debian packages chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver)"),
]


@pytest.fixture(scope="module")
def regions_server(shapes_kb_path, tmp_path_factory):
    """A KB of four 192 px scenes with one small drawn shape each (regions on a grid), served on loopback."""
    from metricvision.cli import main
    from metricvision.kb.store import KnowledgeBase
    from metricvision.serve.app import create_app

    tmp = tmp_path_factory.mktemp("regions")
    folder = tmp / "scenes"
    folder.mkdir()
    scene(draw("circle", "red", 28), (130, 20)).save(folder / "0.png")
    for n, (shape, color) in enumerate([("square", "blue"), ("triangle", "green"), ("square", "yellow")], 1):
        scene(draw(shape, color, 28), (20 + 30 * n, 120)).save(folder / f"{n}.png")
    ckpt = str(shapes_kb_path / KnowledgeBase.open(shapes_kb_path).card.checkpoint)
    assert main(["kb", "build", str(tmp / "kb"), "--from-folder", str(folder), "--checkpoint", ckpt, "--regions"]) == 0
    with running(create_app(tmp / "kb")) as base:
        yield base, tmp


def test_best_region_drawn_and_search_with_this_region(regions_server, browser):  # noqa: F811
    from selenium.webdriver.common.by import By

    base, tmp = regions_server
    query = tmp / "red_circle.png"
    Image.fromarray(draw("circle", "red", 32)).save(query)
    browser.get(base + "/?k=4")
    browser.find_element(By.ID, "file").send_keys(str(query))
    wait_for(browser, lambda d: captions(d)[:1] == ["0"] and d.find_elements(By.CSS_SELECTOR, "#results .hit .region"))
    first = browser.find_elements(By.CSS_SELECTOR, "#results .hit")[0]
    frame, box = first.find_element(By.CSS_SELECTOR, ".frame").rect, first.find_element(By.CSS_SELECTOR, ".region").rect
    cx, cy = 144 / 192 * frame["width"] + frame["x"], 34 / 192 * frame["height"] + frame["y"]  # the circle's centre
    assert box["x"] <= cx <= box["x"] + box["width"] and box["y"] <= cy <= box["y"] + box["height"]
    first.find_element(By.CSS_SELECTOR, "button.by-region").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "preview").is_displayed()
             and "Searching" not in d.find_element(By.ID, "status").text and captions(d)[:1] == ["0"])
    assert browser.find_element(By.ID, "preview").get_attribute("src").startswith("blob:")
