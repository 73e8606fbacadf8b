"""POST /v1/search answered by FastSearch (form and JSON bodies) equals the FastAPI multipart path,
with the same errors, keys, rate limits, metrics and time budget; cached texts skip the worker pool."""
import threading

import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from metricvision.kb.query import TextEmbeddingCache  # noqa: E402
from metricvision.serve.access import ApiKeys  # noqa: E402
from metricvision.serve.app import create_app  # noqa: E402

READ = "r" * 20


@pytest.fixture(scope="module")
def client(shapes_kb_path):
    with TestClient(create_app(shapes_kb_path)) as c:
        yield c


def multipart(fields):
    """The same fields as multipart/form-data (no file): FastAPI's Form path."""
    return {name: (None, str(value)) for name, value in fields.items()}


@pytest.mark.parametrize("fields", [
    {"text": "green triangle", "k": 3},
    {"text": "red", "k": 5, "filters": '{"shape": "circle"}'},
    {"text": "blue square", "mode": "hybrid", "k": 4},
    {"text": "square", "mode": "keyword", "k": 6},
    {"item_id": "4", "k": 2},
    {"item_id": "4", "k": 2, "object_views": "true"},
    {"text": "red circle", "k": 2, "with_heatmap": "true", "heatmap_top": 1},
])
def test_form_and_json_bodies_equal_the_multipart_path(client, fields):
    reference = client.post("/v1/search", files=multipart(fields))
    form = client.post("/v1/search", data={k: str(v) for k, v in fields.items()})
    as_json = client.post("/v1/search", json=fields)
    assert reference.status_code == form.status_code == as_json.status_code == 200
    assert reference.json() == form.json() == as_json.json()
    assert reference.json()["hits"] and reference.headers["content-type"] == "application/json"


def test_json_body_takes_native_types_and_filter_objects(client):
    assert client.get("/v1/info").json()["text_bank"] is None
    hits = client.post("/v1/search", json={"text": "red", "k": 24, "filters": {"shape": ["circle"]}}).json()["hits"]
    assert len(hits) == 8 and {h["metadata"]["shape"] for h in hits} == {"circle"}
    r = client.post("/v1/search", json={"text": "red circle", "k": 1, "with_heatmap": True, "text_weight": 1})
    assert r.status_code == 200 and "heatmap" in r.json()["hits"][0]
    plain = client.post("/v1/search", json={"item_id": "4", "k": 1}).json()["hits"][0]
    viewed = client.post("/v1/search", json={"item_id": "4", "k": 1, "object_views": True}).json()["hits"][0]
    assert plain["score"] == pytest.approx(1.0, abs=1e-4) and viewed["score"] < plain["score"] - 1e-4  # its views, not itself


@pytest.mark.parametrize("fields, message", [
    ({"text": "a", "k": "abc"}, "invalid request: k: Input should be a valid integer"),
    ({"text": "a", "k": "0"}, "k must be in [1, 100], got 0"),
    ({"text": "a", "with_heatmap": "maybe"}, "invalid request: with_heatmap: Input should be a valid boolean"),
    ({"text": "a", "text_weight": "x"}, "invalid request: text_weight: Input should be a valid number"),
    ({"text": "a", "text_weight": "nan"}, "text_weight must be in [0, 1]"),
    ({"text": "a", "heatmap_top": "99"}, "heatmap_top must be in [0, 24]"),
    ({"text": "a", "mode": "magic"}, "mode must be one of"),
    ({"text": "a", "filters": "[1]"}, "JSON object"),
    ({"text": "a", "filters": '{"bad key": 1}'}, "alphanumeric"),
    ({"k": "2"}, "give an image, an item_id or a text"),
    ({"item_id": "-1"}, "non-negative integer"),
    ({"item_id": "999"}, "no item with id 999"),
    ({"item_id": "1", "mode": "hybrid"}, "needs a text"),
])
def test_same_errors_on_both_paths(client, fields, message):
    reference = client.post("/v1/search", files=multipart(fields))
    form = client.post("/v1/search", data=fields)
    as_json = client.post("/v1/search", json=fields)
    assert reference.status_code == form.status_code == as_json.status_code
    assert 400 <= reference.status_code < 500 and message in reference.json()["error"]
    assert reference.json() == form.json() == as_json.json()


@pytest.mark.parametrize("body, message", [(b"[1, 2]", "must be an object"), (b"{nope", "not valid JSON"),
                                           (b'{"text": "a", "k": true}', "valid integer"),
                                           (b'{"text": 5}', "valid string")])
