"""Origins a signup form refused, and allowing one of them.

A script or plain HTML embed on a site missing from the form's allowed origins is refused
(audience.views.signup_submit), and so is an iframe on such a site; the visitor sees an
error and, without this, the owner sees nothing. Each refusal is noted here and shown on
the form's admin page with a one-click "allow".

The endpoint is public, so a bot decides what reaches this code: only well-formed origins
are kept, at most MAX_PER_FORM per form (the least recently seen go first), and a given
(form, origin) is written at most once every WRITE_EVERY seconds. The hits in between are
counted in the cache and added with the next write.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging

from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from redis.exceptions import RedisError

from audience.models import _ORIGIN, RefusedOrigin, SignupForm

logger = logging.getLogger(__name__)

MAX_PER_FORM = 20
WRITE_EVERY = 10  # seconds between two writes for one (form, origin)
_HITS_TTL = 24 * 3600
_MAX_LENGTH = RefusedOrigin._meta.get_field("origin").max_length


def is_origin(value: str) -> bool:
    return len(value) <= _MAX_LENGTH and bool(_ORIGIN.match(value))


def _keys(signup_form: SignupForm, origin: str) -> tuple[str, str]:
    digest = hashlib.sha256(f"{signup_form.pk}\n{origin}".encode()).hexdigest()[:32]
    return f"refused-origin:hits:{digest}", f"refused-origin:wrote:{digest}"


def _take_hits(hits_key: str, write_key: str) -> int:
    """Count this hit; the hits to write now (0: written a moment ago, not yet)."""
    if not cache.add(hits_key, 1, timeout=_HITS_TTL):
        try:
            cache.incr(hits_key)
        except ValueError:  # expired between add and incr
            cache.add(hits_key, 1, timeout=_HITS_TTL)
    if not cache.add(write_key, 1, timeout=WRITE_EVERY):
        return 0
    hits = cache.get(hits_key) or 1
    with contextlib.suppress(ValueError):  # expired meanwhile: nothing left to take
        cache.decr(hits_key, hits)
    return hits


def refusal_record(*, signup_form: SignupForm, origin: str) -> bool:
    """Note that `origin` was refused by `signup_form`. True when a row was written.

    Never raises for a cache or database failure: the visitor's refusal is answered
    either way, and a missed note costs only a count."""
    if not is_origin(origin):
        return False
    try:
        hits = _take_hits(*_keys(signup_form, origin))
        if not hits:
            return False
        _write(signup_form=signup_form, origin=origin, hits=hits)
    except (RedisError, DatabaseError):
        logger.warning("Could not note a refused origin", exc_info=True)
        return False
    return True


def _write(*, signup_form: SignupForm, origin: str, hits: int) -> None:
    now = timezone.now()
    rows = RefusedOrigin.objects.filter(signup_form=signup_form, origin=origin)
    if rows.update(hits=F("hits") + hits, last_seen=now):
        return
    try:
        with transaction.atomic():
            RefusedOrigin.objects.create(
                signup_form=signup_form, origin=origin, first_seen=now, last_seen=now, hits=hits
            )
    except IntegrityError:  # another process noted it first
        rows.update(hits=F("hits") + hits, last_seen=now)
        return
    # A new row: keep the form's MAX_PER_FORM most recent (the table stays tiny, so
    # this reads at most MAX_PER_FORM + 1 ids).
    keep = RefusedOrigin.objects.filter(signup_form=signup_form).values_list("id", flat=True)
    stale = list(keep[MAX_PER_FORM:])
    if stale:
        RefusedOrigin.objects.filter(id__in=stale).delete()


def refusals_recent(signup_form: SignupForm) -> list[RefusedOrigin]:
    """The refused origins to show on the form's page, most recently seen first, minus
    any the owner has since allowed."""
    allowed = set(signup_form.origins)
    rows = RefusedOrigin.objects.filter(signup_form=signup_form)[:MAX_PER_FORM]
    return [row for row in rows if row.origin not in allowed]


def origin_allow(*, signup_form: SignupForm, origin: str) -> SignupForm:
    """Add `origin` to the form's allowed origins (once), and forget its refusals."""
    origin = origin.strip().rstrip("/")
    if not is_origin(origin):
        raise ValidationError(f"Not an origin like https://shop.example.com: {origin}")
    with transaction.atomic():
        locked = SignupForm.objects.select_for_update().get(pk=signup_form.pk)
        if origin not in locked.origins:
            lines = [line for line in locked.allowed_origins.splitlines() if line.strip()]
            locked.allowed_origins = "\n".join([*lines, origin])
            # A plain save: its post_save signal clears the public views' form cache.
            locked.save(update_fields=["allowed_origins"])
        RefusedOrigin.objects.filter(signup_form=locked, origin=origin).delete()
    return locked
