"""Rate limits: the token buckets that `serve --workers N` processes share through a file."""
import multiprocessing

from metricvision.serve.access import RateLimiter, SharedRateLimiter, rate_limiter


def _take(path: str, client: str, n: int, out) -> None:
    limiter = SharedRateLimiter(0.001, 3, path)
    out.put([limiter.take(client) for _ in range(n)])


def test_processes_sharing_a_table_share_each_clients_budget(tmp_path):
    table = str(tmp_path / "rate")
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    for _ in range(2):  # two processes, one after the other, 2 requests each of the same client
        p = ctx.Process(target=_take, args=(table, "ip:10.0.0.1", 2, out))
        p.start()
        p.join(60)
    waits = out.get(timeout=5) + out.get(timeout=5)
    assert [w == 0 for w in waits] == [True, True, True, False]  # a burst of 3 in all, not 3 per process
    here = SharedRateLimiter(0.001, 3, table)
    assert here.take("ip:10.0.0.1") > 0 and here.take("ip:10.0.0.2") == 0  # another client has its own bucket
    assert SharedRateLimiter(0.001, 3, str(tmp_path / "other")).take("ip:10.0.0.1") == 0  # another table


def test_the_shared_buckets_refill_as_the_in_memory_ones(tmp_path, monkeypatch):
    import metricvision.serve.access as access

    now = [100.0]  # the same request times for both limiters
    monkeypatch.setattr(access.time, "monotonic", lambda: now[0])
    shared, memory = SharedRateLimiter(2.0, 2, tmp_path / "rate"), RateLimiter(2.0, 2)
    for dt in (0.0, 0.1, 0.1, 0.3, 0.05, 1.0, 0.0, 0.0):
        now[0] += dt
        assert shared.take("c") == memory.take("c")


def test_rate_limiter_is_none_without_a_rate(tmp_path):
    assert rate_limiter(None, 20) is None
    assert type(rate_limiter(5.0, 20)) is RateLimiter
    assert type(rate_limiter(5.0, 20, str(tmp_path / "t"))) is SharedRateLimiter
