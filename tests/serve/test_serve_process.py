"""``knet serve`` as a real process (uvicorn on a free localhost port): concurrent clients with
bounded memory, and the page driven in a real headless browser (Debian's chromium through
Selenium and the system chromedriver).

``KNET_UPDATE_SCREENSHOT=1`` makes the browser test write the README's screenshot,
docs/images/serve.png."""
from __future__ import annotations

import base64
import io
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterator, List

import httpx
import numpy as np
import pytest
from PIL import Image

import knet
from knet.inference.visualize import colorize, overlay
from serve_helpers import encoded, scene
from tests.conftest import assert_near_ties_only

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
BATCH = 4


class Server:
    """A ``knet serve`` process: its address and its memory (Linux /proc)."""

    def __init__(self, process: subprocess.Popen, url: str, log: Path) -> None:
        self.process, self.url, self.log = process, url, log

    def memory(self) -> Dict[str, int]:
        """VmRSS (now) and VmHWM (the peak so far), in kB."""
        fields = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
        return fields

    def segment(self, client: httpx.Client, data: bytes, name: str = "image.png") -> dict:
        answer = client.post(self.url + "v1/segment", files={"image": (name, data, "image/png")}, timeout=120)
        assert answer.status_code == 200, answer.text
        return answer.json()


@pytest.fixture(scope="module")
def server(semantic_dir, tmp_path_factory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("serve-log") / "stderr.txt"
    command = [sys.executable, "-m", "knet", "serve", "--checkpoint", str(semantic_dir), "--port", "0",
               "--device", "cpu", "--threads", "1", "--batch-size", str(BATCH), "--queue-size", "32"]
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    try:
        line = lines.get(timeout=120)
    except queue.Empty:
        process.kill()
        pytest.fail(f"knet serve printed no address in 120 s: {log.read_text()}")
    match = re.search(r" at (http://127\.0\.0\.1:\d+/) ", line)
    assert match, f"unexpected first line {line!r}; stderr: {log.read_text()}"
    assert line.startswith("knet serve: knet-r50-fcn-tiny (semantic) at http://127.0.0.1:")
    server = Server(process, match.group(1), log)
    assert httpx.get(server.url + "healthz", timeout=30).json()["status"] == "ok"
    yield server
    process.terminate()
    # uvicorn shuts down gracefully, then dies of the signal it caught (as a plain process would).
    assert process.wait(30) in (0, -signal.SIGTERM), log.read_text()
    assert "Traceback" not in log.read_text(), log.read_text()


def labels_of(body: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(body["label_map"]))))


