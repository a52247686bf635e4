"""The exports people actually have, and how their columns map onto a contact.

A profile is recognised by a few header names only that platform writes; each column
then maps to a *target*. Columns no profile knows go to the contact's attributes or are
ignored, as the user chooses in the preview.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# What a column can feed. The preview offers exactly these in its mapping selects.
TARGETS: dict[str, str] = {
    "email": "Email",
    "first_name": "First name",
    "last_name": "Last name",
    "full_name": "Full name (split into first / last)",
    "phone": "Phone",
    "tags": "Tags",
    "consent": "Marketing consent (yes / no / subscribed / unsubscribed)",
    "optin_time": "Opt-in time (consent evidence)",
    "optin_ip": "Opt-in IP (consent evidence)",
    "confirm_time": "Confirmation time (consent evidence)",
    "confirm_ip": "Confirmation IP (consent evidence)",
    "consent_time": "Consent timestamp (consent evidence)",
    "unsub_time": "Unsubscribed at (marks the contact unsubscribed)",
    "clean_time": "Cleaned / bounced at (marks the contact bounced)",
    "status": "Stillhere status (subscribed / pending / unsubscribed / bounced / complained)",
    "source": "Source (form / admin / import: label)",
    "created_time": "Created at",
    "attributes_json": "Attributes (JSON object)",
    "attribute": "Keep as an attribute",
    "ignore": "Ignore",
}
EVIDENCE_TARGETS = ("optin_time", "optin_ip", "confirm_time", "confirm_ip", "consent_time")
# The targets that carry a row's consent (or its opt-out): the default import mode
# subscribes on them only when they come from the columns the detected platform itself
# writes (see ``proves_consent``).
CONSENT_TARGETS = frozenset(
    {"consent", "optin_time", "confirm_time", "consent_time", "unsub_time", "clean_time",
     "status"}
)  # fmt: skip


def header_key(name: str) -> str:
    """'OPTIN_TIME', ' Optin time ' and 'optin-time' all become 'optin time'."""
    name = name.replace("\ufeff", "").strip().lower()
    return re.sub(r"[\s_]+", " ", name)


@dataclass(frozen=True)
class Profile:
    key: str
    label: str
    # The profile applies when all the headers of any one of these sets are present.
    signatures: tuple[frozenset[str], ...]
    columns: dict[str, str] = field(default_factory=dict)
    # Platform columns that mean nothing to us: ignored even when unknown columns are kept.
    ignored: frozenset[str] = frozenset()
    # How the platform separates several tags in one cell.
    tag_style: str = "comma"
    # What the preview says a row's consent evidence is, in the platform's own words;
    # empty: the platform writes none, and its rows are stored without subscribing.
    evidence: str = ""


_MAILCHIMP_IGNORED = frozenset(
    {
        "member rating", "gmtoff", "dstoff", "timezone", "cc", "region", "last changed",
        "leid", "euid", "notes", "latitude", "longitude", "unsub campaign title",
        "unsub campaign id", "unsub reason other", "clean campaign title", "clean campaign id",
        "marketing permissions",
    }
)  # fmt: skip

MAILCHIMP = Profile(
    key="mailchimp",
    label="Mailchimp audience export",
    signatures=(
        frozenset({"email address", "optin time"}),
        frozenset({"email address", "unsub time"}),
        frozenset({"email address", "clean time"}),
        frozenset({"email address", "member rating"}),
    ),
    columns={
        "email address": "email",
        "first name": "first_name",
        "last name": "last_name",
        "phone number": "phone",
        "tags": "tags",
        "optin time": "optin_time",
        "optin ip": "optin_ip",
        "confirm time": "confirm_time",
        "confirm ip": "confirm_ip",
        "unsub time": "unsub_time",
        "unsub reason": "attribute",
        "clean time": "clean_time",
    },
    ignored=_MAILCHIMP_IGNORED,
    tag_style="quoted",
    evidence="an opt-in or confirmation time (OPTIN_TIME, CONFIRM_TIME), which Mailchimp "
    "writes for members who subscribed; UNSUB_TIME and CLEAN_TIME mark who left or bounced",
)

KLAVIYO = Profile(
    key="klaviyo",
    label="Klaviyo profile export",
    signatures=(
        frozenset({"email", "email marketing consent"}),
        frozenset({"email", "klaviyo id"}),
    ),
    columns={
        "email": "email",
        "first name": "first_name",
        "last name": "last_name",
        "phone number": "phone",
        "email marketing consent": "consent",
        "email marketing consent timestamp": "consent_time",
        "list subscription timestamp": "consent_time",
        "tags": "tags",
    },
    ignored=frozenset({"klaviyo id", "id"}),
    evidence="Email Marketing Consent = SUBSCRIBED (with its timestamp); UNSUBSCRIBED "
    "marks who left",
)

SHOPIFY = Profile(
    key="shopify",
    label="Shopify customers export",
    signatures=(
        frozenset({"email", "accepts email marketing"}),
        frozenset({"email", "accepts marketing", "customer id"}),
        frozenset({"email", "accepts marketing", "total spent"}),
    ),
    columns={
        "email": "email",
        "first name": "first_name",
        "last name": "last_name",
        "phone": "phone",
        "accepts email marketing": "consent",
        "accepts marketing": "consent",
        "accepts sms marketing": "attribute",
        "tags": "tags",
    },
    ignored=frozenset({"customer id"}),
    evidence="Accepts Email Marketing = yes, the customer's own opt-in at checkout or in "
    "their account",
)

_META_IGNORED = frozenset(
    {
        "id", "created time", "ad id", "ad name", "adset id", "adset name",
        "campaign id", "form id", "is organic", "lead status",
    }
)  # fmt: skip

META_LEADS = Profile(
    key="meta_leads",
    label="Meta (Facebook / Instagram) Lead Ads download",
    signatures=(
        frozenset({"email", "full name", "ad id"}),
        frozenset({"email", "full name", "form id"}),
        frozenset({"email", "phone number", "is organic"}),
        frozenset({"email", "full name", "created time"}),
    ),
    columns={
        "email": "email",
        "full name": "full_name",
        "first name": "first_name",
        "last name": "last_name",
        "phone number": "phone",
        "form name": "attribute",
        "campaign name": "attribute",
        "platform": "attribute",
    },
    ignored=_META_IGNORED,
)

WOOCOMMERCE = Profile(
    key="woocommerce",
    label="WooCommerce customers report",
    signatures=(
        frozenset({"email", "username", "total spend"}),
        frozenset({"email", "date registered", "last active"}),
        frozenset({"billing email", "billing first name"}),
    ),
    columns={
        "email": "email",
        "billing email": "email",
        "name": "full_name",
        "first name": "first_name",
        "last name": "last_name",
        "billing first name": "first_name",
        "billing last name": "last_name",
        "billing phone": "phone",
        "phone": "phone",
    },
    ignored=frozenset({"username", "last active", "customer id", "id"}),
)

# Stillhere's own export (audience/exporting.py COLUMNS): a move between two installs
# keeps each contact's status, consent times, tags, source and attributes.
STILLHERE = Profile(
    key="stillhere",
    label="Stillhere contact export",
    signatures=(frozenset({"email", "status", "confirmed at", "unsubscribed at"}),),
    columns={
        "email": "email",
        "first name": "first_name",
        "last name": "last_name",
        "phone": "phone",
        "status": "status",
        "tags": "tags",
        "source": "source",
        "created at": "created_time",
        "confirmed at": "confirm_time",
        "unsubscribed at": "unsub_time",
        "attributes": "attributes_json",
    },
    tag_style="stillhere",
    evidence="status = subscribed, with the time the contact confirmed (confirmed_at); "
    "unsubscribed, bounced and complained contacts stay suppressed",
)

GENERIC = Profile(key="generic", label="Spreadsheet", signatures=())

# Stillhere first: its header (email, phone, tags…) would otherwise pass for a sheet.
PROFILES = (STILLHERE, MAILCHIMP, KLAVIYO, SHOPIFY, META_LEADS, WOOCOMMERCE)
BY_KEY = {p.key: p for p in (*PROFILES, GENERIC)}

# Any sheet: the names people give these columns, in any case.
GENERIC_COLUMNS = {
    "email": "email", "e-mail": "email", "email address": "email", "e-mail address": "email",
    "mail": "email", "emailaddress": "email", "email adresse": "email", "courriel": "email",
    "name": "full_name", "full name": "full_name", "fullname": "full_name",
    "contact name": "full_name", "customer name": "full_name",
    "first": "first_name", "first name": "first_name", "firstname": "first_name",
    "given name": "first_name", "forename": "first_name", "vorname": "first_name",
    "prenom": "first_name", "prénom": "first_name",
    "last": "last_name", "last name": "last_name", "lastname": "last_name",
    "surname": "last_name", "family name": "last_name", "nachname": "last_name",
    "nom": "last_name",
    "phone": "phone", "phone number": "phone", "mobile": "phone", "mobile phone": "phone",
    "cell": "phone", "telephone": "phone", "tel": "phone", "telefon": "phone",
    "tags": "tags", "tag": "tags", "labels": "tags", "groups": "tags",
    "consent": "consent", "subscribed": "consent", "accepts marketing": "consent",
    "marketing consent": "consent", "opt in": "consent", "optin": "consent",
    "opt-in": "consent", "newsletter": "consent",
    "consent date": "consent_time", "consent time": "consent_time",
    "subscribed at": "consent_time", "opt in date": "consent_time",
}  # fmt: skip


def detect_profile(header: list[str]) -> Profile:
    keys = {header_key(h) for h in header}
    for profile in PROFILES:
        if any(sig <= keys for sig in profile.signatures):
            return profile
    return GENERIC


def proves_consent(header: list[str], mapping: list[str], profile: Profile) -> bool:
    """Whether the file's consent columns are the platform's own: the default import mode
    subscribes a row on its evidence only then. A sheet of unknown origin, or a column the
    owner pointed at "consent" by hand, is the owner's word, not the file's: that takes
    the explicit "subscribed with consent evidence" mode."""
    if not profile.evidence:
        return False
    for name, target in zip(header, mapping, strict=False):
        if target in CONSENT_TARGETS and profile.columns.get(header_key(name)) != target:
            return False
    return any(target in CONSENT_TARGETS for target in mapping)


def default_mapping(header: list[str], profile: Profile, *, unknown: str) -> list[str]:
    """One target per column. A target other than attribute/ignore is used at most once:
    the first column that claims it wins, so 'Email' beats a later 'Billing Email'."""
    assert unknown in {"attribute", "ignore"}  # noqa: S101 (callers pass a validated choice)
    taken: set[str] = set()
    mapping = []
    for name in header:
        key = header_key(name)
        if not key:
            mapping.append("ignore")
            continue
        target = profile.columns.get(key) or GENERIC_COLUMNS.get(key)
        if target is None:
            target = "ignore" if key in profile.ignored else unknown
        if target not in {"attribute", "ignore"}:
            if target in taken:
                target = unknown
            else:
                taken.add(target)
        mapping.append(target)
    return mapping


def guess_email_column(header: list[str], sample_rows: list[list[str]]) -> int | None:
    """When no header says "email", the column whose values look like addresses."""
    best, best_hits = None, 0
    for index in range(len(header)):
        hits = sum(
            1
            for row in sample_rows
            if index < len(row) and re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", row[index].strip())
        )
        if hits > best_hits:
            best, best_hits = index, hits
    return best if best_hits >= max(1, len(sample_rows) // 2) else None
