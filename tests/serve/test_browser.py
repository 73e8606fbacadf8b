"""Drive the web page in a real headless Chromium against the real server (uvicorn on loopback)."""
from pathlib import Path

import pytest
from PIL import Image

from live_server import running
from shapes import draw, shape_classes

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists() or not DRIVER.exists(),
                       reason="needs Debian packages chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver)"),
]


@pytest.fixture(scope="module")
def server(shapes_kb_path):
    from metricvision.serve.app import create_app

    with running(create_app(shapes_kb_path)) as base:
        yield base


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1200,900",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_for(driver, condition, timeout=60.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def captions(driver):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#results .caption")]
    except StaleElementReferenceException:  # the results were re-rendered while being read
        return []


def test_text_query_image_upload_boxes_and_url_state(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(server + "/")
    wait_for(browser, lambda d: "24 items" in d.find_element(By.ID, "kb-info").text)
    box = browser.find_element(By.ID, "text")
    box.send_keys("yellow circle", Keys.ENTER)
    wait_for(browser, lambda d: len(captions(d)) == 12)
    assert captions(browser)[:2] == ["yellow circle", "yellow circle"]
    assert "q=yellow+circle" in browser.current_url and "k=12" in browser.current_url

    # upload an image with heat maps switched on (off by default): the results come back with heat maps and boxes
    browser.find_element(By.ID, "heat").click()
    query = tmp_path / "query.png"
    Image.fromarray(draw("triangle", "red")).save(query)
    box.clear()
    browser.find_element(By.ID, "file").send_keys(str(query))
    wait_for(browser, lambda d: captions(d)[:1] == ["red triangle"])
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#results .hit .box"))
    assert browser.find_elements(By.CSS_SELECTOR, "#results .hit img.heat")
    first_box = browser.find_element(By.CSS_SELECTOR, "#results .hit .box")
    assert first_box.size["width"] > 5 and first_box.size["height"] > 5
    browser.save_screenshot(str(tmp_path / "results.png"))

    # "search with this result": the item becomes the query and lands in the URL
    second = browser.find_elements(By.CSS_SELECTOR, "#results .hit")[1]
    item_id = second.get_attribute("data-id")
    second.find_element(By.CSS_SELECTOR, "button.again").click()
    wait_for(browser, lambda d: f"item={item_id}" in d.current_url)
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#results .hit")[0].get_attribute("data-id") == item_id)

    # the URL alone restores the query
    browser.get(server + "/?q=blue+square&k=3")
    wait_for(browser, lambda d: len(captions(d)) == 3)
    assert browser.find_element(By.ID, "text").get_attribute("value") == "blue square"
    assert captions(browser)[0] == "blue square"


def test_errors_are_shown_and_the_page_keeps_working(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(server + "/")
    bad = tmp_path / "not_an_image.png"
    bad.write_bytes(b"definitely not a png")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    wait_for(browser, lambda d: "not an image" in d.find_element(By.ID, "status").text)
    assert "error" in browser.find_element(By.ID, "status").get_attribute("class")
    wait_for(browser, lambda d: d.find_element(By.ID, "clear-image").is_displayed())
    browser.find_element(By.ID, "clear-image").click()
    browser.find_element(By.ID, "text").send_keys("green square", Keys.ENTER)
    wait_for(browser, lambda d: captions(d)[:1] == ["green square"])


def test_page_shows_items_added_live(kb_copy, browser):
    import io

    import httpx
    from selenium.webdriver.common.by import By

    from metricvision.kb.store import KnowledgeBase
    from metricvision.serve.app import create_app

    with running(create_app(kb_copy)) as base:
        browser.get(base + "/")
        wait_for(browser, lambda d: "24 items" in d.find_element(By.ID, "kb-info").text)
        buf = io.BytesIO()
        Image.fromarray(draw("circle", "blue")).save(buf, format="PNG")
        r = httpx.post(base + "/v1/items", files={"image": ("a.png", buf.getvalue(), "image/png")}, data={"caption": "live zebra"})
        assert r.status_code == 201
        wait_for(browser, lambda d: "live zebra" in d.find_element(By.ID, "recent").text, timeout=15)
        KnowledgeBase.open(kb_copy).add(shape_classes()[:1])  # a `kb add` from elsewhere shows too
        wait_for(browser, lambda d: "26 items" in d.find_element(By.ID, "kb-info").text, timeout=15)


def test_page_asks_for_the_api_key_and_sends_it(shapes_kb_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from metricvision.serve.access import ApiKeys
    from metricvision.serve.app import create_app

    with running(create_app(shapes_kb_path, api_keys=ApiKeys.parse("reader-key-0123456789 read", "test"))) as base:
        browser.get(base + "/")
        wait_for(browser, lambda d: d.find_element(By.ID, "api-key").is_displayed())
        assert "API key" in browser.find_element(By.ID, "status").text
        browser.find_element(By.ID, "api-key").send_keys("wrong", Keys.ENTER)
        browser.find_element(By.ID, "text").send_keys("blue square", Keys.ENTER)
        wait_for(browser, lambda d: "unknown API key" in d.find_element(By.ID, "status").text)
        key = browser.find_element(By.ID, "api-key")
        key.clear()
        key.send_keys("reader-key-0123456789", Keys.ENTER)
        wait_for(browser, lambda d: "24 items" in d.find_element(By.ID, "kb-info").text)
        browser.find_element(By.ID, "go").click()
        wait_for(browser, lambda d: captions(d)[:1] == ["blue square"])
        # result images come through the API with the key too (an <img> alone would get a 401)
        wait_for(browser, lambda d: d.execute_script(
            "const i = document.querySelector('#results img'); return i && i.complete && i.naturalWidth > 0"))
        browser.get(base + "/?q=red+circle")  # the key is kept across visits
        wait_for(browser, lambda d: captions(d)[:1] == ["red circle"])
        assert browser.execute_script("return localStorage.getItem('metricvision-api-key')") == "reader-key-0123456789"
