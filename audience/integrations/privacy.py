"""Shopify's mandatory privacy webhooks: what a store passes on from its customers.

A store and Stillhere hold the same shop's data for the same owner, so a customer's
erasure at the shop is an erasure here, done as the admin's GDPR erase does it (only a
hash of the address is kept, so no later import or sync brings it back). A data request
is the owner's to answer (the contact's "Export data" link): it is recorded and shown in
the admin, never answered automatically to whoever asked.
"""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from audience.models import Contact, Store, StoreCustomer, StorePrivacyRequest
from audience.services import contact_erase, email_hash

Topic = StorePrivacyRequest.Topic


def _customer(store: Store, remote_id: str, email: str) -> Contact | None:
    link = StoreCustomer.objects.filter(store=store, remote_id=remote_id).select_related("contact")
    found = link.first() if remote_id else None
    if found is not None:
        return found.contact
    return Contact.objects.filter(email=email).first() if email else None


@transaction.atomic
def store_customer_redact(*, store: Store, remote_id: str, email: str) -> str:
    contact = _customer(store, remote_id, email)
    request = StorePrivacyRequest(
        store=store, topic=Topic.CUSTOMER_REDACT, remote_customer_id=remote_id,
        email_hash=email_hash(email) if email else "", completed_at=timezone.now(),
    )  # fmt: skip
    if contact is None:
        request.outcome = "no such contact"
    else:
        contact_erase(contact=contact, actor=f"store: {store.name}"[:150])
        request.outcome = "erased"
    request.save()
    return request.outcome


@transaction.atomic
def store_data_request(*, store: Store, remote_id: str, email: str) -> str:
    contact = _customer(store, remote_id, email)
    StorePrivacyRequest.objects.create(
        store=store, topic=Topic.DATA_REQUEST, remote_customer_id=remote_id,
        email_hash=email_hash(email) if email else "", contact=contact,
        outcome="to answer" if contact is not None else "no such contact",
    )  # fmt: skip
    return "recorded"


@transaction.atomic
def store_redact(*, store: Store) -> str:
    """The shop has left (Shopify asks 48 hours after the app is removed): erase the
    customers this store brought, stop taking its webhooks. A contact who also came to
    us another way (a signup form, an import, another store) gave that consent to us: it
    is kept, only unlinked from this store."""
    links = StoreCustomer.objects.filter(store=store).select_related("contact")
    elsewhere = set(
        StoreCustomer.objects.filter(contact__store_customers__store=store)
        .exclude(store=store)
        .values_list("contact_id", flat=True)
    )
    erased = kept = 0
    for link in links:
        if link.contact.source == Contact.Source.STORE and link.contact_id not in elsewhere:
            contact_erase(contact=link.contact, actor=f"store: {store.name}"[:150])
            erased += 1
        else:
            kept += 1
    StoreCustomer.objects.filter(store=store).delete()
    store.enabled = False
    store.save(update_fields=["enabled"])
    outcome = f"erased {erased}, kept {kept} that came another way too; store disabled"
    StorePrivacyRequest.objects.create(
        store=store, topic=Topic.SHOP_REDACT, completed_at=timezone.now(), outcome=outcome
    )
    return outcome
