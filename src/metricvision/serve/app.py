"""The HTTP API over a knowledge base (FastAPI) and its web page.

Routes: POST /v1/search, GET /v1/items/{id}, GET /v1/items/{id}/image, POST /v1/items,
DELETE /v1/items/{id}, GET /v1/info, GET /healthz, GET /readyz, GET /metrics (Prometheus
text), and the page at / (serve/static).

Reads follow the committed version (LiveKB) and run concurrently in a bounded thread pool
(decoding, embedding, search and heat maps never run on the event loop); writes go through
the KB's writer lock and versioning, one at a time.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Dict, Optional, Sequence

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles

from metricvision.data import Sample
from metricvision.index.store import StoreBusy
from metricvision.kb.live import LiveKB
from metricvision.kb.query import MODES, load_combiner
from metricvision.kb.store import KnowledgeBase
from metricvision.serve.access import ApiKeys, rate_limiter
from metricvision.serve.guard import Guard
from metricvision.serve.inputs import MAX_PIXELS, MAX_UPLOAD_BYTES, BadRequest, decode_upload, parse_item_id, parse_metadata
from metricvision.serve.metrics import RequestMetrics
from metricvision.serve.search import HEATMAP_TOP, FastSearch, Searcher, SearchQuery

STATIC = Path(__file__).parent / "static"
FORM_OVERHEAD = 64 * 1024  # multipart headers and text fields around the image


class Workers:
    """A bounded pool for blocking work: at most ``threads`` run and ``queue`` wait; beyond, 503.

    Args:
        threads: worker threads.
        queue: requests allowed to wait for a thread.
        budget_s: a request's time budget (waiting included); past it the client gets a 503.
    """

    def __init__(self, threads: int, queue: int, budget_s: float) -> None:
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="mv-serve")
        self.threads, self.slots = threads, threads + queue
        self.busy = 0  # calls holding a thread (or about to)
        self.budget_s = budget_s
        self._sem: Optional[asyncio.Semaphore] = None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on a worker thread, within the time budget."""
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.slots)
        start = time.monotonic()
        if self._sem.locked():  # the fast path (a free slot) creates no timeout task
            try:
                await asyncio.wait_for(self._sem.acquire(), self.budget_s)
            except asyncio.TimeoutError:
                raise BadRequest(503, f"server busy: no worker free within {self.budget_s:g} s; retry later") from None
        else:
            await self._sem.acquire()
        self.busy += 1
        future = asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        future.add_done_callback(self._done)  # the thread is free when fn returns, not when we stop waiting
        try:
            done, _ = await asyncio.wait([future], timeout=max(self.budget_s - (time.monotonic() - start), 0.001))
            if not done:  # the work goes on in its thread; the client is answered now
                raise BadRequest(503, f"request exceeded its time budget of {self.budget_s:g} s")
            return future.result()
        finally:
            self._sem.release()

    def _done(self, _: Any) -> None:
        self.busy -= 1


