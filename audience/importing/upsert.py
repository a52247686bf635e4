"""The bulk write: one chunk of clean records → contacts, tags and consent events.

Each chunk is planned in Python against one SELECT of the contacts it touches, then
written with a handful of set-based statements (PostgreSQL: COPY into a temp table,
then INSERT … SELECT … ON CONFLICT; elsewhere Django's bulk_create / bulk_update).
django-import-export's Resource (even in bulk mode, names only, no consent work) ran
at ~1,500 rows/s in bench/import.py, which measures this path in the same run, against
a raw COPY and against the bare SQL cost of this schema.

The consent rules live in ``_plan``, and they are the point of the module:

* Only an INSERT ever writes ``subscribed``: a new contact whose row carries consent
  evidence, under the default mode ("file": the detected platform's own consent columns
  prove it, profiles.proves_consent) or when the user asked for that ("consent"). An
  existing contact's status changes only towards suppression (the file's own
  unsubscribed / bounced / complained rows), never back.
* An erased address (SuppressedEmail hash) is skipped entirely.
* Every status an import sets writes a ConsentEvent (kind=import) carrying the file's
  evidence (opt-in/confirm times and IPs, consent values), in the same transaction.
* A second run of the same file finds nothing to change and writes nothing.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _json_str

from django.db import IntegrityError, OperationalError, connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from psycopg import errors as psycopg_errors

from audience import consent, services, welcome
from audience.exporting import LABEL_KEY
from audience.importing.rows import Record
from audience.models import ConsentEvent, Contact, SuppressedEmail, Tag, WelcomeEmail

Status = Contact.Status
SUPPRESSED = {str(s) for s in services.SUPPRESSED}
NEW_STATUS_CHOICES = {
    "file": "Follow the file: subscribed where its own consent columns prove it, its "
    "opt-outs kept, the rest stored without subscribing (no email is sent)",
    "none": "Store them without subscribing (no email is sent)",
    "pending": "Pending: send each new contact a double opt-in email",
    "consent": "Subscribed, for rows that carry consent evidence (others are stored only)",
}
_IN_BATCH = 900  # SQLite's historical limit on parameters per statement


@dataclass(frozen=True)
class ImportContext:
    job_id: int | None
    actor: str
    new_status: str  # a NEW_STATUS_CHOICES key
    source_label: str
    tag_names: tuple[str, ...] = ()
    file_name: str = ""
    # The file's consent columns are its platform's own (profiles.proves_consent): the
    # "file" mode subscribes on their evidence, and only then.
    file_proves_consent: bool = False
    # The signup form whose welcome email a contact this import subscribes is owed (the
    # owner's choice; None: an import welcomes nobody).
    welcome_form_id: int | None = None


@dataclass(slots=True)
class NewContact:
    record: Record
    status: str
    confirmed_at: dt.datetime | None
    unsubscribed_at: dt.datetime | None
    send_confirmation: bool
    created_at: dt.datetime | None = None  # None: now


@dataclass(slots=True)
class Change:
    contact_id: int
    record: Record
    fields: dict[str, object]
    status_before: str
    status_after: str | None  # None: status unchanged
    new_tag_ids: list[int]


@dataclass
class Plan:
    new: list[NewContact] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    outcome: dict[str, str] = field(default_factory=dict)  # email → new/updated/…
    counts: Counter = field(default_factory=Counter)


def _when(value: str | None, default: dt.datetime) -> dt.datetime:
    """A file's timestamp (Mailchimp "2023-03-01 09:16:40", Klaviyo ISO 8601), never later
    than now; anything unreadable is now."""
    if not value:
        return default
    parsed = _parse_when(value)
    if parsed is None:
        return default
    return min(parsed, default)


@functools.lru_cache(maxsize=8192)
def _parse_when(value: str) -> dt.datetime | None:
    """Parsing is pure, and exports repeat their timestamps (a campaign's sign-ups share
    a second, a migration's rows one date): each distinct text is parsed once."""
    value = value.strip()
    try:
        parsed = dt.datetime.fromisoformat(value)  # C-fast, and what the exports write
    except ValueError:
        try:
            parsed = parse_datetime(value.replace("/", "-"))
        except ValueError:
            parsed = None
    if parsed is not None and parsed.tzinfo is None:
        # Mailchimp and Klaviyo write their timestamps in UTC.
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed


def _text_array(values: list[str]) -> tuple[str, list]:
    """An SQL expression and its parameter for "= ANY(...)" over many values.

    Django's cursor binds on the client, quoting each element of a list parameter in
    Python (a few µs each, 10,000 per chunk); one newline-joined string split by
    PostgreSQL costs nothing per element. Values holding a newline (never a normalised
    address, hash or id) fall back to the list."""
    joined = "\n".join(values)
    if joined.count("\n") == len(values) - 1 and values:
        return "string_to_array(%s, E'\\n')", [joined]
    return "%s", [values]


def _batches(items: list, size: int = _IN_BATCH):
    for i in range(0, len(items), size):
        yield items[i : i + size]


class TagCache:
    """Tag name (any case) → id, created on first use; lives for one import.

    With create=False (the preview) a tag that does not exist yet gets a negative
    stand-in id, so the preview can count "updated" without storing anything.
    """

    def __init__(self, *, create: bool = True) -> None:
        self.create = create
        self._ids: dict[str, int] = {}
        self._lock = threading.Lock()  # parallel chunk writers share one cache

    def ids(self, names) -> list[int]:
        out = []
        for name in names:
            key = name.lower()
            if key not in self._ids:
                with self._lock:
                    self._fill(key, name)
            out.append(self._ids[key])
        return out

    def _fill(self, key: str, name: str) -> None:
        if key in self._ids:
            return
        if self.create:
            self._ids[key] = services.tag_get_or_create(name=name).pk
        else:
            tag = Tag.objects.filter(name__iexact=name).first()
            self._ids[key] = tag.pk if tag else -1 - len(self._ids)


def _erased(emails: list[str]) -> set[str]:
    if not SuppressedEmail.objects.exists():
        return set()  # the usual case: nobody was ever erased, nothing to hash
    by_hash = {services.email_hash(e): e for e in emails}
    table = SuppressedEmail._meta.db_table
    if connection.vendor == "postgresql":
        # One array parameter instead of thousands of placeholders: psycopg and the
        # planner both handle "= ANY(array)" far faster than a long IN list.
        array, params = _text_array(list(by_hash))
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT email_hash FROM {table} WHERE email_hash = ANY({array})",  # noqa: S608
                params,
            )
            return {by_hash[h] for (h,) in cursor.fetchall()}
    found: set[str] = set()
    for batch in _batches(list(by_hash)):
        found.update(
            SuppressedEmail.objects.filter(email_hash__in=batch).values_list(
                "email_hash", flat=True
            )
        )
    return {by_hash[h] for h in found}


