"""Campaign status changes: one function each in campaigns.lifecycle, each writing one
CampaignEvent (who or the system, from, to, why); a change that loses its race writes
nothing; and no other module writes Campaign.status."""

from __future__ import annotations

import ast
import html
import re
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.db import connections
from django.urls import reverse
from django.utils import timezone

from campaigns import lifecycle
from campaigns.models import Campaign, CampaignEvent, DeliveryChunk, SenderSettings
from tests.factories import ContactFactory
from tests.polling import wait_for, while_locked

Status = Campaign.Status
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_dispatch(monkeypatch):
    """The chunk tasks and the wake-ups are what the sending tests cover; here only the
    status changes are looked at, so nothing reaches a broker."""
    from campaigns import tasks

    sent = []
    monkeypatch.setattr(tasks.send_chunk, "delay_on_commit", lambda *a: sent.append(a))
    monkeypatch.setattr(tasks.resume_due_campaigns, "apply_async", lambda **kw: None)
    return sent


def _campaign(**fields) -> Campaign:
    values = {"name": "Still here", "subject": "We're still here", "body": "Hello."}
    values.update(fields)
    return Campaign.objects.create(**values)


def _events(campaign: Campaign) -> list[tuple[str, str, str, str]]:
    """(actor, from, to, reason), oldest first."""
    return list(
        CampaignEvent.objects.filter(campaign=campaign)
        .order_by("created_at", "id")
        .values_list("actor", "from_status", "to_status", "reason")
    )


def _sending(no_dispatch, *, contacts: int = 1) -> Campaign:
    for _ in range(contacts):
        ContactFactory()
    campaign = lifecycle.campaign_start(campaign=_campaign(), actor="ada")
    CampaignEvent.objects.filter(campaign=campaign).delete()  # the start's, seen above
    return campaign


def _all_chunks_done(campaign: Campaign) -> None:
    DeliveryChunk.objects.filter(campaign=campaign).update(status=DeliveryChunk.Status.DONE)


# --- each change writes exactly one event ------------------------------------------------


def test_start_by_a_person_is_theirs(sender, no_dispatch):
    ContactFactory()
    campaign = lifecycle.campaign_start(campaign=_campaign(), actor="ada")
    assert campaign.status == Status.SENDING
    assert _events(campaign) == [("ada", Status.DRAFT, Status.SENDING, "Sent by ada.")]


def test_start_with_nobody_to_send_to_is_started_then_sent_by_the_same_person(sender, no_dispatch):
    campaign = lifecycle.campaign_start(campaign=_campaign(), actor="ada")
    assert campaign.status == Status.SENT
    assert _events(campaign) == [
        ("ada", Status.DRAFT, Status.SENDING, "Sent by ada."),
        ("ada", Status.SENDING, Status.SENT, "Nobody to send to."),
    ]


def test_schedule_reschedule_and_unschedule(sender):
    campaign = _campaign()
    when = timezone.now() + timedelta(hours=2)
    lifecycle.campaign_schedule(campaign=campaign, when=when, actor="ada")
    lifecycle.campaign_schedule(campaign=campaign, when=when + timedelta(hours=1), actor="bo")
    lifecycle.campaign_unschedule(campaign=campaign, actor="cy")
    events = _events(campaign)
    assert [e[:3] for e in events] == [
        ("ada", Status.DRAFT, Status.SCHEDULED),
        ("bo", Status.SCHEDULED, Status.SCHEDULED),
        ("cy", Status.SCHEDULED, Status.DRAFT),
    ]
    later = timezone.localtime(when + timedelta(hours=1))
    assert events[1][3] == f"Scheduled for {later:%Y-%m-%d %H:%M %Z}."
    assert events[2][3] == "Unscheduled by cy."
    campaign.refresh_from_db()
    assert (campaign.status, campaign.scheduled_at) == (Status.DRAFT, None)


