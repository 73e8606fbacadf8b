"""POST /v1/search: the query's fields checked once for every body format, and a fast path.

Multipart bodies (image uploads, the web page) go through FastAPI's form parsing. Form
(``application/x-www-form-urlencoded``) and JSON bodies are parsed here by hand, with the
same checks and the same 4xx errors, skipping FastAPI's form parsing, dependency solving and
routing (about a third of the server's CPU per text query). A vector search for a text whose
embedding is cached, without filters or heat maps, runs on the event loop itself when no other
such search is under way (a hop to a worker thread would add latency and buy nothing) or
long work (image queries, heat maps) holds every worker thread, and else on the worker pool (faiss releases the GIL: the searches
then use every core).
"""
from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from dataclasses import dataclass, fields
from types import SimpleNamespace
from typing import Any, Awaitable, Callable, Dict, List, Optional

from metricvision.data import load_image
from metricvision.kb.live import LiveKB
from metricvision.kb.query import MODES, encode_text_cached, search
from metricvision.kb.regions import has_regions
from metricvision.serve.inputs import BadRequest, decode_upload, parse_filters, parse_item_id

try:
    import orjson

    def dumps(obj: Any) -> bytes:
        """JSON bytes (orjson: a few times faster than json for a page of hits)."""
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
except ImportError:  # the serve extra brings orjson; json gives the same document
    def dumps(obj: Any) -> bytes:
        """JSON bytes."""
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()

MAX_K = 100
HEATMAP_TOP = 12
FAST_TYPES = ("application/x-www-form-urlencoded", "application/json")
JSON_HEADERS = [(b"content-type", b"application/json")]
BOOL_WORDS = {"1": True, "on": True, "t": True, "true": True, "y": True, "yes": True,
              "0": False, "off": False, "f": False, "false": False, "n": False, "no": False}


@dataclass
class SearchQuery:
    """The fields of a search besides the image (see the API section of the README)."""

    text: Optional[str] = None
    item_id: Optional[str] = None
    k: int = 10
    filters: Optional[str] = None
    with_heatmap: bool = False
    heatmap_top: int = HEATMAP_TOP
    text_weight: float = 0.5
    mode: str = "vector"
    object_views: bool = False
    hub_correction: bool = True

    def check(self) -> None:
        """Raise BadRequest (400) naming the first field out of range."""
        if not 1 <= self.k <= MAX_K:
            raise BadRequest(400, f"k must be in [1, {MAX_K}], got {self.k}")
        if not 0 <= self.heatmap_top <= HEATMAP_TOP * 2:
            raise BadRequest(400, f"heatmap_top must be in [0, {HEATMAP_TOP * 2}], got {self.heatmap_top}")
        if not 0.0 <= self.text_weight <= 1.0:
            raise BadRequest(400, f"text_weight must be in [0, 1], got {self.text_weight}")
        if self.mode not in MODES:
            raise BadRequest(400, f"mode must be one of {MODES}, got '{self.mode[:32]}'")

    @classmethod
    def from_fields(cls, values: Dict[str, Any]) -> "SearchQuery":
        """A query from form strings or JSON values; missing and empty fields take their default
        (as FastAPI's Form fields do); a value of the wrong type is a 400 naming the field."""
        query = cls()
        for f in fields(cls):
            value = values.get(f.name)
            if value is None or value == "":
                continue
            if f.name == "filters" and not isinstance(value, str):
                value = json.dumps(value)  # a JSON body may give the object itself
            kind = str if f.default is None else type(f.default)  # text, item_id, filters: Optional[str]
            setattr(query, f.name, _convert(f.name, value, kind))
        return query


