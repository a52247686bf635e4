"""The webhook endpoint of a connected store: /integrations/<kind>/<key>/.

Every post is assumed forged until its signature, made with this store's own secret over
the exact bytes received, says otherwise. In order, before anything is stored: too
large is 413, an unknown or disabled store 404, a bad signature 401, a body that is not
a JSON object 400. A verified delivery is applied in one transaction with its receipt
(StoreWebhook), so a redelivery of the same id changes nothing, and a crash mid-way
leaves neither: the store retries (Shopify and WooCommerce retry non-2xx answers).

A verified delivery the sync cannot use (a customer with no email address, a topic we
don't take) is answered 200 with what was done: a store that keeps getting errors for
it stops sending (Shopify removes the subscription), and the next customer would be lost.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from audience import evidence
from audience.integrations import shopify, woocommerce
from audience.models import Store, StoreWebhook

logger = logging.getLogger(__name__)

# A customer payload is a few KiB; a whole customer with hundreds of addresses stays
# well under this. Anything larger is not a customer webhook.
MAX_BODY_BYTES = 256 * 1024


@dataclass(frozen=True)
class Platform:
    signature_valid: Callable[[Store, Mapping[str, str], bytes], bool]
    delivery: Callable[[Mapping[str, str]], tuple[str, str]]  # (topic, delivery id)
    handle: Callable[..., str]
    is_ping: Callable[[Mapping[str, str], bytes], bool] = lambda headers, body: False


PLATFORMS = {
    Store.Kind.SHOPIFY: Platform(shopify.signature_valid, shopify.delivery, shopify.handle),
    Store.Kind.WOOCOMMERCE: Platform(
        woocommerce.signature_valid, woocommerce.delivery, woocommerce.handle, woocommerce.is_ping
    ),
}


def _refuse(status: int, error: str) -> JsonResponse:
    return JsonResponse({"error": error}, status=status)


def _read_body(request: HttpRequest) -> bytes | None:
    """The raw body, or None past MAX_BODY_BYTES (read no further than that)."""
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > MAX_BODY_BYTES:
        return None
    body = request.read(MAX_BODY_BYTES + 1)
    return None if len(body) > MAX_BODY_BYTES else body


@csrf_exempt
@require_POST
def store_webhook(request: HttpRequest, kind: str, key: str) -> JsonResponse:
    body = _read_body(request)
    if body is None:
        return _refuse(413, f"Body over {MAX_BODY_BYTES // 1024} KiB.")
    platform = PLATFORMS.get(kind)
    store = Store.objects.filter(kind=kind, key=key, enabled=True).first() if platform else None
    if store is None:
        return _refuse(404, "No such store.")
    headers = request.headers
    if platform.is_ping(headers, body):
        return JsonResponse({"outcome": "ping"})
    if not platform.signature_valid(store, headers, body):
        logger.warning("store webhook refused: bad signature for store %s", store.pk)
        return _refuse(401, "Bad signature.")
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        payload = None
    if not isinstance(payload, dict):
        return _refuse(400, "The body is not a JSON object.")
    topic, delivery_id = platform.delivery(headers)
    if not topic or not delivery_id or len(delivery_id) > 100 or len(topic) > 64:
        return _refuse(400, "The topic or delivery id header is missing.")
    by = evidence.from_request(request, store.kind, actor=f"store: {store.name}"[:150])
    detail = {"store": store.pk, "topic": topic, "webhook_id": delivery_id}
    apply = {"store": store, "topic": topic, "payload": payload, "evidence": by, "detail": detail}
    try:
        outcome = _apply(platform, delivery_id, **apply)
    except IntegrityError:
        # Two first deliveries about one new customer raced to create its contact: this
        # one's transaction failed on the unique address; applied again, it updates.
        outcome = _apply(platform, delivery_id, **apply)
    return JsonResponse({"outcome": outcome})


@transaction.atomic
def _apply(platform: Platform, delivery_id: str, *, store: Store, topic: str, **handled) -> str:
    receipt, taken = _receipt(store, topic, delivery_id)
    if not taken:
        return f"duplicate: {receipt.outcome}"
    receipt.outcome = platform.handle(store=store, topic=topic, **handled)[:200]
    receipt.save(update_fields=["outcome"])
    return receipt.outcome


def _receipt(store: Store, topic: str, delivery_id: str) -> tuple[StoreWebhook, bool]:
    """This delivery's receipt, and whether it is new. A concurrent redelivery waits on
    the unique index until the first commits, then finds its receipt."""
    try:
        with transaction.atomic():
            return StoreWebhook.objects.create(
                store=store, webhook_id=delivery_id, topic=topic
            ), True
    except IntegrityError:
        return StoreWebhook.objects.get(store=store, webhook_id=delivery_id), False


# Shopify retries a delivery for up to 48 hours, WooCommerce not at all: a week of
# receipts catches every redelivery, and the table stays the size of a week's changes.
RECEIPTS_KEPT = timedelta(days=7)


def receipts_prune(*, batch: int = 10_000) -> int:
    """Delete receipts older than RECEIPTS_KEPT, a batch per statement; return how many."""
    cutoff = timezone.now() - RECEIPTS_KEPT
    deleted = 0
    while True:
        ids = list(
            StoreWebhook.objects.filter(received_at__lt=cutoff).values_list("pk", flat=True)[:batch]
        )
        if not ids:
            return deleted
        deleted += StoreWebhook.objects.filter(pk__in=ids).delete()[0]
