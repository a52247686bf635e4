"""One file row → one clean contact record, or the reason it was rejected.

Pure functions: no database, so they are cheap enough for a million rows and safe to
fuzz. What a row *means* for consent is decided here too (``signal``): the file's own
opt-out columns, and whether it carries evidence of consent.
"""

from __future__ import annotations

import csv
import functools
import json
import re
from dataclasses import dataclass, field

from django.core.exceptions import ValidationError

from audience.exporting import restore
from audience.services import normalize_email, normalize_phone

# Stronger signals win when a file lists one address twice.
SIGNAL_RANK = {
    None: 0, "pending": 1, "yes": 2, "no": 3, "unsubscribed": 4, "bounced": 5, "complained": 6,
}  # fmt: skip
# A Stillhere export's status column, as a signal: pending has no evidence either way
# (its owner never confirmed), the suppressions are kept as they are.
_STATUS_SIGNAL = {
    "subscribed": "yes", "pending": "pending", "unsubscribed": "unsubscribed",
    "bounced": "bounced", "complained": "complained",
}  # fmt: skip
# Contact.Source values a Stillhere export writes as they are; "import: <label>" carries
# the label the importing owner gave (see audience/exporting.py).
SOURCES = ("form", "admin", "import")

_YES = {"yes", "y", "true", "1", "subscribed", "opted in", "opted_in", "opt-in", "opt in",
        "accepted", "x", "granted", "confirmed"}  # fmt: skip
_NO = {"no", "n", "false", "0", "never_subscribed", "never subscribed", "not_subscribed",
       "not subscribed", "declined", "denied", "pending", "none"}  # fmt: skip
_UNSUB = {"unsubscribed", "opted out", "opted_out", "opt-out", "opt out", "suppressed",
          "revoked", "withdrawn"}  # fmt: skip
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")
_SIMPLE_EMAIL = re.compile(r"[a-z0-9._%+-]{1,64}@[a-z0-9-]{1,63}(?:\.[a-z0-9-]{1,63})+")


def _text(value: str, max_length: int) -> str:
    # Like services.clean_text, but a long name is shortened instead of refused: one
    # over-long cell in a 100k-row export must not lose the contact.
    if not value.isprintable():  # the fast, C-level check; almost every cell passes it
        value = _CONTROL.sub(" ", value)
    value = value.strip()
    if "  " in value:
        value = re.sub(r" {2,}", " ", value)
    return value[:max_length].strip() if len(value) > max_length else value


def email_of(raw: str) -> str:
    """normalize_email with a fast path for the plain addresses that make up almost
    every row; anything unusual goes through Django's full validator."""
    email = raw.strip().lower()
    if _SIMPLE_EMAIL.fullmatch(email) and ".." not in email and not email.startswith("."):
        domain = email.rsplit("@", 1)[1]
        # A label starting or ending with "-", found with C string searches, not a loop.
        hyphen_edge = "-" in domain and (
            domain[0] == "-" or domain[-1] == "-" or ".-" in domain or "-." in domain
        )
        if not hyphen_edge and not domain.rsplit(".", 1)[1].isdigit() and len(email) <= 254:
            return email
    return normalize_email(email)


def split_tags(value: str, style: str) -> list[str]:
    if len(value) <= 200:
        # A file's tag cells repeat ("Customers", "VIP, Newsletter"): split each once.
        return list(_split_tags_cached(value, style))
    return _split_tags(value, style)


@functools.lru_cache(maxsize=4096)
def _split_tags_cached(value: str, style: str) -> tuple[str, ...]:
    return tuple(_split_tags(value, style))


def _split_tags(value: str, style: str) -> list[str]:
    value = value.strip()
    if not value:
        return []
    if style == "quoted" and '"' in value:
        # Mailchimp writes TAGS as "Tag A","Tag B" (quotes doubled inside the CSV cell).
        parts = next(csv.reader([value]), [])
    elif style == "stillhere":
        parts = value.split(",")  # exporting.py joins with ", ": a tag may hold ";" or "|"
    else:
        parts = re.split(r"[,;|]", value)
    seen: dict[str, str] = {}
    for part in parts:
        tag = _text(part.strip().strip('"'), 100)
        if tag and tag.lower() not in seen:
            seen[tag.lower()] = tag
    return list(seen.values())


