"""The global sending rate limit: messages per second and per hour, across all workers.

A reservation scheme (GCRA): one shared "theoretical arrival time" per limit. A worker
about to send n messages reserves n slots and is told how long to wait before its first
one may go out; it sleeps that long, never retries. Reservations never collide, so the
limit holds however many workers there are. With REDIS_URL the state lives in Redis
(one atomic Lua call); on the quickstart it lives in a file under VAR_DIR, guarded by
an exclusive file lock, which covers every process on the one machine.
"""

from __future__ import annotations

import fcntl
import json
import time
from functools import cache

from django.conf import settings

# A burst of up to this many seconds' worth of messages may go at once (a limit of
# 10/s lets a batch of 10 leave together); beyond it, sends are spread evenly.
SECOND_BURST = 1.0
HOUR_BURST = 60.0

_LUA = """
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local wait = 0
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[1 + 2 * i])
  local burst = tonumber(ARGV[2 + 2 * i])
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local start = tat - burst
  if start - now > wait then wait = start - now end
  local new_tat = tat + n * interval
  redis.call('SET', key, tostring(new_tat), 'PX', math.ceil((new_tat - now + burst) * 1000) + 1000)
end
return tostring(wait)
"""


def _limits(per_second: int, per_hour: int) -> list[tuple[str, float, float]]:
    limits = []
    if per_second > 0:
        limits.append(("second", 1.0 / per_second, SECOND_BURST))
    if per_hour > 0:
        limits.append(("hour", 3600.0 / per_hour, HOUR_BURST))
    return limits


@cache
def _redis_script(url: str):
    import redis

    client = redis.Redis.from_url(url)
    return client.register_script(_LUA)


def _reserve_redis(limits, n: int, now: float) -> float:
    keys = [f"stillhere:rate:{name}" for name, _, _ in limits]
    args = [now, n]
    for _, interval, burst in limits:
        args += [interval, burst]
    # Redis time would be one clock for all machines; workers' clocks are NTP-close
    # enough for per-second limits, and this keeps it to a single round trip.
    return float(_redis_script(settings.REDIS_URL)(keys=keys, args=args))


def _reserve_file(limits, n: int, now: float) -> float:
    path = settings.VAR_DIR / "send-rate.json"
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.seek(0)
            try:
                state = json.loads(handle.read() or "{}")
            except ValueError:
                state = {}
            wait = 0.0
            for name, interval, burst in limits:
                tat = max(float(state.get(name, 0.0)), now)
                wait = max(wait, tat - burst - now)
                state[name] = tat + n * interval
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(state))
            handle.flush()
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    return wait


def reserve(n: int, *, per_second: int, per_hour: int) -> float:
    """Reserve `n` sends; return the seconds to wait before sending them."""
    limits = _limits(per_second, per_hour)
    if not limits or n <= 0:
        return 0.0
    now = time.time()
    if getattr(settings, "REDIS_URL", ""):
        return _reserve_redis(limits, n, now)
    return _reserve_file(limits, n, now)


def throttle(n: int, *, per_second: int, per_hour: int) -> None:
    """Block until `n` more messages may be sent."""
    wait = reserve(n, per_second=per_second, per_hour=per_hour)
    if wait > 0:
        time.sleep(wait)


def reset() -> None:
    """Forget all reservations (tests, or after changing the limits)."""
    if getattr(settings, "REDIS_URL", ""):
        import redis

        redis.Redis.from_url(settings.REDIS_URL).delete(
            "stillhere:rate:second", "stillhere:rate:hour"
        )
    else:
        (settings.VAR_DIR / "send-rate.json").unlink(missing_ok=True)
