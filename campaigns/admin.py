from __future__ import annotations

import logging

from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, urlize
from django.utils.safestring import mark_safe

from audience import segments
from audience.models import Contact, Segment
from campaigns.forms import (
    CampaignAdminForm,
    EmergencyForm,
    ScheduleForm,
    TestSendForm,
)
from campaigns.models import Campaign, OutboxMessage, SenderSettings
from campaigns.starters import STARTERS

logger = logging.getLogger(__name__)

EDITABLE = {Campaign.Status.DRAFT, Campaign.Status.SCHEDULED}
SEND_PERMISSION = "campaigns.send_campaign"
NO_CONTACTS_NOTE = (
    "Shown as a made-up sample contact: previewing or testing as a real contact needs "
    "permission to view contacts."
)
# Merge fields the compose page lists; the sandboxed renderer defines what really exists.
MERGE_FIELD_HELP = (
    'Markdown; raw HTML allowed. Merge fields: {{ first_name|default:"friend" }}, '
    "{{ last_name }}, {{ full_name }}, {{ email }}, {{ phone }}, {{ attributes.city }}; "
    "from your sender settings: {{ shop_url }}, {{ shop_phone }}, {{ from_name }}. "
    "Filters: default, upper, lower, title, capfirst, truncatewords. The layout adds the "
    "unsubscribe link and your postal address."
)


@admin.register(OutboxMessage)
class OutboxMessageAdmin(admin.ModelAdmin):
    list_display = ["created_at", "subject", "recipients"]
    search_fields = ["to", "subject"]
    readonly_fields = ["created_at", "from_email", "to", "subject", "headers", "message"]
    fields = readonly_fields
    show_full_result_count = False

    class Media:
        css = {"all": ["campaigns/admin/outbox.css"]}  # long links wrap instead of cut off

    @admin.display(description="to")
    def recipients(self, obj: OutboxMessage) -> str:
        return obj.to.replace("\n", ", ")

    @admin.display(description="message (links are clickable)")
    def message(self, obj: OutboxMessage) -> str:
        # The text part, escaped, with its links made clickable: the quickstart's way to
        # follow a confirmation link without an email provider.
        body = urlize(obj.text_body, autoescape=True)  # escapes everything it does not link
        return format_html(
            '<pre style="white-space:pre-wrap;overflow-wrap:anywhere">{}</pre>',
            mark_safe(body),  # noqa: S308 (escaped by urlize above)
        )

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


# --- Sender settings ----------------------------------------------------------------


@admin.register(SenderSettings)
class SenderSettingsAdmin(admin.ModelAdmin):
    # A URL typed without a scheme is an https one (Django 6 makes this the default).
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    """One row: the list page goes straight to it."""

    fieldsets = [
        ("From", {"fields": ["from_name", "from_email", "reply_to"]}),
        (
            "Shown in every email",
            {"fields": ["postal_address", "shop_url", "phone", "logo_url", "accent_color"]},
        ),
        ("Sending speed", {"fields": ["rate_per_second", "rate_per_hour"]}),
    ]

    def changelist_view(self, request, extra_context=None):
        obj = SenderSettings.load()
        return redirect("admin:campaigns_sendersettings_change", obj.pk)

    def has_add_permission(self, request) -> bool:
        return False  # the one row is made on first use (SenderSettings.load)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def response_change(self, request, obj):
        # Back to where the owner came from (a refused send links here with ?next=).
        target = request.GET.get("next", "")
        if target.startswith("/admin/") and "_continue" not in request.POST:
            self.message_user(request, "Sender settings saved.", messages.SUCCESS)
            return HttpResponseRedirect(target)
        return super().response_change(request, obj)


# --- Campaigns ------------------------------------------------------------------------


def _sender_problems(sender: SenderSettings) -> list[str]:
    from campaigns.services import sender_problems

    return sender_problems(sender)


def _recipient_count(campaign: Campaign) -> int:
    from campaigns.selectors import campaign_recipients

    return campaign_recipients(campaign).count()


def can_view_contacts(request: HttpRequest) -> bool:
    """Whether the user may see contacts' data, and so preview or test as one: a message
    shows the contact's details and carries their permanent unsubscribe and
    preferences links."""
    codename = get_permission_codename("view", Contact._meta)
    return request.user.has_perm(f"{Contact._meta.app_label}.{codename}")