_EXISTING_FIELDS = ("id", "email", "status", "first_name", "last_name", "phone", "attributes")


def _existing(emails: list[str], *, lock: bool) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    if connection.vendor == "postgresql":
        # Locked until the chunk commits: a concurrent unsubscribe waits for us, and we
        # decide on the status the contact will actually have.
        array, params = _text_array(emails)
        sql = (
            f"SELECT {', '.join(_EXISTING_FIELDS)} FROM {Contact._meta.db_table} "  # noqa: S608
            f"WHERE email = ANY({array})" + (" FOR NO KEY UPDATE" if lock else "")
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            for values in cursor.fetchall():
                row = dict(zip(_EXISTING_FIELDS, values, strict=True))
                if isinstance(row["attributes"], str):
                    row["attributes"] = json.loads(row["attributes"])
                rows[row["email"]] = row
        return rows
    for batch in _batches(emails):
        qs = Contact.objects.filter(email__in=batch)
        if lock:
            qs = qs.select_for_update()
        for row in qs.values(*_EXISTING_FIELDS):
            rows[row["email"]] = row
    return rows


def _existing_tags(contact_ids: list[int]) -> set[tuple[int, int]]:
    through = Contact.tags.through
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT contact_id, tag_id FROM {through._meta.db_table} "  # noqa: S608
                "WHERE contact_id = ANY(string_to_array(%s, ',')::bigint[])",
                [",".join(map(str, contact_ids))],
            )
            return set(cursor.fetchall())
    pairs: set[tuple[int, int]] = set()
    for batch in _batches(contact_ids):
        pairs.update(
            through.objects.filter(contact_id__in=batch).values_list("contact_id", "tag_id")
        )
    return pairs


