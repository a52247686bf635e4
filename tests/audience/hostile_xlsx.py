"""Hostile XLSX files, built byte by byte: a real workbook from openpyxl with one part
replaced by a deflate stream that unpacks to far more than the file's size.

A zip member is written by hand (zipfile compresses whatever it is given, so it cannot
write a bomb without first holding the gigabytes): a 1 MB block deflated once with a full
flush is self-contained, so the same compressed bytes repeated N times unpack to the
block N times. 3 GB of shared strings fit in about 8 MB this way.
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
import zlib

import openpyxl

_SST = b'<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'


def workbook(rows: list[list]) -> bytes:
    wb = openpyxl.Workbook()
    for row in rows:
        wb.active.append(row)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def parts(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


class Member:
    """One part as deflated bytes, with the sizes and CRC the directory will claim."""

    def __init__(self, deflated: bytes, size: int, crc: int):
        self.deflated, self.size, self.crc = deflated, size, crc

    @classmethod
    def of(cls, data: bytes) -> Member:
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        return cls(c.compress(data) + c.flush(), len(data), zlib.crc32(data))

    @classmethod
    def repeated(cls, head: bytes, block: bytes, times: int, tail: bytes) -> Member:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        start = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
        middle = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
        end = c.compress(tail) + c.flush()
        crc = zlib.crc32(head)
        for _ in range(times):  # an honest CRC (about 0.3 s a GB): the file is valid
            crc = zlib.crc32(block, crc)
        crc = zlib.crc32(tail, crc)
        size = len(head) + len(block) * times + len(tail)
        return cls(start + middle * times + end, size, crc)


def zip_of(members: dict[str, Member]) -> bytes:
    out = io.BytesIO()
    central = []
    for name, m in members.items():
        raw = name.encode()
        offset = out.tell()
        out.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0x21,
                              m.crc, len(m.deflated), m.size, len(raw), 0))  # fmt: skip
        out.write(raw)
        out.write(m.deflated)
        central.append(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0x21,
                                   m.crc, len(m.deflated), m.size, len(raw), 0, 0, 0, 0, 0,
                                   offset) + raw)  # fmt: skip
    start = out.tell()
    for entry in central:
        out.write(entry)
    size = out.tell() - start
    out.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(central), len(central),
                          size, start, 0))  # fmt: skip
    return out.getvalue()


def huge_dimension() -> bytes:
    """A few cells in a sheet that says it is A1:XFD1048576 (16,384 columns by 1,048,576 rows)."""
    files = parts(workbook([["Email", "First Name"], ["ada@example.com", "Ada"],
                            ["grace@example.com", "Grace"]]))  # fmt: skip
    sheet = files["xl/worksheets/sheet1.xml"]
    sheet, n = re.subn(rb'<dimension ref="[^"]*"\s*/>', b'<dimension ref="A1:XFD1048576"/>',
                       sheet)  # fmt: skip
    assert n == 1
    files["xl/worksheets/sheet1.xml"] = sheet
    return zip_of({name: Member.of(data) for name, data in files.items()})


def shared_strings_bomb(unpacked: int = 3 * 1024**3) -> bytes:
    """A two-cell workbook whose shared strings unpack to ``unpacked`` bytes."""
    files = parts(workbook([["Email"], ["ada@example.com"]]))
    files["[Content_Types].xml"] = files["[Content_Types].xml"].replace(
        b"</Types>",
        b'<Override PartName="/xl/sharedStrings.xml" ContentType="application/'
        b'vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml" /></Types>',
    )
    files["xl/_rels/workbook.xml.rels"] = files["xl/_rels/workbook.xml.rels"].replace(
        b"</Relationships>",
        b'<Relationship Id="rIdStrings" Target="sharedStrings.xml" Type="http://schemas.'
        b'openxmlformats.org/officeDocument/2006/relationships/sharedStrings" />'
        b"</Relationships>",
    )
    sheet = files["xl/worksheets/sheet1.xml"]
    start, end = sheet.index(b"<sheetData"), sheet.index(b"</sheetData>") + 12
    files["xl/worksheets/sheet1.xml"] = (
        sheet[:start] + b'<sheetData><row r="1"><c r="A1" t="s"><v>0</v></c></row>'
        b'<row r="2"><c r="A2" t="s"><v>1</v></c></row></sheetData>' + sheet[end:]
    )
    members = {name: Member.of(data) for name, data in files.items()}
    block = b"<si><t>x</t></si>" * (1024 * 1024 // 17)
    members["xl/sharedStrings.xml"] = Member.repeated(
        _SST + b"<si><t>Email</t></si><si><t>ada@example.com</t></si>",
        block,
        unpacked // len(block),
        b"</sst>",
    )
    return zip_of(members)


def lying_sheet(rows: int = 30, claims: int = 512 * 1024, unpacks: int = 1024**3) -> bytes:
    """A sheet whose directory entry claims ``claims`` bytes but whose stream unpacks to
    ``unpacks``: the first rows are good, so the upload's sample passes."""
    data = [["Email", "First Name"]] + [[f"p{i}@example.com", f"P{i}"] for i in range(rows)]
    files = parts(workbook(data))
    sheet = files["xl/worksheets/sheet1.xml"]
    cut = sheet.index(b"</sheetData>")
    block = b'<row><c t="inlineStr"><is><t>filler@example.com</t></is></c></row>' * 16_000
    members = {name: Member.of(d) for name, d in files.items()}
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = c.compress(sheet[:cut]) + c.flush(zlib.Z_FULL_FLUSH)
    deflated += (c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)) * (unpacks // len(block))
    deflated += c.compress(sheet[cut:]) + c.flush()
    members["xl/worksheets/sheet1.xml"] = Member(deflated, claims, 0)
    return zip_of(members)
