"""The inspection console: its callbacks against the real servers (images and time series), and the page in a real
headless browser (Debian's Chromium driven by Selenium): uploads, a folder's gallery, the signals view, health.

The browser tests save a screenshot of each view to their output folder (pytest's tmp_path).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from console.cli import build_parser, command
from console.views import (
    MAX_FOLDER,
    MAX_UPLOAD,
    ORDERS,
    ConsoleError,
    ModelCard,
    benchmark_figures,
    file_window,
    load_test_split,
    model_cards,
    read_signal_upload,
    score_folder,
    score_histogram,
    score_upload,
    score_window,
    server_health,
    sort_gallery,
    teacher_and_student,
)
from export.repository import ExportResult
from kdcore.contract import ANOMALOUS, LABELS
from kdcore.imageio import decode_image
from kdcore.intervals import anomalous_intervals
from kdcore.series_metrics import window_precision_recall
from kdcore.tiling import TilingConfig
from serving.embedded import TritonServer
from tests.conftest import STUDENT, TEACHER

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


def test_bad_uploads_and_a_missing_server_get_messages(server: TritonServer, exported: ExportResult,
                                                      demo_root: Path) -> None:
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
    good = _defect_image(demo_root).read_bytes()
    with pytest.raises(ConsoleError, match=f"server at {dead} could not score"):
        score_upload("good.png", good, model, dead)
    with pytest.raises(ConsoleError, match="could not score with 'not_served'"):
        score_upload("good.png", good, "not_served", server.grpc_url)
    assert not server_health(server.grpc_url, "grpc", ["not_served"])["not_served"]
    assert score_upload("good.png", good, model, server.grpc_url).label in LABELS  # and it goes on


# ---------------------------------------------------------------------------------------------- images: folders
def _folder_with_a_bad_file(demo_root: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    folder = tmp_path / "line"
    images = sorted((demo_root / "brick" / "test").glob("*/*.png"))[::3]
    for i, path in enumerate(images):
        (folder / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.parent.name / f"{i:03d}.png")
    (folder / "broken.png").write_bytes(b"not a png at all")
    return folder, images


def test_a_folder_is_scored_sorted_and_histogrammed(server: TritonServer, exported: ExportResult, demo_root: Path,
                                                    tmp_path: Path) -> None:
    folder, images = _folder_with_a_bad_file(demo_root, tmp_path)
    gallery = score_folder(folder, exported.names.name, server.grpc_url)
    assert len(gallery.scored) == len(images) and gallery.skipped == 0
    assert [name for name, _ in gallery.errors] == ["broken.png"]  # reported, not dropped
    assert all(0 <= s.score <= 1 and s.overlay.std() > 0 for s in gallery.scored)
    highest = sort_gallery(gallery.scored, ORDERS[0])
    assert [s.score for s in highest] == sorted((s.score for s in gallery.scored), reverse=True)
    assert [s.score for s in sort_gallery(gallery.scored, ORDERS[1])] == [s.score for s in highest][::-1]
    assert [s.name for s in sort_gallery(gallery.scored, "name")] == sorted(s.name for s in gallery.scored)
    # The same scores as one upload at a time (one client path).
    first = highest[0]
    assert score_upload(first.name, (folder / first.name).read_bytes(), exported.names.name,
                        server.grpc_url).score == pytest.approx(first.score, abs=1e-6)
    histogram = decode_image(score_histogram([s.score for s in gallery.scored]))
    assert histogram.shape[2] == 3 and histogram.std() > 0
    red = np.all(histogram == (214, 40, 40), axis=2).sum()  # the anomalous bars (#d62828)
    assert (red > 0) == any(s.label == ANOMALOUS for s in gallery.scored)
    assert score_folder(folder, exported.names.name, server.grpc_url, limit=2).skipped == len(images) - 1
    assert MAX_FOLDER >= 100
    with pytest.raises(ConsoleError, match="no such folder"):
        score_folder(tmp_path / "nowhere", exported.names.name, server.grpc_url)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConsoleError, match="no image"):
        score_folder(tmp_path / "empty", exported.names.name, server.grpc_url)


def test_a_large_frame_is_tiled_as_the_client_tiles(server: TritonServer, exported: ExportResult,
                                                    demo_root: Path) -> None:
    frame = cv2.resize(decode_image(_defect_image(demo_root).read_bytes()), (200, 160))
    data = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))[1].tobytes()
    whole = score_upload("frame.png", data, exported.names.name, server.grpc_url)
    tiled = score_upload("frame.png", data, exported.names.name, server.grpc_url, tiling=TilingConfig(tile_size=64))
    assert whole.tiles == 1 and tiled.tiles > 1
    assert tiled.overlay.shape[1] == whole.overlay.shape[1] == 200  # drawn over the full frame either way


# ---------------------------------------------------------------------------------------------- signals
def test_a_test_window_is_scored_by_teacher_and_student(series_server: TritonServer,
                                                       series_runs: dict[str, Path]) -> None:
    cards = model_cards(series_server.model_repository)
    assert [c.name for c in teacher_and_student(cards)] == [TEACHER, STUDENT]
    assert all(c.series and c.window == 256 for c in cards)
    split = load_test_split(series_runs["data"])
    anomalous = next(i for i in range(len(split.labels)) if split.labels[i].any())
    assert split.describe(anomalous).startswith(f"#{anomalous} {ANOMALOUS} (")
    window = split.window(anomalous)
    assert window.truth and window.truth[0].start == int(np.flatnonzero(split.labels[anomalous])[0])
    answers = score_window(window, teacher_and_student(cards), series_server.grpc_url)
    assert [a.model for a in answers] == [TEACHER, STUDENT]
    for answer in answers:
        assert answer.step_scores.shape == (256,) and 0 <= answer.score <= 1 and answer.label in LABELS
        assert answer.intervals == anomalous_intervals(answer.step_scores)  # the served intervals of these scores
        assert (answer.msp, answer.msr) == window_precision_recall(answer.step_scores, window.labels)
        truth_bar = np.all(answer.plot == (0, 150, 80), axis=2).sum()
        assert truth_bar > 20  # the true interval is marked on the plot
    with pytest.raises(ConsoleError, match="not in the test split"):
        split.window(len(split.labels))
    with pytest.raises(ConsoleError, match="kd-signal-data"):
        load_test_split(series_runs["data"] / "missing")


def test_a_record_file_is_windowed_and_bad_files_are_refused(series_server: TritonServer,
                                                             series_runs: dict[str, Path]) -> None:
    split = load_test_split(series_runs["data"])
    record = np.concatenate(list(split.signals[:3]))  # 768 steps, two leads
    text = "II,V1\n" + "\n".join(f"{a:.6f},{b:.6f}" for a, b in record)
    signal = read_signal_upload("record.csv", text.encode())
    assert signal.leads == ["II", "V1"] and signal.steps == 768
    window = file_window(signal, 300, 256)
    np.testing.assert_allclose(window.values, record[300:556], atol=1e-5)
    assert file_window(signal, 10_000, 256).values.shape == (256, 2)  # clamped into the record
    cards = [c for c in model_cards(series_server.model_repository) if c.name == STUDENT]
    (answer,) = score_window(window, cards, series_server.http_url, "http")
    assert answer.msp is None and answer.msr is None  # no labels: nothing to measure against
    with pytest.raises(ConsoleError, match="not a signal file"):
        read_signal_upload("notes.txt", b"hello")
    with pytest.raises(ConsoleError, match="NaN|finite"):
        read_signal_upload("gap.csv", b"a,b\n1,2\nnan,3\n" + b"1,2\n" * 300)
    with pytest.raises(ConsoleError, match="limit"):
        read_signal_upload("huge.npy", b"\0" * (MAX_UPLOAD + 1))
    with pytest.raises(ConsoleError, match="'nonexistent'"):
        score_window(window, [ModelCard("nonexistent", "x", "signal", False, {}, 256)], series_server.grpc_url)


# ---------------------------------------------------------------------------------------------- health
def _bench_json(path: Path, model: str) -> None:
    """A file in kd-bench's serving.json format (bench/serving.py writes it; kdcore.bench_figures reads it)."""
    run = {"images_per_second": 50.4, "p50_ms": 19.4, "p95_ms": 21.0, "p99_ms": 22.6, "requests": 489, "failures": 0}
    batched = {**run, "images_per_second": 65.2, "p50_ms": 487.6, "p99_ms": 499.5, "requests": 70}
    path.write_text(json.dumps({"machine": {"cpus": 2, "arch": "x86_64"}, "seconds": 3.0, "rounds": 3,
                                "results": [{"model": model, "score_model": f"{model}_fast", "batch": 8,
                                             "batched_concurrency": 4,
                                             "served": {"grpc": {"1": run, "b8": batched, "b8_shm": batched}}}]}))