def plan_chunk(
    records: list[Record], *, ctx: ImportContext, tags: TagCache, now: dt.datetime, lock: bool
) -> Plan:
    """Decide what each record does, reading only. ``records`` hold distinct emails."""
    plan = Plan()
    emails = [r.email for r in records]
    erased = _erased(emails)
    existing = _existing([e for e in emails if e not in erased], lock=lock)
    links = _existing_tags([row["id"] for row in existing.values()]) if existing else set()
    option_tag_ids = tags.ids(ctx.tag_names)

    for record in records:
        if record.email in erased:
            plan.outcome[record.email] = "suppressed"
            plan.counts["suppressed"] += 1
            continue
        row = existing.get(record.email)
        if row is None:
            item = _new_contact(record, ctx=ctx, now=now)
            plan.new.append(item)
            plan.outcome[record.email] = "new"
            plan.counts["new"] += 1
            # What the preview explains: how many new contacts end in each status.
            plan.counts[f"new_{item.status}"] += 1
            plan.counts["new_asked"] += item.send_confirmation
            continue
        _plan_known(
            plan,
            record,
            row,
            ctx=ctx,
            option_tag_ids=option_tag_ids,
            tags=tags,
            links=links,
            now=now,
        )
    return plan


def _incoming(record: Record, ctx: ImportContext, now: dt.datetime) -> consent.Incoming:
    """What a row of the file asks for, in consent.decide's terms."""
    subscribe = ctx.new_status == "consent" or (
        ctx.new_status == "file" and ctx.file_proves_consent
    )
    if record.signal in _SUPPRESSING:
        ask = _SUPPRESSING[record.signal]
    elif record.signal != "no" and subscribe and record.has_consent:
        ask = consent.Ask.SUBSCRIBE
    elif record.signal != "no" and ctx.new_status == "pending":
        ask = consent.Ask.CONFIRM_FIRST
    else:
        # A declined row ("no", NEVER_SUBSCRIBED) is kept but never sent a double opt-in
        # mail: asking someone who said no is the mail they said no to.
        ask = consent.Ask.STORE
    return consent.Incoming(consent.Via.IMPORT, ask, now)


_SUPPRESSING = {
    "unsubscribed": consent.Ask.UNSUBSCRIBED,
    "bounced": consent.Ask.BOUNCED,
    "complained": consent.Ask.COMPLAINED,
}


def _decide(state: consent.State | None, record, ctx, now) -> consent.Outcome:
    return consent.decide(state, _incoming(record, ctx, now), now=now, resend_window=_NO_WINDOW)


_NO_WINDOW = dt.timedelta(0)  # an import's outcome does not depend on mail windows


def _new_contact(record: Record, *, ctx: ImportContext, now: dt.datetime) -> NewContact:
    ev = record.evidence
    outcome = _decide(None, record, ctx, now)
    created = _when(record.created, now) if record.created else None
    if outcome.status in SUPPRESSED:
        stamp = ev.get("unsub_time") or ev.get("clean_time")
        # A Stillhere row's empty unsubscribed_at stays empty (a move loses nothing);
        # another platform's opt-out without a time is dated by this import.
        when = None if stamp is None and "status" in ev else _when(stamp, now)
        # When they once confirmed stays on record (a Stillhere move, Mailchimp's
        # CONFIRM_TIME): history, not consent; the status is what is obeyed.
        confirmed = _when(ev["confirm_time"], now) if "confirm_time" in ev else None
        return NewContact(record, outcome.status, confirmed, when, False, created)
    if outcome.status == Status.SUBSCRIBED:
        stamp = ev.get("confirm_time") or ev.get("optin_time") or ev.get("consent_time")
        if "status" in ev:
            # A Stillhere row's times are kept as they are: an empty confirmed_at (a
            # contact the owner added by hand) stays empty, and one who unsubscribed once
            # and confirmed again keeps both.
            when = _when(stamp, now) if stamp else None
            unsub = _when(ev["unsub_time"], now) if "unsub_time" in ev else None
        else:
            when, unsub = _when(stamp, now), None
        return NewContact(record, Status.SUBSCRIBED, when, unsub, False, created)
    return NewContact(record, outcome.status, None, None, outcome.mail, created)


