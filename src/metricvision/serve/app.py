"""The HTTP API over a knowledge base (FastAPI) and its web page.

Routes: POST /v1/search, GET /v1/items/{id}, GET /v1/items/{id}/image, GET /healthz,
GET /metrics (Prometheus text), and the page at / (serve/static).
"""
import io
import json
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool

from metricvision.kb.query import load_combiner, search
from metricvision.kb.store import KnowledgeBase
from metricvision.serve.metrics import RequestMetrics

STATIC = Path(__file__).parent / "static"
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_PIXELS = 16_000_000
MAX_K = 100


class BadRequest(Exception):
    """A client error: HTTP status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def decode_upload(data: bytes, max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Bytes of an uploaded image -> RGB PIL image, refusing oversize, non-image, bomb and truncated files."""
    if len(data) > max_bytes:
        raise BadRequest(413, f"image is {len(data)} bytes; the limit is {max_bytes}")
    if not data:
        raise BadRequest(400, "image is empty")
    try:
        im = Image.open(io.BytesIO(data))
        # header-only check first: a decompression bomb is refused before any pixel is decoded
        if im.width * im.height > max_pixels:
            raise BadRequest(413, f"image is {im.width}x{im.height} pixels; the limit is {max_pixels} pixels")
        im.load()
        return im.convert("RGB")
    except BadRequest:
        raise
    except UnidentifiedImageError:
        raise BadRequest(400, "the upload is not an image (accepted: PNG, JPEG, GIF, BMP, WebP)") from None
    except Image.DecompressionBombError as e:
        raise BadRequest(413, f"image refused as a decompression bomb: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadRequest(400, f"image is truncated or corrupt: {e}") from None


def parse_item_id(raw: str) -> int:
    """A path segment -> item id; anything but a non-negative integer is a 400."""
    if not raw.isdigit() or len(raw) > 18:
        raise BadRequest(400, f"item id must be a non-negative integer, got '{raw[:64]}'")
    return int(raw)


def create_app(kb_path: str | Path, max_upload_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS) -> FastAPI:
    """The FastAPI application serving the KB at ``kb_path``."""
    kb = KnowledgeBase.open(kb_path)
    combiner = load_combiner(kb)
    lock = threading.Lock()  # Embedder.encode toggles train/eval mode: requests must not interleave on the model
    metrics = RequestMetrics()
    app = FastAPI(title="metricvision", version="1")
    app.state.kb = kb

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Any:
        start = time.perf_counter()
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_upload_bytes + 65536:
            # refused before the body is read or spooled
            metrics.observe(request.method, _route(request), 413, time.perf_counter() - start)
            return JSONResponse({"error": f"request body is {length} bytes; the image limit is {max_upload_bytes}"},
                                status_code=413)
        try:
            response = await call_next(request)
        except Exception:
            metrics.observe(request.method, _route(request), 500, time.perf_counter() - start)
            raise
        metrics.observe(request.method, _route(request), response.status_code, time.perf_counter() - start)
        return response

    @app.exception_handler(BadRequest)
    async def bad_request(_: Request, e: BadRequest) -> JSONResponse:
        return JSONResponse({"error": e.message}, status_code=e.status)

    @app.get("/healthz")
    def healthz() -> Dict[str, Any]:
        return {"status": "ok", "items": len(kb), "text": kb.card.text_model is not None}

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> str:
        return metrics.render()

    @app.get("/v1/info")
    def info() -> Dict[str, Any]:
        return {"items": len(kb), "model_card": kb.card.__dict__, "combiner": combiner is not None,
                "max_upload_bytes": max_upload_bytes}

    @app.post("/v1/search")
    async def search_route(
        image: Optional[UploadFile] = File(None),
        text: Optional[str] = Form(None),
        item_id: Optional[str] = Form(None),
        k: int = Form(10),
        filters: Optional[str] = Form(None),
        with_heatmap: bool = Form(False),
        text_weight: float = Form(0.5),
    ) -> Dict[str, Any]:
        if not 1 <= k <= MAX_K:
            raise BadRequest(400, f"k must be in [1, {MAX_K}], got {k}")
        if not 0.0 <= text_weight <= 1.0:
            raise BadRequest(400, f"text_weight must be in [0, 1], got {text_weight}")
        query_image: Any = None
        if image is not None and image.filename:
            query_image = decode_upload(await image.read(max_upload_bytes + 1), max_upload_bytes, max_pixels)
        elif item_id:
            query_image = _item_image(kb, parse_item_id(item_id))
        if query_image is None and not (text and text.strip()):
            raise BadRequest(400, "give an image, an item_id or a text")
        if text and text.strip() and kb.card.text_model is None:
            raise BadRequest(400, "this knowledge base has no text model; search with an image")
        try:
            hits = await run_in_threadpool(_locked_search, lock, kb, query_image, text, k, _filters(filters),
                                           with_heatmap, text_weight, combiner)
        except ValueError as e:
            raise BadRequest(400, str(e)) from None
        for h in hits:
            h["image_url"] = f"/v1/items/{h['id']}/image"
            h.pop("image")
        return {"hits": hits, "query": {"text": text, "item_id": item_id, "image": query_image is not None, "k": k}}

    @app.get("/v1/items/{raw_id}/image")
    def item_image(raw_id: str) -> FileResponse:
        item_id = parse_item_id(raw_id)
        _get(kb, item_id)
        path = kb.image_path(item_id)
        if not path.exists():
            raise BadRequest(404, f"image file of item {item_id} is missing")
        return FileResponse(path)

    @app.get("/v1/items/{raw_id:path}")  # after /image: path-like ids get a clear 400
    def item(raw_id: str) -> Dict[str, Any]:
        it = _get(kb, parse_item_id(raw_id))
        it["image_url"] = f"/v1/items/{it['id']}/image"
        it.pop("image")
        return it

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        # served at / itself so that the query string (the page's state) stays in the URL
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _locked_search(lock: threading.Lock, kb: KnowledgeBase, *args: Any) -> list:
    with lock:
        return search(kb, *args)


def _route(request: Any) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", None) or ("/static" if request.url.path.startswith("/static") else "unmatched")


def _get(kb: KnowledgeBase, item_id: int) -> Dict[str, Any]:
    try:
        return kb.get(item_id)
    except KeyError as e:
        raise BadRequest(404, str(e.args[0])) from None


def _item_image(kb: KnowledgeBase, item_id: int) -> Image.Image:
    from metricvision.data import load_image

    _get(kb, item_id)
    return load_image(kb.image_path(item_id))


def _filters(raw: Optional[str]) -> Dict[str, Any]:
    if not raw:
        return {}
    try:
        filters = json.loads(raw)
    except json.JSONDecodeError as e:
        raise BadRequest(400, f"filters must be a JSON object, e.g. {{\"vendor\": \"google\"}}: {e}") from None
    if not isinstance(filters, dict):
        raise BadRequest(400, f"filters must be a JSON object, got {type(filters).__name__}")
    return filters
