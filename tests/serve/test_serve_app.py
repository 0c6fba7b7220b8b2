"""The HTTP API of ``knet serve`` through FastAPI's TestClient: answers equal ``knet predict``'s
files, every bad input gets its 4xx and one-line error (and the server goes on), a full queue
answers 503, and a panoptic model answers with segments."""
from __future__ import annotations

import base64
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import knet
from knet.cli import main
from knet.inference.results import decode_panoptic_png
from knet.serve import ServeSettings, create_app
from knet.serve.app import STATIC
from serve_helpers import encoded, scene

MAX_PIXELS = 60_000
MAX_UPLOAD_MB = 0.25


@pytest.fixture(scope="module")
def client(semantic_dir):
    segmenter = knet.Segmenter.from_pretrained(semantic_dir, device="cpu")
    settings = ServeSettings(max_pixels=MAX_PIXELS, max_upload_mb=MAX_UPLOAD_MB, queue_size=8, batch_size=4)
    with TestClient(create_app(segmenter, settings)) as test_client:
        yield test_client


def post(client, data: bytes, name: str = "photo.png", query: str = "", **fields):
    return client.post(f"/v1/segment{query}", files={"image": (name, data, "application/octet-stream")},
                       data={k: str(v) for k, v in fields.items()})


def png_array(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


def predict_files(tmp_path: Path, model_dir: Path, name: str, data: bytes) -> Path:
    """Run ``knet predict`` on ``data`` saved as ``name``; its output folder."""
    (tmp_path / "in").mkdir(exist_ok=True)
    (tmp_path / "in" / name).write_bytes(data)
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "in" / name), "--checkpoint", str(model_dir), "--out-dir", str(out),
                 "--device", "cpu"]) == 0
    return out


# ---- the model, the page, the description ------------------------------------------------------
def test_model_health_and_openapi(client):
    info = client.get("/v1/model").json()
    assert info["name"] == "knet-r50-fcn-tiny" and info["task"] == "semantic"
    assert len(info["classes"]) == len(info["palette"]) == info["num_classes"] == 150
    assert info["classes"][0] == "wall" and info["palette"][0] == [120, 120, 120]
    assert info["tta_available"] and not info["tta"] and info["max_pixels"] == MAX_PIXELS
    assert client.get("/healthz").json() == {"status": "ok", "queued": 0}
    spec = client.get("/openapi.json").json()
    assert {"/v1/segment", "/v1/model", "/healthz"} <= set(spec["paths"])
    segment = spec["paths"]["/v1/segment"]["post"]
    assert {"400", "413", "503"} <= set(segment["responses"]) and "422" not in segment["responses"]
    assert "SegmentAnswer" in spec["components"]["schemas"]


def test_the_page_loads_nothing_from_elsewhere(client):
    # /docs and /redoc would fetch Swagger UI / ReDoc from a CDN: they are off.
    for path in ("/docs", "/redoc"):
        answer = client.get(path)
        assert answer.status_code == 404 and answer.json() == {"error": "Not Found"}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for name in ("index.html", "app.js", "style.css"):
        text = (STATIC / name).read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name
        assert client.get(f"/static/{name}").status_code == 200
    assert 'src="/static/app.js"' in page.text and 'href="/static/style.css"' in page.text


# ---- answers equal knet predict's files --------------------------------------------------------
@pytest.mark.parametrize("fmt, name", [("PNG", "room.png"), ("JPEG", "room.jpg")])
def test_label_map_and_overlay_equal_knet_predict(client, semantic_dir, tmp_path, fmt, name):
    data = encoded(scene(1), fmt)
    out = predict_files(tmp_path, semantic_dir, name, data)
    answer = post(client, data, name)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["model"], body["task"], body["width"], body["height"]) == ("knet-r50-fcn-tiny", "semantic", 128, 96)
    assert body["file_name"] == "room.png" and "segments" not in body
    # The very bytes knet predict writes as <stem>.png.
    assert base64.b64decode(body["label_map"]) == (out / "room.png").read_bytes()
    labels = png_array(body["label_map"])
    counts = np.bincount(labels.ravel(), minlength=150)
    assert [c["index"] for c in body["classes"]] == sorted(np.flatnonzero(counts), key=lambda i: (-counts[i], i))
    for entry in body["classes"]:
        assert entry["fraction"] == pytest.approx(counts[entry["index"]] / labels.size, abs=1e-6)
        assert entry["name"] == client.get("/v1/model").json()["classes"][entry["index"]]
    overlay = post(client, data, name, query="?format=png")
    assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"
    assert overlay.content == (out / "room_overlay.png").read_bytes()