def _plan_known(plan, record, row, *, ctx, option_tag_ids, tags, links, now) -> None:
    """Plan the change (if any) for a row whose address is already a contact."""
    tag_ids = option_tag_ids
    if record.tags:
        tag_ids = list(dict.fromkeys(option_tag_ids + tags.ids(record.tags)))
    change = _change(record, row, ctx=ctx, tag_ids=tag_ids, links=links, now=now)
    if change is not None:
        plan.changes.append(change)
        if change.status_after:
            plan.counts[f"moved_{change.status_after}"] += 1  # the file's opt-outs
    if row["status"] in SUPPRESSED:
        outcome = "suppressed"
    else:
        outcome = "updated" if change is not None else "unchanged"
    plan.outcome[record.email] = outcome
    plan.counts[outcome] += 1


def _change(
    record: Record,
    row: dict,
    *,
    ctx: ImportContext,
    tag_ids: list[int],
    links: set,
    now: dt.datetime,
) -> Change | None:
    fields: dict[str, object] = {}
    outcome = _decide(consent.State(status=row["status"]), record, ctx, now)
    if outcome.fill_gaps:
        # An import fills gaps; it does not overwrite what a contact told us themselves.
        for name in ("first_name", "last_name", "phone"):
            value = getattr(record, name)
            if value and not row[name]:
                fields[name] = value
    attributes = row["attributes"] or {}
    if record.attributes and any(attributes.get(k) != v for k, v in record.attributes.items()):
        fields["attributes"] = {**attributes, **record.attributes}
    status_after = None
    if outcome.status != row["status"]:
        status_after = outcome.status
        fields["status"] = status_after
        fields["unsubscribed_at"] = _when(
            record.evidence.get("unsub_time") or record.evidence.get("clean_time"), now
        )
    if outcome.close_request:
        # Its double opt-in links stop working: the file says this person left.
        fields["optin_requested_at"] = None
    new_tag_ids = [t for t in tag_ids if (row["id"], t) not in links]
    if not fields and not new_tag_ids:
        return None
    return Change(row["id"], record, fields, row["status"], status_after, new_tag_ids)


# --- writing ---------------------------------------------------------------------------


def _event_detail(record: Record, ctx: ImportContext) -> dict:
    detail: dict[str, object] = {"row": record.line}
    if ctx.job_id:
        detail["import_job"] = ctx.job_id
    if ctx.file_name:
        detail["file"] = ctx.file_name
    if ctx.source_label:
        detail["source"] = ctx.source_label
    if record.evidence:
        detail["evidence"] = record.evidence
    return detail


def _json_texts(d: dict[str, str]) -> str:
    """json.dumps of a dict of strings, character for character, at about half the cost
    (json.dumps builds an encoder per call; this is one C call per string)."""
    return "{" + ", ".join([f"{_json_str(k)}: {_json_str(v)}" for k, v in d.items()]) + "}"


class _Json:
    """The JSON that is the same for every row of an import, serialised once."""

    def __init__(self, ctx: ImportContext) -> None:
        base = {"import_job": ctx.job_id, "file": ctx.file_name, "source": ctx.source_label}
        base_json = json.dumps({k: v for k, v in base.items() if v})
        self._detail_tail = "}" if base_json == "{}" else ", " + base_json[1:]
        self._plain_attributes = json.dumps(stored_attributes(Record(email="", line=0), ctx))

    def detail(self, record: Record) -> str:
        head = f'{{"row": {record.line}'
        if record.evidence:
            head += ', "evidence": ' + _json_texts(record.evidence)
        return head + self._detail_tail

    def attributes(self, record: Record, ctx: ImportContext) -> str:
        if not record.attributes and not record.source:
            return self._plain_attributes
        attributes = stored_attributes(record, ctx)
        if all(type(v) is str for v in attributes.values()):
            return _json_texts(attributes)
        return json.dumps(attributes)  # a Stillhere export's numbers or lists