def can_send(request: HttpRequest) -> bool:
    """Whether the user may start, schedule or resume sending: a permission of its own,
    since change_campaign is enough to write a draft."""
    return request.user.has_perm(SEND_PERMISSION)


def _sample_contact() -> Contact:
    # Never saved: id 0 signs links that lead to nobody.
    return Contact(id=0, email="ada@example.com", first_name="Ada", last_name="Lovelace")


def _preview_contact(
    campaign: Campaign, wanted: str = "", *, real: bool = True
) -> tuple[Contact, str]:
    """The contact to preview as: the one asked for, else the first recipient, else a sample.

    Without `real` (the user may not view contacts) always the sample, whatever was
    asked for, so the page cannot tell whether an address is known."""
    from campaigns.selectors import campaign_recipients

    if not real:
        return _sample_contact(), NO_CONTACTS_NOTE
    if wanted:
        contact = Contact.objects.filter(email=wanted.strip().lower()).first()
        if contact is not None:
            return contact, ""
        note = f"There is no contact {wanted}; showing "
    else:
        note = ""
    contact = campaign_recipients(campaign).order_by("pk").first()
    if contact is not None:
        return contact, (note + "the first recipient.") if note else ""
    # Nobody to send to yet: a sample person, never saved, so the page still previews.
    return _sample_contact(), note + "a sample contact (the audience is empty)."


