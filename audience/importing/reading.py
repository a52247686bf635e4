"""Open whatever file people actually have: CSV in any of the usual encodings and
delimiters, or XLSX, and stream its rows as lists of strings.

Nothing here touches the database, so the hypothesis test can throw random bytes at it:
every failure a user can cause comes out as ``ImportFileError`` with a message meant for
them, never as a stack trace.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import functools
import io
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

SAMPLE_BYTES = 64 * 1024
# csv's default field limit is 128 KiB; a cell bigger than this is junk, not a contact.
csv.field_size_limit(1024 * 1024)
# A CSV line is read at most this many characters at a time: a file that is one huge
# line (no newline in 256 MB) becomes rejected rows, not one string as big as the file.
MAX_LINE_CHARS = 2 * 1024 * 1024
# More columns than this and it is not a contact list. XLSX rows are cut to one more
# than this before anything loops over their cells, whatever the sheet's dimension says.
MAX_COLUMNS = 500
# Of an XLSX's unpacked size, the parts openpyxl holds in memory when it opens the file
# (shared strings, styles, the workbook itself; everything but the sheet that is
# streamed) may take this share. Real exports need a few MB of them for 100k contacts.
IN_MEMORY_SHARE = 32

_XLSX_MAGIC = b"PK\x03\x04"
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # legacy .xls (and other Office binaries)
_DELIMITERS = (",", ";", "\t")


class ImportFileError(Exception):
    """The file cannot be imported; ``str(exc)`` is the message shown to the user."""


@dataclass(frozen=True)
class Detected:
    file_format: str  # "csv" or "xlsx"
    encoding: str  # "" for xlsx
    delimiter: str  # "" for xlsx


@dataclass(frozen=True)
class BadRow:
    """A row the reader could not split into cells; it becomes a rejected row."""

    line: int
    reason: str


def detect(f: BinaryIO) -> Detected:
    """Look at the start of the file and decide how to read it."""
    f.seek(0)
    sample = f.read(SAMPLE_BYTES)
    f.seek(0)
    if not sample.strip():
        raise ImportFileError("The file is empty.")
    if sample.startswith(_XLSX_MAGIC):
        return Detected("xlsx", "", "")
    if sample.startswith(_OLE_MAGIC):
        raise ImportFileError(
            "This is an old-style Excel (.xls) file. Save it as .xlsx or CSV and upload that."
        )
    encoding = _detect_encoding(sample)
    text = _decode_sample(sample, encoding)
    _refuse_binary(text)
    return Detected("csv", encoding, _detect_delimiter(text))


def _detect_encoding(sample: bytes) -> str:
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    # UTF-16 without a BOM: plain ASCII text then has a NUL in every other byte.
    head = sample[:4096]
    if len(head) >= 4:
        odd_nuls = head[1::2].count(0) / max(1, len(head[1::2]))
        even_nuls = head[0::2].count(0) / max(1, len(head[0::2]))
        if odd_nuls > 0.4 and even_nuls < 0.05:
            return "utf-16-le"
        if even_nuls > 0.4 and odd_nuls < 0.05:
            return "utf-16-be"
    try:
        # final=False: the sample may end in the middle of a multi-byte character.
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError:
        # Excel on Windows saves "CSV" in the ANSI code page, which in the West is 1252.
        return "cp1252"
    return "utf-8"


def _decode_sample(sample: bytes, encoding: str) -> str:
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    return decoder.decode(sample, final=False)


def _refuse_binary(text: str) -> None:
    if not text:
        raise ImportFileError("The file is empty.")
    bad = sum(1 for ch in text if (ord(ch) < 32 and ch not in "\t\r\n") or ch == "\ufffd")
    if "\x00" in text or bad > max(2, len(text) // 100):
        raise ImportFileError(
            "This does not look like a spreadsheet: upload a CSV or XLSX file "
            "(for example your platform's contact or customer export)."
        )


def _detect_delimiter(text: str) -> str:
    """Count each candidate outside quotes on the header line; the most frequent wins."""
    counts = dict.fromkeys(_DELIMITERS, 0)
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in "\r\n":
            break
        elif not quoted and ch in counts:
            counts[ch] += 1
    best = max(_DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def _cell(value) -> str:
    """An XLSX cell as the text a person would have typed."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer():
        # Excel stores phone numbers typed without "+" as numbers: 4155550100.0.
        return str(int(value))
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    return str(value)


