"""The server as operators run it: hot reload while `kb add` runs, limits, odd input, access control, writes."""
import http.client
import io
import os
import socket
import time
import urllib.parse

import pytest
from PIL import Image

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from live_server import running  # noqa: E402
from metricvision.kb.store import KnowledgeBase  # noqa: E402
from metricvision.serve.access import ApiKeys  # noqa: E402
from metricvision.serve.app import create_app  # noqa: E402
from shapes import draw, shape_classes  # noqa: E402

READ, WRITE = "r" * 20, "w" * 20


def png(shape="square", color="blue") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(draw(shape, color)).save(buf, format="PNG")
    return buf.getvalue()


def wait_until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_server_follows_kb_add_and_survives_pruning(kb_copy):
    # the issue: the server never saw `kb add`, and after the second one every search was a 500
    with TestClient(create_app(kb_copy)) as client:
        adder = KnowledgeBase.open(kb_copy)
        for n in range(3):
            new = adder.add(shape_classes()[:2])
            assert wait_until(lambda: client.get(f"/v1/items/{new[-1]}").status_code == 200, 2.0), f"add {n} not seen"
            r = client.post("/v1/search", data={"text": "red circle", "k": "3"})
            assert r.status_code == 200 and r.json()["version"] == adder.version
        assert client.get("/healthz").json()["items"] == 30
        assert client.get("/readyz").json()["ready"] is True
        assert len(adder.store.versions()) <= 3  # pruning still runs


def test_chunked_upload_is_cut_off_while_streaming(kb_copy):
    limit = 200_000
    with running(create_app(kb_copy, max_upload_bytes=limit)) as base:
        port = int(base.rsplit(":", 1)[1])
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /v1/search HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: multipart/form-data; boundary=B\r\n\r\n")
        head = b'--B\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
        sent, chunk = 0, b"\x00" * 65536
        sock.settimeout(10)
        try:
            sock.sendall(b"%x\r\n%s\r\n" % (len(head), head))
            while sent < 100_000_000:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = sock.recv(4096)
        sock.close()
    assert reply.startswith(b"HTTP/1.1 413") and b"limit" in reply
    assert sent < 20 * limit + 8_000_000  # the server stopped reading near the limit (plus socket buffers)


@pytest.mark.parametrize("path", ["/v1/items/%C2%B2", "/v1/items/%C2%B2/image", "/v1/items/%D9%A3"])
def test_unicode_digit_ids_are_400(shapes_kb_path, path):
    r = TestClient(create_app(shapes_kb_path)).get(path)
    assert r.status_code == 400 and "ASCII digits" in r.json()["error"]


