"""File rows → chunks of clean records, in this process or in a child process.

Reading and parsing a row (the csv module, email and phone validation, the consent
signal) is pure Python, and it was half of a large import's Python time; the other half
(planning and writing chunks) runs in the import's own process, which the GIL lets use
one core at a time. A large file is therefore parsed by a child process, started with
``python -c …`` (see ``_CHILD``): it reads the file and sends each chunk of
records back over a pipe while the parent writes the previous ones, so the two halves
use two cores. A small file (tests, the usual upload) is parsed in-process, where the
child's start-up (Django's, about half a second) would cost more than it saves.

The child only reads: it opens no database connection and writes nothing. If it fails,
the parent raises what it reported (ImportFileError for a bad file, RuntimeError
otherwise), and the chunks written so far stay written; running the import again is safe.
"""

from __future__ import annotations

import contextlib
import gc
import json
import operator
import os
import pickle
import struct
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import BinaryIO

from audience.importing.reading import BadRow, Detected, ImportFileError, Reader
from audience.importing.rows import Record, RowError, RowParser

# Rows per chunk: each is planned and written in one transaction.
CHUNK = 10_000
# Files at least this large are parsed by a child process (about 25,000 rows).
CHILD_MIN_BYTES = 4 * 1024 * 1024

_RECORD_FIELDS = tuple(f.name for f in fields(Record))
_pack = operator.attrgetter(*_RECORD_FIELDS)  # a record as a plain tuple: cheap to pickle
_HEAD = struct.Struct("!Q")
# The child's program. Django is set up first: the app's modules need it, and the
# validators read settings (the phone number's default region).
_CHILD = (
    "import django; django.setup(); from audience.importing import parsing; parsing.child_main()"
)


_gc_lock = threading.Lock()
_gc_before: tuple = ()
_gc_depth = 0  # imports running in this process (a threaded worker may run several)


@contextlib.contextmanager
def few_collections(threshold: int = 100_000) -> Iterator[None]:
    """Run the cyclic garbage collector rarely while a file streams through.

    Every row allocates a few lists, dicts and strings; at the default threshold (700)
    the collector runs every few rows and its full passes walk everything alive (the
    chunks in flight, all of Django): about 40% of the import's CPU, measured with
    py-spy on bench/import.py. Rows make no reference cycles, so nothing is kept
    longer; the usual thresholds come back when the last running import ends.
    """
    global _gc_depth, _gc_before
    with _gc_lock:
        _gc_depth += 1
        if _gc_depth == 1:
            _gc_before = gc.get_threshold()
            gc.freeze()  # what is alive now (Django, the app) is not scanned again
            gc.set_threshold(threshold, *_gc_before[1:])
    try:
        yield
    finally:
        with _gc_lock:
            _gc_depth -= 1
            if _gc_depth == 0:
                gc.set_threshold(*_gc_before)
                gc.unfreeze()


@dataclass
class Chunk:
    records: list[Record]  # distinct addresses
    consumed: int  # file rows read, rejected ones included
    merged: int  # rows merged into an address seen earlier in the chunk
    rejected: list[tuple[int, str, list[str]]]  # (line, reason, cells)


@dataclass(frozen=True)
class ParserSpec:
    """What a child needs to parse the file exactly as the parent would."""

    detected: Detected
    header: list[str]
    mapping: list[str]
    tag_style: str

    def parser(self) -> RowParser:
        return RowParser(self.header, self.mapping, tag_style=self.tag_style)


def has_content(row: list[str]) -> bool:
    """False for a blank line or one of empty cells (spreadsheets pad with them).

    Two C-level calls instead of a generator over the cells: this runs once per row."""
    return any(row) and not "".join(row).isspace()


def header_and_rows(reader: Reader) -> tuple[list[str], int, Iterator]:
    """Skip blank lines before the header; return it, its line number and the rest."""
    rows = reader.rows()
    line = 0
    for row in rows:
        line += 1
        if isinstance(row, BadRow):
            continue
        header = [cell.replace("\ufeff", "").strip() for cell in row]
        if any(header):
            return header, line, rows
    raise ImportFileError("The file has no rows.")