class Reader:
    """Stream a file's header and rows. Use as a context manager."""

    def __init__(self, f: BinaryIO, detected: Detected):
        self.f = f
        self.detected = detected
        self._workbook = None

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc) -> None:
        if self._workbook is not None:
            self._workbook.close()
            self._workbook = None

    def rows(self) -> Iterator[list[str] | BadRow]:
        """Every row including the header; cells are strings."""
        if self.detected.file_format == "xlsx":
            yield from self._xlsx_rows()
        else:
            yield from self._csv_rows()

    def _csv_rows(self) -> Iterator[list[str] | BadRow]:
        self.f.seek(0)
        text = io.TextIOWrapper(
            self.f, encoding=self.detected.encoding, errors="replace", newline=""
        )
        # readline with a limit, so memory stays bounded however long a line is; a
        # longer line comes in pieces, each a row of its own (rejected: no address).
        lines = iter(functools.partial(text.readline, MAX_LINE_CHARS), "")
        reader = csv.reader(lines, delimiter=self.detected.delimiter)
        try:
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    # The reader resynchronises on the next line: one bad row, not a bad file.
                    yield BadRow(reader.line_num, f"unreadable row ({exc})")
                    continue
                yield row
        finally:
            # Leave the binary file open for the caller who owns it (unless it has been
            # closed already, when an abandoned generator is collected late).
            if not self.f.closed:
                text.detach()

    def _xlsx_rows(self) -> Iterator[list[str] | BadRow]:
        import openpyxl

        self.f.seek(0)
        try:
            self._workbook = openpyxl.load_workbook(
                self.f, read_only=True, data_only=True, keep_links=False
            )
            sheet = self._workbook.worksheets[0]
            # The sheet's dimension (A1:XFD1048576 costs 1,856 bytes) is what openpyxl
            # pads every row and the rows after the last to. Cut the width to one more
            # column than any contact list has (so a too-wide header is still seen),
            # and never invent rows after the last one the file holds.
            declared = sheet.max_column
            width = declared if declared and declared <= MAX_COLUMNS else MAX_COLUMNS + 1
            clamped = width != declared
            sheet.reset_dimensions()
            used = 0
            for values in sheet.iter_rows(max_col=width, values_only=True):
                if values.count(None) == len(values):
                    yield []  # a blank or missing row: no loop over its cells
                    continue
                if clamped:
                    if not used:
                        # The first row with content is the header: it says how wide
                        # the data is; cells to the right of it have no column name.
                        used = max(i for i, v in enumerate(values) if v is not None) + 1
                    values = values[:used]
                yield [_cell(v) for v in values]
        except (zipfile.BadZipFile, KeyError, ValueError, TypeError, IndexError, OSError,
                EOFError, zlib.error) as exc:  # fmt: skip
            raise ImportFileError(
                "This Excel file is damaged or incomplete (was the upload cut short?). "
                "Open it in Excel or LibreOffice, save it again and upload that."
            ) from exc
        except MemoryError as exc:
            raise ImportFileError(
                "This Excel file needs more memory to read than this server has. "
                "Save it as CSV and upload that."
            ) from exc
        except Exception as exc:
            # openpyxl raises lxml/ElementTree parse errors of its own on a corrupt sheet.
            raise ImportFileError(
                f"This Excel file could not be read ({type(exc).__name__}). "
                "Save it again as .xlsx or CSV and upload that."
            ) from exc