@pytest.mark.parametrize("filters, message", [
    ('{"color": {"a": 1}}', "got dict"),
    ('{"color": [[1]]}', "got list"),
    ('{"label": 9223372036854775808}', "64-bit range"),
    ('{"label": -9223372036854775809}', "64-bit range"),
    ('{"color": []}', "1 to 1000 values"),
    ('{"color": NaN}', "finite"),
])
def test_odd_filters_are_400_and_the_connection_stays(kb_copy, filters, message):
    with running(create_app(kb_copy)) as base:
        conn = http.client.HTTPConnection(base.removeprefix("http://"))
        body = urllib.parse.urlencode({"text": "red circle", "filters": filters})
        conn.request("POST", "/v1/search", body=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
        r = conn.getresponse()
        assert r.status == 400 and message in r.read().decode()
        conn.request("GET", "/healthz")  # same keep-alive connection
        assert conn.getresponse().status == 200


def test_internal_errors_are_json_500s_on_a_kept_connection(kb_copy):
    with running(create_app(kb_copy)) as base:
        kb = KnowledgeBase.open(kb_copy)
        (kb.store.path(kb.version) / "items.sqlite").write_bytes(b"garbage" * 1000)  # damaged under a running server
        conn = http.client.HTTPConnection(base.removeprefix("http://"))
        conn.request("GET", "/v1/items/3")
        r = conn.getresponse()
        assert r.status == 500 and b"internal error" in r.read()
        conn.request("GET", "/healthz")  # the pooled connection was not reset
        r = conn.getresponse()
        assert r.status == 503 and b"error" in r.read()


def test_missing_image_file_still_searches(kb_copy):
    (kb_copy / "images" / "3.png").unlink()
    client = TestClient(create_app(kb_copy))
    r = client.post("/v1/search", data={"item_id": "2", "k": "24", "with_heatmap": "true", "heatmap_top": "24"})
    assert r.status_code == 200
    hit = next(h for h in r.json()["hits"] if h["id"] == 3)
    assert "not found" in hit["heatmap_error"]
    assert client.get("/v1/items/3/image").status_code == 404


def test_symlink_leaving_the_kb_is_not_served(kb_copy, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(png())
    (kb_copy / "images" / "5.png").unlink()
    os.symlink(secret, kb_copy / "images" / "5.png")
    r = TestClient(create_app(kb_copy)).get("/v1/items/5/image")
    assert r.status_code == 404 and "outside the KB folder" in r.json()["error"]


def test_api_key_scopes_cors_and_write_api(kb_copy):
    app = create_app(kb_copy, api_keys=ApiKeys({READ: "read", WRITE: "write"}), cors_origins=["https://ok.example"])
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200  # health checks need no key
        assert client.post("/v1/search", data={"text": "red circle"}).status_code == 401
        assert client.post("/v1/search", data={"text": "red circle"}, headers={"X-API-Key": "x" * 20}).status_code == 401
        read = {"X-API-Key": READ}
        assert client.post("/v1/search", data={"text": "red circle"}, headers=read).status_code == 200
        new = {"image": ("n.png", png("triangle", "yellow"), "image/png")}
        meta = {"caption": "zebra hexagon", "label": "7", "metadata": '{"color": "zebra"}'}
        r = client.post("/v1/items", files=new, data=meta, headers=read)
        assert r.status_code == 403 and "needs 'write'" in r.json()["error"]
        r = client.post("/v1/items", files=new, data=meta, headers={"Authorization": f"Bearer {WRITE}"})
        assert r.status_code == 201, r.text
        item_id = r.json()["id"]
        assert item_id == 24 and client.get(f"/v1/items/{item_id}", headers=read).json()["caption"] == "zebra hexagon"
        hits = client.post("/v1/search", data={"text": "zebra", "mode": "keyword", "k": "3"}, headers=read).json()["hits"]
        assert [h["id"] for h in hits] == [item_id]
        hits = client.post("/v1/search", data={"text": "x", "k": "5", "filters": '{"color": "zebra"}'}, headers=read).json()["hits"]
        assert [h["id"] for h in hits] == [item_id]
        assert client.delete(f"/v1/items/{item_id}", headers=read).status_code == 403
        assert client.delete(f"/v1/items/{item_id}", headers={"X-API-Key": WRITE}).status_code == 200
        assert client.get(f"/v1/items/{item_id}", headers=read).status_code == 404
        assert client.delete(f"/v1/items/{item_id}", headers={"X-API-Key": WRITE}).status_code == 404
        r = client.options("/v1/search", headers={"Origin": "https://ok.example", "Access-Control-Request-Method": "POST"})
        assert r.headers["access-control-allow-origin"] == "https://ok.example"
        r = client.options("/v1/search", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in r.headers


def test_write_api_refuses_bad_metadata(kb_copy):
    client = TestClient(create_app(kb_copy))
    for meta, message in (('{"a": {"b": 1}}', "got dict"), ('{"a": [1]}', "got a list"), ("[1]", "JSON object")):
        r = client.post("/v1/items", files={"image": ("n.png", png(), "image/png")}, data={"metadata": meta})
        assert r.status_code == 400 and message in r.json()["error"]
    assert KnowledgeBase.open(kb_copy).store.current() == 2


def test_rate_limit_per_client(shapes_kb_path):
    client = TestClient(create_app(shapes_kb_path, rate_limit=0.5, rate_burst=2))
    codes = [client.get("/v1/items/1").status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    r = client.get("/v1/items/1")
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "rate limit" in r.json()["error"]
    assert client.get("/healthz").status_code == 200


def test_hybrid_search_fuses_vector_and_keyword_ranks(shapes_kb_path):
    client = TestClient(create_app(shapes_kb_path))
    hits = client.post("/v1/search", data={"text": "blue square", "mode": "hybrid", "k": "4"}).json()["hits"]
    assert [h["caption"] for h in hits[:2]] == ["blue square"] * 2
    r = client.post("/v1/search", data={"text": "circle", "mode": "keyword", "k": "24"})
    assert {h["metadata"]["shape"] for h in r.json()["hits"]} == {"circle"} and len(r.json()["hits"]) == 8
    assert client.post("/v1/search", data={"item_id": "1", "mode": "hybrid"}).status_code == 400
    assert client.post("/v1/search", data={"text": "a", "mode": "magic"}).status_code == 400


def test_heat_maps_only_for_the_top_results(shapes_kb_path):
    client = TestClient(create_app(shapes_kb_path))
    hits = client.post("/v1/search", data={"text": "red circle", "k": "20", "with_heatmap": "true", "heatmap_top": "3"}).json()["hits"]
    assert [("heatmap" in h) for h in hits] == [True] * 3 + [False] * 17



def test_broken_new_version_keeps_the_old_one_serving(kb_copy):
    from metricvision.index import IndexStore

    def broken(folder):
        (folder / "index.bin").write_bytes(b"not an index")
        (folder / "items.sqlite").write_bytes(b"")
        return {"kind": "flat", "dim": 384, "ntotal": 0, "extra": {"next_id": 0, "index_spec": "Flat"}}

    with TestClient(create_app(kb_copy)) as client:
        IndexStore(kb_copy / "index").commit(broken)
        assert wait_until(lambda: client.get("/readyz").status_code == 503, 3.0)
        health = client.get("/healthz").json()
        assert health["status"] == "degraded" and "cannot load version 3" in health["reload_error"]
        assert client.post("/v1/search", data={"text": "red circle"}).status_code == 200


def test_api_keys_from_file_and_environment(tmp_path, monkeypatch):
    (tmp_path / "keys.txt").write_text(f"# operators\n{READ} read\n{WRITE} write\n")
    assert ApiKeys.load(tmp_path / "keys.txt").keys == {READ: "read", WRITE: "write"}
    monkeypatch.setenv("METRICVISION_API_KEYS", f"{READ}:read,{WRITE}:write")
    assert ApiKeys.load().scope(WRITE) == "write" and ApiKeys.load().scope("nope") is None
    with pytest.raises(ValueError, match="scope must be one of"):
        ApiKeys.parse(f"{READ} admin", "keys")
    with pytest.raises(ValueError, match="at least 16 characters"):
        ApiKeys.parse("short read", "keys")
    monkeypatch.delenv("METRICVISION_API_KEYS")
    assert ApiKeys.load() is None


@pytest.mark.slow
def test_worker_processes_all_serve_an_item_written_through_one(kb_copy):
    import subprocess

    server, port = _serve(kb_copy, "--workers", "2", stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: _ready(base), timeout=120), server.stderr.read1().decode() if server.poll() else ""
        r = httpx.post(base + "/v1/items", files={"image": ("a.png", png("circle", "red"), "image/png")},
                       data={"caption": "zebra crossing"})
        assert r.status_code == 201
        item = r.json()["id"]

        def first_hit() -> int:
            hits = httpx.post(base + "/v1/search", data={"text": "zebra", "mode": "keyword", "k": "1"}).json()["hits"]
            return hits[0]["id"] if hits else -1

        def everyone_finds_it() -> bool:  # fresh connections: each may land on either process
            return all(first_hit() == item for _ in range(12))

        assert wait_until(everyone_finds_it, timeout=30)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _serve(kb, *options: str, stdout):
    """`metricvision serve KB OPTIONS` in a subprocess on a free port: (process, port)."""
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    server = subprocess.Popen([sys.executable, "-m", "metricvision.cli", "serve", str(kb), "--port", str(port), *options],
                              env=env, stdout=stdout, stderr=subprocess.PIPE)
    return server, port


def _ready(base: str) -> bool:
    try:
        return httpx.get(base + "/readyz").status_code == 200
    except httpx.TransportError:
        return False


def _status(url: str) -> int:
    """The status of a GET on a fresh connection."""
    return httpx.get(url).status_code


@pytest.mark.slow
def test_worker_processes_have_their_own_sockets_and_a_dead_one_is_replaced(kb_copy):
    import signal
    import subprocess

    server, port = _serve(kb_copy, "--workers", "2", "--rate-limit", "0.001", stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"

    def children() -> set:
        with open(f"/proc/{server.pid}/task/{server.pid}/children") as f:
            return {int(p) for p in f.read().split()}

    def listening(pid: int) -> set:  # inodes of the listening TCP sockets on the port that the process holds
        try:
            held = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
            with open(f"/proc/{pid}/net/tcp") as f:
                rows = [line.split() for line in f.readlines()[1:]]
        except OSError:  # gone
            return set()
        return {r[9] for r in rows if r[3] == "0A" and int(r[1].split(":")[1], 16) == port and f"socket:[{r[9]}]" in held}

    def serving() -> dict:  # child -> its listening socket (multiprocessing's helper processes hold none)
        return {p: inodes for p in children() if (inodes := listening(p))}

    def own_sockets() -> bool:  # two processes, one socket each, not a shared one
        s = serving()
        return len(s) == 2 and all(len(i) == 1 for i in s.values()) and len(set.union(*s.values())) == 2

    try:
        assert wait_until(lambda: _ready(base), timeout=120)
        assert wait_until(own_sockets, timeout=60) and not listening(server.pid)
        # one budget per client across the processes: a burst of 20, whichever process takes each connection
        codes = [_status(base + "/v1/info") for _ in range(30)]
        assert codes.count(200) == 20 and codes.count(429) == 10, codes
        first = set(serving())
        os.kill(min(first), signal.SIGKILL)
        assert wait_until(lambda: own_sockets() and set(serving()) != first, timeout=120)
        assert all(_ready(base) for _ in range(8))  # fresh connections, whichever process takes them
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    # The replacement is asserted above (a new process with its own socket). The supervisor's "exited with" log line
    # was missing once in a full-suite run although a new process served (not reproduced alone): it is not asserted.
    assert server.returncode == 0


def test_restart_backoff_grows_while_a_process_keeps_dying_and_resets_after_a_healthy_run():
    from metricvision.serve.commands import RestartBackoff

    b = RestartBackoff(first_s=1.0, max_s=8.0, healthy_s=60.0)
    assert [b.after_exit(0.3) for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]  # a crash loop: 1, 2, 4 ... 8 s
    assert b.after_exit(3600.0) == 0.0  # died after an hour of service: started again at once
    assert b.after_exit(2.0) == 1.0
