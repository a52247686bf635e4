"""Taking a signup in: count it against the rate limits, then buffer it or store it.

With a Redis that keeps its data (audience.buffer.in_use), a public signup does not write
to PostgreSQL while the visitor waits: one round trip counts the rate limits and appends
the cleaned signup to the signup buffer, and a Celery task (`drain_signups`) moves the
buffer into contacts in batches, normally SIGNUP_BUFFER_SECONDS later (beat's minutely
sweep drains whatever a lost task left). Otherwise (no Redis, a Redis without
`appendonly yes`, SIGNUP_BUFFER off) each signup is written in its request.

Either way the visitor's answer is the same, and never says whether the address was known.
If Redis fails during a buffered signup, that signup is written straight to the database,
with a marker (SignupWrittenDirectly) that makes the drain skip its entry should Redis
have appended it after all; the rate limits are counted in the process meanwhile.
"""

from __future__ import annotations

import logging
import secrets
import time

from django.db import transaction
from redis.exceptions import RedisError

from audience import buffer, services, throttle
from audience.models import SignupForm, SignupWrittenDirectly

logger = logging.getLogger(__name__)

# The buffer's names and its drain, where callers from before audience.buffer look.
STREAM = buffer.STREAM
FAILED_STREAM = buffer.FAILED_STREAM
DRAIN_QUEUED_FLAG = buffer.DRAIN_QUEUED_FLAG
drain = buffer.drain
backlog = buffer.backlog


def signup(
    *,
    form: SignupForm,
    email: str,
    first_name: str,
    last_name: str,
    phone: str,
    evidence: services.Evidence,
    limits: list[tuple[str, str]],
) -> bool:
    """Count one hit in each (bucket, rate) of `limits` (the IP's first); unless one is
    over, take the signup (inputs already cleaned). False when over a limit: nothing was
    taken, and no bucket was charged."""
    fields = {"first_name": first_name, "last_name": last_name, "phone": phone}
    if buffer.in_use():
        sid = secrets.token_hex(8)  # names this signup's entry
        entry = buffer.encode(
            sid=sid, form=form, email=email, evidence=evidence, at=time.time(), **fields
        )
        try:
            counted = buffer.append(limits, entry)
        except RedisError:
            logger.warning("Signup buffer unreachable; writing the signup directly", exc_info=True)
            # Redis failed, perhaps after it appended the entry (a reply lost on its way
            # back): written directly with a marker, in one transaction, so the drain
            # skips that entry if it is there. The limits live in that Redis too; this
            # process counts them alone meanwhile.
            if throttle.over_limit_here(limits):
                return False
            with transaction.atomic():
                services.contact_subscribe(form=form, email=email, evidence=evidence, **fields)
                SignupWrittenDirectly.objects.create(sid=sid)
            return True
        if counted is not None:  # None: the cache is not Redis, so there is no buffer
            if counted == 1:
                buffer.queue_drain()
            return counted >= 0
    if throttle.over_limit(limits):
        return False
    # A known address is applied by a worker, so the answer's time does not tell.
    services.contact_subscribe(
        form=form, email=email, evidence=evidence, defer_known=True, **fields
    )
    return True
