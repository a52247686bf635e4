"""A store's customer applied to the audience, in the order the store changed it."""

from __future__ import annotations

import dataclasses
from datetime import datetime

from django.db import transaction

from audience.models import Contact, Store, StoreCustomer
from audience.services import Evidence
from audience.sync import Record, contact_sync


@transaction.atomic
def store_customer_sync(
    *,
    store: Store,
    remote_id: str,
    updated_at: datetime | None,
    record: Record,
    evidence: Evidence,
) -> str:
    """Apply one customer webhook; return what it did, for the webhook's receipt.

    Webhooks are delivered out of order and retried: one older than the last applied for
    this customer (by the store's updated_at) leaves names, phone and tags alone. Its
    consent still goes to contact_sync, which orders consent by its own date.
    """
    link = (
        StoreCustomer.objects.select_for_update().filter(store=store, remote_id=remote_id).first()
    )
    last = link.remote_updated_at if link is not None else None
    stale = last is not None and updated_at is not None and updated_at < last
    if stale:
        record = dataclasses.replace(record, first_name=None, last_name=None, phone=None, tags=())
    synced = contact_sync(
        record=record, evidence=evidence, source=Contact.Source.STORE, store=store
    )
    if synced.contact is None:
        return "refused: the address was erased"
    newest = max((t for t in (last, updated_at) if t is not None), default=None)
    if link is None:
        StoreCustomer.objects.create(
            store=store, remote_id=remote_id, contact=synced.contact, remote_updated_at=newest
        )
    elif (link.contact_id, link.remote_updated_at) != (synced.contact.pk, newest):
        # A customer who changed their address at the shop is a new contact here: the
        # new address has not consented to anything with us yet (its own record says).
        link.contact, link.remote_updated_at = synced.contact, newest
        link.save(update_fields=["contact", "remote_updated_at"])
    status = synced.contact.status
    if synced.created:
        return f"created ({status})"
    if synced.status_before != status:
        return f"updated ({synced.status_before} to {status})"
    return f"{'stale, ' if stale else ''}{'updated' if synced.changed else 'unchanged'} ({status})"
