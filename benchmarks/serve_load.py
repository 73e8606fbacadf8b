"""Load test of `metricvision serve` on loopback: N requests at a fixed concurrency, p50/p95 latency.

Starts the real server (uvicorn, 127.0.0.1, free port) on a KB and sends a bounded mix of
text queries, image uploads and item lookups; every request must succeed.

    python benchmarks/serve_load.py KB [--requests 500] [--concurrency 8]
"""
from __future__ import annotations

import argparse
import io
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import uvicorn
from PIL import Image

from metricvision.kb.store import KnowledgeBase
from metricvision.serve.app import create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kb")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--k", type=int, default=10)
    a = ap.parse_args()
    if not 1 <= a.requests <= 10000 or not 1 <= a.concurrency <= 64:
        raise SystemExit("requests must be in [1, 10000] and concurrency in [1, 64]")
    kb = KnowledgeBase.open(a.kb)
    items = [kb.get(i) for i in range(min(len(kb), 50))]
    uploads = []
    for it in items[:10]:
        buf = io.BytesIO()
        Image.open(kb.image_path(it["id"])).save(buf, format="PNG")
        uploads.append(buf.getvalue())

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(a.kb), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=base, timeout=60.0)
    text = kb.card.text_model is not None

    def one(n: int) -> tuple[str, float, int]:
        kind = ("text", "image", "item")[n % 3] if text else ("image", "item")[n % 2]
        t0 = time.perf_counter()
        if kind == "text":
            r = client.post("/v1/search", data={"text": items[n % len(items)]["caption"], "k": str(a.k)})
        elif kind == "image":
            r = client.post("/v1/search", files={"image": ("q.png", uploads[n % len(uploads)], "image/png")}, data={"k": str(a.k)})
        else:
            r = client.get(f"/v1/items/{items[n % len(items)]['id']}")
        return kind, time.perf_counter() - t0, r.status_code

    for n in range(6):  # warm-up: load the models
        one(n)
    start = time.perf_counter()
    with ThreadPoolExecutor(a.concurrency) as pool:
        results = list(pool.map(one, range(a.requests)))
    wall = time.perf_counter() - start
    server.should_exit = True
    thread.join(timeout=10)
    errors = sum(status != 200 for _, _, status in results)
    print(f"{a.requests} requests, concurrency {a.concurrency}, KB of {len(kb)} items, {wall:.1f} s, "
          f"{a.requests / wall:.1f} req/s, errors: {errors}")
    print("| request | n | p50 ms | p95 ms |\n|---|---|---|---|")
    for kind in ("text", "image", "item", "all"):
        lat = np.array([t for k, t, _ in results if kind in (k, "all")]) * 1000
        if len(lat):
            print(f"| {kind} | {len(lat)} | {np.percentile(lat, 50):.1f} | {np.percentile(lat, 95):.1f} |")
    if errors:
        raise SystemExit(f"{errors} requests failed")


if __name__ == "__main__":
    main()
