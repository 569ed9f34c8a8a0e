"""The web page in a real headless Chromium against a real uvicorn server with tiny real models.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and skips with the
reason when either is missing. Screenshots are kept as test artifacts: in ``$ECG_TEST_ARTIFACTS``
when set, else in the test's ``tmp_path``; their paths are logged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from app_helpers import make_settings, serve_in_thread

from bench.tiny_models import TinyRegistry
from service.main import create_app
from tests.browser import headless_chromium, needs_chromium

logger = logging.getLogger(__name__)

pytestmark = needs_chromium
TIMEOUT_S = 60


@pytest.fixture(scope="module")
def live_url(tiny_registry: TinyRegistry) -> Iterator[str]:
    with serve_in_thread(create_app(make_settings(tiny_registry))) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with headless_chromium("1280,1100", TIMEOUT_S) as driver:
        yield driver


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    where = Path(os.environ.get("ECG_TEST_ARTIFACTS") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)
    return where


def _wait_done(driver: Any) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, TIMEOUT_S).until(
        lambda d: (
            d.find_element("tag name", "body").get_attribute("data-state") in ("done", "error")
        )
    )
    state = driver.find_element("tag name", "body").get_attribute("data-state")
    assert state == "done", driver.find_element("id", "status").text


def _screenshot(driver: Any, path: Path) -> None:
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1280, max(1300, int(height) + 160))
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 10_000
    logger.warning("web page screenshot: %s", path)


def test_upload_a_real_record_and_see_its_beats(
    browser: Any, live_url: str, mitdb_dir: Path, artifacts: Path
) -> None:
    """Whole MIT-BIH record 119 (30 min, with its .atr) dropped on the page, as a user would."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    paths = [mitdb_dir / f"119.{ext}" for ext in ("hea", "dat", "atr")]
    api = httpx.post(
        f"{live_url}/predict/arrhythmia/file",
        files=[("files", (p.name, p.read_bytes())) for p in paths],
        timeout=TIMEOUT_S,
    )
    assert api.status_code == 200, api.text
    answer = api.json()

    browser.get(live_url + "/")
    browser.find_element(By.ID, "file-input").send_keys("\n".join(str(p) for p in paths))
    _wait_done(browser)
    shown = browser.find_element(By.ID, "beat-count").text
    assert shown == str(answer["summary"]["n_beats"]) == str(len(answer["beats"]))
    first_window = [b for b in answer["beats"] if b["time_s"] < 10]
    bands = browser.find_elements(By.CSS_SELECTOR, "svg#ecg rect.beat-band")
    assert len(bands) == len(first_window) > 5
    assert [b.get_attribute("data-cls") for b in bands] == [b["label"] for b in first_window]
    chips = {
        c.get_attribute("data-cls"): c.text
        for c in browser.find_elements(By.CSS_SELECTOR, ".chip[data-cls]")
    }
    assert chips == {c: f"{c} {n}" for c, n in answer["summary"]["counts"].items()}
    assert browser.find_element(By.ID, "disease").get_attribute("hidden") is not None

    ActionChains(browser).move_to_element(bands[1]).perform()
    tooltip = browser.find_element(By.ID, "tooltip")
    assert tooltip.is_displayed() and "%" in tooltip.text
    assert f"{first_window[1]['time_s']:.2f} s" in tooltip.text
    _screenshot(browser, artifacts / "web_page_mitdb119.png")


def test_pick_the_12_lead_example(browser: Any, live_url: str, artifacts: Path) -> None:
    """The bundled PTB-XL record: beats on lead II and the five superclass probabilities."""
    from selenium.webdriver.common.by import By

    browser.get(live_url + "/")
    browser.find_element(By.CSS_SELECTOR, "button.example[data-files^='ptbxl']").click()
    _wait_done(browser)
    folder = Path(__file__).resolve().parents[2] / "service" / "static" / "examples"
    files = [
        ("files", (n, (folder / n).read_bytes()))
        for n in ("ptbxl00008_lr.hea", "ptbxl00008_lr.dat")
    ]
    hd = httpx.post(f"{live_url}/predict/heart-disease/file", files=files, timeout=TIMEOUT_S)
    arr = httpx.post(f"{live_url}/predict/arrhythmia/file", files=files, timeout=TIMEOUT_S)
    assert hd.status_code == arr.status_code == 200
    assert browser.find_element(By.ID, "beat-count").text == str(arr.json()["summary"]["n_beats"])
    assert browser.find_element(By.ID, "disease").is_displayed()
    rows = browser.find_elements(By.CSS_SELECTOR, "#superclasses .row")
    shown = {r.get_attribute("data-cls"): r.text.split()[-1] for r in rows}
    expected = {c: f"{100 * p:.1f}%" for c, p in hd.json()["probabilities"].items()}
    expected["disease"] = f"{100 * hd.json()['heart_disease_probability']:.1f}%"
    assert shown == expected
    _screenshot(browser, artifacts / "web_page_ptbxl8.png")


def test_a_bad_file_shows_the_services_message(browser: Any, live_url: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    bad = tmp_path / "notes.bin"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    browser.get(live_url + "/")
    browser.find_element(By.ID, "file-input").send_keys(str(bad))
    WebDriverWait(browser, TIMEOUT_S).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "error"
    )
    assert "415: unknown format" in browser.find_element(By.ID, "status").text


@pytest.mark.parametrize("files", ["mitdb119.hea,mitdb119.dat,mitdb119.atr", "mitdb208.edf"])
def test_the_mitdb_examples(browser: Any, live_url: str, files: str) -> None:
    """The bundled WFDB and EDF examples: every beat drawn and counted as the API answers."""
    from selenium.webdriver.common.by import By

    browser.get(live_url + "/")
    browser.find_element(By.CSS_SELECTOR, f"button.example[data-files='{files}']").click()
    _wait_done(browser)
    folder = Path(__file__).resolve().parents[2] / "service" / "static" / "examples"
    upload = [("files", (n, (folder / n).read_bytes())) for n in files.split(",")]
    api = httpx.post(f"{live_url}/predict/arrhythmia/file", files=upload, timeout=TIMEOUT_S)
    assert api.status_code == 200, api.text
    beats = api.json()["beats"]
    assert browser.find_element(By.ID, "beat-count").text == str(len(beats)) != "0"
    bands = browser.find_elements(By.CSS_SELECTOR, "svg#ecg rect.beat-band")
    assert [b.get_attribute("data-cls") for b in bands] == [b["label"] for b in beats]
    assert browser.find_element(By.ID, "disease").get_attribute("hidden") is not None
