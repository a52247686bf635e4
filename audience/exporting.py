"""Contacts out as CSV or XLSX, streamed: a million rows in constant memory.

Rows are read in keyset-paginated batches (id > last, ORDER BY id), with the tags of
each batch in one more query, and written out batch by batch. The XLSX is written by
hand (inline strings, no shared-string table) straight into a streaming zip, because
openpyxl and tablib build the whole workbook in memory first.

In the CSV, every cell that a spreadsheet would read as a formula is prefixed with an
apostrophe (OWASP's advice against CSV injection): one starting with =, @, tab or CR,
and one starting with + or - unless what follows is a plain number, which no
spreadsheet can turn into a call. A phone number in E.164 (+4930123456) is therefore
written as it is, so the file imports into Shopify, Mailchimp or another Stillhere as
it came out. The XLSX needs no guard at all: its cells are typed inline strings, which
a spreadsheet shows as text and never evaluates.

The columns are Stillhere's own import profile (importing/profiles.py STILLHERE): a move
between two installs keeps status, consent times, tags, source and attributes. The
source column reads "import: <label>" for a contact imported with a label (the label
is kept in the attribute import_source, which the attributes column then leaves out).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import zipfile
from collections.abc import Iterable, Iterator
from xml.sax.saxutils import escape

from django.db import connection
from django.db.models import QuerySet

from audience.models import Contact

BATCH = 5000
BLOCK = 256 * 1024  # bytes per streamed piece on the COPY path
COLUMNS = (
    "email", "first_name", "last_name", "phone", "status", "tags", "source",
    "created_at", "confirmed_at", "unsubscribed_at", "attributes",
)  # fmt: skip
_FIELDS = (
    "id", "email", "first_name", "last_name", "phone", "status", "source",
    "created_at", "confirmed_at", "unsubscribed_at", "attributes",
)  # fmt: skip
# Where the import label lives (see the module docstring and Contact.source_text).
LABEL_KEY = "import_source"
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_SIGNED = ("+", "-")
# What may follow a leading + or - and still be inert: a number, an E.164 phone.
_PLAIN_NUMBER = re.compile(r"[+-][0-9]+(?:\.[0-9]+)?")
_XML_ILLEGAL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def neutralise(value: str) -> str:
    """Make a CSV cell inert in Excel, LibreOffice and Google Sheets."""
    if value and value.startswith(_FORMULA_START):
        if value.startswith(_SIGNED) and _PLAIN_NUMBER.fullmatch(value):
            return value  # "+15035550201", "-2": a value, not a formula
        return "'" + value
    return value


def restore(value: str) -> str:
    """neutralise() undone, exactly: the cell as it was before the export guarded it.
    (A cell that really began with an apostrophe was not guarded, so it keeps it.)"""
    if value.startswith("'") and neutralise(value[1:]) == value:
        return value[1:]
    return value


def _same(value: str) -> str:
    return value


def source_text(source: str, attributes: dict | None) -> str:
    """The contact's source as the export (and the import preview) writes it."""
    label = (attributes or {}).get(LABEL_KEY) if source == Contact.Source.IMPORT else None
    return f"{source}: {label}" if isinstance(label, str) and label else source


def _attributes_text(attributes: dict | None) -> str:
    shown = {k: v for k, v in (attributes or {}).items() if k != LABEL_KEY}
    return json.dumps(shown, ensure_ascii=False) if shown else ""


