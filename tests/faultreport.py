"""The fault suite's report: one table, printed at the end of `make faults`.

`make faults` (pytest tests --faults) runs tests/faults/ and the tests FAULT_CLASSES
names from the rest of the suite, against real PostgreSQL and Redis, and prints, for
every fault or input class tried, how many cases were tried, how many the product
survived, how many records it lost (must be 0) and how many it sent or stored twice.

Two ways to add a row:

- A test under tests/faults/ that counts what it did, with the `fault_report` fixture:

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

  Call it in a `finally:` so a test that fails midway still reports what it got to.
- A test elsewhere whose assertions already say "nothing was lost or changed that the
  owner did not ask for" (a forged webhook suppressed nobody, a hostile file was refused
  and stored nothing): name it in FAULT_CLASSES below. Each case (parametrization) is a
  case of its row; a passing case survived with 0 lost and 0 duplicates.

A test that fails counts as not survived whatever it reported: its row shows survived
at most what it said, and FAILED. Several tests with the same `fault` add up into one
row. `--faults` refuses to run if a FAULT_CLASSES entry matches no test (a renamed test
must not drop out of the table silently).
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
    fault = _fault_class(item.nodeid) if item.config.getoption("--faults") else None
    if fault is not None and report.when == "call":
        row = _ROWS.setdefault(fault, _Row(fault))
        row.cases += 1
        row.tests.add(item.nodeid)
        if report.passed:
            row.survived += 1
        else:
            row.failed = True
            row.lost = None  # a case that failed: what it lost is not known
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
        for r in sorted(_ROWS.values(), key=lambda row: row.fault)
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


# Tests outside tests/faults/ that are cases of a row: row → node id prefixes.
FAULT_CLASSES = {
    "1 forged webhook for an unused provider": [
        "tests/test_webhooks.py::test_other_providers_endpoints_are_not_mounted",
    ],
    "1 webhook without the right credentials": [
        "tests/test_webhooks.py::test_a_post_without_the_right_basic_auth_is_refused",
    ],
    "1 malformed webhook bodies": [
        "tests/test_webhooks.py::test_a_malformed_body_is_a_400_never_a_500",
        "tests/test_webhooks.py::test_a_malformed_mailgun_post_is_refused",
    ],
    "1 production with an open webhook": [
        "tests/test_webhooks.py::test_production_refuses_to_start_with_an_open_webhook",
    ],
    "2 confirm links prefetched by a scanner": [
        "tests/audience/test_views.py::test_confirm_link_asks_on_get",
    ],
    "2 old confirm links after an opt-out": [
        "tests/audience/test_views.py::test_an_old_confirm_link_cannot_undo",
        "tests/audience/test_views.py::test_a_confirm_link_works_only_for_the_request",
    ],
    "2 signups for known addresses (every writer)": [
        "tests/audience/test_consent_matrix.py::test_signup_rules_hold_in_every_writer",
        "tests/audience/test_consent_matrix.py::test_a_bounced_address_is_asked_at_most",
    ],
    "2 imports over known addresses": [
        "tests/audience/test_consent_matrix.py::test_import_rules",
    ],
    "3 replacement Redis behind the drain's cursor": [
        "tests/audience/test_intake.py::test_signups_a_replacement_redis_numbers_below_the_cursor",
        "tests/audience/test_intake.py::test_a_drain_that_reads_nothing_deletes_nothing",
    ],
    "4 one-IP junk flood vs other visitors": [
        "tests/audience/test_intake.py::test_a_flood_of_junk_from_one_ip",
        "tests/audience/test_intake.py::test_once_a_bucket_is_over_no_further_bucket_is_charged",
    ],
    "5 staff beyond their role": [
        "tests/campaigns/test_admin.py::test_preview_without_view_contact",
        "tests/campaigns/test_admin.py::test_confirmation_page_without_view_contact",
        "tests/campaigns/test_admin.py::test_test_send_as_a_contact_without_view_contact",
        "tests/campaigns/test_admin.py::test_editing_a_campaign_does_not_allow_sending_it",
        "tests/campaigns/test_blast.py::test_blast_is_refused_unless_it_names_a_user",
    ],
    "6 hostile subject, preheader and merge links": [
        "tests/campaigns/test_rendering.py::test_subject_and_preheader_are_text_in_the_html",
        "tests/campaigns/test_rendering.py::test_a_merge_field_cannot_make_an_unsafe_link",
        "tests/campaigns/test_rendering.py::test_what_the_provider_receives_is_escaped",
    ],
    "7 hostile import files": [
        "tests/audience/test_import_admin.py::test_an_xlsx_zip_bomb_upload",
        "tests/audience/test_import.py::test_a_shared_strings_zip_bomb",
        "tests/audience/test_import.py::test_shared_strings_under_the_total_but_too_big",
        "tests/audience/test_import.py::test_a_sheet_claiming_16384_columns",
        "tests/audience/test_import.py::test_a_sheet_that_unpacks_to_more_than_its_directory",
        "tests/audience/test_import.py::test_a_csv_that_is_one_huge_line",
        "tests/audience/test_import.py::test_import_contacts_command_refuses_a_zip_bomb",
    ],
    "8 odd URLs, timing, logs, health, admin writes": [
        "tests/audience/test_import_admin.py::test_a_non_numeric_import_job_id",
        "tests/audience/test_services.py::test_a_known_address_is_taken_in_its_request",
        "tests/test_logging.py::",
        "tests/test_health.py::test_healthz_tells_anyone_only_ok",
        "tests/audience/test_admin.py::test_a_contact_added_in_the_admin_is_recorded",
        "tests/audience/test_admin.py::test_an_admin_edit_is_recorded",
    ],
    "9 provider refusing every request (401/403/400)": [
        "tests/campaigns/test_sending.py::test_a_provider_refusing_the_account_or_request",
    ],
    "9 provider rejecting single recipients": [
        "tests/campaigns/test_sending.py::test_recipients_rejected_side_by_side_fail_alone",
    ],
    "9 provider 429, 5xx and slow answers": [
        "tests/campaigns/test_sending.py::test_provider_errors_are_retried_and_nobody_is_lost",
        "tests/campaigns/test_sending.py::test_provider_timeout_is_retried_in_batch_mode",
        "tests/campaigns/test_sending.py::test_retry_after_holds_every_chunk_off_the_provider",
        "tests/campaigns/test_sending.py::test_a_short_burst_of_provider_errors_does_not_pause",
    ],
    "9 provider 429 storm on 2 workers x 8 slots": [
        "tests/campaigns/test_concurrency.py::test_a_429_storm_holds_every_slot_of_every_worker",
    ],
    "9 provider outage, resumed by itself": [
        "tests/campaigns/test_sending.py::test_a_provider_pause_resumes_by_itself",
    ],
    "9 provider answer lost after delivery": [
        "tests/campaigns/test_sending.py::test_a_send_whose_answer_never_came",
        "tests/campaigns/test_sending.py::test_a_gateway_timeout_counts_as_a_possible_duplicate",
    ],
    "9 signups while the broker is down": [
        "tests/audience/test_confirmations.py::test_signups_while_the_broker_is_down_answer_fast",
    ],
}


def pytest_addoption(parser):
    parser.addoption(
        "--faults",
        action="store_true",
        help="run the fault suite: tests/faults/ and the tests FAULT_CLASSES names, with the table",
    )


def _fault_class(nodeid: str) -> str | None:
    for fault, prefixes in FAULT_CLASSES.items():
        if nodeid.startswith(tuple(prefixes)):
            return fault
    return None


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--faults"):
        return
    prefixes = [p for group in FAULT_CLASSES.values() for p in group]
    # A run narrowed to some files (one fault test) is not asked for the others' tests;
    # a prefix whose file is gone, or was collected without the test, still fails.
    collected = {i.nodeid.split("::")[0] for i in items}
    root = config.rootpath
    unmatched = [
        p
        for p in prefixes
        if not any(i.nodeid.startswith(p) for i in items)
        and (p.split("::")[0] in collected or not (root / p.split("::")[0]).exists())
    ]
    if unmatched:
        raise pytest.UsageError(f"FAULT_CLASSES names tests that do not exist: {unmatched}")
    keep = [i for i in items if i.nodeid.startswith("tests/faults/") or _fault_class(i.nodeid)]
    config.hook.pytest_deselected(items=[i for i in items if i not in keep])
    items[:] = keep