def _render(campaign: Campaign, contact: Contact, sender: SenderSettings):
    from campaigns.rendering import render_message

    return render_message(campaign=campaign, contact=contact, sender=sender)


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    form = CampaignAdminForm
    list_display = ["name", "status", "is_emergency", "audience", "progress", "created_at"]
    list_filter = ["status", "is_emergency"]
    search_fields = ["name", "subject"]
    filter_horizontal = ["tags"]
    actions = ["duplicate_selected"]
    change_form_template = "admin/campaigns/campaign/change_form.html"
    show_full_result_count = False
    fieldsets = [
        (None, {"fields": ["name"]}),
        ("Message", {"fields": ["subject", "preheader", "body"]}),
        ("Audience", {"fields": ["audience", "segment", "tags"]}),
        ("Delivery", {"fields": ["send_mode"], "classes": ["collapse"]}),
    ]
    status_fields = ["status", "is_emergency", "scheduled_at", "started_at", "finished_at",
                     "status_reason", "total_count", "sent_count", "failed_count",
                     "duplicate_count", "created_by"]  # fmt: skip

    @admin.display(description="progress")
    def progress(self, obj: Campaign) -> str:
        if not obj.total_count:
            return "-"
        return f"{obj.sent_count:,} / {obj.total_count:,}"

    def get_fieldsets(self, request, obj=None):
        fieldsets = list(super().get_fieldsets(request, obj))
        if obj is not None:
            fieldsets.append(("Status", {"fields": self.status_fields, "classes": ["collapse"]}))
        return fieldsets

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        if obj.status not in EDITABLE:
            # What went out is a record: a campaign that started sending is not edited.
            return [f for _, opts in self.fieldsets for f in opts["fields"]] + self.status_fields
        return self.status_fields

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change, **kwargs)
        if "body" in form.base_fields:
            form.base_fields["body"].help_text = MERGE_FIELD_HELP
        return form

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user.get_username()
        super().save_model(request, obj, form, change)

    def response_add(self, request, obj, post_url_continue=None):
        # A new campaign's next steps (preview, test, send) live on its change page.
        if "_addanother" not in request.POST and "_popup" not in request.POST:
            self.message_user(request, f"“{obj}” saved. Preview it, test it, then send.")
            return redirect("admin:campaigns_campaign_change", obj.pk)
        return super().response_add(request, obj, post_url_continue)

    @admin.action(description="Duplicate as a new draft", permissions=["add"])
    def duplicate_selected(self, request, queryset):
        actor = request.user.get_username()
        duplicate = self._services().campaign_duplicate
        copies = [duplicate(campaign=c, actor=actor) for c in queryset]
        if len(copies) == 1:
            self.message_user(request, f"“{copies[0]}” is a new draft: check it, then send.")
            return redirect("admin:campaigns_campaign_change", copies[0].pk)
        self.message_user(request, f"{len(copies)} new drafts.")
        return None

    def has_delete_permission(self, request, obj=None) -> bool:
        # Deliveries of a started campaign are the record of who got what.
        if obj is not None and obj.status not in EDITABLE:
            return False
        return super().has_delete_permission(request, obj)

    # --- URLs ---

    def get_urls(self):
        def view(func, name, route):
            return path(route, self.admin_site.admin_view(func), name=f"campaigns_campaign_{name}")

        return [
            view(self.emergency_view, "emergency", "emergency/"),
            view(self.audience_count_view, "audience_count", "audience-count/"),
            view(self.preview_view, "preview", "<int:object_id>/preview/"),
            view(self.test_send_view, "test_send", "<int:object_id>/test/"),
            view(self.schedule_view, "schedule", "<int:object_id>/schedule/"),
            view(self.confirm_view, "send", "<int:object_id>/send/"),
            view(self.pause_view, "pause", "<int:object_id>/pause/"),
            view(self.resume_view, "resume", "<int:object_id>/resume/"),
            view(self.cancel_view, "cancel", "<int:object_id>/cancel/"),
            view(self.unschedule_view, "unschedule", "<int:object_id>/unschedule/"),
            view(self.progress_view, "progress", "<int:object_id>/progress/"),
            view(self.report_csv_view, "report_csv", "<int:object_id>/report.csv"),
            *super().get_urls(),
        ]

    def _campaign(
        self, request: HttpRequest, object_id: int, *, change: bool, send: bool = False
    ) -> Campaign:
        campaign = get_object_or_404(Campaign, pk=object_id)
        allowed = (
            self.has_change_permission(request, campaign)
            if change
            else self.has_view_permission(request, campaign)
        )
        if not allowed or (send and not can_send(request)):
            raise PermissionDenied
        return campaign

    def _back(self, campaign: Campaign) -> HttpResponseRedirect:
        return redirect("admin:campaigns_campaign_change", campaign.pk)

    def _context(self, request: HttpRequest, campaign: Campaign | None, title: str) -> dict:
        return {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": campaign,
            "campaign": campaign,
            "title": title,
            "has_view_permission": True,
        }

    # --- Compose page ---

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        sender = SenderSettings.load()
        context["sender"] = sender
        context["audience_count_url"] = reverse("admin:campaigns_campaign_audience_count")
        if obj is not None:
            context["sender_problems"] = _sender_problems(sender)
            context["test_form"] = TestSendForm()
            context["schedule_form"] = ScheduleForm()
            context["editable"] = obj.status in EDITABLE
            context["may_send"] = can_send(request)
            context["may_view_contacts"] = can_view_contacts(request)
            context["live"] = obj.status in {Campaign.Status.SENDING, Campaign.Status.PAUSED}
            context["progress_url"] = reverse("admin:campaigns_campaign_progress", args=[obj.pk])
            context["status_labels"] = dict(Campaign.Status.choices)
            context.update(self._report_context(request, obj))
            if obj.status not in EDITABLE:
                # Nothing on the page can be saved (it is all read-only): no Save buttons,
                # only the admin's own "Close" back to the list.
                context.update(
                    show_save=False, show_save_and_continue=False, show_save_and_add_another=False
                )
            from campaigns.providers import campaign_provider_shown

            context["provider_shown"] = campaign_provider_shown(obj)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        # A POST to a campaign that has started (an old tab, a replayed form) saves
        # nothing: say so instead of answering "changed successfully".
        if request.method == "POST" and str(object_id).isdigit():
            campaign = Campaign.objects.filter(pk=object_id).only("status").first()
            if campaign is not None and campaign.status not in EDITABLE:
                self.message_user(
                    request,
                    f"This campaign is {campaign.get_status_display().lower()}: "
                    "it can no longer be edited. Duplicate it to send a new version.",
                    messages.WARNING,
                )
                return self._back(campaign)
        return super().change_view(request, object_id, form_url, extra_context)

    def audience_count_view(self, request: HttpRequest) -> JsonResponse:
        """Live count while composing: GET ?audience=…&segment=…&tags=1&tags=2."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        audience = request.GET.get("audience", Campaign.Audience.EVERYONE)
        segment = None
        if audience == Campaign.Audience.SEGMENT and request.GET.get("segment", "").isdigit():
            segment = Segment.objects.filter(pk=request.GET["segment"]).first()
        tag_ids = [int(t) for t in request.GET.getlist("tags") if t.isdigit()]
        queryset = segments.audience_contacts(audience=audience, segment=segment, tag_ids=tag_ids)
        return JsonResponse({"count": queryset.count()})

    # --- Preview and test ---

    def preview_view(self, request: HttpRequest, object_id: int) -> TemplateResponse:
        campaign = self._campaign(request, object_id, change=False)
        sender = SenderSettings.load()
        real = can_view_contacts(request)
        contact, note = _preview_contact(campaign, request.GET.get("contact", ""), real=real)
        context = self._context(request, campaign, f"Preview: {campaign}")
        try:
            context["message"] = _render(campaign, contact, sender)
        except ValidationError as exc:
            context["render_errors"] = exc.messages
        context.update(contact=contact, note=note, sender=sender, may_view_contacts=real)
        return TemplateResponse(request, "admin/campaigns/campaign/preview.html", context)

    def test_send_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        from campaigns.services import campaign_send_test

        campaign = self._campaign(request, object_id, change=True)
        if request.method != "POST":
            return self._back(campaign)
        real = can_view_contacts(request)
        form = TestSendForm(request.POST, real_contacts=real)
        if not form.is_valid():
            for errors in form.errors.values():
                for error in errors:
                    self.message_user(request, f"Test not sent: {error}", messages.ERROR)
            return self._back(campaign)
        # Without the right to view contacts every test is written for the sample: the
        # typed "as contact" is not even looked up, and an address that happens to be a
        # contact's does not get that contact's links.
        as_contact = form.cleaned_data["as_contact"] if real else _sample_contact()
        try:
            sent = campaign_send_test(
                campaign=campaign, emails=form.cleaned_data["emails"], as_contact=as_contact
            )
        except ValidationError as exc:
            self.message_user(request, "Test not sent: " + " ".join(exc.messages), messages.ERROR)
        else:
            to = ", ".join(form.cleaned_data["emails"])
            note = "" if real else f" {NO_CONTACTS_NOTE}"
            self.message_user(
                request, f"Sent {sent} test message(s) to {to}.{note}", messages.SUCCESS
            )
        return self._back(campaign)

    # --- Schedule, send, pause, resume, cancel ---

    def schedule_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        from campaigns.lifecycle import campaign_schedule

        campaign = self._campaign(request, object_id, change=False, send=True)
        if request.method != "POST":
            return self._back(campaign)
        form = ScheduleForm(request.POST)
        if not form.is_valid():
            for error in form.errors.get("when", []):
                self.message_user(request, f"Not scheduled: {error}", messages.ERROR)
            return self._back(campaign)
        actor = request.user.get_username()
        try:
            campaign_schedule(campaign=campaign, when=form.cleaned_data["when"], actor=actor)
        except ValidationError as exc:
            self.message_user(request, "Not scheduled: " + " ".join(exc.messages), messages.ERROR)
        else:
            when = form.cleaned_data["when"]
            logger.info("Campaign %s scheduled for %s by %s", campaign.pk, when, actor)
            self.message_user(request, f"Scheduled for {when:%Y-%m-%d %H:%M}.", messages.SUCCESS)
        return self._back(campaign)

    def confirm_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        """GET: what will go out, to how many, from whom. POST: send it.

        Anyone who may view the campaign sees the page; only those who may send get
        the button, and only they can POST."""
        from campaigns.lifecycle import campaign_start

        may_send = can_send(request)
        campaign = self._campaign(request, object_id, change=False, send=request.method == "POST")
        sender = SenderSettings.load()
        if request.method == "POST":
            try:
                campaign_start(campaign=campaign, actor=request.user.get_username())
            except ValidationError as exc:
                self.message_user(request, "Not sent: " + " ".join(exc.messages), messages.ERROR)
                return redirect("admin:campaigns_campaign_send", campaign.pk)
            self.message_user(request, f"Sending “{campaign}”.", messages.SUCCESS)
            return self._back(campaign)

        contact, note = _preview_contact(campaign, real=can_view_contacts(request))
        context = self._context(request, campaign, f"Send “{campaign}”?")
        try:
            context["message"] = _render(campaign, contact, sender)
        except ValidationError as exc:
            context["render_errors"] = exc.messages
        settings_url = reverse("admin:campaigns_sendersettings_change", args=[sender.pk])
        context.update(
            sender=sender,
            contact=contact,
            note=note,
            count=_recipient_count(campaign),
            problems=_sender_problems(sender),
            can_send=campaign.status in EDITABLE,
            may_send=may_send,
            settings_url=f"{settings_url}?next={request.path}",
            change_url=reverse("admin:campaigns_campaign_change", args=[campaign.pk]),
        )
        return TemplateResponse(request, "admin/campaigns/campaign/confirm_send.html", context)

    def _transition(self, request, object_id, action, done: str, *, send=False) -> HttpResponse:
        campaign = self._campaign(request, object_id, change=not send, send=send)
        try:
            action(campaign=campaign, actor=request.user.get_username())
        except ValidationError as exc:
            self.message_user(request, " ".join(exc.messages), messages.ERROR)
        else:
            self.message_user(request, done, messages.SUCCESS)
        return self._back(campaign)

    @staticmethod
    def _services():
        from campaigns import services

        return services

    @staticmethod
    def _lifecycle():
        from campaigns import lifecycle

        return lifecycle

    def pause_view(self, request, object_id):
        if request.method != "POST":
            return redirect("admin:campaigns_campaign_change", object_id)
        return self._transition(request, object_id, self._lifecycle().campaign_pause, "Paused.")

    def resume_view(self, request, object_id):
        if request.method != "POST":
            return redirect("admin:campaigns_campaign_change", object_id)
        # Resuming sends the rest: the send permission, like starting.
        return self._transition(
            request, object_id, self._lifecycle().campaign_resume, "Resumed.", send=True
        )

    def cancel_view(self, request, object_id):
        if request.method != "POST":
            return redirect("admin:campaigns_campaign_change", object_id)
        return self._transition(request, object_id, self._lifecycle().campaign_cancel, "Cancelled.")

    def unschedule_view(self, request, object_id):
        if request.method != "POST":
            return redirect("admin:campaigns_campaign_change", object_id)
        return self._transition(
            request,
            object_id,
            self._lifecycle().campaign_unschedule,
            "No longer scheduled: back to draft.",
        )

    def progress_view(self, request: HttpRequest, object_id: int) -> JsonResponse:
        from campaigns.selectors import campaign_progress

        campaign = self._campaign(request, object_id, change=False)
        return JsonResponse(campaign_progress(campaign))

    # --- Emergency blast ---

    def emergency_view(self, request: HttpRequest) -> HttpResponse:
        """Pick a starter (and optionally a segment): a ready campaign, then confirm."""
        from campaigns.services import campaign_create_from_starter

        # It writes a campaign and leads straight to sending it: both permissions.
        if not (self.has_add_permission(request) and can_send(request)):
            raise PermissionDenied
        sender = SenderSettings.load()
        form = EmergencyForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            campaign = campaign_create_from_starter(
                starter=STARTERS[form.cleaned_data["starter"]],
                segment=form.cleaned_data["segment"],
                actor=request.user.get_username(),
            )
            return redirect("admin:campaigns_campaign_send", campaign.pk)
        context = self._context(request, None, "Send an emergency update")
        settings_url = reverse("admin:campaigns_sendersettings_change", args=[sender.pk])
        context.update(
            form=form,
            starters=list(STARTERS.values()),
            sender=sender,
            problems=_sender_problems(sender),
            settings_url=f"{settings_url}?next={request.path}",
            everyone_count=segments.audience_contacts(audience="everyone").count(),
            segments=Segment.objects.all()[:200],
        )
        return TemplateResponse(request, "admin/campaigns/campaign/emergency.html", context)

    # --- The report (campaigns.reports) ---

    def _report_context(self, request: HttpRequest, campaign: Campaign) -> dict:
        """The report's figures once the campaign has started (templates/admin/campaigns/
        campaign/_report.html reads them)."""
        from campaigns import reports

        if campaign.started_at is None and campaign.status in EDITABLE:
            return {}
        return {
            "report": reports.campaign_report(campaign),
            "report_timeline": reports.campaign_timeline(campaign),
            "report_links": reports.campaign_links(campaign),
            "may_export_recipients": can_export_recipients(request),
        }

    def report_csv_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        """Who got the campaign and what happened to each message, as CSV, streamed."""
        from django.http import StreamingHttpResponse

        from campaigns import reports

        campaign = self._campaign(request, object_id, change=False)
        if not can_export_recipients(request):
            raise PermissionDenied
        response = StreamingHttpResponse(
            reports.stream_delivery_csv(campaign), content_type="text/csv; charset=utf-8"
        )
        response["Content-Disposition"] = (
            f'attachment; filename="campaign-{campaign.pk}-recipients.csv"'
        )
        return response


def can_export_recipients(request: HttpRequest) -> bool:
    """The recipients' CSV holds every contact's address: the same permission as the
    contact export (audience's export_contact), not just viewing the campaign."""
    return request.user.has_perm(f"{Contact._meta.app_label}.export_contact")
