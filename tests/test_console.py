"""The inspection console: its callbacks against the real server, and the page in a real headless browser."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from console.cli import build_parser, command
from console.views import MAX_UPLOAD, ConsoleError, model_cards, score_upload, server_health
from export.repository import ExportResult
from kdcore.contract import ANOMALOUS, LABELS
from serving.embedded import TritonServer

pytestmark = pytest.mark.server
CHROMIUM = os.environ.get("CONSOLE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CONSOLE_CHROMEDRIVER", "/usr/bin/chromedriver")


def _defect_image(demo_root: Path) -> Path:
    return sorted((demo_root / "brick" / "test").glob("[!g]*/*.png"))[0]  # a defect folder (not good/)


def test_the_model_list_shows_method_input_and_test_metrics(exported: ExportResult) -> None:
    cards = {c.name: c for c in model_cards(exported.repository)}
    card = cards[exported.names.name]
    assert card.image and card.method == "rd4ad" and "UINT8" in card.input
    assert 0.0 <= card.test_metrics["image_auroc"] <= 1.0
    with pytest.raises(ConsoleError, match="kd-export"):
        model_cards(exported.repository / "nothing-here")


def test_an_uploaded_image_is_scored_by_the_server_with_its_heatmap(server: TritonServer, exported: ExportResult,
                                                                    demo_root: Path) -> None:
    path = _defect_image(demo_root)
    scored = score_upload(path.name, path.read_bytes(), exported.names.name, server.grpc_url)
    assert 0.0 <= scored.score <= 1.0 and scored.label in LABELS
    assert scored.overlay.ndim == 3 and scored.overlay.shape[2] == 3
    assert scored.overlay.std() > 0  # a rendered heatmap, not a blank canvas
    assert server_health(server.grpc_url, "grpc", [exported.names.name]) == {
        "server live": True, "server ready": True, exported.names.name: True}


def test_bad_uploads_and_a_missing_server_get_messages(server: TritonServer, exported: ExportResult) -> None:
    model = exported.names.name
    with pytest.raises(ConsoleError, match="not an image"):
        score_upload("notes.png", b"this is text, not a picture", model, server.grpc_url)
    with pytest.raises(ConsoleError, match="limit"):
        score_upload("huge.png", b"\0" * (MAX_UPLOAD + 1), model, server.grpc_url)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(ConsoleError, match="reach|could not score|answer"):
        server_health(dead, "grpc", [model])


@pytest.fixture()
def browser() -> Iterator:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the 'console' extra)")
    from selenium.webdriver.chrome.service import Service

    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (os.path.isfile(p) and os.access(p, os.X_OK))]
    if missing:
        pytest.skip(f"no headless browser: {', '.join(missing)} missing (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1400"):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"chromium is installed but does not start headless: {str(e).splitlines()[0][:200]}")
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture()
def console(server: TritonServer, exported: ExportResult, tmp_path: Path) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = build_parser().parse_args(["--repository", str(exported.repository), "--url", server.grpc_url,
                                      "--port", str(port)])
    log = (tmp_path / "console.log").open("w")
    process = subprocess.Popen(command(args), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":  # noqa: S310
                    break
            except OSError:
                pass
            assert process.poll() is None, (tmp_path / "console.log").read_text()
            assert time.monotonic() < deadline, "the console did not start in 60 s"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def test_the_page_scores_an_upload_in_a_real_browser(browser, console: str, demo_root: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(console)
    upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]")))
    path = _defect_image(demo_root)
    upload.send_keys(str(path))
    main = (By.CSS_SELECTOR, "[data-testid=stMain]")
    try:
        wait.until(ec.text_to_be_present_in_element(main, f"{path.name}: score"))
    except Exception as e:  # noqa: BLE001  (say what the page shows instead)
        browser.save_screenshot(str(tmp_path / "console-failed.png"))
        raise AssertionError(f"no score on the page; it shows:\n{browser.find_element(By.TAG_NAME, 'body').text}") from e
    text = browser.find_element(*main).text
    assert ANOMALOUS in text or "normal" in text
    image = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "[data-testid=stImage] img")))
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", image))
    colours = browser.execute_script(
        "const i = arguments[0], c = document.createElement('canvas'); c.width = i.naturalWidth;"
        "c.height = i.naturalHeight; const x = c.getContext('2d'); x.drawImage(i, 0, 0);"
        "const d = x.getImageData(0, 0, c.width, c.height).data; const s = new Set();"
        "for (let k = 0; k < d.length; k += 4 * 7) s.add(d[k] << 16 | d[k + 1] << 8 | d[k + 2]); return s.size;",
        image)
    assert colours > 50  # the heatmap overlay, not a blank image
    browser.save_screenshot(str(tmp_path / "console.png"))
    assert (tmp_path / "console.png").stat().st_size > 10_000
