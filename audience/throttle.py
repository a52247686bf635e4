"""Fixed-window rate limits for the public signup endpoint, counted in the cache.

django-ratelimit did this first; bench/signup.py showed it at about a quarter of a
signup's CPU: two buckets cost four Redis round trips (add + incr each), each through
a freshly built client. Here both buckets go in one pipelined round trip on Redis, and
through the cache API (add + incr) anywhere else, e.g. the quickstart's local memory.
"""

from __future__ import annotations

import re
import time
from functools import lru_cache

from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@lru_cache(maxsize=32)
def parse_rate(rate: str) -> tuple[int, int]:
    """'10/m' → (10, 60); '100/5m' → (100, 300)."""
    match = _RATE.match(rate)
    if not match:
        raise ImproperlyConfigured(f"A rate must look like 10/m, 600/h or 100/5m; got {rate!r}")
    count, multiple, unit = match.groups()
    return int(count), int(multiple or 1) * _UNIT[unit]


_clients: dict[int, object] = {}


def _redis_client():
    """The Redis client behind the cache, built once per process and pool.

    Django's RedisCache builds a new redis-py client on every call, and redis-py fills
    a dict of a few hundred response callbacks for each: half a millisecond a signup.
    """
    backend = getattr(cache, "_cache", None)
    if not hasattr(backend, "get_client"):
        return None
    pool = backend._get_connection_pool(write=True)
    client = _clients.get(id(pool))
    if client is None:
        client = _clients[id(pool)] = backend.get_client(write=True)
    return client


def over_limit(buckets: list[tuple[str, str]]) -> bool:
    """Count one hit in each (name, rate) bucket; True if any is over its rate.

    Every bucket counts even when another is already over, so a flood spread over many
    IPs still fills the per-form bucket.
    """
    now = int(time.time())
    windows = []
    for name, rate in buckets:
        limit, period = parse_rate(rate)
        windows.append((f"rl:{name}:{now // period}", limit, period))
    client = _redis_client()
    if client is not None:
        pipe = client.pipeline(transaction=False)
        for key, _limit, period in windows:
            full_key = cache.make_key(key)  # the prefix and version the cache API would add
            pipe.incr(full_key)
            pipe.expire(full_key, period + 1)
        counts = pipe.execute()[0::2]
    else:
        counts = []
        for key, _limit, period in windows:
            cache.add(key, 0, timeout=period + 1)
            counts.append(cache.incr(key))
    return any(count > limit for count, (_key, limit, _p) in zip(counts, windows, strict=True))
