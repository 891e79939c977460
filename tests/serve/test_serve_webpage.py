"""The chat page in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium): upload an
image, ask, see the streamed answer and its time to first token; the run leaves a screenshot.

The screenshot goes to $ZAMBA2VL_ARTIFACTS (default: build/test-artifacts in the repository)."""

import os
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from serve_helpers import alone, png_bytes

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("ZAMBA2VL_ARTIFACTS", Path(__file__).resolve().parents[2] / "build" / "test-artifacts"))


@pytest.fixture
def browser(tmp_path):
    assert os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER), \
        "needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver (make test does)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_upload_an_image_ask_and_see_the_streamed_answer(server, vlm, browser, tmp_path):
    photo = png_bytes(120, 160, seed=21)
    path = tmp_path / "photo.png"
    path.write_bytes(photo)
    question = "What is in this picture?"
    expect = alone(vlm, question, photo, max_tokens=24)

    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_element(By.ID, "model-name").text == "tiny-vl")
    browser.find_element(By.ID, "file-input").send_keys(str(path))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#attachments img")) == 1)
    tokens = browser.find_element(By.ID, "max-tokens")
    tokens.clear()
    tokens.send_keys("24")
    browser.find_element(By.ID, "prompt").send_keys(question)
    browser.find_element(By.ID, "send").click()

    answer = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".msg.assistant.done"))
    user = browser.find_element(By.CSS_SELECTOR, ".msg.user")
    assert user.find_element(By.CSS_SELECTOR, ".content").get_attribute("textContent") == question
    assert len(user.find_elements(By.TAG_NAME, "img")) == 1
    assert answer.find_element(By.CSS_SELECTOR, ".content").get_attribute("textContent") == expect.text
    stats = answer.find_element(By.CSS_SELECTOR, ".stats").text
    assert re.search(r"first token \d+(\.\d+)? (ms|s)", stats), stats
    assert f"{len(expect.token_ids[0])} tokens" in stats
    assert int(answer.get_attribute("data-ttft-ms")) >= 0
    assert not answer.find_elements(By.CSS_SELECTOR, ".error")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "serve_chat_page.png"
    assert browser.save_screenshot(str(shot))
    with Image.open(shot) as im:
        assert im.size[0] >= 800 and im.size[1] >= 600


def test_a_pasted_image_is_attached(server, browser):
    browser.get(server.url + "/")
    browser.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], "pasted.png", {type: "image/png"}));
        document.getElementById("prompt").dispatchEvent(
            new ClipboardEvent("paste", {clipboardData: data, bubbles: true}));
    """, __import__("base64").b64encode(png_bytes(40, 40, seed=2)).decode())
    WebDriverWait(browser, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#attachments img")) == 1)
    src = browser.find_element(By.CSS_SELECTOR, "#attachments img").get_attribute("src")
    assert src.startswith("data:image/png;base64,")