_DAMAGED = (
    "This Excel file is damaged or incomplete (was the upload cut short?). "
    "Open it in Excel or LibreOffice, save it again and upload that."
)
# The parts read to find the first sheet; real ones are a few KB.
_SMALL_PART = 4 * 1024 * 1024


def _mb(n: int) -> str:
    return f"{n / 1_048_576:,.0f} MB"


def check_xlsx(f: BinaryIO, *, max_unpacked: int) -> None:
    """Refuse a damaged or hostile XLSX from its zip directory alone, before openpyxl
    (or anything else) unpacks a byte of it.

    An XLSX is a zip; a 4 MB one can unpack to gigabytes. The directory says how big
    each part is unpacked, and Python's zipfile never returns more than that (a part
    that lies ends in a CRC error, read as a damaged file), so the sizes checked here
    bound what any later reading can unpack: ``max_unpacked`` in all, and a
    ``1/IN_MEMORY_SHARE`` of it for the parts openpyxl keeps in memory (all but the
    sheet it streams row by row).
    """
    f.seek(0)
    try:
        with zipfile.ZipFile(f) as archive:
            infos = archive.infolist()
            names = {info.filename for info in infos}
            if "[Content_Types].xml" not in names:
                raise ImportFileError(
                    "This Excel file is damaged or is not a spreadsheet. "
                    "Save it again as .xlsx or CSV and upload that."
                )
            total = sum(info.file_size for info in infos)
            if total > max_unpacked:
                raise ImportFileError(
                    f"This Excel file unpacks to {_mb(total)}; the most accepted is "
                    f"{_mb(max_unpacked)} (IMPORT_MAX_UNCOMPRESSED_BYTES). Save it as CSV, "
                    "or split it, and upload that."
                )
            streamed = _first_sheet(archive)
            in_memory = sum(i.file_size for i in infos if i.filename != streamed)
            if in_memory > max_unpacked // IN_MEMORY_SHARE:
                raise ImportFileError(
                    f"This Excel file's shared strings, styles and other parts unpack to "
                    f"{_mb(in_memory)}, more than the {_mb(max_unpacked // IN_MEMORY_SHARE)} "
                    "a contact list needs (1/32 of IMPORT_MAX_UNCOMPRESSED_BYTES). "
                    "Save it as CSV and upload that."
                )
    except ImportFileError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError, zlib.error) as exc:
        raise ImportFileError(_DAMAGED) from exc
    except Exception as exc:  # the XML of the small parts: ElementTree's own errors
        raise ImportFileError(_DAMAGED) from exc
    finally:
        f.seek(0)


def _first_sheet(archive: zipfile.ZipFile) -> str:
    """The part openpyxl will stream as the first worksheet, found as openpyxl finds it,
    or "" (then nothing is exempt from the in-memory share)."""
    from openpyxl.packaging.manifest import Manifest
    from openpyxl.reader.excel import _find_workbook_part
    from openpyxl.reader.workbook import WorkbookParser
    from openpyxl.xml.functions import fromstring

    def small(name: str) -> None:
        try:
            info = archive.getinfo(name)
        except KeyError:
            return
        if info.file_size > _SMALL_PART:
            raise ImportFileError(
                f"This Excel file's {name} unpacks to {_mb(info.file_size)}: "
                "this is not a spreadsheet. Save it again as .xlsx or CSV and upload that."
            )

    small("[Content_Types].xml")
    package = Manifest.from_tree(fromstring(archive.read("[Content_Types].xml")))
    workbook = _find_workbook_part(package).PartName[1:]
    small(workbook)
    folder, _, base = workbook.rpartition("/")
    small(f"{folder}/_rels/{base}.rels")
    parser = WorkbookParser(archive, workbook, keep_links=False)
    parser.parse()
    for _, rel in parser.find_sheets():
        target = rel.target
        # Only a worksheet's own folder: a sheet "at" styles.xml or the shared strings
        # would be both streamed and held in memory.
        return target if target.startswith("xl/worksheets/") else ""
    return ""
