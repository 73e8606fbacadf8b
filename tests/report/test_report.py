"""report.html: warnings as banners, names and scores in the query grid, precision-recall curve,
failing classes, and a 2-D map whose points show their image on hover (checked in a real browser)."""
from pathlib import Path

import pytest
import torch

from metricvision.report import query_grid, write_report


@pytest.fixture(scope="module")
def report(tmp_path_factory, emoji_small):
    _, test = emoji_small
    emb = torch.nn.functional.normalize(torch.randn(len(test), 16, generator=torch.Generator().manual_seed(0)), dim=1)
    run = tmp_path_factory.mktemp("run")
    metrics = {"precision@1": 0.5, "recall@1": 0.5, "recall@2": 0.6, "warnings": ["stopped at epoch 2/12 by train.max_minutes"]}
    history = {"step_loss": [1.0, 0.8, 0.7], "epochs": [{"loss": 0.8}]}
    path = write_report(run, "tiny", metrics, history, {"name": "tiny"}, query_grid(test, emb), samples=test, embeddings=emb)
    return path, test


def test_sections_and_banner(report):
    path, test = report
    page = path.read_text()
    assert "<div class='banner' role='alert'>&#9888; stopped at epoch 2/12 by train.max_minutes</div>" in page
    assert "<td>warnings</td>" not in page
    for section in ("Precision-recall", "Classes that fail most", "Map of the test embeddings", "name and cosine score"):
        assert section in page
    assert page.count("<circle ") == len(test)  # 64 points: fewer than the subset size
    assert test[0].caption in page  # names in the map's hover titles and the failing classes


def test_no_banner_without_warnings(tmp_path, emoji_small):
    _, test = emoji_small
    path = write_report(tmp_path, "t", {"precision@1": 0.5, "recall@1": 0.5}, {}, {})
    assert "banner' role" not in path.read_text()


def test_long_tail_runs_plot_accuracy_by_class_frequency(tmp_path):
    from metricvision.report.html import shot_bars

    shots = {"many_shot": 0.8, "medium_shot": 0.4, "few_shot": 0.3, "oltr_many_shot": 0.9, "oltr_medium_shot": 0.5,
             "oltr_few_shot": 0.2, "accuracy": 0.6}
    assert shot_bars(shots) == {"nearest class mean": [0.8, 0.4, 0.3], "oltr": [0.9, 0.5, 0.2]}
    assert "alt='shot accuracy'" in write_report(tmp_path, "lt", shots, {}, {}).read_text()
    assert "alt='shot accuracy'" not in write_report(tmp_path, "x", {"accuracy": 0.5}, {}, {}).read_text()


CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists() or not DRIVER.exists(),
                    reason="needs Debian packages chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver)")
def test_map_shows_the_image_on_hover(report, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver import ActionChains
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    try:
        driver.get(report[0].as_uri())
        hover = driver.find_element(By.ID, "map-hover")
        assert not hover.is_displayed()
        point = driver.find_elements(By.CSS_SELECTOR, "#map circle")[3]
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", point)
        ActionChains(driver).move_to_element(point).perform()
        assert hover.is_displayed() and hover.get_attribute("src").startswith("data:image/png;base64,")
    finally:
        driver.quit()