def test_bad_json_bodies_are_400s(client, body, message):
    r = client.post("/v1/search", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and message in r.json()["error"]


def test_a_form_field_named_image_goes_to_fastapi(client):
    r = client.post("/v1/search", data={"image": "not a file", "text": "red circle"})
    assert r.status_code in (200, 400) and r.headers["content-type"] == "application/json"
    assert client.post("/v1/search", files=multipart({"image": "not a file", "text": "red circle"})).status_code == r.status_code


def test_cached_texts_are_answered_on_the_event_loop_even_when_every_worker_is_busy(shapes_kb_path):
    app = create_app(shapes_kb_path, threads=1, queue=0, budget_s=1.0)
    with TestClient(app) as client:
        assert client.post("/v1/search", json={"text": "yellow circle zq1", "k": 2}).status_code == 200  # encodes it
        inline = app.state.searcher.inline
        release = threading.Event()
        app.state.workers.pool.submit(release.wait, 30)  # the only worker thread is now busy
        try:
            r = client.post("/v1/search", data={"text": "yellow circle zq1", "k": "2"})
            assert r.status_code == 200 and r.json()["hits"][0]["caption"] == "yellow circle"
            assert app.state.searcher.inline == inline + 1
            # anything else needs the pool: the request's time budget still answers 503
            r = client.post("/v1/search", json={"text": "a text never seen zq2"})
            assert r.status_code == 503 and "time budget" in r.json()["error"]
            r = client.post("/v1/search", json={"text": "yellow circle zq1", "filters": {"shape": "circle"}})
            assert r.status_code == 503
        finally:
            release.set()
        assert app.state.searcher.inline == inline + 1
        assert client.post("/v1/search", json={"text": "a text never seen zq2"}).status_code == 200


def test_keys_rate_limits_and_metrics_apply_to_the_fast_path(shapes_kb_path):
    with TestClient(create_app(shapes_kb_path, api_keys=ApiKeys({READ: "read"}))) as client:
        assert client.post("/v1/search", json={"text": "red circle"}).status_code == 401
        assert client.post("/v1/search", json={"text": "red circle"}, headers={"X-API-Key": READ}).status_code == 200
        metrics = client.get("/metrics", headers={"X-API-Key": READ}).text
        assert 'metricvision_requests_total{method="POST",route="/v1/search",status="200"} 1' in metrics
    client = TestClient(create_app(shapes_kb_path, rate_limit=0.5, rate_burst=2))
    codes = [client.post("/v1/search", json={"text": "red circle"}).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_body_limit_applies_to_the_fast_path(shapes_kb_path):
    client = TestClient(create_app(shapes_kb_path, max_upload_bytes=1000))
    r = client.post("/v1/search", json={"text": "x" * 200_000})
    assert r.status_code == 413 and "limit" in r.json()["error"]


def test_text_embedding_cache_peeks_without_encoding_and_evicts_the_oldest():
    calls = []

    class Model:
        def encode_text(self, texts):
            calls.append(texts[0])
            return torch.full((1, 2), float(len(calls)))

    cache, model = TextEmbeddingCache(maxsize=2), Model()
    assert cache.peek(model, "a") is None and not cache.cached(model, "a") and calls == []
    first = cache(model, "a")
    assert cache.cached(model, "a") and torch.equal(cache.peek(model, "a"), first) and calls == ["a"]
    cache(model, "b")
    cache(model, "a")  # a is now the most recent
    cache(model, "c")  # drops b
    assert cache.cached(model, "a") and not cache.cached(model, "b") and calls == ["a", "b", "c"]
    assert cache.cache_info() == (2, 3, 2, 2)
    cache.cache_clear()
    assert cache.cache_info() == (0, 0, 2, 0)
    with pytest.raises(ValueError, match="maxsize must be >= 1"):
        TextEmbeddingCache(0)


def test_searches_that_arrive_together_go_to_the_pool_unless_long_work_holds_every_thread(shapes_kb_path):
    import asyncio

    from metricvision.serve.search import SearchQuery

    app = create_app(shapes_kb_path, threads=4)
    searcher, workers = app.state.searcher, app.state.workers
    query = SearchQuery(text="blue triangle zq3", k=2)

    async def go():
        first = await searcher.answer(query, None)  # not cached yet: encoded on the pool
        alone = await searcher.answer(query, None)
        together = await asyncio.gather(*(searcher.answer(query, None) for _ in range(6)))  # more than threads
        counts = (searcher.inline, searcher.pooled)
        release = threading.Event()
        blockers = [asyncio.ensure_future(workers.run(release.wait, 30)) for _ in range(4)]  # every thread taken
        await asyncio.sleep(0.05)
        busy = await asyncio.gather(*(searcher.answer(query, None) for _ in range(3)))
        release.set()
        await asyncio.gather(*blockers)
        return first, alone, together, counts, busy

    first, alone, together, counts, busy = asyncio.run(go())
    assert first == alone and all(t == alone for t in together + busy)
    assert counts == (1, 6)  # alone: on the loop; together: on the pool, even past its threads
    assert (searcher.inline, searcher.pooled) == (4, 6) and searcher.active == searcher.in_pool == workers.busy == 0
    workers.pool.shutdown(wait=False)
    app.state.live.close()


def test_text_bank_kb_ranks_text_by_its_correction_unless_the_request_turns_it_off(shapes_kb_path, tmp_path):
    from metricvision.kb.model import ImageTextModel
    from metricvision.kb.query import search
    from metricvision.kb.store import KnowledgeBase
    from shapes import shape_classes

    model = ImageTextModel.from_checkpoint(shapes_kb_path / "model.safetensors")
    texts = ["red thing", "green thing", "blue thing", "a circle", "a square", "a triangle", "round", "pointed"]
    kb = KnowledgeBase.create(tmp_path / "kb", model, text_bank=model.encode_text(texts), text_bank_k=3)
    kb.add(shape_classes())
    with TestClient(create_app(kb.path)) as c:
        assert c.get("/v1/info").json()["text_bank"] == {"texts": len(texts), "k": 3}
        for text in ("red circle", "blue square", "yellow triangle"):
            for hub in (True, False):
                fields = {"text": text, "k": 6, "hub_correction": hub}
                want = [(h["id"], pytest.approx(h["score"], abs=1e-5))
                        for h in search(kb, text=text, k=6, hub_correction=hub)]
                for body in ({"json": fields}, {"files": multipart(fields)}, {"data": {"text": text, "k": "6",
                                                                                       "hub_correction": str(hub)}}):
                    got = c.post("/v1/search", **body).json()["hits"]
                    assert [(h["id"], h["score"]) for h in got] == want