# COPY's text format: tab-separated, \N for NULL, and only these four characters need a
# backslash escape. The lines are built with one f-string per row, several times cheaper
# than the csv module, which took ~7 µs a row here quoting the JSON cells.
_COPY_SPECIAL = re.compile(r"[\\\t\n\r]")
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_escape(value: str) -> str:
    return value.translate(_COPY_ESCAPES) if _COPY_SPECIAL.search(value) else value


def _copy_stamp(value: dt.datetime | None) -> str:
    return "\\N" if value is None else _stamp_text(value)


@functools.lru_cache(maxsize=8192)
def _stamp_text(value: dt.datetime) -> str:
    # A file's timestamps repeat (see _parse_when), and str() of one costs ~4 µs.
    return str(value)


def _copy_text(cursor, target: str, lines: list[str]) -> None:
    with cursor.copy(f"COPY {target} FROM STDIN") as copy:
        copy.write("".join(lines))


def stored_attributes(record: Record, ctx: ImportContext) -> dict:
    """The attributes a new contact is stored with. The import's label is kept as
    ``import_source``, which the contact's source reads as "import: <label>"
    (exporting.source_text: the export's source column, the preview): Contact.source
    itself is a short choice. A Stillhere export's rows bring their own source and label."""
    label = record.source_label if record.source else ctx.source_label
    if record.source not in ("", Contact.Source.IMPORT):
        label = ""  # a contact who signed up on a form (or was added by hand) stays so
    if label and LABEL_KEY not in record.attributes:
        return {**record.attributes, LABEL_KEY: label}
    return record.attributes


def _source(record: Record) -> str:
    return record.source or Contact.Source.IMPORT.value


def write_plan(plan: Plan, *, ctx: ImportContext, tags: TagCache, now: dt.datetime) -> list[int]:
    """Write a plan inside the caller's transaction; return ids to send double opt-in."""
    if connection.vendor == "postgresql":
        ids = _pg_insert(plan.new, ctx=ctx, now=now)
    else:
        ids = _portable_insert(plan.new, ctx=ctx, now=now)
    option_tag_ids = tags.ids(ctx.tag_names)
    if len(ids) < len(plan.new):
        _replan_taken(plan, ids, ctx=ctx, tags=tags, option_tag_ids=option_tag_ids, now=now)
    fresh_links: list[tuple[int, int]] = []  # contacts created just now: no conflict possible
    links: list[tuple[int, int]] = []
    events: list[tuple] = []
    confirm: list[int] = []
    subscribed: list[int] = []  # now subscribed by this import: owed its welcome, if any
    for item in plan.new:
        contact_id = ids.get(item.record.email)
        if contact_id is None:
            continue  # created by someone else between our SELECT and INSERT: left alone
        tag_ids = (
            option_tag_ids + tags.ids(item.record.tags) if item.record.tags else option_tag_ids
        )
        for tag_id in dict.fromkeys(tag_ids):
            fresh_links.append((contact_id, tag_id))
        events.append((contact_id, "", str(item.status), item.record))
        if item.send_confirmation:
            confirm.append(contact_id)
        if item.status == Status.SUBSCRIBED:
            subscribed.append(contact_id)
    status_changed = _update(plan.changes, now=now)
    for change in plan.changes:
        links.extend((change.contact_id, t) for t in change.new_tag_ids)
        if change.status_after and change.contact_id in status_changed:
            events.append(
                (change.contact_id, change.status_before, str(change.status_after), change.record)
            )
            if change.status_after == Status.SUBSCRIBED:
                subscribed.append(change.contact_id)
    _link_tags(fresh_links, fresh=True)
    _link_tags(links, fresh=False)
    _events(events, ctx=ctx, now=now)
    _owe_welcomes(subscribed, ctx=ctx, now=now)
    return confirm


