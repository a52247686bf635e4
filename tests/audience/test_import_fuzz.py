"""Whatever bytes arrive, the parser answers with rows or an ImportFileError, never a crash."""

from __future__ import annotations

import csv
import io
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audience.importing import ImportFileError, inspect
from audience.importing.parsing import header_and_rows
from audience.importing.reading import BadRow, Reader, detect
from audience.importing.rows import RowError, RowParser

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _parse_everything(data: bytes) -> int:
    """Everything the import does to a file before the database: detect, map, parse rows."""
    f = io.BytesIO(data)
    try:
        found = inspect(f)
    except ImportFileError as exc:
        assert str(exc)  # a message for the user, never an empty one
        return 0
    parser = RowParser(found.header, found.mapping, tag_style=found.profile.tag_style)
    parsed = 0
    with Reader(f, detect(f)) as reader:
        try:
            _, line, rows = header_and_rows(reader)
            for row in rows:
                line += 1
                if isinstance(row, BadRow):
                    continue
                try:
                    parser.parse(row, line)
                    parsed += 1
                except RowError:
                    pass
        except ImportFileError:
            pass
    return parsed


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_never_raise_an_unhandled_exception(data):
    _parse_everything(data)


@FUZZ
@given(st.sampled_from([b"PK\x03\x04", b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b""]),
       st.binary(max_size=2048))  # fmt: skip
def test_random_bytes_behind_a_known_magic_never_raise(prefix, data):
    _parse_everything(prefix + data)


_cell = st.one_of(
    st.text(max_size=30),
    st.emails().map(lambda e: e.upper() if len(e) % 2 else e),
    st.sampled_from(["yes", "no", "SUBSCRIBED", "NEVER_SUBSCRIBED", "p:+14155550100",
                     '"a","b"', "=1+1", "2023-01-01 10:00:00", "", " ", "\x00", "\r\n"]),
)  # fmt: skip
_header_cell = st.one_of(
    st.sampled_from(["Email Address", "email", "E-Mail", "First Name", "Last Name", "Phone",
                     "Phone Number", "TAGS", "OPTIN_TIME", "UNSUB_TIME", "CLEAN_TIME",
                     "Accepts Email Marketing", "Email Marketing Consent", "full_name",
                     "phone_number", "ad_id", "Name", ""]),
    st.text(max_size=15),
)  # fmt: skip


@FUZZ
@given(
    header=st.lists(_header_cell, min_size=1, max_size=8),
    rows=st.lists(st.lists(_cell, max_size=10), max_size=15),
    delimiter=st.sampled_from([",", ";", "\t", "|"]),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "cp1252"]),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONE]),
)
def test_random_csv_shapes_never_raise_an_unhandled_exception(
    header, rows, delimiter, encoding, quoting
):
    text = io.StringIO()
    writer = csv.writer(text, delimiter=delimiter, quoting=quoting, escapechar="\\")
    for row in [header, *rows]:
        try:
            writer.writerow(row)
        except csv.Error:
            continue
    data = text.getvalue().encode(encoding, errors="replace")
    _parse_everything(data)


@FUZZ
@given(st.dictionaries(st.text(), st.text()))
def test_imported_attributes_and_evidence_are_stored_as_exactly_the_json_of_the_cells(cells):
    # The import writes these dicts as JSON text of its own (COPY is fed text); PostgreSQL
    # must read back what json.dumps would have written, whatever the file's cells held.
    from audience.importing.upsert import _json_texts

    assert _json_texts(cells) == json.dumps(cells)
    assert json.loads(_json_texts(cells)) == cells


_stillhere_cell = st.one_of(
    _cell,
    st.sampled_from(["subscribed", "Complained", "pending", "import: shop:2026", "form",
                     "'+15035550201", "'=1+1", "'", '{"a": 1, "b": ["x"]}', '{"a": "\\u0000"}',
                     "[1, 2]", "{", "null", "2025-13-45T99:00:00+00:00"]),
)  # fmt: skip


@FUZZ
@given(st.lists(st.lists(_stillhere_cell, min_size=0, max_size=12), max_size=10))
def test_random_cells_under_a_stillhere_export_header_never_raise(rows):
    from audience.exporting import COLUMNS

    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(COLUMNS)
    writer.writerows([["a@example.com", *row] for row in rows])
    data = text.getvalue().encode()
    try:
        assert inspect(io.BytesIO(data)).profile.key == "stillhere"
    except ImportFileError as exc:  # control characters enough to look like binary
        assert "does not look like a spreadsheet" in str(exc)
    _parse_everything(data)
