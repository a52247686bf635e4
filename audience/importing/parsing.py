"""File rows → chunks of clean records, in this process or in a child process.

Reading and parsing a row (the csv module, email and phone validation, the consent
signal) is pure Python, and it was half of a large import's Python time; the other half
(planning and writing chunks) runs in the import's own process, which the GIL lets use
one core at a time. A large file is therefore parsed by a child process, started with
``python -m audience.parse_child``: it reads the file and sends each chunk of
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
import itertools
import json
import operator
import os
import pickle
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import BinaryIO

from audience.importing.reading import BadRow, Detected, ImportFileError, Reader
from audience.importing.rows import Record, RowError, RowParser
from audience.parse_child import HEAD, send

# Rows per chunk: each is planned and written in one transaction.
CHUNK = 10_000
# Files at least this large are parsed by a child process (about 25,000 rows).
CHILD_MIN_BYTES = 4 * 1024 * 1024

_RECORD_FIELDS = tuple(f.name for f in fields(Record))
_pack = operator.attrgetter(*_RECORD_FIELDS)  # a record as a plain tuple: cheap to pickle
# The most a message from the child may claim to be: a chunk of CHUNK rows is a few MB.
_MAX_MESSAGE = 1 << 30


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
    more: bool = False  # chunks(max_lines=...) stopped before the end of the file


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


def header_and_rows(reader: Reader, *, max_lines: int = 0) -> tuple[list[str], int, Iterator]:
    """Skip blank lines before the header; return it, its line number and the rest
    (no more than ``max_lines`` file lines in all, header and blank lines included, if
    given: a bounded read for a web request)."""
    rows = reader.rows()
    if max_lines:
        rows = itertools.islice(rows, max_lines)
    line = 0
    for row in rows:
        line += 1
        if isinstance(row, BadRow):
            continue
        header = [cell.replace("\ufeff", "").strip() for cell in row]
        if any(header):
            return header, line, rows
    if max_lines and line >= max_lines:
        raise ImportFileError(
            f"The first {max_lines:,} rows of the file are empty: this does not look like "
            "a contact list."
        )
    raise ImportFileError("The file has no rows.")


def chunks(
    f: BinaryIO, spec: ParserSpec, *, chunk_rows: int = 0, max_lines: int = 0
) -> Iterator[Chunk]:
    """Parse the file in this process, ``chunk_rows`` (CHUNK) file rows at a time; no
    more than ``max_lines`` file lines (blank ones included) if given, the last chunk
    then saying whether there were ``more``."""
    chunk_rows = chunk_rows or CHUNK
    parser = spec.parser()
    with Reader(f, spec.detected) as reader:
        _, line, rows = header_and_rows(reader)
        if max_lines:
            rows = itertools.islice(rows, max(0, max_lines - line) + 1)
        chunk: dict[str, Record] = {}
        rejected: list = []
        consumed = merged = 0
        for row in rows:
            line += 1
            if max_lines and line > max_lines:
                yield Chunk(list(chunk.values()), consumed, merged, rejected, more=True)
                return
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


def file_chunks(f: BinaryIO, spec: ParserSpec, *, size: int, path: str | None) -> Iterable[Chunk]:
    """Chunks of a stored upload: parsed by a child process when the file is large and
    on local disk (``path``), in this process otherwise."""
    if size < CHILD_MIN_BYTES or not path or not os.path.isfile(path):
        return chunks(f, spec)
    return ChildChunks(path, spec)


class ChildChunks:
    """The chunks of the file at ``path``, parsed in a child process as they are read.

    Iterate it from one thread; ``abort()`` may be called from any other, and ends the
    child at once (the iterating thread then sees the end of its output)."""

    def __init__(self, path: str, spec: ParserSpec) -> None:
        self.path = path
        self.spec = spec
        self._child: subprocess.Popen | None = None
        self._aborted = False

    def abort(self) -> None:
        self._aborted = True
        child = self._child
        if child is not None and child.poll() is None:
            child.kill()

    def __iter__(self) -> Iterator[Chunk]:
        from django.conf import settings

        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(settings.BASE_DIR), *sys.path])}
        # The settings module, as Django found it (the one setting the child uses that
        # might be overridden in this process, the phone region, travels in the spec).
        env.setdefault("DJANGO_SETTINGS_MODULE", settings.SETTINGS_MODULE or "config.settings")
        child = self._child = subprocess.Popen(
            [sys.executable, "-m", "audience.parse_child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        try:
            try:
                child.stdin.write(json.dumps(_spec_json(self.path, self.spec)).encode())
                child.stdin.close()
            except BrokenPipeError:
                pass  # it ended before reading: what it said (or not) is read below
            while not self._aborted:
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
            if not child.stdin.closed:
                child.stdin.close()
            child.stdout.close()
            child.wait()


def _receive(stream) -> tuple[str, object]:
    head = stream.read(HEAD.size)
    if len(head) < HEAD.size:
        return "crash", "it ended without a word (killed, or out of memory?)"
    (length,) = HEAD.unpack(head)
    if length > _MAX_MESSAGE:
        return "crash", "its output is not what it should be"
    body = stream.read(length)
    if len(body) < length:
        return "crash", "its output was cut short"
    return pickle.loads(body)  # noqa: S301 (our own child, over its own pipe)


def _spec_json(path: str, spec: ParserSpec) -> dict:
    from django.conf import settings

    d = spec.detected
    return {
        "path": path,
        "detected": [d.file_format, d.encoding, d.delimiter],
        "header": spec.header,
        "mapping": spec.mapping,
        "tag_style": spec.tag_style,
        "chunk_rows": CHUNK,
        # What the parent's code means by a record and a phone number; a worker started
        # before a deploy must not read records from a child running the new code.
        "record_fields": list(_RECORD_FIELDS),
        "phone_region": settings.PHONE_DEFAULT_REGION,
    }


def child_main(out) -> None:
    """The child process (see audience.parse_child): a spec on stdin, chunks on ``out``."""
    from django.conf import settings

    try:
        raw = json.loads(sys.stdin.buffer.read())
        if raw["record_fields"] != list(_RECORD_FIELDS):
            raise RuntimeError(
                "the worker runs other code than the files on disk: restart the workers"
            )
        settings.PHONE_DEFAULT_REGION = raw["phone_region"]
        spec = ParserSpec(Detected(*raw["detected"]), raw["header"], raw["mapping"],
                          raw["tag_style"])  # fmt: skip
        with few_collections(), Path(raw["path"]).open("rb") as f:
            for chunk in chunks(f, spec, chunk_rows=raw["chunk_rows"]):
                body = ([_pack(r) for r in chunk.records], chunk.consumed, chunk.merged,
                        chunk.rejected)  # fmt: skip
                send(out, "chunk", body)
    except ImportFileError as exc:
        send(out, "file_error", str(exc))
    except BrokenPipeError:
        return  # the parent stopped reading: it has failed or been cancelled
    except BaseException:
        send(out, "crash", traceback.format_exc())
    else:
        send(out, "done", None)