def test_the_scheduler_starts_a_due_campaign_as_the_system(sender, no_dispatch):
    ContactFactory()
    campaign = _campaign()
    lifecycle.campaign_schedule(campaign=campaign, when=timezone.now(), actor="ada")
    assert lifecycle.campaigns_start_due() == [campaign.pk]
    actor, left, to, reason = _events(campaign)[-1]
    assert (actor, left, to) == ("", Status.SCHEDULED, Status.SENDING)
    assert reason.startswith("Its scheduled time came (")


def test_a_due_campaign_that_cannot_be_sent_fails_as_the_system_saying_why(sender):
    campaign = _campaign()
    lifecycle.campaign_schedule(campaign=campaign, when=timezone.now(), actor="ada")
    SenderSettings.objects.filter(pk=1).update(postal_address="")
    assert lifecycle.campaigns_start_due() == []
    actor, left, to, reason = _events(campaign)[-1]
    assert (actor, left, to) == ("", Status.SCHEDULED, Status.FAILED)
    assert "postal address" in reason
    campaign.refresh_from_db()
    assert campaign.status == Status.FAILED and campaign.status_reason == reason


def test_pause_resume_cancel_by_a_person(sender, no_dispatch):
    campaign = _sending(no_dispatch)
    lifecycle.campaign_pause(campaign=campaign, actor="ada")
    lifecycle.campaign_resume(campaign=campaign, actor="bo")
    lifecycle.campaign_cancel(campaign=campaign, actor="cy")
    assert _events(campaign) == [
        ("ada", Status.SENDING, Status.PAUSED, "Paused by ada."),
        ("bo", Status.PAUSED, Status.SENDING, "Resumed by bo."),
        ("cy", Status.SENDING, Status.CANCELLED, "Cancelled by cy."),
    ]
    campaign.refresh_from_db()
    assert campaign.status == Status.CANCELLED and campaign.finished_at is not None


def test_cancel_of_a_scheduled_or_paused_campaign_says_where_it_was(sender, no_dispatch):
    scheduled = _campaign(name="Later")
    lifecycle.campaign_schedule(
        campaign=scheduled, when=timezone.now() + timedelta(days=1), actor="ada"
    )
    lifecycle.campaign_cancel(campaign=scheduled, actor="ada")
    paused = _sending(no_dispatch)
    lifecycle.campaign_pause(campaign=paused, actor="ada")
    lifecycle.campaign_cancel(campaign=paused, actor="bo")
    assert _events(scheduled)[-1][1:3] == (Status.SCHEDULED, Status.CANCELLED)
    assert _events(paused)[-1][:3] == ("bo", Status.PAUSED, Status.CANCELLED)


def test_the_providers_pause_and_the_automatic_resume_are_the_systems(
    sender, no_dispatch, settings
):
    settings.CAMPAIGN_AUTO_RESUME_BACKOFF = 0.1
    campaign = _sending(no_dispatch)
    assert lifecycle.campaign_pause_by_provider(
        campaign_id=campaign.pk, kind=Campaign.PauseKind.PROVIDER, why="503s", said="HTTP 503"
    )
    event = CampaignEvent.objects.get(campaign=campaign)
    assert (event.actor, event.from_status, event.to_status) == ("", Status.SENDING, Status.PAUSED)
    assert event.actor_display == "system"
    assert event.reason.startswith("Paused: 503s. It resumes by itself at ")
    assert event.reason.endswith("The provider said: HTTP 503")
    assert event.detail["pause_kind"] == Campaign.PauseKind.PROVIDER
    assert event.detail["auto_resume_at"]

    Campaign.objects.filter(pk=campaign.pk).update(auto_resume_at=timezone.now())
    assert lifecycle.campaigns_resume_due() == [campaign.pk]
    actor, left, to, reason = _events(campaign)[-1]
    assert (actor, left, to) == ("", Status.PAUSED, Status.SENDING)
    assert reason.startswith("Resumed by itself after the provider's pause (automatic attempt 1 ")


