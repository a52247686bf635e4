"""The fault suite's report: one table, printed at the end of `make faults`.

`make faults` runs tests/faults/ against real PostgreSQL and Redis and prints, for every
fault or input class tried, how many cases were tried, how many the product survived,
how many records it lost (must be 0) and how many it sent or stored twice.

Adding a row, for authors of a fault test (here or anywhere else the run collects):

    def test_something_survives_the_fault(transactional_db, fault_report):
        survived = 0
        try:
            ...  # inflict the fault CASES times, counting what came through intact
            survived += 1
        finally:
            fault_report(
                fault="worker SIGKILL x3 in one blast",  # the fault or input class
                cases=3,             # how many times it was inflicted / inputs tried
                survived=survived,   # cases that ended as the product promises
                lost=0,              # records (signups, recipients, rows) lost: must be 0
                duplicates=n,        # sent or stored twice (counted, not an error by itself)
            )                        # lost/duplicates None: not known (a test that failed
                                     # before it could count), shown as "?"

Call it in a `finally:` so a test that fails midway still reports what it got to. A
test that fails counts as not survived whatever it reported: its row shows
survived=0 (at most what it said) and FAILED. Several calls with the same `fault`
add up into one row. The fixture exists for tests under tests/faults/ (this conftest);
`make faults` runs that directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

_ROWS: dict[str, _Row] = {}


@dataclass
class _Row:
    fault: str
    cases: int = 0
    survived: int = 0
    lost: int | None = 0
    duplicates: int | None = 0
    tests: set[str] = field(default_factory=set)
    failed: bool = False


@pytest.fixture
def fault_report(request):
    """Record a row of the fault table (see the module's docstring)."""
    reported: list[tuple[_Row, int]] = []

    def report(
        *, fault: str, cases: int, survived: int, lost: int | None, duplicates: int | None
    ) -> None:
        counts = {"cases": cases, "survived": survived, "lost": lost, "duplicates": duplicates}
        for name, value in counts.items():
            unknown_allowed = name in ("lost", "duplicates") and value is None
            if not unknown_allowed and (not isinstance(value, int) or value < 0):
                raise ValueError(f"fault_report: {name} must be a count, not {value!r}")
        if survived > cases:
            raise ValueError(f"fault_report: survived {survived} of {cases} cases?")
        row = _ROWS.setdefault(fault, _Row(fault))
        row.cases += cases
        row.survived += survived
        row.lost = None if lost is None or row.lost is None else row.lost + lost
        row.duplicates = (
            None if duplicates is None or row.duplicates is None else row.duplicates + duplicates
        )
        row.tests.add(request.node.nodeid)
        reported.append((row, survived))

    request.node._fault_rows = reported
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        # A failed test survived nothing, whatever it had counted before failing.
        for row, survived in getattr(item, "_fault_rows", ()):
            row.survived -= survived
            row.failed = True
        item._fault_rows = []
    return report


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


def _note(row: _Row) -> str:
    if row.failed:
        return "FAILED"
    return "" if row.survived == row.cases and row.lost == 0 else "NOT SURVIVED"


def _table() -> list[str]:
    head = ("fault or input class", "cases", "survived", "lost", "duplicates", "")
    rows = [
        (r.fault, r.cases, r.survived, _count(r.lost), _count(r.duplicates), _note(r))
        for r in _ROWS.values()
    ]
    widths = [max(len(str(x[i])) for x in [head, *rows]) for i in range(len(head))]

    def line(cells) -> str:
        first, *numbers, note = cells
        out = [str(first).ljust(widths[0])]
        out += [str(n).rjust(w) for n, w in zip(numbers, widths[1:-1], strict=True)]
        return "  ".join([*out, str(note)]).rstrip()

    rule = "  ".join("-" * w for w in widths[:-1])
    return [line(head), rule, *(line(r) for r in rows)]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _ROWS:
        return
    terminalreporter.section("fault table")
    for text in _table():
        terminalreporter.write_line(text)
    lost = [r.lost for r in _ROWS.values()]
    lost_text = "?" if None in lost else str(sum(lost))
    failed = [r.fault for r in _ROWS.values() if _note(r)]
    terminalreporter.write_line("")
    terminalreporter.write_line(
        f"records lost: {lost_text} (must be 0); "
        + (f"not survived: {', '.join(failed)}" if failed else "every case survived")
    )
