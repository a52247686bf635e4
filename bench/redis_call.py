"""What one signup's Redis round trip costs the web process, three ways.

    REDIS_URL=redis://127.0.0.1:6379/7 .venv/bin/python bench/redis_call.py

A signup makes exactly one Redis call (audience.throttle.count: count the
rate limits, append to the signup buffer). This prints the CPU microseconds one call
takes in this process, best of three batches, through:

1. redis-py's Script object on a client (what `register_script` gives you);
2. redis-py's client, EVALSHA directly (pool checkout, a poll of the socket, retry);
3. audience.throttle: the same EVALSHA on the thread's own connection.

The stream and flag keys are this run's own, deleted at the end.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _best(call, n: int) -> float:
    for _ in range(200):
        call()
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for _ in range(n):
            call()
        best = min(best, (time.process_time() - started) / n * 1e6)
    return best


def main() -> int:
    if not os.environ.get("REDIS_URL"):
        raise SystemExit("set REDIS_URL=redis://… (see the docstring)")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
    import django

    django.setup()
    from django.core.cache import cache

    from audience import buffer, throttle

    run = secrets.token_hex(4)
    limits = [(f"bench-ip:{run}", "1000000000/m"), (f"bench-form:{run}", "1000000000/m")]
    stream, flag = f"bench-stream:{run}", f"bench-flag:{run}"
    entry = "x" * 200
    append = throttle.Append(stream=stream, entry=entry, flag=flag, flag_ms=500)
    n = 5000

    client = buffer.client()
    script = client.register_script(throttle._COUNT_THEN_APPEND)
    windows = throttle._windows(limits)
    keys = [cache.make_key(k) for k, _l, _s in windows] + [
        cache.make_key(stream),
        cache.make_key(flag),
    ]
    args = [2, *[v for _k, limit, seconds in windows for v in (limit, seconds)], entry, 500]

    figures = {
        "redis-py Script object": _best(lambda: script(keys=keys, args=args), n),
        "redis-py client.evalsha": _best(
            lambda: client.evalsha(throttle._SHA, len(keys), *keys, *args), n
        ),
        "audience.throttle (own connection)": _best(
            lambda: throttle.count(limits, append=append),
            n,
        ),
    }
    for name, micros in figures.items():
        print(f"{name:36s} {micros:6.1f} us CPU per call")
    client.delete(*keys)
    return 0


if __name__ == "__main__":
    sys.exit(main())