def test_a_setup_pause_waits_for_a_person_and_says_so(sender, no_dispatch):
    campaign = _sending(no_dispatch)
    lifecycle.campaign_pause_by_provider(
        campaign_id=campaign.pk, kind=Campaign.PauseKind.SETUP, why="bad key", said="HTTP 401"
    )
    event = CampaignEvent.objects.get(campaign=campaign)
    assert event.detail == {"pause_kind": "setup", "auto_resume_at": None}
    assert "resumes by itself" not in event.reason


def test_a_person_pausing_a_provider_pause_is_recorded_as_stopping_the_automatic_resume(
    sender, no_dispatch
):
    campaign = _sending(no_dispatch)
    lifecycle.campaign_pause_by_provider(
        campaign_id=campaign.pk, kind=Campaign.PauseKind.PROVIDER, why="503s", said="503"
    )
    lifecycle.campaign_pause(campaign=campaign, actor="ada")
    assert [e[:3] for e in _events(campaign)] == [
        ("", Status.SENDING, Status.PAUSED),
        ("ada", Status.PAUSED, Status.PAUSED),
    ]
    # A second press changes nothing and writes nothing.
    with pytest.raises(ValidationError):
        lifecycle.campaign_pause(campaign=campaign, actor="ada")
    assert len(_events(campaign)) == 2


def test_the_workers_finish_is_the_systems_and_counts_what_went_out(sender, no_dispatch):
    campaign = _sending(no_dispatch, contacts=3)
    assert not lifecycle.campaign_finish_if_done(campaign_id=campaign.pk)  # chunks open
    assert _events(campaign) == []
    Campaign.objects.filter(pk=campaign.pk).update(sent_count=2, failed_count=1)
    _all_chunks_done(campaign)
    assert lifecycle.campaign_finish_if_done(campaign_id=campaign.pk)
    assert _events(campaign) == [
        ("", Status.SENDING, Status.SENT, "Every delivery is final: 2 sent, 1 failed, of 3.")
    ]


def test_resume_with_nothing_left_to_send_finishes_it(sender, no_dispatch):
    campaign = _sending(no_dispatch)
    lifecycle.campaign_pause(campaign=campaign, actor="ada")
    _all_chunks_done(campaign)
    lifecycle.campaign_resume(campaign=campaign, actor="bo")
    assert [e[:3] for e in _events(campaign)] == [
        ("ada", Status.SENDING, Status.PAUSED),
        ("bo", Status.PAUSED, Status.SENDING),
        ("", Status.SENDING, Status.SENT),
    ]


# --- a change that loses its race writes nothing ------------------------------------------


def test_two_finishes_write_one_event(sender, no_dispatch):
    campaign = _sending(no_dispatch)
    _all_chunks_done(campaign)
    assert lifecycle.campaign_finish_if_done(campaign_id=campaign.pk)
    assert not lifecycle.campaign_finish_if_done(campaign_id=campaign.pk)
    assert len(_events(campaign)) == 1


def test_two_finishes_at_the_same_instant_write_one_event(transactional_db, sender, no_dispatch):
    """Two workers finishing their chunks at once both find every chunk done; the guard
    on `status = sending` lets one of them finish it."""
    campaign = _sending(no_dispatch)
    _all_chunks_done(campaign)
    barrier = threading.Barrier(2)
    results, errors = [], []

    def finish():
        try:
            barrier.wait(timeout=10)
            results.append(
                while_locked(lambda: lifecycle.campaign_finish_if_done(campaign_id=campaign.pk))
            )
        except Exception as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=finish) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert sorted(results) == [False, True]
    assert [e[:3] for e in _events(campaign)] == [("", Status.SENDING, Status.SENT)]