def consent_signal(value: str) -> str | None:
    v = value.strip().lower()
    if not v:
        return None
    if v in _UNSUB:
        return "unsubscribed"
    if v in _NO:
        return "no"
    if v in _YES:
        return "yes"
    return None


@dataclass(slots=True)
class Record:
    email: str
    line: int
    first_name: str = ""
    last_name: str = ""
    phone: str = ""
    tags: list[str] = field(default_factory=list)
    attributes: dict[str, object] = field(default_factory=dict)  # strings but from JSON
    # None: the file says nothing; "yes": consent; "no": declined (never mailed);
    # "pending": a Stillhere contact who never confirmed;
    # "unsubscribed" / "bounced" / "complained": the file's own suppression.
    signal: str | None = None
    evidence: dict[str, str] = field(default_factory=dict)
    phone_dropped: bool = False
    # Contact.Source ("" : an import) and the import label the file gives (a Stillhere
    # export's "import: shopify-2026"); both empty for every other platform's file.
    source: str = ""
    source_label: str = ""
    created: str = ""  # the file's own creation time (a Stillhere export's created_at)

    @property
    def has_consent(self) -> bool:
        if self.signal == "yes":
            return True
        ev = self.evidence
        return self.signal is None and (
            "optin_time" in ev or "confirm_time" in ev or "consent_time" in ev
        )

    def merge(self, other: Record) -> None:
        """The same address twice in one file (in any case): one contact, nothing lost."""
        self.first_name = self.first_name or other.first_name
        self.last_name = self.last_name or other.last_name
        self.phone = self.phone or other.phone
        self.source = self.source or other.source
        self.source_label = self.source_label or other.source_label
        self.created = self.created or other.created
        for tag in other.tags:
            if tag.lower() not in {t.lower() for t in self.tags}:
                self.tags.append(tag)
        for key, value in other.attributes.items():
            self.attributes.setdefault(key, value)
        if SIGNAL_RANK[other.signal] > SIGNAL_RANK[self.signal]:
            self.signal = other.signal
        for key, value in other.evidence.items():
            self.evidence.setdefault(key, value)


class RowError(Exception):
    pass


