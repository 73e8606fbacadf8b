"""Details of the web page, in a real headless Chromium against the real server: heat maps
off by default and boxes only on confident hits, object views from the URL, full names on hover, no broken image
for an unknown id."""
import pytest

from test_browser import CHROMIUM, DRIVER, browser, captions, server, wait_for  # noqa: F401  (fixtures)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists() or not DRIVER.exists(),
                       reason="needs Debian packages chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver)"),
]


def test_heat_off_by_default_and_boxes_only_on_confident_hits(server, browser):  # noqa: F811
    from selenium.webdriver.common.by import By

    browser.get(server + "/?q=red+triangle&k=8")
    wait_for(browser, lambda d: len(captions(d)) == 8)
    assert not browser.find_element(By.ID, "heat").is_selected()
    assert not [e for e in browser.find_elements(By.CSS_SELECTOR, "#results img.heat, #results .box") if e.is_displayed()]

    browser.get(server + "/?q=red+triangle&k=8&heat=1")
    wait_for(browser, lambda d: len(captions(d)) == 8)
    assert browser.find_element(By.ID, "heat").is_selected()
    hits = browser.find_elements(By.CSS_SELECTOR, "#results .hit")
    scores = [float(h.find_element(By.CSS_SELECTOR, ".score").text.split("score ")[1]) for h in hits]
    boxed = [bool(h.find_elements(By.CSS_SELECTOR, ".box")) for h in hits]
    assert boxed[0] and all(b == (s >= 0.75 * max(scores)) for b, s in zip(boxed, scores) if b)
    assert not all(boxed)  # the weak hits of 8 carry no box


def test_object_views_follow_the_url_and_reach_the_search(server, browser):  # noqa: F811
    from selenium.webdriver.common.by import By

    def top_score() -> float:
        return float(browser.find_element(By.CSS_SELECTOR, "#results .hit .score").text.split("score ")[1])

    browser.get(server + "/?item=4&k=3")
    wait_for(browser, lambda d: len(captions(d)) == 3)
    assert not browser.find_element(By.ID, "views").is_selected() and top_score() == pytest.approx(1.0, abs=1e-3)
    browser.get(server + "/?item=4&k=3&views=1")
    wait_for(browser, lambda d: len(captions(d)) == 3)
    assert browser.find_element(By.ID, "views").is_selected()
    assert top_score() < 0.999  # the item's views, not the item itself


def test_full_names_on_hover(server, browser):  # noqa: F811
    from selenium.webdriver.common.by import By

    browser.get(server + "/?q=green+circle&k=3")
    wait_for(browser, lambda d: len(captions(d)) == 3)
    hit = browser.find_element(By.CSS_SELECTOR, "#results .hit")
    caption = hit.find_element(By.CSS_SELECTOR, ".caption")
    assert caption.get_attribute("title").splitlines()[0] == caption.text == "green circle"
    assert hit.find_element(By.CSS_SELECTOR, ".frame img").get_attribute("title") == "green circle"


def test_unknown_item_id_shows_no_broken_image(server, browser):  # noqa: F811
    from selenium.webdriver.common.by import By

    browser.get(server + "/?item=987654")
    wait_for(browser, lambda d: "987654" in d.find_element(By.ID, "status").text)
    assert "error" in browser.find_element(By.ID, "status").get_attribute("class")
    assert not browser.find_element(By.ID, "preview").is_displayed()
    assert browser.find_element(By.ID, "drop-label").is_displayed()
