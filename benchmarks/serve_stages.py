"""CPU time per stage of one text search as the server answers it (in process, no HTTP).

Runs each stage of a cached-text vector search (what FastSearch does on the event loop)
``--repeat`` times over 200 query texts and prints CPU ms per query per stage; what
`serve_load.py` reports as server CPU per request minus their sum is HTTP, ASGI and the loop.

    python benchmarks/serve_stages.py KB [--repeat 2000] [--k 10]
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Callable, List

import numpy as np

from metricvision.kb.live import LiveKB
from metricvision.kb.query import embed_query, encode_text_cached, search
from metricvision.kb.regions import has_regions
from metricvision.serve.search import SearchQuery, dumps, parse_body

WORDS = ("red", "green", "blue", "yellow", "black", "orange", "circle", "square", "triangle", "wooden", "metal",
         "glass", "lamp", "chair", "cup", "bottle", "clock", "vase")


def cpu_ms(fn: Callable[[int], Any], n: int) -> float:
    """CPU ms (this process, all threads) per call of ``fn(i)``, i = 0 .. n-1."""
    start = time.process_time()
    for i in range(n):
        fn(i)
    return 1000 * (time.process_time() - start) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kb")
    ap.add_argument("--repeat", type=int, default=2000)
    ap.add_argument("--k", type=int, default=10)
    a = ap.parse_args()
    try:
        from metricvision.index.faiss_index import import_faiss

        import_faiss().omp_set_num_threads(1)  # as the server does
    except ImportError:
        pass
    live = LiveKB(a.kb)
    kb = live.snapshot()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, 3, replace=False)) for _ in range(200)]
    bodies = [f"text={t.replace(' ', '+')}&k={a.k}".encode() for t in texts]
    for t in texts:
        encode_text_cached(kb.model, t)
    queries = [embed_query(kb, text=t)[None].numpy() for t in texts]
    found: List[Any] = [kb.search(q, a.k) for q in queries]
    hits = [search(kb, text=t, k=a.k) for t in texts]
    n, rows = a.repeat, []

    def as_json(i: int) -> bytes:
        page = [{**{k: v for k, v in h.items() if k != "image"}, "image_url": f"/v1/items/{h['id']}/image"}
                for h in hits[i % 200]]
        return dumps({"hits": page, "version": kb.version, "query": {"text": texts[i % 200], "k": a.k}})

    stages = [
        ("parse the form body, check the fields", lambda i: SearchQuery.from_fields(
            parse_body("application/x-www-form-urlencoded", bodies[i % 200])).check()),
        ("snapshot, cache and regions checks", lambda i: (live.snapshot(), encode_text_cached.cached(kb.model, texts[i % 200]),
                                                          has_regions(kb.path))),
        ("cached text embedding", lambda i: embed_query(kb, text=texts[i % 200])),
        ("index search (faiss)", lambda i: kb.search(queries[i % 200], a.k)),
        ("item rows (SQLite)", lambda i: kb.items([int(x) for x in found[i % 200][1][0] if x >= 0])),
        ("whole search() (the three above and hit dicts)", lambda i: search(kb, text=texts[i % 200], k=a.k)),
        ("JSON body", as_json),
    ]
    print(f"KB of {len(kb)} items ({kb.manifest.get('extra', {}).get('index_spec')}), k = {a.k}, {n} queries per stage")
    print("| stage | CPU ms per query |\n|---|---|")
    for name, fn in stages:
        fn(0)
        rows.append(cpu_ms(fn, n))
        print(f"| {name} | {rows[-1]:.3f} |")
    live.close()


if __name__ == "__main__":
    main()