def _owe_welcomes(contact_ids: list[int], *, ctx: ImportContext, now: dt.datetime) -> None:
    """The contacts this chunk subscribed are owed the chosen form's welcome, as a form
    signup would owe it: one row each, none for a contact ever owed one."""
    if ctx.welcome_form_id is None or not contact_ids:
        return
    rows = [
        WelcomeEmail(contact_id=pk, signup_form_id=ctx.welcome_form_id, created_at=now)
        for pk in contact_ids
    ]
    for batch in _batches(rows):
        WelcomeEmail.objects.bulk_create(batch, ignore_conflicts=True)
    welcome.welcome_queue()


def _replan_taken(
    plan: Plan,
    ids: dict,
    *,
    ctx: ImportContext,
    tags: TagCache,
    option_tag_ids: list[int],
    now: dt.datetime,
) -> None:
    """Addresses someone else created after our SELECT (a signup, or the same address in
    a chunk another writer committed first): they are existing contacts now, so they get
    the existing-contact treatment (fill gaps, never subscribe) instead of being lost."""
    taken = [item.record for item in plan.new if item.record.email not in ids]
    plan.new = [item for item in plan.new if item.record.email in ids]
    existing = _existing([r.email for r in taken], lock=True)
    links = _existing_tags([row["id"] for row in existing.values()]) if existing else set()
    for record in taken:
        plan.counts["new"] -= 1
        row = existing.get(record.email)
        if row is None:  # created and deleted again meanwhile: leave it be
            plan.outcome[record.email] = "unchanged"
            plan.counts["unchanged"] += 1
            continue
        _plan_known(
            plan,
            record,
            row,
            ctx=ctx,
            option_tag_ids=option_tag_ids,
            tags=tags,
            links=links,
            now=now,
        )


_NEW_COLUMNS = (
    "email", "first_name", "last_name", "phone", "status", "attributes", "source",
    "created_at", "updated_at", "confirmed_at", "unsubscribed_at",
)  # fmt: skip


_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS stillhere_import_stage (id bigint, email text, "
    "first_name text, last_name text, phone text, status text, attributes jsonb, source text, "
    "created_at timestamptz, updated_at timestamptz, confirmed_at timestamptz, "
    "unsubscribed_at timestamptz) ON COMMIT DELETE ROWS"
)


_sequences: dict[str, str] = {}


def _id_sequence(cursor, table: str) -> str:
    """The table's id sequence, looked up once: as an argument of nextval(), the lookup
    would run once per id drawn (it is not constant-folded), 6x the cost of the draw."""
    if table not in _sequences:
        cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [table])
        _sequences[table] = cursor.fetchone()[0]
    return _sequences[table]


def _pg_insert(new: list[NewContact], *, ctx: ImportContext, now: dt.datetime) -> dict:
    if not new:
        return {}
    table = Contact._meta.db_table
    cols = "id, " + ", ".join(_NEW_COLUMNS)
    with connection.cursor() as cursor:
        # Ids drawn up front, so the rows can be COPYed straight into the table and the
        # tags and consent events that point at them COPYed too, with no RETURNING pass.
        cursor.execute(
            "SELECT nextval(%s::regclass) FROM generate_series(1, %s)",
            [_id_sequence(cursor, table), len(new)],
        )
        ids = [row[0] for row in cursor.fetchall()]
        js = _Json(ctx)
        tail = f"\t{Contact.Source.IMPORT.value}\t{now}\t{now}\t"
        lines = []
        for pk, item in zip(ids, new, strict=True):
            r = item.record
            email, first, last, phone = r.email, r.first_name, r.last_name, r.phone
            if _COPY_SPECIAL.search(f"{email}{first}{last}{phone}"):
                email, first, last, phone = map(_copy_escape, (email, first, last, phone))
            attributes = js.attributes(r, ctx)  # JSON: no raw control characters
            if "\\" in attributes:
                attributes = attributes.replace("\\", "\\\\")
            if r.source or item.created_at:  # a Stillhere export's row: its own source, time
                row_tail = f"\t{_source(r)}\t{_copy_stamp(item.created_at or now)}\t{now}\t"
            else:
                row_tail = tail
            lines.append(
                f"{pk}\t{email}\t{first}\t{last}\t{phone}\t{item.status!s}\t{attributes}"
                f"{row_tail}{_copy_stamp(item.confirmed_at)}\t{_copy_stamp(item.unsubscribed_at)}\n"
            )
        try:
            with transaction.atomic():
                _copy_text(cursor, f"{table} ({cols})", lines)
            return {item.record.email: pk for pk, item in zip(ids, new, strict=True)}
        except (IntegrityError, psycopg_errors.UniqueViolation):
            pass
        # Someone created one of these addresses after our SELECT (a signup racing the
        # import): stage the rows and let ON CONFLICT DO NOTHING leave theirs alone.
        cursor.execute(_STAGE)
        cursor.execute("TRUNCATE stillhere_import_stage")
        _copy_text(cursor, f"stillhere_import_stage ({cols})", lines)
        cursor.execute(
            f"INSERT INTO {table} ({cols}) "  # noqa: S608 (our own table name)
            f"SELECT {cols} FROM stillhere_import_stage "
            "ON CONFLICT (email) DO NOTHING RETURNING email, id"
        )
        return dict(cursor.fetchall())


