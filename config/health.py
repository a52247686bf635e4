"""GET /healthz: is the database answering, is the broker answering?

Anyone gets {"status": "ok"} (200) or {"status": "down"} (503), which is all a load
balancer needs. The detail (each part, and how many signups wait in the buffer: a number
that keeps growing means no worker is draining it) is for a logged-in staff user or a
request with ``Authorization: Bearer <HEALTHZ_TOKEN>``: it says how busy the list is.

Load balancers and uptime checks poll this; it must answer fast even when a part is
down, so each probe has a short timeout and any failure is reported, not raised.
"""

import logging

from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.utils.crypto import constant_time_compare
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from config.celery import app as celery_app

logger = logging.getLogger(__name__)


def _check_db() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        logger.warning("healthz: database check failed: %s", exc)
        return "down"
    return "ok"


def _check_broker() -> str:
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=3)
            # kombu connects lazily per channel; opening one proves the server answers.
            conn.default_channel  # noqa: B018
    except Exception as exc:
        logger.warning("healthz: broker check failed: %s", exc)
        return "down"
    return "ok"


def _may_see_detail(request) -> bool:
    token = settings.HEALTHZ_TOKEN
    if token:
        sent = request.headers.get("Authorization", "")
        if sent.startswith("Bearer ") and constant_time_compare(sent[7:].strip(), token):
            return True
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_active and user.is_staff)


@never_cache
@require_GET
def healthz(request):
    status: dict[str, object] = {"db": _check_db(), "broker": _check_broker()}
    healthy = all(value == "ok" for value in status.values())
    code = 200 if healthy else 503
    if not _may_see_detail(request):
        return JsonResponse({"status": "ok" if healthy else "down"}, status=code)
    if settings.SIGNUP_BUFFER:
        status["signups_waiting"] = _signups_waiting()
    return JsonResponse({"status": "ok" if healthy else "down", **status}, status=code)


def _signups_waiting() -> int | None:
    from audience import buffer

    try:
        return buffer.backlog()
    except Exception as exc:
        logger.warning("healthz: signup buffer check failed: %s", exc)
        return None
