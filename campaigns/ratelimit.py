"""The global sending rate limit: messages per second and per hour, across all workers.

A reservation scheme (GCRA): one shared "theoretical arrival time" per limit. A worker
about to send n messages reserves n slots and is told how long to wait before its first
one may go out; it sleeps that long, never retries. Reservations never collide, so the
limit holds however many workers there are. With REDIS_URL the state lives in Redis
(one atomic Lua call); on the quickstart it lives in a file under VAR_DIR, guarded by
an exclusive file lock, which covers every process on the one machine.

A provider that says "slow down" (429, Retry-After, a burst of 5xx) is answered with a
hold: no worker sends anything until it has passed, and the reservations made meanwhile
queue up behind it. That slows the whole campaign at once, where each worker backing
off alone would let the others keep hammering the provider. The hold is per provider
(`provider`: "primary" or "secondary", config.providers): a campaign that has switched to
the failover provider sends through it at once, not after the failed primary's hold.
"""

from __future__ import annotations

import fcntl
import json
import time
from contextlib import contextmanager
from functools import cache

from django.conf import settings

# A burst of up to this many seconds' worth of messages may go at once (a limit of
# 10/s lets a batch of 10 leave together); beyond it, sends are spread evenly.
SECOND_BURST = 1.0
HOUR_BURST = 60.0

# Seconds a process trusts what it last read of the hold when no rate limit is set (then
# nothing else asks Redis before a send): a hold set elsewhere is seen this late at most.
HOLD_CHECK_SECONDS = 0.25
HOLD_KEY = "stillhere:rate:hold"
PRIMARY = "primary"


def _hold_key(provider: str) -> str:
    # The primary's key is the one there always was: a rolling upgrade keeps its hold.
    return HOLD_KEY if provider == PRIMARY else f"{HOLD_KEY}:{provider}"


def _hold_field(provider: str) -> str:
    return "hold" if provider == PRIMARY else f"hold:{provider}"


# KEYS[1] is the hold (a time before which nothing may go), the others the limits.
_LUA = """
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local from = now
local hold = tonumber(redis.call('GET', KEYS[1]) or '0')
if hold > from then from = hold end
local wait = from - now
for i = 2, #KEYS do
  local key = KEYS[i]
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < from then tat = from end
  local start = tat - burst
  if start - now > wait then wait = start - now end
  local new_tat = tat + n * interval
  redis.call('SET', key, tostring(new_tat), 'PX', math.ceil((new_tat - now + burst) * 1000) + 1000)
end
return tostring(wait)
"""

_HOLD_LUA = """
local until_ = tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ > current then
  redis.call('SET', KEYS[1], tostring(until_), 'PX', math.ceil(tonumber(ARGV[2]) * 1000) + 1000)
  return tostring(until_)
end
return tostring(current)
"""

# What this process last knew of each provider's hold: (hold until, when it looked).
_seen_holds: dict[str, dict] = {}


def _seen(provider: str) -> dict:
    return _seen_holds.setdefault(provider, {"until": 0.0, "checked": float("-inf")})


def _limits(per_second: int, per_hour: int) -> list[tuple[str, float, float]]:
    limits = []
    if per_second > 0:
        limits.append(("second", 1.0 / per_second, SECOND_BURST))
    if per_hour > 0:
        limits.append(("hour", 3600.0 / per_hour, HOUR_BURST))
    return limits


@cache
def _redis_client(url: str):
    import redis

    return redis.Redis.from_url(url)


@cache
def _redis_script(url: str, source: str = _LUA):
    return _redis_client(url).register_script(source)


def _reserve_redis(limits, n: int, now: float, provider: str) -> float:
    keys = [_hold_key(provider)] + [f"stillhere:rate:{name}" for name, _, _ in limits]
    args = [now, n]
    for _, interval, burst in limits:
        args += [interval, burst]
    # Redis time would be one clock for all machines; workers' clocks are NTP-close
    # enough for per-second limits, and this keeps it to a single round trip.
    return float(_redis_script(settings.REDIS_URL)(keys=keys, args=args))