def _portable_insert(new: list[NewContact], *, ctx: ImportContext, now: dt.datetime) -> dict:
    if not new:
        return {}
    objs = [
        Contact(
            email=item.record.email,
            first_name=item.record.first_name,
            last_name=item.record.last_name,
            phone=item.record.phone,
            status=item.status,
            attributes=stored_attributes(item.record, ctx),
            source=_source(item.record),
            created_at=item.created_at or now,
            confirmed_at=item.confirmed_at,
            unsubscribed_at=item.unsubscribed_at,
        )
        for item in new
    ]
    # SQLite takes the write lock at BEGIN (transaction_mode=IMMEDIATE), so nobody can
    # insert one of these addresses between our SELECT and this INSERT.
    Contact.objects.bulk_create(objs, batch_size=500)
    if all(o.pk for o in objs):
        return {o.email: o.pk for o in objs}
    return dict(
        Contact.objects.filter(email__in=[o.email for o in objs]).values_list("email", "id")
    )


def _update(changes: list[Change], *, now: dt.datetime) -> set[int]:
    """Apply field changes; return the ids whose status this import changed."""
    changed: set[int] = set()
    groups: dict[tuple[str, ...], list[Change]] = {}
    for change in changes:
        if change.fields:
            groups.setdefault(tuple(sorted(change.fields)), []).append(change)
    for names, group in groups.items():
        if connection.vendor == "postgresql":
            changed.update(_pg_update(names, group, now=now))
        else:
            objs = [Contact(pk=c.contact_id, updated_at=now, **c.fields) for c in group]
            Contact.objects.bulk_update(objs, [*names, "updated_at"], batch_size=200)
            if "status" in names:
                changed.update(c.contact_id for c in group)
    return changed


_PG_TYPES = {
    "first_name": "text", "last_name": "text", "phone": "text", "attributes": "jsonb",
    "status": "text", "unsubscribed_at": "timestamptz", "optin_requested_at": "timestamptz",
}  # fmt: skip