@pytest.mark.parametrize(
    "change",
    [
        lambda c: lifecycle.campaign_pause(campaign=c, actor="ada"),
        lambda c: lifecycle.campaign_resume(campaign=c, actor="ada"),
        lambda c: lifecycle.campaign_cancel(campaign=c, actor="ada"),
        lambda c: lifecycle.campaign_start(campaign=c, actor="ada"),
        lambda c: lifecycle.campaign_schedule(
            campaign=c, when=timezone.now() + timedelta(hours=1), actor="ada"
        ),
    ],
    ids=["pause", "resume", "cancel", "start", "schedule"],
)
def test_a_change_a_sent_campaign_cannot_make_is_refused_and_writes_nothing(
    sender, no_dispatch, change
):
    campaign = _sending(no_dispatch)
    _all_chunks_done(campaign)
    lifecycle.campaign_finish_if_done(campaign_id=campaign.pk)
    before = _events(campaign)
    with pytest.raises(ValidationError):
        change(campaign)
    assert _events(campaign) == before
    assert Campaign.objects.get(pk=campaign.pk).status == Status.SENT


def test_changes_that_find_nothing_to_change_write_nothing(sender, no_dispatch):
    campaign = _sending(no_dispatch)
    lifecycle.campaign_unschedule(campaign=campaign, actor="ada")  # not scheduled
    assert not lifecycle.campaign_fail(campaign_id=campaign.pk, reason="late")  # not scheduled
    lifecycle.campaign_pause(campaign=campaign, actor="ada")
    assert not lifecycle.campaign_pause_by_provider(
        campaign_id=campaign.pk, kind=Campaign.PauseKind.PROVIDER, why="503s", said="503"
    )
    # An owner's pause does not resume by itself, however late it is.
    Campaign.objects.filter(pk=campaign.pk).update(auto_resume_at=timezone.now())
    assert lifecycle.campaigns_resume_due() == []
    assert [e[:3] for e in _events(campaign)] == [("ada", Status.SENDING, Status.PAUSED)]


def test_a_second_start_is_refused_and_writes_nothing(sender, no_dispatch):
    ContactFactory()
    campaign = _campaign()
    stale = Campaign.objects.get(pk=campaign.pk)
    lifecycle.campaign_start(campaign=campaign, actor="ada")
    with pytest.raises(ValidationError, match="this one is sending"):
        lifecycle.campaign_start(campaign=stale, actor="bo")
    assert [e[0] for e in _events(campaign)] == ["ada"]


# --- the status changes nowhere else -------------------------------------------------------


def test_saving_a_stored_campaign_never_writes_its_status(sender, no_dispatch):
    """The admin's form saves what a person edits; a copy loaded before the scheduler
    started the campaign must not put it back to scheduled when saved."""
    ContactFactory()
    campaign = _campaign()
    lifecycle.campaign_schedule(campaign=campaign, when=timezone.now(), actor="ada")
    stale = Campaign.objects.get(pk=campaign.pk)
    lifecycle.campaigns_start_due()
    stale.name = "Still here (edited)"
    stale.save()
    stored = Campaign.objects.get(pk=campaign.pk)
    assert (stored.name, stored.status, stored.total_count) == (
        "Still here (edited)",
        Status.SENDING,
        1,
    )
    with pytest.raises(ValueError, match=r"campaigns\.lifecycle"):
        stale.save(update_fields=["status"])


LIFECYCLE = ROOT / "campaigns" / "lifecycle.py"
# Writing methods of a queryset or manager that set a column from keyword arguments.
WRITES = {"update", "update_or_create", "get_or_create", "bulk_update"}


def _root(node: ast.AST) -> ast.AST:
    """The start of `a.b(…).c(…)`: follows attributes, calls and subscripts."""
    while True:
        if isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Attribute | ast.Subscript):
            node = node.value
        else:
            return node


def _campaign_receiver(node: ast.AST, assigned: dict[str, list[ast.AST]], depth=0) -> bool:
    """Whether a queryset expression is Campaign's: it starts from Campaign, or from a
    name assigned something that does, or from a name that says campaign (a parameter,
    such as an admin action's `queryset` of a CampaignAdmin, can only be judged by its
    name; every such name counts)."""
    root = _root(node)
    if not isinstance(root, ast.Name) or depth > 5:
        return False
    if root.id == "Campaign":
        return True
    if root.id[:1].isupper():
        return False  # another model (CampaignReport, CampaignEvent): not Campaign's table
    if root.id in assigned:
        return any(_campaign_receiver(v, assigned, depth + 1) for v in assigned[root.id])
    return "campaign" in root.id.lower()