# ---- many clients --------------------------------------------------------------------------------
def test_concurrent_clients_are_batched_with_bounded_memory(server, semantic_dir):
    # Four pictures in two sizes; each one's answer alone is the reference.
    images = [encoded(scene(10 + i, *((96, 128) if i % 2 else (80, 120)))) for i in range(4)]
    with httpx.Client() as client:
        start = server.memory()["VmRSS"]
        alone = [labels_of(server.segment(client, data)) for data in images]
        with ThreadPoolExecutor(BATCH) as pool:  # one batch's worth at once: the memory of a batch
            list(pool.map(lambda data: server.segment(httpx.Client(), data), images))
        warm = server.memory()
    idle, one_batch = warm["VmRSS"], max(0, warm["VmHWM"] - start)

    def client_thread(index: int) -> List[dict]:
        with httpx.Client() as client:
            return [server.segment(client, images[(index + k) % 4], f"{index}-{k}.png") for k in range(4)]

    with ThreadPoolExecutor(8) as pool:  # 8 clients x 4 requests
        answers = [a for per_client in pool.map(client_thread, range(8)) for a in per_client]
    assert len(answers) == 32
    local = knet.Segmenter(checkpoint=semantic_dir, device="cpu")  # the class scores of each picture alone
    for index, answer in enumerate(answers):
        which = (index // 4 + index % 4) % 4
        labels = labels_of(answer)
        if not np.array_equal(labels, alone[which]):  # a batch rounds differently: only near-ties may flip
            picture = np.asarray(Image.open(io.BytesIO(images[which])).convert("RGB"))
            assert_near_ties_only(labels, alone[which], local(picture).probabilities())
    assert max(a["batch"] for a in answers) > 1  # waiting requests shared a run of the model
    peak = server.memory()["VmHWM"]
    assert peak <= 2 * idle + one_batch, (peak, idle, one_batch)
    assert httpx.get(server.url + "healthz").json() == {"status": "ok", "queued": 0}


# ---- the page in a browser -----------------------------------------------------------------------
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are missing: .ci/run installs them")
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1150", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))


def canvas_pixels(driver, selector: str) -> np.ndarray:
    url = driver.execute_script(f"return document.querySelector({selector!r}).toDataURL('image/png');")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def set_opacity(driver, value: float) -> None:
    driver.execute_script("const s = document.getElementById('opacity'); s.value = arguments[0];"
                          "s.dispatchEvent(new Event('input'));", value)


def test_the_page_segments_an_upload_in_a_browser(server, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = scene(7, 192, 256, noise=3)
    path = tmp_path / "living-room.png"
    path.write_bytes(encoded(image))
    with httpx.Client() as client:
        api = server.segment(client, path.read_bytes(), path.name)
        palette = client.get(server.url + "v1/model").json()["palette"]
    labels = labels_of(api)

    driver = browser()
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(server.url)
        wait.until(lambda d: "knet-r50-fcn-tiny · semantic" in d.find_element(By.ID, "model-info").text)
        driver.find_element(By.ID, "file-input").send_keys(str(path))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR,
                                             ".result[data-state='done'], .result[data-state='error']"))
        card = driver.find_element(By.CSS_SELECTOR, ".result")
        assert card.get_attribute("data-state") == "done", card.text
        assert driver.find_element(By.CSS_SELECTOR, "canvas.overlay").get_attribute("data-ready") == "1"
        status = card.find_element(By.CSS_SELECTOR, ".status").text
        assert status.startswith("knet-r50-fcn-tiny · semantic · 256×192 · ") and " ms on the server" in status

        # The legend lists the classes the API reports for the same image, in its order.
        items = card.find_elements(By.CSS_SELECTOR, ".legend li")
        shown = [(int(li.get_attribute("data-key")), li.find_element(By.CSS_SELECTOR, ".name").text,
                  li.find_element(By.CSS_SELECTOR, ".value").text) for li in items]
        assert shown == [(c["index"], c["name"], f"{100 * c['fraction']:.1f}%") for c in api["classes"]]

        # The overlay is drawn from the label map: the colours alone at opacity 1, the image at 0,
        # knet's blend in between (the canvas rounds its own way: within 2 levels).
        np.testing.assert_array_equal(canvas_pixels(driver, "canvas.image"), image)
        set_opacity(driver, 1)
        np.testing.assert_array_equal(canvas_pixels(driver, "canvas.overlay"), colorize(labels, palette))
        set_opacity(driver, 0)
        np.testing.assert_array_equal(canvas_pixels(driver, "canvas.overlay"), image)
        set_opacity(driver, 0.5)
        drawn = canvas_pixels(driver, "canvas.overlay").astype(int)
        assert np.abs(drawn - overlay(image, labels, palette, 0.5).astype(int)).max() <= 2

        # Hovering a legend entry highlights it and names it under the overlay.
        ActionChains(driver).move_to_element(items[0]).perform()
        wait.until(lambda d: "active" in items[0].get_attribute("class"))
        assert card.find_element(By.CSS_SELECTOR, ".hover-caption").text.startswith(api["classes"][0]["name"])
        ActionChains(driver).move_to_element(driver.find_element(By.TAG_NAME, "h1")).perform()
        links = [a.text for a in card.find_elements(By.CSS_SELECTOR, ".downloads a")]
        assert links == ["label PNG", "overlay PNG"]
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []

        update = os.environ.get("KNET_UPDATE_SCREENSHOT") == "1"
        screenshot = ROOT / "docs" / "images" / "serve.png" if update else tmp_path / "serve.png"
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(screenshot))
        assert Image.open(screenshot).size[0] >= 1000
        if update:  # no alpha channel, best compression: less weight in the repository
            Image.open(screenshot).convert("RGB").save(screenshot, optimize=True)

        # A truncated file: the page shows the server's one-line error.
        data = encoded(image, "JPEG")
        (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
        driver.find_element(By.ID, "file-input").send_keys(str(tmp_path / "cut.jpg"))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".result[data-state='error']"))
        error = driver.find_element(By.CSS_SELECTOR, ".result[data-state='error'] .status").text
        assert error == "upload 'cut.jpg': truncated image file (the data ends before the image does)"
    finally:
        driver.quit()