def create_app(
    kb_path: str | Path,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_PIXELS,
    api_keys: Optional[ApiKeys] = None,
    cors_origins: Sequence[str] = (),
    rate_limit: Optional[float] = None,
    rate_burst: int = 20,
    rate_table: Optional[str] = None,
    threads: int = 4,
    queue: int = 64,
    budget_s: float = 10.0,
) -> FastAPI:
    """The FastAPI application serving the KB at ``kb_path``.

    Args:
        kb_path: the KB folder (its checkpoint is verified and its model loaded now).
        max_upload_bytes: largest image upload; request bodies are cut off just above it.
        max_pixels: largest image in pixels (checked from the header, before decoding).
        api_keys: keys with read / write scopes; None leaves the API open.
        cors_origins: origins allowed to call the API from a browser ("*" for any).
        rate_limit: requests per second per client (API key, else address); None: unlimited.
        rate_burst: requests a client may send at once above the rate.
        rate_table: a file holding the clients' buckets, shared by the processes of `serve --workers N`
            (None: the buckets live in this process).
        threads: worker threads for decoding, embedding, search and heat maps.
        queue: requests that may wait for a worker before the server answers 503.
        budget_s: time budget of a request; heat maps past it are skipped.
    """
    live = LiveKB(kb_path)
    first = live.snapshot()
    if first.manifest["kind"] == "faiss":
        from metricvision.index.faiss_index import import_faiss

        # requests run in parallel on the worker threads; an OpenMP team inside each search
        # would oversubscribe the cores (and spin), so faiss searches single-threaded here
        import_faiss().omp_set_num_threads(1)
    model = first.model  # built now: a broken model fails at start, not on every search
    if first.card.text_model is not None:
        model.text  # noqa: B018
    writer = KnowledgeBase.open(first.path, model=model, writer=True)  # used by the write pool only
    combiner = load_combiner(first)
    workers = Workers(threads, queue, budget_s)
    writes = ThreadPoolExecutor(1, thread_name_prefix="mv-write")
    metrics = RequestMetrics()
    searcher = Searcher(live, workers, combiner, max_upload_bytes, max_pixels)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        live.close()
        workers.pool.shutdown(wait=False)
        writes.shutdown(wait=False)

    app = FastAPI(title="metricvision", version="1", lifespan=lifespan)
    app.state.live, app.state.workers, app.state.searcher = live, workers, searcher
    app.add_middleware(FastSearch, searcher=searcher)  # added first: it sits inside Guard
    app.add_middleware(Guard, max_body=max_upload_bytes + FORM_OVERHEAD, metrics=metrics, keys=api_keys,
                       limiter=rate_limiter(rate_limit, rate_burst, rate_table))
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])

    @app.exception_handler(BadRequest)
    async def bad_request(_: Request, e: BadRequest) -> JSONResponse:
        return JSONResponse({"error": e.message}, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        where = "; ".join(f"{'.'.join(str(p) for p in err['loc'][1:])}: {err['msg']}" for err in e.errors())
        return JSONResponse({"error": f"invalid request: {where}"}, status_code=400)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        kb = live.snapshot()
        try:
            kb.check()
        except Exception as e:
            return JSONResponse({"status": "error", "error": f"{type(e).__name__}: {e}"}, status_code=503)
        body = {"status": "ok", "items": len(kb), "version": kb.version, "text": kb.card.text_model is not None}
        if live.error:
            body.update(status="degraded", reload_error=live.error)
        return JSONResponse(body)

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        lag = live.lag_s
        ready = lag < 5.0 and live.error is None
        return JSONResponse({"ready": ready, "version": live.snapshot().version, "reload_lag_s": round(lag, 3)},
                            status_code=200 if ready else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> str:
        return metrics.render()

    @app.get("/v1/info")
    def info() -> Dict[str, Any]:
        kb = live.snapshot()
        recent = [{"id": it["id"], "caption": it["caption"], "image_url": f"/v1/items/{it['id']}/image"} for it in kb.recent(8)]
        bank = {"texts": len(kb.text_bank[0]), "k": kb.text_bank[1]} if kb.text_bank is not None else None
        return {"items": len(kb), "version": kb.version, "model_card": kb.card.__dict__, "combiner": combiner is not None,
                "max_upload_bytes": max_upload_bytes, "modes": list(MODES), "text_bank": bank, "recent": recent}

    @app.post("/v1/search")
    async def search_route(
        image: Optional[UploadFile] = File(None),
        text: Optional[str] = Form(None),
        item_id: Optional[str] = Form(None),
        k: int = Form(10),
        filters: Optional[str] = Form(None),
        with_heatmap: bool = Form(False),
        heatmap_top: int = Form(HEATMAP_TOP),
        text_weight: float = Form(0.5),
        mode: str = Form("vector"),
        object_views: bool = Form(False),
        hub_correction: bool = Form(True),
    ) -> Response:
        # form and JSON bodies are answered by FastSearch before they get here; multipart ones come here
        query = SearchQuery(text, item_id, k, filters, with_heatmap, heatmap_top, text_weight, mode, object_views,
                            hub_correction)
        query.check()
        upload = await image.read(max_upload_bytes + 1) if image is not None and image.filename else None
        return Response(await searcher.answer(query, upload), media_type="application/json")

    @app.get("/v1/items/{raw_id}/image")
    def item_image(raw_id: str) -> FileResponse:
        kb, item_id = live.snapshot(), parse_item_id(raw_id)
        _get(kb, item_id)
        try:
            path = kb.image_path(item_id)
        except PermissionError as e:
            raise BadRequest(404, str(e)) from None
        if not path.is_file():
            raise BadRequest(404, f"image file of item {item_id} is missing")
        return FileResponse(path)

    @app.get("/v1/items/{raw_id:path}")  # after /image: path-like ids get a clear 400
    def item(raw_id: str) -> Dict[str, Any]:
        it = _get(live.snapshot(), parse_item_id(raw_id))
        it["image_url"] = f"/v1/items/{it['id']}/image"
        it.pop("image")
        return it

    @app.post("/v1/items", status_code=201)
    async def add_item(
        image: UploadFile = File(...),
        caption: str = Form(""),
        label: int = Form(-1),
        metadata: Optional[str] = Form(None),
    ) -> Dict[str, Any]:
        meta = parse_metadata(metadata)
        data = await image.read(max_upload_bytes + 1)
        im = await workers.run(decode_upload, data, max_upload_bytes, max_pixels)
        sample = Sample(image=np.asarray(im), label=label, caption=caption[:2000], meta=meta)
        ids = await _write(writes, lambda: writer.add([sample], timeout=min(budget_s, 30.0)))
        await _write(writes, lambda: _follow_own_write(live, writer))  # loading is off the event loop too
        return {"id": ids[0], "version": writer.version, "image_url": f"/v1/items/{ids[0]}/image"}

    @app.delete("/v1/items/{raw_id}")
    async def delete_item(raw_id: str) -> Dict[str, Any]:
        item_id = parse_item_id(raw_id)
        try:
            await _write(writes, lambda: writer.remove([item_id], timeout=min(budget_s, 30.0)))
        except KeyError as e:
            raise BadRequest(404, str(e.args[0])) from None
        await _write(writes, lambda: _follow_own_write(live, writer))  # loading is off the event loop too
        return {"removed": item_id, "version": writer.version}

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        # served at / itself so that the query string (the page's state) stays in the URL
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _follow_own_write(live: LiveKB, writer: KnowledgeBase) -> None:
    """Serve the version ``writer`` just committed; its files were checksummed as they were written."""
    live.refresh(verify=writer.store.current() != writer.version)


async def _write(pool: ThreadPoolExecutor, fn: Callable[[], Any]) -> Any:
    try:
        return await asyncio.get_running_loop().run_in_executor(pool, fn)
    except StoreBusy as e:
        raise BadRequest(503, str(e)) from None


def _get(kb: KnowledgeBase, item_id: int) -> Dict[str, Any]:
    try:
        return kb.get(item_id)
    except KeyError as e:
        raise BadRequest(404, str(e.args[0])) from None
