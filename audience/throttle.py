"""Fixed-window rate limits for the public signup endpoint, counted in the cache.

django-ratelimit did this first; bench/signup.py showed it at about a quarter of a
signup's CPU: two buckets cost four Redis round trips (add + incr each), each through
a freshly built client. Here both buckets are counted by one Lua script on Redis, in
one round trip that can also append the signup to its buffer (audience.buffer owns
that stream; this module only counts), and through the cache API anywhere else, e.g.
the quickstart's local memory.

A request is charged only if no bucket it is counted against is full, so that rejected
requests cannot lock anyone else out: the view counts a rejected submission (a bot, bad
input) against its IP's bucket alone, and only a signup that passed every check against
the form's (audience.views).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from functools import lru_cache

from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

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


# Count one hit in each bucket (KEYS[1..n], ARGV[1] = n, then limit and seconds for
# each), in order, and only if none is already full: a request refused by one bucket is
# charged to none, so a flood that fills its IP's bucket never reaches the form's, and a
# full bucket is never charged further. Unless one is full, append ARGV[2n+2] to the
# stream KEYS[n+1] (if given) and set the flag KEYS[n+2] for ARGV[2n+3] ms. Returns -1
# when over a limit, else 1 if this call set the flag (its caller schedules the drain),
# else 0. A flag set for longer (SIGNUP_BUFFER_SECONDS since lowered) is cut to
# ARGV[2n+3] ms, so that the next flag, and the drain it queues, come on the new
# schedule. A script, so that counting and appending are one round trip and one atomic
# step; the stream and the flag are the signup buffer's (audience.buffer).
_COUNT_THEN_APPEND = """
local n = tonumber(ARGV[1])
for i = 1, n do
  if tonumber(redis.call('GET', KEYS[i]) or '0') >= tonumber(ARGV[2 * i]) then return -1 end
end
for i = 1, n do
  if redis.call('INCR', KEYS[i]) == 1 then redis.call('EXPIRE', KEYS[i], ARGV[2 * i + 1]) end
end
if #KEYS == n then return 0 end
redis.call('XADD', KEYS[n + 1], '*', 'v', ARGV[2 * n + 2])
if redis.call('SET', KEYS[n + 2], '1', 'NX', 'PX', ARGV[2 * n + 3]) then return 1 end
if redis.call('PTTL', KEYS[n + 2]) > tonumber(ARGV[2 * n + 3]) then
  redis.call('PEXPIRE', KEYS[n + 2], ARGV[2 * n + 3])
end
return 0
"""
_SHA = hashlib.sha1(_COUNT_THEN_APPEND.encode()).hexdigest()  # noqa: S324 (Redis's script id)
_local = threading.local()


def _reset(*, setting: str, **kwargs) -> None:
    if setting == "CACHES":
        _local.__dict__.clear()


setting_changed.connect(_reset)


def _connection():
    """This thread's own connection to the cache's Redis (None if the cache is not Redis),
    with the cache's key function.

    The signup's one round trip goes straight through it: through redis-py's client and
    pool it cost twice the CPU (a poll of the socket before every command, the pool's
    lock, the retry wrapper; bench/redis_call.py), on a path where every microsecond is
    one the visitor's request holds a web process for. Any error drops the connection;
    the next call opens a new one. A forked process opens its own.
    """
    pid = os.getpid()
    if getattr(_local, "pid", None) != pid:
        backend = getattr(cache, "_cache", None)
        if hasattr(backend, "get_client"):
            pool = backend._get_connection_pool(write=True)
            _local.connection = pool.connection_class(**pool.connection_kwargs)
            _local.make_key = cache.make_key
        else:
            _local.connection = _local.make_key = None
        _local.pid = pid
    return _local.connection


def _count_then_append(keys: list[str], args: list) -> int:
    connection = _local.connection
    try:
        try:
            connection.send_command("EVALSHA", _SHA, len(keys), *keys, *args)
            return connection.read_response()
        except NoScriptError:  # a restarted Redis: EVAL loads the script again
            connection.send_command("EVAL", _COUNT_THEN_APPEND, len(keys), *keys, *args)
            return connection.read_response()
    except (RedisConnectionError, RedisTimeoutError, OSError):
        connection.disconnect()
        raise


def _windows(buckets: list[tuple[str, str]]) -> list[tuple[str, int, int]]:
    now = int(time.time())
    windows = []
    for name, rate in buckets:
        limit, period = parse_rate(rate)
        windows.append((f"rl:{name}:{now // period}", limit, period + 1))
    return windows


@dataclass(frozen=True)
class Append:
    """What to append to a Redis stream once the limits let a request through, in the
    same round trip: the signup buffer's entry (audience.buffer owns the stream and the
    flag; both are cache keys, the cache's prefix is added here)."""

    stream: str
    entry: str
    flag: str
    flag_ms: int


def count(buckets: list[tuple[str, str]], *, append: Append | None = None) -> int | None:
    """Count one hit in each (name, rate) bucket, in order, unless one is already full
    (then none is charged); if none was full and `append` is given, append its entry, in
    one round trip. Returns -1 when over a rate, 1 when the entry went in and this call
    set the flag, 0 otherwise; None when the cache is not Redis (nothing happened).
    Raises RedisError when Redis fails (the entry may have gone in all the same)."""
    if _connection() is None:
        return None
    make_key = _local.make_key
    windows = _windows(buckets)
    keys = [make_key(key) for key, _limit, _seconds in windows]
    args: list[object] = [len(windows)]
    for _key, limit, seconds in windows:
        args += [limit, seconds]
    if append is not None:
        keys += [make_key(append.stream), make_key(append.flag)]
        args += [append.entry, max(1, append.flag_ms)]
    return int(_count_then_append(keys, args))


def over_limit(buckets: list[tuple[str, str]]) -> bool:
    """Count one hit in each (name, rate) bucket unless one is already full; True if one
    is (then none was charged).

    Buckets are checked in the order given: the caller puts the narrow one (the IP's)
    first, and only a request that passes it can be charged to the wide one (the form's).
    """
    try:
        counted = count(buckets)
    except RedisError:
        # A visitor must not get an error because the shared counters cannot be reached,
        # nor may a flood go uncounted meanwhile: this process counts alone. Logged.
        logger.warning("Rate limits unreachable in Redis; counting in this process", exc_info=True)
        return over_limit_here(buckets)
    if counted is not None:
        return counted < 0
    # The cache API (the quickstart's local memory): look, then charge. Two requests at
    # once may both pass the last free hit; within one process that is a hit or two.
    windows = _windows(buckets)
    if any((cache.get(key) or 0) >= limit for key, limit, _seconds in windows):
        return True
    for key, _limit, seconds in windows:
        cache.add(key, 0, timeout=seconds)
        cache.incr(key)
    return False


_here: dict[str, int] = {}
_here_lock = threading.Lock()


def over_limit_here(buckets: list[tuple[str, str]]) -> bool:
    """over_limit, counted in this process's memory alone: for while Redis cannot be
    reached. Each web process then allows the full rate, so the limits are looser by
    the number of processes, but a flood is still held back."""
    windows = _windows(buckets)
    with _here_lock:
        if len(_here) > 10_000:  # old windows and many IPs: start afresh
            _here.clear()
        if any(_here.get(key, 0) >= limit for key, limit, _seconds in windows):
            return True
        for key, _limit, _seconds in windows:
            _here[key] = _here.get(key, 0) + 1
    return False


def _redis_client():
    """Kept for callers written before audience.buffer: the signup buffer's client."""
    from audience import buffer

    return buffer.client()