def _pg_update(names: tuple[str, ...], group: list[Change], *, now: dt.datetime) -> list[int]:
    table = Contact._meta.db_table
    arrays = [[c.contact_id for c in group]]
    for name in names:
        values = [c.fields[name] for c in group]
        if name == "attributes":
            values = [json.dumps(v) for v in values]
        arrays.append(values)
    unnest = ", ".join(
        ["%s::bigint[]"] + [f"%s::{_PG_TYPES[n].replace('jsonb', 'text')}[]" for n in names]
    )
    aliases = ", ".join(["id", *names])
    sets = ", ".join(f"{n} = v.{n}::jsonb" if n == "attributes" else f"{n} = v.{n}" for n in names)
    where = ""
    if "status" in names:
        # Status only ever moves towards suppression here; the guard keeps a contact
        # that got suppressed meanwhile from being rewritten.
        suppressed = ", ".join(f"'{s}'" for s in sorted(SUPPRESSED))
        where = f" AND c.status NOT IN ({suppressed})"
    sql = (
        f"UPDATE {table} AS c SET {sets}, updated_at = %s "  # noqa: S608 (fixed identifiers)
        f"FROM unnest({unnest}) AS v({aliases}) WHERE c.id = v.id{where} RETURNING c.id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [now, *arrays])
        return [row[0] for row in cursor.fetchall()] if "status" in names else []


def _link_tags(links: list[tuple[int, int]], *, fresh: bool) -> None:
    if not links:
        return
    through = Contact.tags.through
    if connection.vendor == "postgresql":
        table = through._meta.db_table
        with connection.cursor() as cursor:
            if fresh:
                _copy_text(
                    cursor, f"{table} (contact_id, tag_id)", [f"{c}\t{t}\n" for c, t in links]
                )
                return
            cursor.execute(
                f"INSERT INTO {table} (contact_id, tag_id) "  # noqa: S608 (our own table)
                "SELECT * FROM unnest(%s::bigint[], %s::bigint[]) "
                "ON CONFLICT (contact_id, tag_id) DO NOTHING",
                [[c for c, _ in links], [t for _, t in links]],
            )
    else:
        through.objects.bulk_create(
            [through(contact_id=c, tag_id=t) for c, t in links],
            ignore_conflicts=True,
            batch_size=400,
        )


def _events(events: list[tuple], *, ctx: ImportContext, now: dt.datetime) -> None:
    if not events:
        return
    if connection.vendor == "postgresql":
        table = ConsentEvent._meta.db_table
        cols = (
            "contact_id, created_at, kind, method, status_before, status_after, user_agent, "
            "consent_text, actor, detail"
        )
        js, kind = _Json(ctx), ConsentEvent.Kind.IMPORT.value
        head = f"\t{now}\t{kind}\timport\t"
        actor = _copy_escape(ctx.actor)
        lines = []
        for contact_id, before, after, record in events:
            detail = js.detail(record)  # JSON: no raw control characters
            if "\\" in detail:
                detail = detail.replace("\\", "\\\\")
            lines.append(
                f"{contact_id}{head}{_copy_escape(before)}\t{_copy_escape(after)}\t\t\t"
                f"{actor}\t{detail}\n"
            )
        with connection.cursor() as cursor:
            _copy_text(cursor, f"{table} ({cols})", lines)
        return
    ConsentEvent.objects.bulk_create(
        [
            ConsentEvent(
                contact_id=contact_id,
                kind=ConsentEvent.Kind.IMPORT,
                method="import",
                status_before=before,
                status_after=after,
                actor=ctx.actor,
                detail=_event_detail(record, ctx),
            )
            for contact_id, before, after, record in events
        ],
        batch_size=500,
    )


def import_chunk(
    records: list[Record], *, ctx: ImportContext, tags: TagCache, dry_run: bool = False
) -> Plan:
    """Plan and (unless dry_run) write one chunk in one transaction.

    Two writers importing chunks that share an address can deadlock on the unique
    index; PostgreSQL then aborts one of them, and that chunk is simply planned and
    written again (by then the other's rows are committed and count as existing).
    """
    if dry_run:
        return plan_chunk(records, ctx=ctx, tags=tags, now=timezone.now(), lock=False)
    for attempt in range(4):
        try:
            return _write_chunk(records, ctx=ctx, tags=tags)
        except (OperationalError, psycopg_errors.OperationalError) as exc:
            deadlock = "deadlock" in str(exc).lower() or isinstance(
                exc.__cause__ or exc, psycopg_errors.DeadlockDetected
            )
            if not deadlock or attempt == 3:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def _write_chunk(records: list[Record], *, ctx: ImportContext, tags: TagCache) -> Plan:
    now = timezone.now()
    with transaction.atomic():
        if connection.vendor == "postgresql":
            # An import is safe to run again, so a chunk need not wait for its WAL flush:
            # after a crash the database is consistent and at worst the last chunks (and
            # the job's own progress, written after them) are redone by the next run.
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
        plan = plan_chunk(records, ctx=ctx, tags=tags, now=now, lock=True)
        confirm = write_plan(plan, ctx=ctx, tags=tags, now=now)
        # New pending contacts are owed their double opt-in mail, in this transaction.
        for batch in _batches(confirm):
            services.confirmations_request(contacts=Contact.objects.filter(pk__in=batch))
    return plan