def _spread_may_hold_status(value: ast.AST, scope: ast.AST, assigned) -> bool:
    """`**updates`: only a dict built in the function with literal keys, none of them
    "status", neither at its making nor by `updates["…"] = …`, is known not to."""
    if not isinstance(value, ast.Name) or not assigned.get(value.id):
        return True
    if not all(isinstance(v, ast.Dict) for v in assigned[value.id]):
        return True
    keys = [k for v in assigned[value.id] for k in v.keys]
    for node in ast.walk(scope):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id == value.id
        ):
            keys.append(node.slice)
    return any(not isinstance(k, ast.Constant) or k.value == "status" for k in keys)


def _writes_status(call: ast.Call, scope: ast.AST, assigned) -> bool:
    for keyword in call.keywords:
        if keyword.arg == "status":
            return True
        if keyword.arg is None and _spread_may_hold_status(keyword.value, scope, assigned):
            return True
    if call.func.attr == "bulk_update":
        fields = call.args[1] if len(call.args) > 1 else None
        for k in call.keywords:
            if k.arg == "fields":
                fields = k.value
        return fields is None or any(
            isinstance(c, ast.Constant) and c.value == "status" for c in ast.walk(fields)
        )
    return False


def _status_writes(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    found = []
    scopes = [tree] + [
        n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    for scope in scopes:
        assigned: dict[str, list[ast.AST]] = {}
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        assigned.setdefault(target.id, []).append(node.value)
        for node in ast.walk(scope):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in WRITES
                and _writes_status(node, scope, assigned)
                and _campaign_receiver(node.func.value, assigned)
            ):
                found.append(f"{name}:{node.lineno}")
    for node in ast.walk(tree):
        # Raw SQL on the campaign table, by name or through the model's db_table.
        text = node.value if isinstance(node, ast.Constant) else None
        if isinstance(text, str) and "update campaigns_campaign " in " ".join(
            [*text.lower().split(), ""]
        ):
            found.append(f"{name}:{node.lineno} (SQL)")
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "db_table"
            and isinstance(_root(node), ast.Name)
            and _root(node).id == "Campaign"
        ):
            found.append(f"{name}:{node.lineno} (Campaign's table)")
    return sorted(set(found))


def _app_modules() -> list[Path]:
    paths = []
    for app in ("campaigns", "audience", "config"):
        paths += [
            p for p in (ROOT / app).rglob("*.py") if "migrations" not in p.parts and p != LIFECYCLE
        ]
    return paths


def test_only_the_lifecycle_writes_a_campaigns_status():
    modules = _app_modules()
    assert len(modules) > 20  # the walk found the apps
    offenders = [hit for path in modules for hit in _status_writes(path)]
    assert offenders == [], "Campaign.status changes belong in campaigns/lifecycle.py"


def test_the_status_check_finds_the_writes_it_is_there_to_find(tmp_path):
    """The check above passes only if it can fail: each way a module could write the
    status is caught, and the other models' status writes are not mistaken for it."""
    source = """
from campaigns.models import Campaign, Delivery
def direct(pk):
    Campaign.objects.filter(pk=pk).update(status="sent")
def through_a_name(pk):
    live = Campaign.objects.select_for_update().filter(pk=pk)
    live.update(status="paused", status_reason="x")
def spread(pk, **fields):
    Campaign.objects.filter(pk=pk).update(**fields)
def admin_action(self, request, campaign_queryset):
    campaign_queryset.update(status="cancelled")
def bulk(objs):
    Campaign.objects.bulk_update(objs, ["status"])
def raw(cursor):
    cursor.execute("UPDATE campaigns_campaign SET status = 'sent'")
    table = Campaign._meta.db_table
def dict_spread(pk, done):
    updates = {"sent_count": 1}
    if done:
        updates["status"] = "sent"
    Campaign.objects.filter(pk=pk).update(**updates)
def fine(pk):
    counts = {"sent_count": 1}
    counts["failed_count"] = 2
    Campaign.objects.filter(pk=pk).update(**counts)
    Delivery.objects.filter(campaign_id=pk).update(status="sent")
    Campaign.objects.filter(pk=pk).update(sent_count=1)
    rows = Delivery.objects.filter(pk=pk)
    rows.update(status="failed")
"""
    path = tmp_path / "probe.py"
    path.write_text(source)
    hits = _status_writes(path)
    lines = sorted({int(h.split(":")[1].split()[0]) for h in hits})
    assert lines == [4, 7, 9, 11, 13, 15, 16, 21]