def test_health_shows_readiness_and_the_newest_benchmark(server: TritonServer, exported: ExportResult,
                                                         tmp_path: Path) -> None:
    names = [c.name for c in model_cards(exported.repository)]
    health = server_health(server.http_url, "http", names)
    assert health["server ready"] and all(health[n] for n in names)
    assert benchmark_figures(tmp_path / "none") is None
    old = tmp_path / "faults.json"
    old.write_text(json.dumps({"recovery_s": {"crash": 1.25}, "note": "text is not a figure"}))
    os.utime(old, (time.time() - 60, time.time() - 60))
    assert benchmark_figures(tmp_path).lines == ["- recovery_s.crash: 1.25"]
    _bench_json(tmp_path / "serving.json", exported.names.name)
    figures = benchmark_figures(tmp_path)
    assert figures.path.endswith("serving.json") and figures.plot is None
    rows = [line for line in figures.lines if line.startswith(f"| {exported.names.name} ")]
    assert rows == [f"| {exported.names.name} | grpc | 1 | 1 | 50.4 | 19.4 | 22.6 | 0 |",
                    f"| {exported.names.name} | grpc | 4 | 8 | 65.2 | 487.6 | 499.5 | 0 |"]  # no shared memory
    assert figures.lines[-1] == "\nmachine: cpus 2, arch x86_64"
    (tmp_path / "serving.json").write_text("{ not json")
    with pytest.raises(ConsoleError, match="not a readable benchmark JSON"):
        benchmark_figures(tmp_path)


