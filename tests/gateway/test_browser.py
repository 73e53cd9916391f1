"""The web page in a real headless browser (Debian's chromium + chromedriver, via selenium),
served by a real `secinfer gateway` process in front of three real server processes."""

import time

import httpx
import pytest
import torch
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from secinfer.net.topology import free_ports

from .conftest import fmnist_png

pytestmark = pytest.mark.network

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def gateway(served):
    port = free_ports(1)[0]
    proc = served.cluster.spawn(3, ["gateway", "--topology", str(served.topology_path),
                                    "--port", str(port), "--cert", str(served.cert), "--key",
                                    str(served.key), "--plaintext-model", "zoo:fmnist_cnn",
                                    "--class-names", "fashion-mnist"], tag="-gateway")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/v1/health", timeout=10).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.proc.poll() is None, proc.log.read_text()[-3000:]
        assert time.monotonic() < deadline, proc.log.read_text()[-3000:]
        time.sleep(0.3)
    yield url
    proc.proc.terminate()
    proc.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def _upload(browser, path):
    before = browser.find_element(By.TAG_NAME, "body").get_attribute("data-done")
    browser.find_element(By.ID, "file").send_keys(str(path))
    browser.find_element(By.ID, "classify").click()
    WebDriverWait(browser, 60).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-done") != before)


def test_page_classifies_an_upload_and_draws_the_cost_per_layer(gateway, browser, served,
                                                                 tmp_path):
    png, label, x = fmnist_png(tmp_path / "fmnist3.png", 3)
    with torch.no_grad():
        plain = int(served.model(x).argmax())
    browser.get(gateway + "/")
    WebDriverWait(browser, 30).until(
        lambda d: "serving" in d.find_element(By.ID, "status").text)
    WebDriverWait(browser, 30).until(
        lambda d: "input 1x28x28" in d.find_element(By.ID, "model").text)
    _upload(browser, png)
    assert not browser.find_element(By.ID, "error").is_displayed(), \
        browser.find_element(By.ID, "error").text
    pred = browser.find_element(By.ID, "prediction")
    assert pred.get_attribute("data-label") == str(plain) == str(label), pred.text
    assert f"label {label}" in pred.text
    assert "agrees" in browser.find_element(By.ID, "plaintext").text
    bars = browser.find_elements(By.CSS_SELECTOR, "#cost-chart svg rect.bar")
    layers = {b.get_attribute("data-layer") for b in bars}
    assert {"conv1", "relu1", "fc2", "scheduling"} <= layers, layers
    assert {b.get_attribute("data-metric") for b in bars} == {"bytes", "rounds", "seconds"}
    assert len(bars) == 3 * len(layers)
    conv1 = [b for b in bars if b.get_attribute("data-layer") == "conv1"
             and b.get_attribute("data-metric") == "bytes"][0]
    assert float(conv1.get_attribute("data-value")) > 0
    rows = browser.find_elements(By.CSS_SELECTOR, "#cost-table tr")
    assert len(rows) == 1 + len(layers) + 1  # header, one per layer, TOTAL
    # a bad upload shows the API's own error
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    _upload(browser, bad)
    err = browser.find_element(By.ID, "error")
    assert err.is_displayed() and err.get_attribute("data-status") == "422", err.text
    assert "not an image Pillow can read" in err.text
    assert browser.find_element(By.ID, "prediction").text == ""
    # a typed text: this gateway has no STIP cloud, and the page says so (the API's 501)
    before = browser.find_element(By.TAG_NAME, "body").get_attribute("data-done")
    browser.find_element(By.ID, "text").send_keys("a red dress")
    browser.find_element(By.ID, "embed").click()
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-done") != before)
    err = browser.find_element(By.ID, "error")
    assert err.get_attribute("data-status") == "501" and "without a STIP cloud" in err.text