def test_tta_and_opacity_options(client):
    data = encoded(scene(2))
    body = post(client, data, tta="true").json()
    assert body["tta"] is True
    segmenter = knet.Segmenter(client.app.state.service.segmenter.model, tta=True)
    np.testing.assert_array_equal(png_array(body["label_map"]), segmenter(scene(2)).labels)
    plain = post(client, data, query="?format=png", opacity=0).content
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(plain)))[:96, :128], scene(2))


# ---- bad input ---------------------------------------------------------------------------------
def _truncated_jpeg() -> bytes:
    data = encoded(scene(3), "JPEG", quality=90)
    return data[: len(data) * 2 // 3]


def _huge_png() -> bytes:
    # 400 x 300 = 120000 pixels (over MAX_PIXELS) in a few hundred bytes: refused from its header.
    return encoded(np.zeros((300, 400, 3), np.uint8))


BAD_INPUTS = {
    "not an image": (dict(files={"image": ("a.png", b"GIF? no: just text", "image/png")}), 400,
                     "upload 'a.png': cannot decode image"),
    "truncated JPEG": (dict(files={"image": ("cut.jpg", _truncated_jpeg(), "image/jpeg")}), 400,
                       "upload 'cut.jpg': truncated image file"),
    "zero bytes": (dict(files={"image": ("empty.png", b"", "image/png")}), 400,
                   "upload 'empty.png': image file is empty"),
    "missing field": (dict(files={"picture": ("a.png", encoded(scene(0)), "image/png")}), 400,
                      "missing multipart form field 'image'"),
    "not a multipart body": (dict(json={"image": "a.png"}), 400, "missing multipart form field 'image'"),
    "unknown tta": (dict(files={"image": ("a.png", encoded(scene(0)), "image/png")}, data={"tta": "maybe"}), 400,
                    "tta: "),
    "opacity out of range": (dict(files={"image": ("a.png", encoded(scene(0)), "image/png")},
                                  data={"opacity": "1.5"}), 400, "opacity: "),
    "unknown format": (dict(files={"image": ("a.png", encoded(scene(0)), "image/png")}, params={"format": "gif"}),
                       400, "format: Input should be 'json' or 'png', got 'gif'"),
    "too many pixels": (dict(files={"image": ("big.png", _huge_png(), "image/png")}), 413,
                        "upload 'big.png': 400x300 is 120000 pixels, over the server's limit of 60000"),
    "body too large": (dict(files={"image": ("big.bin", bytes(300_000), "image/png")}), 413,
                       "request body of 300"),
    "chunked body too large": (dict(content=(bytes(50_000) for _ in range(8)),
                                    headers={"content-type": "multipart/form-data; boundary=x"}), 413,
                               "request body over the server's limit of 262144 bytes (0.25 MiB, --max-upload-mb)"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_its_code_and_the_server_goes_on(client, case):
    request, status, message = BAD_INPUTS[case]
    answer = client.post("/v1/segment", **request)
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert list(body) == ["error"] and message in body["error"] and "\n" not in body["error"], body
    assert post(client, encoded(scene(0))).status_code == 200


def test_a_paths_name_is_never_opened(client, tmp_path):
    # The file name is only a name: a path in it is neither read nor echoed as a path.
    secret = tmp_path / "secret.png"
    secret.write_bytes(encoded(scene(4)))
    answer = client.post("/v1/segment", files={"image": (str(secret), b"", "image/png")})
    assert answer.status_code == 400 and answer.json() == {"error": "upload 'secret.png': image file is empty"}
    assert client.post("/v1/segment", data={"image": str(secret)}).status_code == 400


# ---- the queue ---------------------------------------------------------------------------------
class HeldSegmenter:
    """A segmenter whose runs wait for ``release`` (and say when one has begun)."""

    def __init__(self, segmenter):
        self._segmenter = segmenter
        self.started, self.release = threading.Event(), threading.Event()

    def segment_arrays(self, images, sources=None):
        self.started.set()
        assert self.release.wait(30)
        return self._segmenter.segment_arrays(images, sources)

    def __getattr__(self, name):
        return getattr(self._segmenter, name)


def test_a_full_queue_answers_503_with_retry_after(client):
    held = HeldSegmenter(client.app.state.service.segmenter)
    app = create_app(held, ServeSettings(queue_size=2, batch_size=1))
    data = encoded(scene(5))
    answers = []
    with TestClient(app) as busy:
        def send():
            answers.append(post(busy, data))

        threads = [threading.Thread(target=send)]
        threads[0].start()
        assert held.started.wait(30)  # the first request is on the model; two more fill the queue
        threads += [threading.Thread(target=send) for _ in range(2)]
        for thread in threads[1:]:
            thread.start()
        for _ in range(300):
            if app.state.worker.queued == 2:
                break
            threading.Event().wait(0.01)
        refused = post(busy, data)
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["Retry-After"]) >= 1 and "server busy" in refused.json()["error"]
        held.release.set()
        for thread in threads:
            thread.join(30)
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert post(busy, data).status_code == 200


# ---- a panoptic model --------------------------------------------------------------------------
def test_panoptic_model_answers_with_segments(panoptic_dir, tmp_path):
    data = encoded(scene(6))
    out = predict_files(tmp_path, panoptic_dir, "street.png", data)
    segmenter = knet.Segmenter.from_pretrained(panoptic_dir, device="cpu")
    with TestClient(create_app(segmenter, ServeSettings(batch_size=2))) as pan:
        info = pan.get("/v1/model").json()
        assert info["task"] == "panoptic" and info["num_classes"] == 133 and not info["tta_available"]
        body = post(pan, data, "street.png").json()
        refused = post(pan, data, tta="true")
        assert refused.status_code == 400 and "multi-scale + flip" in refused.json()["error"]
    assert body["task"] == "panoptic" and "label_map" not in body and body["segments"]
    # The segment map and segments_info are knet predict's <stem>.png and <stem>.json.
    assert base64.b64decode(body["segment_map"]) == (out / "street.png").read_bytes()
    written = json.loads((out / "street.json").read_text())
    assert [{k: v for k, v in s.items() if k != "colour"} for s in body["segments"]] == written["segments_info"]
    ids = decode_panoptic_png(png_array(body["segment_map"]))
    for segment in body["segments"]:
        assert {"label", "score", "area", "name", "colour"} <= set(segment)
        assert segment["area"] == int((ids == segment["id"]).sum()) > 0
    assert set(np.unique(ids)) - {0} == {s["id"] for s in body["segments"]}
    total = sum(c["fraction"] for c in body["classes"])
    assert total == pytest.approx(float((ids > 0).mean()), abs=1e-5)


def test_instance_model_answers_with_its_instances(tmp_path):
    from serve_helpers import save_tiny

    directory = save_tiny(tmp_path / "instance-tiny", "knet-r50-fpn-instance-tiny")
    segmenter = knet.Segmenter.from_pretrained(directory, device="cpu", score_thr=0.0)  # random weights: low scores
    expected = segmenter(scene(8))
    with TestClient(create_app(segmenter)) as inst:
        body = post(inst, encoded(scene(8))).json()
    assert body["task"] == "instance" and len(body["segments"]) == len(expected.instances) > 0
    assert [s["score"] for s in body["segments"]] == sorted((s["score"] for s in body["segments"]), reverse=True)
    assert [(s["id"], s["label"], s["area"]) for s in body["segments"]] == \
        [(s.id, s.label, s.area) for s in expected.instances]
    # Each pixel holds the best instance covering it (the overlay paints the best on top).
    ids = decode_panoptic_png(png_array(body["segment_map"]))
    best = np.zeros_like(ids)
    for i in reversed(range(len(expected.instances))):
        best[expected.masks[i]] = expected.instances[i].id
    np.testing.assert_array_equal(ids, best)
    assert sum(c["fraction"] for c in body["classes"]) == pytest.approx(float((ids > 0).mean()), abs=1e-5)