def _convert(name: str, value: Any, kind: type) -> Any:
    """``value`` (a form string or a JSON value) as ``kind``, with pydantic's lax rules for strings."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in BOOL_WORDS:
            return BOOL_WORDS[value.strip().lower()]
        raise _invalid(name, "Input should be a valid boolean, unable to interpret input")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        text = value.strip() if isinstance(value, str) else ""
        if text.lstrip("+-").isascii() and text.lstrip("+-").isdigit() and len(text) <= 20:
            return int(text)
        raise _invalid(name, "Input should be a valid integer, unable to parse string as an integer")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:
            if isinstance(value, str):
                return float(value.strip())
        except ValueError:
            pass
        raise _invalid(name, "Input should be a valid number, unable to parse string as a number")
    if not isinstance(value, str):
        raise _invalid(name, "Input should be a valid string")
    return value


def _invalid(name: str, message: str) -> BadRequest:
    # the wording of the RequestValidationError handler in app.py
    return BadRequest(400, f"invalid request: {name}: {message}")


class Searcher:
    """Answers a SearchQuery on the served version: checks, the search (inline or on a worker), JSON.

    Args:
        live: the followed KB.
        workers: the bounded pool (app.Workers) for decoding, embedding, search and heat maps.
        combiner: the KB's trained combiner, if any.
        max_upload_bytes, max_pixels: limits of an uploaded query image.
    """

    def __init__(self, live: LiveKB, workers: Any, combiner: Any, max_upload_bytes: int, max_pixels: int) -> None:
        self.live, self.workers, self.combiner = live, workers, combiner
        self.max_upload_bytes, self.max_pixels = max_upload_bytes, max_pixels
        self.active = self.in_pool = 0  # short searches under way, and those of them on the pool
        self.inline = self.pooled = 0  # short searches answered on the event loop / on the pool

    async def answer(self, q: SearchQuery, upload: Optional[bytes]) -> bytes:
        """The JSON body of the answer; BadRequest for a 4xx / 503."""
        q.check()
        kb, parsed = self.live.snapshot(), parse_filters(q.filters)
        deadline = time.monotonic() + self.workers.budget_s * 0.8
        has_text = bool(q.text and q.text.strip())
        if upload is None and not q.item_id and not has_text:
            raise BadRequest(400, "give an image, an item_id or a text")
        if has_text and kb.card.text_model is None and q.mode != "keyword":
            raise BadRequest(400, "this knowledge base has no text model; search with an image")

        def run() -> List[Dict[str, Any]]:
            query_image: Any = None
            if upload is not None:
                query_image = decode_upload(upload, self.max_upload_bytes, self.max_pixels)
            elif q.item_id:
                query_image = item_image(kb, parse_item_id(q.item_id))
            try:
                return search(kb, query_image, q.text, q.k, parsed, q.with_heatmap, q.text_weight, self.combiner,
                              q.mode, q.heatmap_top, deadline, q.object_views, q.hub_correction)
            except ValueError as e:
                raise BadRequest(400, str(e)) from None

        # short and CPU-light: a vector search (one faiss call, one SQLite read) for a cached text
        short = (has_text and upload is None and not q.item_id and q.mode == "vector" and not parsed
                 and not q.with_heatmap and encode_text_cached.cached(kb.model, q.text.strip())
                 and not has_regions(kb.path))
        if short:
            # short searches that arrived together all reach this point before any decides: alone, the
            # search runs here (no hop: the lowest latency); with company, on the pool, where faiss runs
            # without the GIL, in parallel with the others and with this loop, unless every worker
            # thread is taken by long work (image queries, heat maps: waiting behind them costs more)
            self.active += 1
            try:
                await asyncio.sleep(0)
                if self.active == 1 or self.workers.busy - self.in_pool >= self.workers.threads:
                    self.inline += 1
                    hits = run()
                else:
                    self.pooled += 1
                    self.in_pool += 1
                    try:
                        hits = await self.workers.run(run)
                    finally:
                        self.in_pool -= 1
            finally:
                self.active -= 1
        else:
            hits = await self.workers.run(run)
        for h in hits:
            h["image_url"] = f"/v1/items/{h['id']}/image"
            h.pop("image")
        return dumps({"hits": hits, "version": kb.version,
                      "query": {"text": q.text, "item_id": q.item_id, "image": upload is not None, "k": q.k, "mode": q.mode}})


def item_image(kb: Any, item_id: int) -> Any:
    """The image of item ``item_id`` (a 404 when the item or its file is missing)."""
    try:
        kb.get(item_id)
    except KeyError as e:
        raise BadRequest(404, str(e.args[0])) from None
    try:
        return load_image(kb.image_path(item_id))
    except (OSError, ValueError) as e:
        raise BadRequest(404, f"image of item {item_id} cannot be read: {e}") from None


def parse_body(content_type: str, body: bytes) -> Dict[str, Any]:
    """Fields of a form (``a=1&b=2``) or JSON-object body; a JSON body that is not an object is a 400."""
    if content_type == "application/json":
        try:
            values = json.loads(body)
        except (ValueError, RecursionError) as e:
            raise BadRequest(400, f"the body is not valid JSON: {e}") from None
        if not isinstance(values, dict):
            raise BadRequest(400, f"the JSON body must be an object of search fields, got {type(values).__name__}")
        return values
    return dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


Receive = Callable[[], Awaitable[Dict[str, Any]]]
Send = Callable[[Dict[str, Any]], Awaitable[None]]


class FastSearch:
    """ASGI middleware (inside Guard: keys, rate limits, body limit and metrics still apply):
    POST /v1/search with a form or JSON body is answered here; everything else goes on to FastAPI.

    Args:
        app: the wrapped ASGI app.
        searcher: answers the queries.
    """

    route = SimpleNamespace(path="/v1/search")  # what Guard's metrics label the request with

    def __init__(self, app: Any, searcher: Searcher) -> None:
        self.app, self.searcher = app, searcher

    async def __call__(self, scope: Dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/search" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        content_type = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
        content_type = content_type.split(b";", 1)[0].strip().lower().decode("latin-1")
        if content_type not in FAST_TYPES:
            return await self.app(scope, receive, send)
        body, more = [], True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.append(message.get("body", b""))
            more = message.get("more_body", False)
        data = b"".join(body)
        scope["route"] = self.route
        try:
            values = parse_body(content_type, data)
            if "image" in values:  # not a file: FastAPI answers it as before (a validation error)
                return await self.app(scope, _replay(data, receive), send)
            status, payload = 200, await self.searcher.answer(SearchQuery.from_fields(values), None)
        except BadRequest as e:
            status, payload = e.status, dumps({"error": e.message})
        await send({"type": "http.response.start", "status": status,
                    "headers": [*JSON_HEADERS, (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


def _replay(data: bytes, receive: Receive) -> Receive:
    """A receive that gives the already-read body once, then defers to ``receive``."""
    pending = [{"type": "http.request", "body": data, "more_body": False}]

    async def again() -> Dict[str, Any]:
        return pending.pop() if pending else await receive()

    return again