# ---------------------------------------------------------------------------------------------- the browser
@pytest.fixture()
def browser() -> Iterator:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the 'console' extra)")
    from selenium.webdriver.chrome.service import Service

    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (os.path.isfile(p) and os.access(p, os.X_OK))]
    if missing:
        pytest.skip(f"no headless browser: {', '.join(missing)} missing (make browser installs Debian's chromium "
                    "and chromium-driver; it needs root and apt)")
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


@contextlib.contextmanager
def _console(repository: Path, url: str, tmp_path: Path, *extra: str) -> Iterator[str]:
    """``kd-console``'s command on a free port; yields its URL once Streamlit answers its health check."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = build_parser().parse_args(["--repository", str(repository), "--url", url, "--port", str(port), *extra])
    log_path = tmp_path / "console.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(command(args), stdout=log, stderr=subprocess.STDOUT)
        address = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if urllib.request.urlopen(f"{address}/_stcore/health", timeout=2).read() == b"ok":  # noqa: S310
                        break
                except OSError:
                    pass
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "the console did not start in 60 s"
                time.sleep(0.2)
            yield address
        finally:
            process.terminate()
            process.wait(10)


def _wait_for_text(browser, text: str, tmp_path: Path, timeout: float = 90) -> None:
    """Wait until the page's main area shows ``text``; on failure say what it shows instead."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(browser, timeout).until(
            ec.text_to_be_present_in_element((By.CSS_SELECTOR, "[data-testid=stMain]"), text))
    except Exception as e:  # noqa: BLE001
        browser.save_screenshot(str(tmp_path / "console-failed.png"))
        body = browser.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"the page never showed {text!r}; it shows:\n{body}") from e


def _click(browser, xpath: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 30).until(ec.element_to_be_clickable((By.XPATH, xpath))).click()


