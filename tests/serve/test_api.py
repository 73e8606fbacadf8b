import io
import struct
import zlib

import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from metricvision.serve.app import create_app  # noqa: E402
from shapes import draw  # noqa: E402


@pytest.fixture(scope="module")
def client(shapes_kb_path):
    return TestClient(create_app(shapes_kb_path, max_upload_bytes=200_000, max_pixels=1_000_000))


def png_bytes(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(side: int = 20000) -> bytes:
    """A small PNG whose header claims side x side pixels (all zero: compresses to almost nothing)."""
    raw = zlib.compress(b"\x00" * (side // 8 + 1) * 64)  # a few rows suffice: the header is what matters

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def test_health_text_image_and_item(client):
    assert client.get("/healthz").json() == {"status": "ok", "items": 24, "text": True, "version": 2}
    r = client.post("/v1/search", data={"text": "green triangle", "k": "2"})
    assert r.status_code == 200 and [h["caption"] for h in r.json()["hits"]] == ["green triangle"] * 2
    r = client.post("/v1/search", files={"image": ("q.png", png_bytes(draw("square", "blue")), "image/png")},
                    data={"k": "3", "with_heatmap": "true", "filters": '{"shape": "square"}'})
    hits = r.json()["hits"]
    assert r.status_code == 200 and hits[0]["caption"] == "blue square" and hits[0]["size"] == [32, 32]
    assert all("boxes" in h for h in hits) and any(h["boxes"] for h in hits)
    assert Image.open(io.BytesIO(__import__("base64").b64decode(hits[0]["heatmap"]))).size == (32, 32)
    again = client.post("/v1/search", data={"item_id": str(hits[0]["id"]), "k": "1"}).json()["hits"]
    assert again[0]["id"] == hits[0]["id"]
    item = client.get(f"/v1/items/{hits[0]['id']}").json()
    assert item["caption"] == "blue square" and item["image_url"].endswith("/image")
    img = client.get(item["image_url"])
    assert img.status_code == 200 and Image.open(io.BytesIO(img.content)).size == (32, 32)


@pytest.mark.parametrize("name, payload, status, message", [
    ("not_image", b"hello, this is text", 400, "not an image"),
    ("truncated", None, 400, "truncated or corrupt"),
    ("bomb", None, 413, "5000x5000 pixels; the limit is 1000000"),
    ("huge_bomb", None, 413, "decompression bomb"),
    ("too_big", b"\x00" * 250_000, 413, "limit is 200000"),
])
def test_bad_uploads_get_clear_4xx_and_server_keeps_serving(client, name, payload, status, message):
    if name == "truncated":
        payload = png_bytes(draw("circle", "red", size=64))[:300]
    if name.endswith("bomb"):
        payload = bomb_png(5000 if name == "bomb" else 20000)
    r = client.post("/v1/search", files={"image": ("x.png", payload, "image/png")}, data={"k": "2"})
    assert r.status_code == status and message in r.json()["error"]
    assert client.post("/v1/search", data={"text": "red circle", "k": "1"}).status_code == 200


@pytest.mark.parametrize("path, status, message", [
    ("/v1/items/999", 404, "no item with id 999"),
    ("/v1/items/999/image", 404, "no item with id 999"),
    ("/v1/items/..%2F..%2Fetc%2Fpasswd", 400, "non-negative integer"),
    ("/v1/items/-1/image", 400, "non-negative integer"),
    ("/v1/items/1e3", 400, "non-negative integer"),
])
def test_bad_ids(client, path, status, message):
    r = client.get(path)
    assert r.status_code == status and message in r.json()["error"]


def test_bad_queries(client):
    assert "give an image, an item_id or a text" in client.post("/v1/search", data={"k": "2"}).json()["error"]
    assert client.post("/v1/search", data={"text": "a", "k": "0"}).status_code == 400
    r = client.post("/v1/search", data={"text": "a", "filters": "[1]"})
    assert r.status_code == 400 and "JSON object" in r.json()["error"]
    r = client.post("/v1/search", data={"text": "a", "filters": '{"bad key": 1}'})
    assert r.status_code == 400 and "alphanumeric" in r.json()["error"]


def test_metrics_count_requests_and_latency(client):
    client.get("/healthz")
    client.get("/v1/items/999")
    text = client.get("/metrics").text
    assert 'metricvision_requests_total{method="GET",route="/healthz",status="200"}' in text
    assert 'metricvision_requests_total{method="GET",route="/v1/items/{raw_id:path}",status="404"}' in text
    assert 'metricvision_request_duration_seconds_bucket{method="POST",route="/v1/search",le="+Inf"}' in text
    assert "# TYPE metricvision_request_duration_seconds histogram" in text


def test_page_is_served(client):
    r = client.get("/")
    assert r.status_code == 200 and 'id="search-form"' in r.text
    assert client.get("/static/app.js").status_code == 200