class RowParser:
    """Compiled once per file from the header and the (possibly edited) mapping."""

    def __init__(self, header: list[str], mapping: list[str], *, tag_style: str = "comma"):
        self.header = header
        self.mapping = mapping
        self.tag_style = tag_style
        # Stillhere's own export (the "stillhere" style): the formula guard its CSV put
        # on a cell is taken off again, so a move between installs loses nothing.
        self.restore = tag_style == "stillhere"
        self.index: dict[str, int] = {}
        self.attribute_columns: list[tuple[int, str]] = []
        self.evidence_columns: list[tuple[int, str]] = []
        self.json_columns: list[int] = []
        for i, target in enumerate(mapping):
            if target == "attribute":
                name = _text(header[i], 100) if i < len(header) else ""
                if name:
                    self.attribute_columns.append((i, name))
            elif target in {"optin_time", "optin_ip", "confirm_time", "confirm_ip",
                            "consent_time"}:  # fmt: skip
                self.evidence_columns.append((i, target))
            elif target == "attributes_json":
                self.json_columns.append(i)
            elif target != "ignore":
                self.index.setdefault(target, i)
        if "email" not in self.index:
            raise RowError("no email column")

    def _get(self, row: list[str], target: str) -> str:
        i = self.index.get(target)
        if i is None or i >= len(row):
            return ""
        return row[i] or ""

    def parse(self, row: list[str], line: int) -> Record:
        """Raise RowError with the reason when the row cannot become a contact."""
        # The hot loop of a million-row import: plain index lookups, no per-cell calls
        # for columns the file does not have.
        if self.restore:
            row = [restore(cell) if cell and cell[0] == "'" else cell for cell in row]
        get = self._get
        raw_email = get(row, "email")
        if not raw_email.strip():
            raise RowError("no email address")
        try:
            email = email_of(raw_email)
        except ValidationError:
            raise RowError("invalid email address") from None
        record = Record(email=email, line=line)
        index = self.index
        if "first_name" in index:
            record.first_name = _text(get(row, "first_name"), 100)
        if "last_name" in index:
            record.last_name = _text(get(row, "last_name"), 100)
        if "full_name" in index:
            full = _text(get(row, "full_name"), 201)
            if full and not (record.first_name or record.last_name):
                first, _, last = full.partition(" ")
                record.first_name, record.last_name = first[:100], last.strip()[:100]
        phone = get(row, "phone").strip() if "phone" in index else ""
        if phone:
            # Meta Lead Ads writes phone numbers as "p:+15551234567".
            if phone[:2].lower() == "p:":
                phone = phone[2:]
            try:
                record.phone = normalize_phone(phone)
            except ValidationError:
                record.phone_dropped = True
        tags = get(row, "tags") if "tags" in index else ""
        if tags:
            record.tags = split_tags(tags, self.tag_style)
        for i in self.json_columns:
            if i < len(row) and row[i].strip():
                _json_attributes(record, row[i])
        for i, name in self.attribute_columns:
            if i < len(row) and row[i].strip():
                record.attributes[name] = _text(row[i], 1000)
        for i, target in self.evidence_columns:
            if i < len(row) and row[i].strip():
                record.evidence[target] = _text(row[i], 100)
        if "consent" in index:
            record.signal = consent_signal(get(row, "consent"))
            if record.signal is not None:
                record.evidence["consent_value"] = _text(get(row, "consent"), 100)
        unsub = get(row, "unsub_time").strip() if "unsub_time" in index else ""
        if unsub:
            record.signal = "unsubscribed"
            record.evidence["unsub_time"] = _text(unsub, 100)
        clean = get(row, "clean_time").strip() if "clean_time" in index else ""
        if clean:
            record.signal = "bounced"
            record.evidence["clean_time"] = _text(clean, 100)
        if "status" in index:
            # Last: a Stillhere row's status is the whole truth (its unsubscribed_at
            # says when, for a bounce or a complaint too, not which).
            status = get(row, "status").strip().lower()
            if status in _STATUS_SIGNAL:
                record.signal = _STATUS_SIGNAL[status]
                record.evidence["status"] = status
        if "source" in index:
            record.source, record.source_label = source_of(get(row, "source"))
        if "created_time" in index:
            record.created = _text(get(row, "created_time"), 100)
        return record


def source_of(value: str) -> tuple[str, str]:
    """A Stillhere export's source cell → (Contact.Source, import label)."""
    value = _text(value, 200)
    kind, colon, label = value.partition(":")
    kind = kind.strip().lower()
    if kind in SOURCES and (colon == "" or kind == "import"):
        return kind, label.strip()[:100] if kind == "import" else ""
    # Anything else (a newer install's source, a hand-edited cell) is kept as the label.
    return ("import", value[:100]) if value else ("", "")


def _without_nul(value):
    """NUL is the one character PostgreSQL cannot store, in text or in JSON."""
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    return value


def _json_attributes(record: Record, cell: str) -> None:
    """A Stillhere export's attributes cell (a JSON object) → the record's attributes.
    A cell that is not one is kept whole, as the attribute "attributes": lost it is not."""
    try:
        value = json.loads(cell)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        record.attributes["attributes"] = _text(cell, 1000)
        return
    for key, item in value.items():
        name = _text(str(key), 100)
        if name and item is not None:
            # As the other install stored them: a string keeps its tabs and line breaks
            # (JSON carries them safely), numbers, lists and objects stay what they were.
            # NUL aside, which no PostgreSQL column can hold.
            record.attributes[name] = _without_nul(item[:1000] if isinstance(item, str) else item)