# --- the history on the campaign's page ------------------------------------------------


def _page(client, campaign: Campaign) -> str:
    response = client.get(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))
    assert response.status_code == 200
    return response.content.decode()


ROW = re.compile(
    r'<tr class="campaign-event"[^>]*>'
    r'\s*<td class="when"><time datetime="([^"]+)">[^<]*</time></td>'
    r'\s*<td class="who">([^<]*)</td>\s*<td class="change">([^<]*)</td>'
    r'\s*<td class="reason">([^<]*)</td>'
)


def _history(page: str) -> list[tuple[str, str, str]]:
    """(who, change, why) per row, as shown (newest first)."""
    return [
        (html.unescape(who), html.unescape(change), html.unescape(why))
        for _, who, change, why in ROW.findall(page)
    ]


def _post(client, name: str, campaign: Campaign, **data):
    url = reverse(f"admin:campaigns_campaign_{name}", args=[campaign.pk])
    response = client.post(url, data)
    assert response.status_code == 302
    return response


def test_the_campaign_page_shows_who_changed_what_and_why_newest_first(
    admin_client, sender, no_dispatch
):
    ContactFactory()
    campaign = _campaign()
    assert "campaign-events" not in _page(admin_client, campaign)  # nothing happened yet
    when = timezone.localtime(timezone.now() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    _post(admin_client, "schedule", campaign, when=when)
    _post(admin_client, "unschedule", campaign)
    _post(admin_client, "send", campaign)
    _post(admin_client, "pause", campaign)
    _post(admin_client, "resume", campaign)

    page = _page(admin_client, campaign)
    assert _history(page) == [
        ("admin", "Paused → Sending", "Resumed by admin."),
        ("admin", "Sending → Paused", "Paused by admin."),
        ("admin", "Draft → Sending", "Sent by admin."),
        ("admin", "Scheduled → Draft", "Unscheduled by admin."),
        ("admin", "Draft → Scheduled", _events(campaign)[0][3]),
    ]
    times = [t for t, *_ in ROW.findall(page)]
    assert times == sorted(times, reverse=True)


def test_the_history_shows_the_last_50_changes(admin_client, sender):
    campaign = _campaign()
    start = timezone.now() - timedelta(hours=2)
    CampaignEvent.objects.bulk_create(
        CampaignEvent(
            campaign=campaign,
            created_at=start + timedelta(minutes=n),
            actor="ada",
            from_status=Status.DRAFT,
            to_status=Status.SCHEDULED,
            reason=f"change {n}",
        )
        for n in range(60)
    )
    page = _page(admin_client, campaign)
    reasons = [why for _, _, why in _history(page)]
    assert reasons == [f"change {n}" for n in range(59, 9, -1)]
    assert "The last 50 changes." in page


def test_the_failovers_provider_switch_is_recorded_without_a_status_change_and_shown(
    admin_client, sender, no_dispatch
):
    campaign = _sending(no_dispatch)
    event = lifecycle.campaign_event_record(
        campaign_id=campaign.pk,
        actor="",
        kind=CampaignEvent.Kind.PROVIDER_SWITCH,
        from_status=Status.SENDING,
        to_status=Status.SENDING,
        reason="Mailgun kept failing; the rest goes out through Postmark.",
        detail={"from": "mailgun", "to": "postmark"},
    )
    event.refresh_from_db()
    assert (event.kind, event.detail) == ("provider_switch", {"from": "mailgun", "to": "postmark"})
    assert Campaign.objects.get(pk=campaign.pk).status == Status.SENDING
    assert _history(_page(admin_client, campaign)) == [
        (
            "system",
            "Provider switch: Sending → Sending",
            "Mailgun kept failing; the rest goes out through Postmark.",
        )
    ]


STATUS_UPDATE = re.compile(r'^\s*UPDATE\s+"campaigns_campaign"\s+SET\b.*"status"\s*=', re.S | re.I)


@pytest.fixture
def status_writers():
    """Where every UPDATE of a campaign's status that reaches the database comes from:
    the module that issued it, on every connection (the worker thread's too), so a
    test can hold the running code, not just its source, to the lifecycle."""
    import traceback

    from django.db import connection
    from django.db.backends.signals import connection_created

    seen: list[str] = []

    def watch(execute, sql, params, many, context):
        if STATUS_UPDATE.match(sql):
            app = [
                f.filename
                for f in traceback.extract_stack()
                if f"{ROOT}/campaigns/" in f.filename or f"{ROOT}/audience/" in f.filename
            ]
            seen.append(Path(app[-1]).relative_to(ROOT).as_posix() if app else "?")
        return execute(sql, params, many, context)

    def install(sender, connection, **kwargs):
        if watch not in connection.execute_wrappers:
            connection.execute_wrappers.append(watch)

    install(None, connection)
    connection_created.connect(install, weak=False)
    yield seen
    connection_created.disconnect(install)
    for alias in connections:
        wrappers = connections[alias].execute_wrappers
        if watch in wrappers:
            wrappers.remove(watch)


@pytest.mark.worker
def test_the_workers_pause_resume_and_finish_show_as_the_system(
    status_writers, celery_worker, esp, admin_client, sender, settings
):
    """A real blast through a real worker and a fake Mailgun that fails until the
    campaign has paused: the owner's press is theirs, everything after it the system's;
    and every status write the database saw on the way came from the lifecycle."""
    settings.CAMPAIGN_CHUNK_SIZE = 2
    settings.CAMPAIGN_MAX_FAILED_CHUNKS = 2
    settings.CAMPAIGN_FAILURE_WINDOW = 0.3
    settings.CAMPAIGN_AUTO_RESUME_BACKOFF = 0.5
    contacts = [ContactFactory() for _ in range(4)]
    esp.state.control({"fail_always": 503})
    campaign = _campaign()
    _post(admin_client, "send", campaign)
    assert wait_for(lambda: _status(campaign) == Status.PAUSED, timeout=30)
    esp.state.control({"fail_always": 0})  # the provider is back; nobody presses Resume
    assert wait_for(lambda: _status(campaign) == Status.SENT, timeout=30)
    assert sorted(esp.state.recipients) == sorted(c.email for c in contacts)

    rows = while_locked(lambda: _history(_page(admin_client, campaign)))
    assert rows[-1] == ("admin", "Draft → Sending", "Sent by admin.")
    assert rows[0] == (
        "system",
        "Sending → Sent",
        "Every delivery is final: 4 sent, 0 failed, of 4.",
    )
    after_start = rows[:-1]
    assert {who for who, _, _ in after_start} == {"system"}
    changes = [change for _, change, _ in reversed(after_start)]
    # Paused by the provider and resumed by itself (more than once if the provider's
    # recovery came after the first wake-up), then finished.
    assert changes[0] == "Sending → Paused"
    assert changes[-2:] == ["Paused → Sending", "Sending → Sent"]
    assert set(changes) == {"Sending → Paused", "Paused → Sending", "Sending → Sent"}
    pause = next(why for _, change, why in rows if change == "Sending → Paused")
    assert "chunks away" in pause and "503" in pause
    # Start, pause(s), resume(s), finish, the worker's among them, and any attempt that
    # lost a race: all the lifecycle's.
    assert len(status_writers) >= len(rows)
    assert set(status_writers) == {"campaigns/lifecycle.py"}


def _status(campaign: Campaign) -> str:
    return Campaign.objects.values_list("status", flat=True).get(pk=campaign.pk)