def _image_colours(browser, index: int = 0) -> np.ndarray:
    """The ``index``-th picture of the page, read back from the browser's own decoding (RGB)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def loaded(driver):
        images = driver.find_elements(By.CSS_SELECTOR, "[data-testid=stImage] img")
        return len(images) > index and driver.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", images[index]) and images[index]

    image = WebDriverWait(browser, 60).until(loaded)
    pixels = browser.execute_script(
        "const i = arguments[0], c = document.createElement('canvas'); c.width = i.naturalWidth;"
        "c.height = i.naturalHeight; const x = c.getContext('2d'); x.drawImage(i, 0, 0);"
        "return [c.width, c.height, Array.from(x.getImageData(0, 0, c.width, c.height).data)];", image)
    width, height, data = pixels
    return np.asarray(data, dtype=np.uint8).reshape(height, width, 4)[..., :3]


def _screenshot(browser, tmp_path: Path, name: str) -> None:
    """Save the page to the test's output folder."""
    path = tmp_path / f"{name}.png"
    browser.save_screenshot(str(path))
    assert path.stat().st_size > 10_000


def test_the_page_scores_uploads_and_folders_and_shows_health_in_a_real_browser(
        browser, server: TritonServer, exported: ExportResult, demo_root: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    bench = tmp_path / "bench"
    bench.mkdir()
    _bench_json(bench / "serving.json", exported.names.name)
    folder, images = _folder_with_a_bad_file(demo_root, tmp_path)
    with _console(exported.repository, server.grpc_url, tmp_path, "--bench", str(bench)) as url:
        browser.get(url)
        path = _defect_image(demo_root)
        upload = WebDriverWait(browser, 60).until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]")))
        upload.send_keys(str(folder / "broken.png"))  # refused with a message; the page goes on
        _wait_for_text(browser, "broken.png: not an image", tmp_path)
        upload.send_keys(str(path))
        _wait_for_text(browser, f"{path.name}: score", tmp_path)
        text = browser.find_element(By.CSS_SELECTOR, "[data-testid=stMain]").text
        assert ANOMALOUS in text or "normal" in text
        overlay = _image_colours(browser)
        assert len(np.unique(overlay.reshape(-1, 3)[::7], axis=0)) > 50  # the heatmap overlay, not a blank image
        _screenshot(browser, tmp_path, "console_images")

        _click(browser, "//*[@role='tab'][.//p[text()='Folder']]")
        box = browser.find_element(By.CSS_SELECTOR, "input[aria-label=\"Folder on the console's machine\"]")
        box.send_keys(str(folder), Keys.ENTER)
        _click(browser, "//button[.//p[text()='Score folder']]")
        _wait_for_text(browser, f"{len(images)} scored", tmp_path)
        _wait_for_text(browser, "broken.png", tmp_path)  # the file it could not score is listed
        histogram = _image_colours(browser, 1)  # after the upload's overlay
        assert np.all(histogram == (42, 157, 74), axis=2).any() or np.all(histogram == (214, 40, 40), axis=2).any()
        _screenshot(browser, tmp_path, "console_gallery")

        _click(browser, "//label[@data-testid='stRadioOption'][.//p[text()='Health']]")
        _wait_for_text(browser, "server ready: ready", tmp_path)
        _wait_for_text(browser, "server live: live", tmp_path)
        _wait_for_text(browser, "50.4", tmp_path)  # the benchmark's figure
        _screenshot(browser, tmp_path, "console_health")


def test_the_signals_view_in_a_real_browser(browser, series_server: TritonServer, series_runs: dict[str, Path],
                                            tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    with _console(series_server.model_repository, series_server.grpc_url, tmp_path,
                  "--signals", str(series_runs["data"])) as url:
        browser.get(url)
        _wait_for_text(browser, "no image detector", tmp_path)  # a series-only repository says so on images
        _click(browser, "//label[@data-testid='stRadioOption'][.//p[text()='Signals']]")
        _wait_for_text(browser, "MSP", tmp_path)
        text = browser.find_element(By.CSS_SELECTOR, "[data-testid=stMain]").text
        assert f"{TEACHER}: score" in text and f"{STUDENT}: score" in text and "true intervals" in text
        for index in (0, 1):  # teacher and student plots, each with its true interval's mark
            plot = _image_colours(browser, index)
            assert np.all(plot == (0, 150, 80), axis=2).sum() > 20
            assert np.all(plot == (255, 214, 214), axis=2).sum() > 0 or "intervals none" in text
        _screenshot(browser, tmp_path, "console_signals")