def chunks(f: BinaryIO, spec: ParserSpec, *, chunk_rows: int = 0) -> Iterator[Chunk]:
    """Parse the file in this process, ``chunk_rows`` (CHUNK) file rows at a time."""
    chunk_rows = chunk_rows or CHUNK
    parser = spec.parser()
    with Reader(f, spec.detected) as reader:
        _, line, rows = header_and_rows(reader)
        chunk: dict[str, Record] = {}
        rejected: list = []
        consumed = merged = 0
        for row in rows:
            line += 1
            if isinstance(row, BadRow):
                consumed += 1
                rejected.append((line, row.reason, []))
            elif not has_content(row):
                continue
            else:
                consumed += 1
                try:
                    record = parser.parse(row, line)
                except RowError as exc:
                    rejected.append((line, str(exc), row))
                else:
                    if record.email in chunk:
                        chunk[record.email].merge(record)
                        merged += 1
                    else:
                        chunk[record.email] = record
            if consumed >= chunk_rows:
                yield Chunk(list(chunk.values()), consumed, merged, rejected)
                chunk, rejected, consumed, merged = {}, [], 0, 0
        if chunk or consumed:
            yield Chunk(list(chunk.values()), consumed, merged, rejected)


def file_chunks(f: BinaryIO, spec: ParserSpec, *, size: int, path: str | None) -> Iterator[Chunk]:
    """Chunks of a stored upload: parsed by a child process when the file is large and
    on local disk (``path``), in this process otherwise."""
    if size < CHILD_MIN_BYTES or not path or not os.path.isfile(path):
        yield from chunks(f, spec)
        return
    yield from child_chunks(path, spec)


def child_chunks(path: str, spec: ParserSpec) -> Iterator[Chunk]:
    """Parse the file at ``path`` in a child process; yield its chunks as they come."""
    from django.conf import settings

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(settings.BASE_DIR), *sys.path])}
    child = subprocess.Popen(  # noqa: S603 (our own interpreter and program)
        [sys.executable, "-c", _CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        child.stdin.write(json.dumps(_spec_json(path, spec)).encode())
        child.stdin.close()
        while True:
            kind, body = _receive(child.stdout)
            if kind == "chunk":
                records, consumed, merged, rejected = body
                yield Chunk([Record(*r) for r in records], consumed, merged, rejected)
            elif kind == "file_error":
                raise ImportFileError(body)
            elif kind == "crash":
                raise RuntimeError(f"the import's parser process failed:\n{body}")
            else:
                return
    finally:
        if child.poll() is None:
            child.kill()
        child.stdout.close()
        child.wait()


def _receive(stream) -> tuple[str, object]:
    head = stream.read(_HEAD.size)
    if len(head) < _HEAD.size:
        return "crash", "it ended without a word (killed, or out of memory?)"
    (length,) = _HEAD.unpack(head)
    body = stream.read(length)
    if len(body) < length:
        return "crash", "its output was cut short"
    return pickle.loads(body)  # noqa: S301 (our own child, over its own pipe)


def _send(stream, kind: str, body: object) -> None:
    data = pickle.dumps((kind, body), protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEAD.pack(len(data)))
    stream.write(data)
    stream.flush()


def _spec_json(path: str, spec: ParserSpec) -> dict:
    d = spec.detected
    return {
        "path": path,
        "detected": [d.file_format, d.encoding, d.delimiter],
        "header": spec.header,
        "mapping": spec.mapping,
        "tag_style": spec.tag_style,
        "chunk_rows": CHUNK,
    }


def child_main() -> None:
    """The child process: a spec on stdin, chunks of records on stdout."""
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write into the pipe
    try:
        raw = json.loads(sys.stdin.buffer.read())
        spec = ParserSpec(Detected(*raw["detected"]), raw["header"], raw["mapping"],
                          raw["tag_style"])  # fmt: skip
        with few_collections(), Path(raw["path"]).open("rb") as f:
            for chunk in chunks(f, spec, chunk_rows=raw["chunk_rows"]):
                body = ([_pack(r) for r in chunk.records], chunk.consumed, chunk.merged,
                        chunk.rejected)  # fmt: skip
                _send(out, "chunk", body)
    except ImportFileError as exc:
        _send(out, "file_error", str(exc))
    except BrokenPipeError:
        return  # the parent stopped reading: it has failed or been cancelled
    except BaseException:
        _send(out, "crash", traceback.format_exc())
    else:
        _send(out, "done", None)
