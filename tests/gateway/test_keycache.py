"""The ingest key cache: TTLs, revocation within the TTL, single flight, lookups off the event
loop, known keys served while the store cannot answer (bounded), unknown keys 503 then."""

from __future__ import annotations

import asyncio
import threading

import pytest

from aitrail.errors import Unavailable
from aitrail.gateway.keycache import KeyCache, KeyCacheSettings
from aitrail.store.base import Principal, Role

KEY, OTHER = "atk_aaaa_secret", "atk_bbbb_secret"
ACME = Principal(key_id="aaaa", tenant="acme", role=Role.INGEST)
SETTINGS = KeyCacheSettings(ttl_s=60, negative_ttl_s=5, max_stale_s=900, wait_s=0.5, max_entries=100)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Store:
    """The store's key check: a dict of valid keys, or down (raising), or hanging."""

    def __init__(self) -> None:
        self.valid = {KEY: ACME}
        self.down: str | None = None
        self.hang = threading.Event()  # set: lookups block until released
        self.release = threading.Event()
        self.calls = 0
        self.threads: set[int] = set()

    def lookup(self, key: str) -> Principal | None:
        self.calls += 1
        self.threads.add(threading.get_ident())
        if self.hang.is_set():
            assert self.release.wait(30), "a hanging lookup was never released"
        if self.down:
            raise Unavailable(self.down)
        return self.valid.get(key)


@pytest.fixture
def store():
    return Store()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def outcomes():
    return []


@pytest.fixture
def cache(store, clock, outcomes):
    return KeyCache(store.lookup, SETTINGS, clock=clock, on_outcome=outcomes.append)


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_valid_key_is_trusted_for_the_ttl_then_checked_again(cache, store, clock, outcomes):
    async def scenario():
        assert await cache.principal(KEY) == ACME
        clock.now += 59
        assert await cache.principal(KEY) == ACME
        assert store.calls == 1
        del store.valid[KEY]  # revoked in the store
        assert await cache.principal(KEY) == ACME  # still inside the TTL: the documented delay
        clock.now += 1.5
        assert await cache.principal(KEY) is None  # past it: refused
        assert store.calls == 2

    run(scenario())
    assert outcomes == ["looked_up", "cached", "cached", "looked_up"]


def test_unknown_keys_are_remembered_briefly(cache, store, clock):
    async def scenario():
        assert await cache.principal(OTHER) is None
        assert await cache.principal(OTHER) is None
        assert store.calls == 1
        store.valid[OTHER] = ACME  # created since
        clock.now += 5.1
        assert await cache.principal(OTHER) == ACME

    run(scenario())


def test_lookups_run_off_the_event_loop_one_per_key(cache, store):
    store.hang.set()

    async def scenario():
        loop_thread = threading.get_ident()
        waiting = [asyncio.create_task(cache.principal(KEY)) for _ in range(20)]
        waiting.append(asyncio.create_task(cache.principal(OTHER)))
        await asyncio.sleep(0)  # every request is now waiting on a lookup
        # the event loop is free meanwhile: this runs while both lookups block in threads
        assert not any(task.done() for task in waiting)
        store.release.set()
        results = await asyncio.gather(*waiting)
        assert results == [ACME] * 20 + [None]
        assert store.calls == 2  # one per key, not one per request
        assert loop_thread not in store.threads

    run(scenario())


def test_while_the_store_is_down_known_keys_work_and_unknown_ones_are_retryable(cache, store, clock, outcomes):
    async def scenario():
        assert await cache.principal(KEY) == ACME
        store.down = "OpenSearch http://127.0.0.1:9 is unreachable (checking a key)"
        clock.now += 120  # past the TTL
        assert await cache.principal(KEY) == ACME
        assert cache.store_error == store.down
        with pytest.raises(Unavailable, match="cannot check the key now: OpenSearch http://127.0.0.1:9 is unreachable"):
            await cache.principal(OTHER)
        clock.now += 900  # confirmed 1020 s ago: beyond key_cache_max_stale_s
        with pytest.raises(Unavailable):
            await cache.principal(KEY)
        store.down = None
        assert await cache.principal(KEY) == ACME and cache.store_error is None

    run(scenario())
    assert outcomes == ["looked_up", "stale", "unavailable", "unavailable", "looked_up"]


def test_a_store_that_hangs_makes_a_request_wait_at_most_wait_s(cache, store, clock):
    async def scenario():
        assert await cache.principal(KEY) == ACME
        store.hang.set()
        clock.now += 120
        assert await cache.principal(KEY) == ACME  # answered from the cache after wait_s
        with pytest.raises(Unavailable, match="did not answer within 0.5 s"):
            await cache.principal(OTHER)
        # the store counts as away now: a known key is answered without waiting again
        task = asyncio.create_task(cache.principal(KEY))
        await asyncio.sleep(0)
        assert task.done() and task.result() == ACME
        store.release.set()

    run(scenario())


def test_known_keys_do_not_wait_once_the_store_is_known_down(cache, store, clock):
    async def scenario():
        assert await cache.principal(KEY) == ACME
        store.down = "unreachable"
        clock.now += 120
        assert await cache.principal(KEY) == ACME  # finds out the store is down
        store.hang.set()  # now a lookup would hang: a known key must not wait for it
        task = asyncio.create_task(cache.principal(KEY))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert task.done() and task.result() == ACME
        store.release.set()

    run(scenario())


def test_the_cache_holds_at_most_max_entries(store, clock):
    cache = KeyCache(store.lookup, KeyCacheSettings(max_entries=3), clock=clock)

    async def scenario():
        for index in range(5):
            await cache.principal(f"atk_{index}_x")
        calls = store.calls
        await cache.principal("atk_4_x")  # kept
        await cache.principal("atk_0_x")  # evicted: looked up again
        assert store.calls == calls + 1

    run(scenario())


def test_the_blocking_variant_serves_metrics_readers_while_the_store_is_down(cache, store, clock):
    async def warm():
        assert await cache.principal(KEY) == ACME

    run(warm())
    store.down = "unreachable"
    clock.now += 120
    assert cache.principal_blocking(KEY) == ACME
    with pytest.raises(Unavailable, match="unreachable"):
        cache.principal_blocking(OTHER)