def _stamp(value: dt.datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else ""


def rows(queryset: QuerySet[Contact], *, guard: bool = True) -> Iterator[list[list[str]]]:
    """Batches of rows (COLUMNS order); with ``guard``, neutralised for a CSV."""
    neutralise_ = neutralise if guard else _same
    through = Contact.tags.through
    last = 0
    base = queryset.order_by().values_list(*_FIELDS)
    in_batch = BATCH if connection.vendor == "postgresql" else 900
    while True:
        batch = list(base.filter(pk__gt=last).order_by("pk")[:BATCH])
        if not batch:
            return
        last = batch[-1][0]
        ids = [row[0] for row in batch]
        tags: dict[int, list[str]] = {}
        for i in range(0, len(ids), in_batch):
            pairs = through.objects.filter(contact_id__in=ids[i : i + in_batch]).values_list(
                "contact_id", "tag__name"
            )
            for contact_id, name in pairs:
                tags.setdefault(contact_id, []).append(name)
        out = []
        for (pk, email, first, last_name, phone, status, source, created, confirmed, unsub,
             attributes) in batch:  # fmt: skip
            out.append(
                [
                    neutralise_(email),
                    neutralise_(first),
                    neutralise_(last_name),
                    neutralise_(phone),
                    status,
                    neutralise_(", ".join(sorted(tags.get(pk, ()), key=str.lower))),
                    neutralise_(source_text(source, attributes)),
                    _stamp(created),
                    _stamp(confirmed),
                    _stamp(unsub),
                    neutralise_(_attributes_text(attributes)),
                ]
            )
        yield out


# --- PostgreSQL: the database formats the rows ----------------------------------------
#
# Through the ORM a row costs ~10 µs of Python; here PostgreSQL aggregates the tags,
# formats the timestamps, neutralises formulas (the same rule as neutralise()) and, for
# CSV, writes the CSV itself via COPY … TO STDOUT, so Python only passes bytes along.

_PG_FORMULA_START = "('=', '@', chr(9), chr(13))"


def _pg_neutral(expr: str) -> str:
    return (
        f"CASE WHEN left({expr}, 1) IN {_PG_FORMULA_START} OR (left({expr}, 1) IN ('+', '-') "
        f"AND {expr} !~ '^[+-][0-9]+(\\.[0-9]+)?$') THEN chr(39) || {expr} ELSE {expr} END"
    )


def _pg_same(expr: str) -> str:
    return expr


def _pg_stamp(expr: str) -> str:
    fmt = 'YYYY-MM-DD"T"HH24:MI:SS"+00:00"'
    return f"coalesce(to_char({expr} AT TIME ZONE 'UTC', '{fmt}'), '')"


def _pg_select(queryset: QuerySet[Contact], *, guard: bool = True) -> tuple[str, tuple]:
    neutral = _pg_neutral if guard else _pg_same
    contact = Contact._meta.db_table
    through = Contact.tags.through._meta.db_table
    tag = Contact.tags.field.related_model._meta.db_table
    agg = "string_agg(t.name, ', ' ORDER BY lower(t.name), t.id)"
    filtered = bool(queryset.query.where or queryset.query.combinator or queryset.query.is_sliced)
    if filtered:
        # A selection: look each contact's tags up through the index.
        tags = (
            f"(SELECT {agg} FROM {through} ct JOIN {tag} t ON t.id = ct.tag_id "  # noqa: S608
            "WHERE ct.contact_id = c.id)"
        )
        joins = ""
    else:
        # Everyone: one join over all tag links is ~3x faster than a lookup per row. The
        # links arrive sorted, so each contact's tags are aggregated in that order: an
        # ORDER BY inside string_agg sorted each contact's few tags separately, a third
        # of the export's time (PostgreSQL keeps the input order of a plain aggregate).
        tags = "tg.tags"
        joins = (
            " LEFT JOIN (SELECT s.contact_id, string_agg(s.name, ', ') AS tags FROM "  # noqa: S608
            f"(SELECT ct.contact_id, t.name FROM {through} ct JOIN {tag} t "
            "ON t.id = ct.tag_id ORDER BY ct.contact_id, lower(t.name), t.id) s "
            "GROUP BY s.contact_id) tg ON tg.contact_id = c.id"
        )
    # source_text() and _attributes_text(), in SQL.
    label = f"c.attributes ->> '{LABEL_KEY}'"
    source = (
        f"CASE WHEN c.source = 'import' AND jsonb_typeof(c.attributes -> '{LABEL_KEY}') = "
        f"'string' AND {label} <> '' THEN 'import: ' || ({label}) ELSE c.source END"
    )
    attributes = (
        f"CASE WHEN (c.attributes - '{LABEL_KEY}') = '{{}}'::jsonb THEN '' "
        f"ELSE (c.attributes - '{LABEL_KEY}')::text END"
    )
    columns = [
        neutral("c.email"), neutral("c.first_name"), neutral("c.last_name"),
        neutral("c.phone"), "c.status", neutral(f"coalesce({tags}, '')"), neutral(source),
        _pg_stamp("c.created_at"), _pg_stamp("c.confirmed_at"), _pg_stamp("c.unsubscribed_at"),
        neutral(attributes),
    ]  # fmt: skip
    sql = f"SELECT {', '.join(columns)} FROM {contact} c{joins}"  # noqa: S608
    params: tuple = ()
    if filtered:
        inner, params = queryset.order_by().values("pk").query.sql_with_params()
        sql += f" WHERE c.id IN ({inner})"
    return sql + " ORDER BY c.id", params


def _pg_stream_csv(queryset: QuerySet[Contact]) -> Iterator[bytes]:
    sql, params = _pg_select(queryset)
    head = io.StringIO()
    csv.writer(head, lineterminator="\n").writerow(COLUMNS)  # COPY ends rows with \n
    yield from _copy_out(
        f"COPY ({sql}) TO STDOUT WITH (FORMAT csv)", params, head=("\ufeff" + head.getvalue())
    )


def _copy_out(copy_sql: str, params: tuple, *, head: str = "") -> Iterator[bytes]:
    """COPY … TO STDOUT's bytes, in pieces of about BLOCK bytes."""
    block = bytearray(head.encode("utf-8"))
    with connection.cursor() as cursor, cursor.copy(copy_sql, params or None) as copy:
        for data in copy:
            block += data
            if len(block) >= BLOCK:
                yield bytes(block)
                block.clear()
    yield bytes(block)


# XLSX rows as text, built by PostgreSQL. Cells are escaped for XML, and the four
# characters COPY's text format would backslash-escape become character references, so
# the bytes COPY sends are the sheet's XML as it is. Characters XML 1.0 cannot carry
# are dropped, as _xml_text does.
_PG_XML_ESCAPES = (
    ("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("\\", "&#92;"),
    ("' || chr(9) || '", "&#9;"), ("' || chr(10) || '", "&#10;"), ("' || chr(13) || '", "&#13;"),
)  # fmt: skip
# Cells that never need escaping: our own vocabulary and timestamps.
_PG_SAFE_COLUMNS = {"status", "created_at", "confirmed_at", "unsubscribed_at"}


def _pg_xml_escaped(expr: str) -> str:
    for char, ref in _PG_XML_ESCAPES:
        expr = f"replace({expr}, '{char}', '{ref}')"
    return f"regexp_replace({expr}, '[\\x01-\\x08\\x0b\\x0c\\x0e-\\x1f\\ufffe\\uffff]', '', 'g')"


def _pg_xml_cell(expr: str, text: str) -> str:
    return (
        f"CASE WHEN {expr} = '' THEN '<c/>' ELSE "
        f"'<c t=\"inlineStr\"><is><t xml:space=\"preserve\">' || {text} || '</t></is></c>' END"
    )


def _pg_stream_xlsx_rows(queryset: QuerySet[Contact]) -> Iterator[bytes]:
    sql, params = _pg_select(queryset, guard=False)  # typed string cells: nothing to guard
    names = [f"c{i}" for i in range(len(COLUMNS))]
    free = [n for n, column in zip(names, COLUMNS, strict=True) if column not in _PG_SAFE_COLUMNS]

    def row(escape: bool) -> str:
        cells = [_pg_xml_cell(n, _pg_xml_escaped(n) if escape and n in free else n) for n in names]
        return " || ".join(["'<row>'", *cells, "'</row>'"])

    # One pattern match a row, on its free-text cells together: almost no row needs
    # escaping, and matching each cell separately was a third of the export's time.
    special = f"({' || '.join(free)}) ~ '[&<>\\\\[:cntrl:]\\ufffe\\uffff]'"
    xml = (
        f"SELECT CASE WHEN {special} THEN {row(True)} ELSE {row(False)} END "  # noqa: S608
        f"FROM ({sql}) AS s({', '.join(names)})"
    )
    # The subquery's ORDER BY holds: the outer query only projects its rows.
    yield from _copy_out(f"COPY ({xml}) TO STDOUT", params)


def stream_csv(queryset: QuerySet[Contact]) -> Iterator[bytes]:
    if connection.vendor == "postgresql":
        yield from _pg_stream_csv(queryset)
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")  # as COPY writes it on PostgreSQL
    # A BOM so Excel reads the file as UTF-8 rather than the ANSI code page.
    buffer.write("\ufeff")
    writer.writerow(COLUMNS)
    for batch in rows(queryset):
        writer.writerows(batch)
        yield buffer.getvalue().encode("utf-8")
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue().encode("utf-8")


class _Sink(io.RawIOBase):
    """A write-only, unseekable file: zipfile then streams (data descriptors)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self._parts.append(bytes(b))
        return len(b)

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


_XLSX_STATIC = {
    "[Content_Types].xml": (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" '
        'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        '<Override PartName="/xl/workbook.xml" ContentType="application/'
        'vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
        '<Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/'
        'vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
        "</Types>"
    ),
    "_rels/.rels": (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
        'relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>'
    ),
    "xl/workbook.xml": (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
        'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
        '<sheets><sheet name="Contacts" sheetId="1" r:id="rId1"/></sheets></workbook>'
    ),
    "xl/_rels/workbook.xml.rels": (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
        'relationships/worksheet" Target="worksheets/sheet1.xml"/></Relationships>'
    ),
}


def _xml_text(value: str) -> str:
    if not value.isprintable():  # rare: control characters XML 1.0 cannot carry
        value = _XML_ILLEGAL.sub("", value)
    if "&" in value or "<" in value or ">" in value:
        value = escape(value)
    return value


def _xml_row(number: int, cells: Iterable[str]) -> str:
    inner = "".join(
        f'<c t="inlineStr"><is><t xml:space="preserve">{_xml_text(v)}</t></is></c>' if v else "<c/>"
        for v in cells
    )
    return f'<row r="{number}">{inner}</row>'


def stream_xlsx(queryset: QuerySet[Contact]) -> Iterator[bytes]:
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, body in _XLSX_STATIC.items():
            zf.writestr(name, body)
        yield sink.take()
        with zf.open("xl/worksheets/sheet1.xml", "w", force_zip64=True) as sheet:
            sheet.write(
                b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
                b'<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
                b"<sheetData>" + _xml_row(1, COLUMNS).encode()
            )
            if connection.vendor == "postgresql":
                for block in _pg_stream_xlsx_rows(queryset):
                    sheet.write(block)
                    yield sink.take()
            else:
                number = 1
                for batch in rows(queryset, guard=False):
                    parts = []
                    for row in batch:
                        number += 1
                        parts.append(_xml_row(number, row))
                    sheet.write("".join(parts).encode("utf-8"))
                    yield sink.take()
            sheet.write(b"</sheetData></worksheet>")
    yield sink.take()


FORMATS = {
    "csv": ("text/csv; charset=utf-8", stream_csv),
    "xlsx": ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", stream_xlsx),
}