@contextmanager
def _locked_file_state():
    """The quickstart's shared state (no Redis): a JSON file that every worker process
    reads and writes under an exclusive lock; what the block leaves in the dict is saved."""
    with open(settings.VAR_DIR / "send-rate.json", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.seek(0)
            try:
                state = json.loads(handle.read() or "{}")
            except ValueError:
                state = {}
            yield state
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(state))
            handle.flush()
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _reserve_file(limits, n: int, now: float, provider: str) -> float:
    with _locked_file_state() as state:
        start = max(float(state.get(_hold_field(provider), 0.0)), now)
        wait = start - now
        for name, interval, burst in limits:
            tat = max(float(state.get(name, 0.0)), start)
            wait = max(wait, tat - burst - now)
            state[name] = tat + n * interval
    return wait


def _file_state() -> dict:
    path = settings.VAR_DIR / "send-rate.json"
    try:
        with open(path) as handle:
            fcntl.flock(handle, fcntl.LOCK_SH)
            return json.loads(handle.read() or "{}")
    except (OSError, ValueError):
        return {}


def _hold_wait(now: float, provider: str) -> float:
    """Seconds left of the hold, from a reading at most HOLD_CHECK_SECONDS old."""
    seen = _seen(provider)
    if now - seen["checked"] >= HOLD_CHECK_SECONDS:
        if getattr(settings, "REDIS_URL", ""):
            until = float(_redis_client(settings.REDIS_URL).get(_hold_key(provider)) or 0.0)
        else:
            until = float(_file_state().get(_hold_field(provider), 0.0))
        seen.update(until=until, checked=now)
    return max(0.0, seen["until"] - now)


def reserve(n: int, *, per_second: int, per_hour: int, provider: str = PRIMARY) -> float:
    """Reserve `n` sends; return the seconds to wait before sending them."""
    if n <= 0:
        return 0.0
    limits = _limits(per_second, per_hour)
    now = time.time()
    if not limits:
        return _hold_wait(now, provider)
    if getattr(settings, "REDIS_URL", ""):
        return _reserve_redis(limits, n, now, provider)
    return _reserve_file(limits, n, now, provider)


def throttle(n: int, *, per_second: int, per_hour: int, provider: str = PRIMARY) -> float:
    """Block until `n` more messages may be sent through `provider`; return the seconds
    waited. The rate limits are the shop's, shared by both providers; the hold is the
    provider's own."""
    wait = reserve(n, per_second=per_second, per_hour=per_hour, provider=provider)
    if wait > 0:
        time.sleep(wait)
    return max(wait, 0.0)


def hold(seconds: float, *, provider: str = PRIMARY) -> float:
    """Let no worker send anything through `provider` for `seconds` from now (a later
    hold already set stands). Returns the time (as time.time()) until which it is held."""
    now = time.time()
    seconds = max(seconds, 0.0)
    until = now + seconds
    if getattr(settings, "REDIS_URL", ""):
        script = _redis_script(settings.REDIS_URL, _HOLD_LUA)
        until = float(script(keys=[_hold_key(provider)], args=[until, seconds]))
    else:
        with _locked_file_state() as state:
            field = _hold_field(provider)
            until = max(float(state.get(field, 0.0)), until)
            state[field] = until
    # This process sees its own hold at once.
    _seen(provider).update(until=until, checked=now)
    return until


def reset() -> None:
    """Forget all reservations and any hold (tests, or after changing the limits)."""
    _seen_holds.clear()
    if getattr(settings, "REDIS_URL", ""):
        _redis_client(settings.REDIS_URL).delete(
            "stillhere:rate:second", "stillhere:rate:hour", HOLD_KEY, _hold_key("secondary")
        )
    else:
        (settings.VAR_DIR / "send-rate.json").unlink(missing_ok=True)
