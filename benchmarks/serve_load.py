"""Load test of `metricvision serve` on loopback: fixed-concurrency phases, p50/p95 latency, recall, live writes.

Starts the real server (`metricvision serve` in its own process, 127.0.0.1, free port) on a KB and, for each concurrency,
sends a bounded mix of requests; every request must succeed. With ``--exact`` (the vectors
file of benchmarks/synthetic_kb.py) the text queries' top-10 is compared with exact search.
With ``--writes-per-s`` a writer adds items during the phases, alternating POST /v1/items
and a separate in-process KnowledgeBase writer (what `kb add` does: writer lock, new version,
the server follows CURRENT), and measures how long each item takes to become searchable.

    python benchmarks/serve_load.py KB [--requests 500] [--concurrency 1,16] [--mix text,image,item]
        [--exact KB.vectors.npy] [--writes-per-s 2] [--workers 2]
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from typing import Any, Callable, Coroutine, Dict, List, Optional, Tuple

import httpx
import numpy as np
from PIL import Image

from metricvision.data import Sample
from metricvision.index.flat import FlatIndex
from metricvision.kb.store import KnowledgeBase

WORDS = ("red", "green", "blue", "yellow", "black", "orange", "circle", "square", "triangle", "wooden", "metal",
         "glass", "lamp", "chair", "cup", "bottle", "clock", "vase")


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` and all its descendants (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict = {}
    stats: dict = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry)] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += stats.get(p, 0.0)
        todo += children.get(p, [])
    return total


class Connection:
    """One HTTP/1.1 keep-alive connection on asyncio streams: the benchmark's client.

    A general-purpose client (httpx) spent 0.8-1.3 ms of CPU per request, on the same 2 cores
    as the server it measures; this one writes prepared request bytes and reads the status line,
    headers and a Content-Length or chunked body, about a tenth of that.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None

    async def request(self, raw: bytes) -> Tuple[int, bytes]:
        """Send one prepared request (see ``prepare``) -> (status, body); reconnects when the server closed."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while size := int((await self.reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16):
                parts.append((await self.reader.readexactly(size + 2))[:-2])
            await self.reader.readuntil(b"\r\n")
            body = b"".join(parts)
        else:
            raise RuntimeError(f"response without Content-Length or chunked body: {lines[0]}")
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def prepare(method: str, path: str, form: Optional[Dict[str, str]] = None,
            files: Optional[Dict[str, Tuple[str, bytes, str]]] = None) -> bytes:
    """The bytes of one request: a GET, a urlencoded form, or multipart form fields plus ``files``."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if files:
        boundary = "mvbench7d3a1f"
        body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                        for k, v in (form or {}).items())
        for name, (filename, data, ctype) in files.items():
            body += (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: {ctype}\r\n\r\n").encode() + data + b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        head += f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
    elif form is not None:
        body = urllib.parse.urlencode(form).encode()
        head += "Content-Type: application/x-www-form-urlencoded\r\n"
    else:
        body = b""
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def run_loop(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """``asyncio.run(main())``, on uvloop when it is installed (the server's loop too: less CPU per request)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Writer(threading.Thread):
    """Adds one item every 1 / rate seconds, alternating the HTTP write API and a second KB writer."""

    def __init__(self, client: httpx.Client, kb: KnowledgeBase, rate: float, png: bytes) -> None:
        super().__init__(daemon=True)
        self.client, self.rate, self.png = client, rate, png
        self.kb = KnowledgeBase.open(kb.path, model=kb.model)  # its own writer; the model is loaded already
        self.stop = threading.Event()
        self.visible_s: List[float] = []
        self.errors: List[str] = []

    def run(self) -> None:
        n = 0
        while not self.stop.wait(1.0 / self.rate):
            token = f"zqx{n}w{int(time.time())}"
            t0 = time.perf_counter()
            try:
                if n % 2 == 0:
                    r = self.client.post("/v1/items", files={"image": ("w.png", self.png, "image/png")},
                                         data={"caption": f"written {token}", "metadata": '{"source": "bench"}'})
                    if r.status_code != 201:
                        raise RuntimeError(f"POST /v1/items: {r.status_code} {r.text[:200]}")
                    item_id = r.json()["id"]
                else:
                    x = self.kb.model.encode_text([f"written {token}"]).numpy()
                    item_id = self.kb.add_embedded([Sample(image=np.asarray(Image.open(io.BytesIO(self.png)).convert("RGB")),
                                                           caption=f"written {token}")], x)[0]
                while True:  # searchable = found by a keyword search on its unique word
                    hits = self.client.post("/v1/search", data={"text": token, "mode": "keyword", "k": "1"}).json()["hits"]
                    if hits and hits[0]["id"] == item_id:
                        break
                    if time.perf_counter() - t0 > 30:
                        raise RuntimeError(f"item {item_id} not searchable after 30 s")
                    time.sleep(0.02)
                self.visible_s.append(time.perf_counter() - t0)
            except Exception as e:  # counted and reported, never hidden
                self.errors.append(str(e))
            n += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kb")
    ap.add_argument("--requests", type=int, default=500, help="requests per phase")
    ap.add_argument("--concurrency", default="1,16", help="comma-separated concurrencies, one phase each")
    ap.add_argument("--mix", default="text,image,item", help="request kinds cycled through: text, image, item, heat")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--exact", help="vectors .npy (row i = item i) for recall@k of the text queries against exact search")
    ap.add_argument("--writes-per-s", type=float, default=0.0, help="items written per second during the phases")
    ap.add_argument("--threads", type=int, default=4, help="server worker threads")
    ap.add_argument("--workers", type=int, default=1, help="server processes")
    a = ap.parse_args()
    levels = [int(c) for c in a.concurrency.split(",")]
    kinds = a.mix.split(",")
    if not 1 <= a.requests <= 20000 or not all(1 <= c <= 64 for c in levels):
        raise SystemExit("requests must be in [1, 20000] and each concurrency in [1, 64]")
    if set(kinds) - {"text", "image", "item", "heat"}:
        raise SystemExit(f"--mix takes text, image, item, heat; got {a.mix}")
    kb = KnowledgeBase.open(a.kb)
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, 3, replace=False)) for _ in range(200)]
    ids = [int(i) for i in rng.choice(len(kb), min(len(kb), 50), replace=False)]
    uploads = []
    for i in ids[:10]:
        buf = io.BytesIO()
        Image.open(kb.image_path(i)).save(buf, format="PNG")
        uploads.append(buf.getvalue())
    exact = None
    if a.exact:
        vectors = np.load(a.exact, mmap_mode="r")
        flat = FlatIndex(vectors.shape[1])
        flat.add(np.array(vectors), np.arange(len(vectors)))
        exact = flat.search(kb.model.encode_text(texts).numpy(), a.k)[1]

    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", "import sys; from metricvision.cli import main; sys.exit(main(sys.argv[1:]))",
                               "serve", a.kb, "--port", str(port), "--threads", str(a.threads),
                               "--workers", str(a.workers)])
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            raise SystemExit("the server did not become ready")
        time.sleep(0.2)
    # /readyz answers once one process is up; with --workers the others may still be loading the
    # KB (seconds of CPU at 1M, which the first phase would pay for): wait until the server idles
    used = process_cpu_s(server.pid)
    while time.monotonic() < deadline + 120:
        time.sleep(0.5)
        used, before = process_cpu_s(server.pid), used
        if used - before < 0.05:
            break
    limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60.0, limits=limits)
    recall: List[float] = []

    prepared: List[bytes] = []
    for n in range(len(kinds) * 200):
        kind = kinds[n % len(kinds)]
        if kind == "text":
            prepared.append(prepare("POST", "/v1/search", {"text": texts[n % len(texts)], "k": str(a.k)}))
        elif kind in ("image", "heat"):
            form = {"k": str(a.k), "with_heatmap": "true" if kind == "heat" else "false"}
            prepared.append(prepare("POST", "/v1/search", form, {"image": ("q.png", uploads[n % len(uploads)], "image/png")}))
        else:
            prepared.append(prepare("GET", f"/v1/items/{ids[n % len(ids)]}"))

    async def one(conn: Connection, n: int) -> Tuple[str, float, int]:
        kind = kinds[n % len(kinds)]
        t0 = time.perf_counter()
        status, body = await conn.request(prepared[n % len(prepared)])
        took = time.perf_counter() - t0
        if kind == "text" and exact is not None and status == 200:
            got = {h["id"] for h in json.loads(body)["hits"]}
            recall.append(len(got & set(exact[n % len(texts)].tolist())) / a.k)
        return kind, took, status

    async def phase(concurrency: int, requests: range) -> List[Tuple[str, float, int]]:
        """``requests`` sent by ``concurrency`` clients, one keep-alive connection each, from one event loop."""
        todo = iter(requests)
        out: List[Tuple[str, float, int]] = []

        async def worker() -> None:
            conn = Connection("127.0.0.1", port)
            try:
                for n in todo:
                    out.append(await one(conn, n))
            finally:
                await conn.close()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return out

    run_loop(lambda: phase(1, range(2 * len(kinds))))  # warm-up
    writer = None
    if a.writes_per_s > 0:
        writer = Writer(client, kb, a.writes_per_s, uploads[0])
        writer.start()
    errors, rates = 0, {}
    print(f"KB of {len(kb)} items, {a.requests} requests per phase, mix {a.mix}, server threads {a.threads}, processes {a.workers}"
          + (f", {a.writes_per_s:g} writes/s" if writer else ""))
    print("| concurrency | req/s | errors | request | n | p50 ms | p95 ms |\n|---|---|---|---|---|---|---|")
    cpu_rows = []
    for c in levels:
        load = os.getloadavg()[0]
        server_cpu, client_cpu, start = process_cpu_s(server.pid), time.process_time(), time.perf_counter()
        results = run_loop(lambda: phase(c, range(a.requests)))
        wall = time.perf_counter() - start
        server_cpu, client_cpu = process_cpu_s(server.pid) - server_cpu, time.process_time() - client_cpu
        cpu_rows.append(f"concurrency {c}: server {1000 * server_cpu / a.requests:.2f} ms, client "
                        f"{1000 * client_cpu / a.requests:.2f} ms CPU per request; load average {load:.2f} -> {os.getloadavg()[0]:.2f}")
        bad = sum(status != 200 for _, _, status in results)
        errors += bad
        rates[c] = a.requests / wall
        for kind in [*dict.fromkeys(k for k, _, _ in results), "all"]:
            lat = np.array([t for k, t, _ in results if kind in (k, "all")]) * 1000
            print(f"| {c} | {rates[c]:.1f} | {bad} | {kind} | {len(lat)} | {np.percentile(lat, 50):.1f} | {np.percentile(lat, 95):.1f} |")
    for row in cpu_rows:
        print(row)
    if len(levels) > 1:
        print(f"throughput at concurrency {levels[-1]} / concurrency {levels[0]}: {rates[levels[-1]] / rates[levels[0]]:.2f}x")
    if recall:
        print(f"recall@{a.k} of text queries against exact search: {np.mean(recall):.3f} ({len(recall)} queries)")
    if writer:
        writer.stop.set()
        writer.join(timeout=60)
        vis = np.array(writer.visible_s)
        print(f"writes: {len(vis)} items searchable, errors {len(writer.errors)}; write-to-searchable "
              f"p50 {np.percentile(vis, 50):.2f} s, max {vis.max():.2f} s" if len(vis) else "writes: none finished")
        errors += len(writer.errors)
        for e in writer.errors[:5]:
            print("  write error:", e)
    server.terminate()
    server.wait(timeout=30)
    if errors:
        raise SystemExit(f"{errors} requests failed")


if __name__ == "__main__":
    main()
