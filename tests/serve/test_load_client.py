"""The raw HTTP/1.1 client of benchmarks/serve_load.py gets what httpx gets from the real server."""
import asyncio
import importlib.util
import io
import json
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from live_server import running  # noqa: E402
from metricvision.serve.app import create_app  # noqa: E402
from shapes import draw  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_load.py"


@pytest.fixture(scope="module")
def serve_load():
    spec = importlib.util.spec_from_file_location("serve_load", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_raw_client_matches_httpx_on_the_real_server(serve_load, shapes_kb_path):
    buf = io.BytesIO()
    Image.fromarray(draw("square", "blue")).save(buf, format="PNG")
    with running(create_app(shapes_kb_path, max_upload_bytes=2000)) as base:
        port = int(base.rsplit(":", 1)[1])
        prepare = serve_load.prepare
        requests = [prepare("POST", "/v1/search", {"text": "green triangle", "k": "3"}),
                    prepare("GET", "/v1/items/5"),
                    prepare("POST", "/v1/search", {"k": "2"}, {"image": ("q.png", buf.getvalue(), "image/png")}),
                    prepare("POST", "/v1/search", {"k": "2"}, {"image": ("big.png", b"x" * 100_000, "image/png")}),
                    prepare("POST", "/v1/search", {"text": "a", "k": "0"})]

        async def go():
            conn = serve_load.Connection("127.0.0.1", port)
            out = [await conn.request(r) for r in requests]  # one keep-alive connection
            await conn.close()
            return out

        (s1, b1), (s2, b2), (s3, b3), (s4, b4), (s5, b5) = serve_load.run_loop(go)
        assert s1 == 200 and json.loads(b1) == httpx.post(base + "/v1/search", data={"text": "green triangle", "k": "3"}).json()
        assert s2 == 200 and json.loads(b2) == httpx.get(base + "/v1/items/5").json()
        assert s3 == 200 and json.loads(b3)["hits"][0]["caption"] == "blue square"  # multipart upload
        assert s4 == 413 and "limit" in json.loads(b4)["error"]  # answered with Connection: close
        assert s5 == 400 and "k must be in" in json.loads(b5)["error"]  # on a new connection


def test_raw_client_reads_chunked_bodies_and_reconnects_after_close(serve_load):
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"
    close = b"HTTP/1.1 413 Too Large\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno"
    connections = []

    async def handle(reader, writer):
        connections.append(writer)
        first = len(connections) == 1
        for n in range(2):
            try:
                await reader.readuntil(b"\r\n\r\n")  # the GETs have no body
            except asyncio.IncompleteReadError:
                break
            writer.write(close if first and n == 1 else chunked)
            await writer.drain()
        writer.close()

    async def go():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn = serve_load.Connection("127.0.0.1", port)
        req = serve_load.prepare("GET", "/x")
        out = [await conn.request(req), await conn.request(req), await conn.request(req)]
        await conn.close()
        server.close()
        return out

    out = serve_load.run_loop(go)
    assert out == [(200, b"abcde"), (413, b"no"), (200, b"abcde")]
    assert len(connections) == 2  # a new connection after the server said close
