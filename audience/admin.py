from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.contrib.admin.views.main import PAGE_VAR, ChangeList
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import EmptyPage, Page, PageNotAnInteger, Paginator
from django.db import models
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from audience import evidence, origins, selectors, services, snippets
from audience.forms import ContactAdminForm
from audience.models import (
    ConsentEvent,
    Contact,
    SignupForm,
    SuppressedEmail,
    Tag,
    WelcomeEmail,
)


class _BoundedPage(Page):
    """A page whose "is there a next one" may be known from the rows, not from a count."""

    more: bool | None = None

    def has_next(self) -> bool:
        return super().has_next() if self.more is None else self.more


class BoundedCountPaginator(Paginator):
    """Counts at most LIMIT rows, so a list of a million contacts never runs a full COUNT(*).

    Past the limit the count says "10,000+" and the pages go on: a page from the last
    counted one onwards reads one row more than it shows, which tells whether another page
    follows (an OFFSET, bounded by how far the owner pages, never a count of the rest).
    """

    LIMIT = 10_000

    @cached_property
    def _counted(self) -> int:
        return self.object_list[: self.LIMIT + 1].count()

    @cached_property
    def capped(self) -> bool:
        """More than LIMIT rows: count and num_pages are lower bounds."""
        return self._counted > self.LIMIT

    @cached_property
    def count(self) -> int:
        return min(self._counted, self.LIMIT)

    @cached_property
    def _pages(self) -> dict[int, Page]:
        return {}

    def validate_number(self, number) -> int:
        if not self.capped:
            return super().validate_number(number)
        try:
            number = int(number)
        except (TypeError, ValueError) as error:
            raise PageNotAnInteger("That page number is not an integer") from error
        if number < 1:
            raise EmptyPage("That page number is less than 1")
        return number

    def page(self, number) -> Page:
        number = self.validate_number(number)
        if number not in self._pages:  # the change list asks twice (rows, then links)
            self._pages[number] = self._page(number)
        return self._pages[number]

    def _page(self, number: int) -> Page:
        if not self.capped or number < self.num_pages:
            return super().page(number)
        bottom = (number - 1) * self.per_page
        rows = list(self.object_list[bottom : bottom + self.per_page + 1])
        page = self._get_page(rows[: self.per_page], number, self)
        page.more = len(rows) > self.per_page
        return page

    def _get_page(self, *args, **kwargs) -> Page:
        return _BoundedPage(*args, **kwargs)

    def get_elided_page_range(self, number=1, *, on_each_side=3, on_ends=2):
        if not self.capped:
            yield from super().get_elided_page_range(number, on_each_side=on_each_side,
                                                     on_ends=on_ends)  # fmt: skip
            return
        # As Django's, over the pages known to exist: the counted ones, or up to this one.
        number = self.validate_number(number)
        last = max(self.num_pages, number)
        if number > 1 + on_each_side + on_ends:
            yield from range(1, on_ends + 1)
            yield self.ELLIPSIS
            yield from range(number - on_each_side, number + 1)
        else:
            yield from range(1, number + 1)
        if number + on_each_side + on_ends < last:
            yield from range(number + 1, number + on_each_side + 1)
            yield self.ELLIPSIS
            yield from range(last - on_ends + 1, last + 1)
        else:
            yield from range(number + 1, last + 1)


class ContactChangeList(ChangeList):
    """The contact list, with what its pagination and search templates say about a count
    that stops at BoundedCountPaginator.LIMIT (templates/admin/audience/contact/)."""

    def get_results(self, request) -> None:
        super().get_results(request)
        paginator = self.paginator
        capped = getattr(paginator, "capped", False)
        self.result_count_label = f"{self.result_count:,}{'+' if capped else ''}"
        self.previous_url = self.next_url = None
        if self.multi_page and not (self.show_all and self.can_show_all):
            page = paginator.page(self.page_num)
            if page.has_previous():
                self.previous_url = self.get_query_string({PAGE_VAR: page.previous_page_number()})
            if page.has_next():
                self.next_url = self.get_query_string({PAGE_VAR: page.next_page_number()})


def _evidence(request: HttpRequest) -> services.Evidence:
    # The visitor's address as the public views take it (CLIENT_IP_HEADER behind a
    # proxy), not REMOTE_ADDR, which is then the proxy's.
    return evidence.from_request(request, "admin", actor=request.user.get_username())


class TagActionForm(ActionForm):
    tag = forms.CharField(
        required=False, label="Tag", help_text="for the tag / untag actions",
        widget=forms.TextInput(attrs={"placeholder": "tag name", "size": 16}),
    )  # fmt: skip


class MarkSubscribedForm(forms.Form):
    statement = forms.CharField(
        label="How did this person give their consent?", max_length=2000,
        widget=forms.Textarea(attrs={"rows": 4, "cols": 80}),
        help_text=(
            "Stored with your name in the consent timeline as the evidence, e.g. “Signed "
            "the paper signup sheet at the market stall on 12 May; sheet kept in the office”."
        ),
    )  # fmt: skip


class ConsentEventInline(admin.TabularInline):
    model = ConsentEvent
    extra = 0
    can_delete = False
    verbose_name_plural = "Consent timeline"
    # Five columns, not one per field: ten (with a consent text, a user agent and an IPv6
    # address among them) made the table wider than the page. Every field is still shown.
    fields = ["created_at", "change", "how", "consent_text", "client"]
    readonly_fields = fields
    ordering = ["-created_at", "-id"]

    class Media:
        css = {"all": ["audience/admin/consent_timeline.css"]}  # fits the page's width

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("signup_form")

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="Change")
    def change(self, event: ConsentEvent) -> str:
        return format_html(
            "<strong>{}</strong><br>{} → {}",
            event.get_kind_display(),
            event.status_before or "-",
            event.status_after or "-",
        )

    @admin.display(description="How")
    def how(self, event: ConsentEvent) -> str:
        lines = [event.method or "-"]
        if event.signup_form_id:
            lines.append(f"form: {event.signup_form}")
        if event.actor:
            lines.append(f"by {event.actor}")
        return format_html_join(mark_safe("<br>"), "{}", ((line,) for line in lines))

    @admin.display(description="Browser")
    def client(self, event: ConsentEvent) -> str:
        return format_html(
            '{}<br><span class="user-agent">{}</span>', event.ip or "-", event.user_agent or ""
        )


_WELCOME_STATES = {
    WelcomeEmail.State.OWED: "Welcome email owed",
    WelcomeEmail.State.SENDING: "Welcome email sending",
    WelcomeEmail.State.SENT: "Welcome email sent",
    WelcomeEmail.State.IN_DOUBT: "Welcome email in doubt (its worker stopped mid-send: never"
    " sent again)",
    WelcomeEmail.State.SKIPPED: "Welcome email skipped",
    WelcomeEmail.State.FAILED: "Welcome email refused by the provider",
}


def welcome_summary(welcome: WelcomeEmail | None) -> str:
    """The contact's welcome email (audience.welcome) for its page: what became of it,
    when, where it came from, and the provider's answer or id."""
    if welcome is None:
        return "None owed (no welcome turned on where they subscribed, or not subscribed)"
    text = _WELCOME_STATES[welcome.state]
    if welcome.state == WelcomeEmail.State.SKIPPED and welcome.error.startswith(
        "Not sent: the contact was no longer subscribed"
    ):
        text = "Welcome email skipped (not subscribed)"
    if welcome.signup_form_id:
        source = f"form: {welcome.signup_form}"
    elif welcome.store_id:
        source = f"store: {welcome.store}"
    else:
        source = "-"
    when = welcome.sent_at or welcome.claimed_at or welcome.created_at
    lines = [date_format(when, "DATETIME_FORMAT"), source]
    lines += [line for line in (welcome.error, welcome.message_id) if line]
    return format_html(
        "<strong>{}</strong><br>{}",
        text,
        format_html_join(mark_safe("<br>"), "{}", ((line,) for line in lines)),
    )


class TagFilter(admin.SimpleListFilter):
    title = "tag"
    parameter_name = "tag"

    def lookups(self, request, model_admin):
        return [(str(tag.pk), tag.name) for tag in Tag.objects.all()[:200]]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(tags__pk=self.value())
        return queryset


@admin.register(Contact)
class ContactAdmin(admin.ModelAdmin):
    list_display = [
        "email", "first_name", "last_name", "phone", "status", "source_label", "created_at",
    ]  # fmt: skip
    list_filter = [
        "status",
        TagFilter,
        "source",
        "signup_form",
        ("created_at", admin.DateFieldListFilter),
    ]
    search_fields = ["email", "first_name", "last_name", "phone"]
    search_help_text = (
        "An address or its start (anna@, @example.com is not searched), a name, or a phone number."
    )
    ordering = ["-id"]
    show_full_result_count = False
    paginator = BoundedCountPaginator
    list_per_page = 50
    action_form = TagActionForm
    actions = ["tag_selected", "untag_selected", "unsubscribe_selected", "export_selected"]
    readonly_fields = ["status", "source_label", "signup_form", "created_at", "updated_at",
                       "confirmed_at", "unsubscribed_at", "welcome", "gdpr",
                       "consent_actions"]  # fmt: skip
    fields = ["email", "first_name", "last_name", "phone", "tags", "attributes", *readonly_fields]
    filter_horizontal = ["tags"]
    inlines = [ConsentEventInline]
    form = ContactAdminForm

    def get_search_results(self, request, queryset, search_term):
        # Each kind of term goes to an indexed prefix lookup instead of a LIKE '%…%' over
        # every column, which is what keeps search fast at a million contacts.
        term = search_term.strip()
        if not term:
            return queryset, False
        return selectors.contacts_search(queryset, term), False

    def get_changelist(self, request, **kwargs):
        return ContactChangeList

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj else []

    def get_fields(self, request, obj=None):
        return self.fields if obj else ContactAdminForm.Meta.fields

    def save_model(self, request, obj, form, change):
        # Through the services, which write the ConsentEvent naming the user, and owe a
        # new contact its double opt-in mail. The tags are saved there too (save_related
        # then has nothing left to do for them).
        data = form.cleaned_data
        tags = list(data["tags"]) if "tags" in data else None
        if change:
            values = {f: data[f] for f in services.ADMIN_FIELDS if f in data}
            form.instance = services.contact_update(
                contact=obj, values=values, tags=tags, evidence=_evidence(request)
            )
        else:
            values = {f: data[f] for f in services.ADMIN_FIELDS if data.get(f)}
            form.instance = services.contact_create(
                **values, tags=tags or (), evidence=_evidence(request)
            )
        obj.pk = form.instance.pk

    def save_related(self, request, form, formsets, change):
        # The tags went with the service's write (save_model); only the inlines are left.
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

    @admin.display(description="Welcome email")
    def welcome(self, obj: Contact) -> str:
        found = WelcomeEmail.objects.select_related("signup_form", "store")
        return welcome_summary(found.filter(contact_id=obj.pk).first())

    @admin.display(description="Personal data")
    def gdpr(self, obj: Contact | None) -> str:
        if obj is None or obj.pk is None:
            return "-"
        return format_html(
            '<a class="button" href="{}">Export as JSON</a> '
            '<a class="button" style="background:#ba2121" href="{}">Erase…</a>',
            reverse("admin:audience_contact_export_data", args=[obj.pk]),
            reverse("admin:audience_contact_erase", args=[obj.pk]),
        )

    def get_urls(self):
        own = [
            path("<int:pk>/export-data/", self.admin_site.admin_view(self.export_data),
                 name="audience_contact_export_data"),
            path("<int:pk>/erase/", self.admin_site.admin_view(self.erase),
                 name="audience_contact_erase"),
            path("<int:pk>/resend-confirmation/",
                 self.admin_site.admin_view(self.resend_confirmation),
                 name="audience_contact_resend_confirmation"),
            path("<int:pk>/mark-subscribed/", self.admin_site.admin_view(self.mark_subscribed),
                 name="audience_contact_mark_subscribed"),
        ]  # fmt: skip
        return own + super().get_urls()

    def export_data(self, request: HttpRequest, pk: int) -> HttpResponse:
        contact = get_object_or_404(Contact, pk=pk)
        if not self.has_view_permission(request, contact):
            raise PermissionDenied
        data = selectors.contact_personal_data(contact)
        response = HttpResponse(
            json.dumps(data, indent=2, ensure_ascii=False, default=str),
            content_type="application/json; charset=utf-8",
        )
        response["Content-Disposition"] = f'attachment; filename="contact-{contact.pk}.json"'
        return response

    def erase(self, request: HttpRequest, pk: int) -> HttpResponse:
        contact = get_object_or_404(Contact, pk=pk)
        if not self.has_delete_permission(request, contact):
            raise PermissionDenied
        if request.method == "POST":
            services.contact_erase(contact=contact, actor=request.user.get_username())
            self.message_user(
                request, "The contact was erased; only a hash of the address remains."
            )
            return redirect("admin:audience_contact_changelist")
        context = {
            **self.admin_site.each_context(request),
            "title": "Erase this contact?",
            "contact": contact,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/audience/contact/erase.html", context)

    @admin.display(description="Consent")
    def consent_actions(self, obj: Contact | None) -> str:
        """For a pending contact: send the confirmation again, or subscribe with the
        owner's own evidence. The resend button posts the change form's own CSRF token
        to its URL (formaction), as no form may nest in the change form."""
        if obj is None or obj.pk is None:
            return "-"
        if obj.status != Contact.Status.PENDING:
            return format_html(
                "{}", "Nothing to do: only a pending contact is sent a confirmation or "
                "marked subscribed here; an unsubscribed, bounced or complained contact "
                "comes back only by their own act.",
            )  # fmt: skip
        sent = (
            format_html(
                " (last sent {})",
                timezone.localtime(obj.confirmation_sent_at).strftime("%Y-%m-%d %H:%M"),
            )
            if obj.confirmation_sent_at
            else ""
        )
        return format_html(
            '<button type="submit" class="button" formmethod="post" formnovalidate '
            'formaction="{}" name="_resend_confirmation">Resend confirmation</button>{} '
            '<a class="button" href="{}">Mark subscribed with evidence…</a>',
            reverse("admin:audience_contact_resend_confirmation", args=[obj.pk]),
            sent,
            reverse("admin:audience_contact_mark_subscribed", args=[obj.pk]),
        )

    def resend_confirmation(self, request: HttpRequest, pk: int) -> HttpResponse:
        contact = get_object_or_404(Contact, pk=pk)
        if not self.has_change_permission(request, contact):
            raise PermissionDenied
        if request.method != "POST":  # a GET (a prefetch, a pasted link) changes nothing
            return redirect("admin:audience_contact_change", contact.pk)
        done = services.contact_confirmation_resend(contact=contact, evidence=_evidence(request))
        if done.queued:
            self.message_user(request, f"A new confirmation email is on its way to {contact}.")
        elif done.retry_at is not None:
            wait = max(1, round((done.retry_at - timezone.now()).total_seconds() / 60))
            self.message_user(
                request,
                f"{done.reason} To protect the inbox, another can be sent in about {wait} "
                f"minute{'s' if wait != 1 else ''}.",
                messages.WARNING,
            )
        else:
            self.message_user(request, done.reason, messages.ERROR)
        return redirect("admin:audience_contact_change", contact.pk)

    def mark_subscribed(self, request: HttpRequest, pk: int) -> HttpResponse:
        contact = get_object_or_404(Contact, pk=pk)
        if not self.has_change_permission(request, contact):
            raise PermissionDenied
        form = MarkSubscribedForm(request.POST or None)
        refusal = ""
        if contact.status in services.SUPPRESSED:
            refusal = (
                f"{contact} is {contact.get_status_display().lower()}. Only their own act "
                "(their confirm link, or signing up again) can subscribe them again."
            )
        elif contact.status != Contact.Status.PENDING:
            refusal = f"{contact} is already subscribed."
        if request.method == "POST" and not refusal and form.is_valid():
            try:
                services.contact_mark_subscribed(
                    contact=contact, statement=form.cleaned_data["statement"],
                    evidence=_evidence(request),
                )  # fmt: skip
            except ValidationError as exc:
                if hasattr(exc, "error_dict"):
                    form.add_error(None, exc)
                else:
                    refusal = " ".join(exc.messages)
            else:
                self.message_user(
                    request, f"Subscribed {contact}, with your evidence in the timeline."
                )
                return redirect("admin:audience_contact_change", contact.pk)
        context = {
            **self.admin_site.each_context(request),
            "title": "Mark subscribed with evidence",
            "contact": contact,
            "form": form,
            "refusal": refusal,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/audience/contact/mark_subscribed.html", context)

    def _tag_from_action(self, request) -> Tag | None:
        try:
            return services.tag_get_or_create(name=request.POST.get("tag", ""))
        except ValidationError:
            self.message_user(request, "Type a tag name next to the action.", messages.ERROR)
            return None

    @admin.action(description="Add tag to selected contacts", permissions=["change"])
    def tag_selected(self, request, queryset):
        if tag := self._tag_from_action(request):
            count = services.contacts_tag(contacts=queryset, tag=tag)
            self.message_user(request, f"Tagged {count} contacts with “{tag}”.")

    @admin.action(description="Remove tag from selected contacts", permissions=["change"])
    def untag_selected(self, request, queryset):
        if tag := self._tag_from_action(request):
            count = services.contacts_untag(contacts=queryset, tag=tag)
            self.message_user(request, f"Removed “{tag}” from {count} contacts.")

    @admin.action(description="Unsubscribe selected contacts", permissions=["change"])
    def unsubscribe_selected(self, request, queryset):
        count = services.contacts_unsubscribe(contacts=queryset, evidence=_evidence(request))
        self.message_user(request, f"Unsubscribed {count} contacts.")

    def has_export_permission(self, request) -> bool:
        return request.user.has_perm("audience.export_contact")

    @admin.action(description="Export selected contacts (CSV)", permissions=["export"])
    def export_selected(self, request, queryset):
        from audience.importing.admin_views import export_response

        return export_response(queryset, "csv")

    @admin.display(description="Source", ordering="source")
    def source_label(self, obj: Contact) -> str:
        # As the export writes it: "import: shopify-2026" for a labelled import.
        from audience.exporting import source_text

        return source_text(obj.source, obj.attributes)


@admin.register(SignupForm)
class SignupFormAdmin(admin.ModelAdmin):
    # A URL typed without a scheme is an https one (Django 6 makes this the default).
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    list_display = ["name", "public_key", "enabled", "double_opt_in", "hosted_link"]
    list_filter = ["enabled"]
    filter_horizontal = ["tags"]
    readonly_fields = ["key", "refused_origins", "embed_codes", "preview"]
    fieldsets = [
        (None, {"fields": ["name", "enabled", "key"]}),
        ("What visitors see", {"fields": ["title", "intro", "name_field", "phone_field",
                                          "consent_text", "button_label", "success_message"]}),
        ("After signup", {"fields": ["double_opt_in", "tags", "redirect_url"]}),
        ("Where it may be embedded", {"fields": ["allowed_origins", "refused_origins"]}),
        ("Embed it", {"fields": ["embed_codes", "preview"]}),
    ]  # fmt: skip

    @admin.display(description="Public key")
    def key(self, obj: SignupForm) -> str:
        # An unsaved form's key is the field's default, drawn again when the form is
        # saved: showing it on the add page showed a key the form would never have.
        return obj.public_key if obj.pk else "Given when you save the form."

    @admin.display(description="Hosted page")
    def hosted_link(self, obj: SignupForm) -> str:
        url = snippets.hosted_url(obj)
        return format_html('<a href="{}" target="_blank" rel="noopener">{}</a>', url, url)

    @admin.display(description="Refused sites")
    def refused_origins(self, obj: SignupForm) -> str:
        if not obj.pk:
            return (
                "The script embed, the plain HTML form and the iframe work only on the sites "
                "listed above (the hosted page works anywhere): add your shop's origin, e.g. "
                "https://shop.example.com, before you paste a snippet there."
            )
        refused = origins.refusals_recent(obj)
        if not refused:
            return "No site has been refused."
        # The buttons submit a small form of their own (templates/admin/audience/
        # signupform/change_form.html), not this change form: a form cannot nest.
        rows = format_html_join(
            "",
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td>"
            '<td><button type="submit" class="button" form="allow-origin-form" '
            'name="origin" value="{}">Allow</button></td></tr>',
            (
                (r.origin, r.hits, date_format(r.first_seen, "DATETIME_FORMAT"),
                 date_format(r.last_seen, "DATETIME_FORMAT"), r.origin)
                for r in refused
            ),
        )  # fmt: skip
        return format_html(
            "<p>Visitors on these sites saw an error: the form refused them because the site "
            "is not listed above.</p>"
            '<table id="refused-origins"><thead><tr><th>Site</th><th>Times</th>'
            "<th>First seen</th><th>Last seen</th><th></th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    def get_urls(self):
        own = [
            path("<int:pk>/allow-origin/", self.admin_site.admin_view(self.allow_origin),
                 name="audience_signupform_allow_origin"),
        ]  # fmt: skip
        return own + super().get_urls()

    def allow_origin(self, request: HttpRequest, pk: int) -> HttpResponse:
        signup_form = get_object_or_404(SignupForm, pk=pk)
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_change_permission(request, signup_form):
            raise PermissionDenied
        origin = request.POST.get("origin", "")
        try:
            origins.origin_allow(signup_form=signup_form, origin=origin)
        except ValidationError as error:
            self.message_user(request, " ".join(error.messages), messages.ERROR)
        else:
            self.message_user(request, f"Allowed {origin} to embed this form.")
        return redirect("admin:audience_signupform_change", signup_form.pk)

    @admin.display(description="Copy and paste")
    def embed_codes(self, obj: SignupForm) -> str:
        if not obj.pk:
            return "Save the form to get its snippets."
        codes = snippets.all_snippets(obj)
        labels = [
            ("script", "Script embed (renders inline, submits without leaving the page)"),
            ("html", "Plain HTML form (works with JavaScript off)"),
            ("iframe", "Iframe"),
            ("hosted", "Hosted page (for a bio link)"),
        ]
        return format_html_join(
            "",
            '<p style="margin:.75em 0 .25em"><strong>{}</strong></p>'
            '<textarea readonly rows="{}" style="width:100%;font-family:monospace" '
            'onclick="this.select()">{}</textarea>',
            ((label, {"html": 12, "iframe": 4}.get(key, 2), codes[key]) for key, label in labels),
        )

    @admin.display(description="Live preview")
    def preview(self, obj: SignupForm) -> str:
        if not obj.pk:
            return "-"
        src = reverse("audience:signup-frame", args=[obj.public_key])
        element_id = "stillhere-preview"
        # Fitted to the form's height as the iframe snippet is (audience.snippets).
        return format_html(
            '<iframe src="{}" id="{}" title="Preview" style="width:100%;max-width:480px;'
            'height:{}px;border:1px solid #ccc;border-radius:6px"></iframe>{}',
            src,
            element_id,
            snippets.IFRAME_DEFAULT_HEIGHT,
            mark_safe(snippets.frame_fit_script(element_id, None)),  # noqa: S308 (our own script)
        )

    # The confirmation email's fields, added to whatever the fieldsets above say (new
    # methods, so the form's own layout stays in one place).
    def get_fieldsets(self, request, obj=None):
        confirmation = (
            "Confirmation email (double opt-in)",
            {
                "fields": ["confirmation_subject", "confirmation_body", "confirmation_preview"],
                "description": (
                    "Sent to everyone who signs up while double opt-in is on, from the "
                    "address and in the look (logo, shop name, accent colour) of your "
                    "Sender settings."
                ),
            },
        )
        return [*super().get_fieldsets(request, obj), confirmation, WELCOME_FIELDSET]

    def get_readonly_fields(self, request, obj=None):
        return [*super().get_readonly_fields(request, obj), "confirmation_preview"]

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if db_field.name == "confirmation_subject":  # a whole subject line, not a word
            field.widget.attrs["style"] = "width:40em;max-width:100%"
        return field

    @admin.display(description="Preview")
    def confirmation_preview(self, obj: SignupForm | None) -> str:
        from audience import emails

        try:
            subject, html, _text = emails.confirmation_preview(form=obj)
        except ValidationError:
            return "Fix the errors above to see the preview."
        # srcdoc and a sandbox without scripts: the mail as a mail client shows it.
        return format_html(
            '<p><strong>Subject:</strong> {}</p><iframe sandbox="" srcdoc="{}" '
            'title="Confirmation email preview" style="width:640px;max-width:100%;'
            'height:560px;border:1px solid #ccc;border-radius:6px"></iframe>',
            subject,
            html,
        )


# A form's and a store's welcome email (audience.welcome), sent by the campaigns app
# (the store's page: audience.integrations.admin).
WELCOME_FIELDSET = (
    "Welcome email",
    {
        "fields": ["welcome_enabled", "welcome_subject", "welcome_body"],
        "description": (
            "Sent once to each new subscriber, in your campaign layout with the unsubscribe "
            "link and your postal address. Never twice to one contact: someone who "
            "unsubscribes and comes back is not welcomed again."
        ),
    },
)


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin):
    list_display = ["name", "created_at"]
    search_fields = ["name"]


@admin.register(SuppressedEmail)
class SuppressedEmailAdmin(admin.ModelAdmin):
    list_display = ["email_hash", "reason", "created_at"]
    search_fields = ["email_hash"]
    readonly_fields = ["email_hash", "reason", "created_at"]

    def has_add_permission(self, request) -> bool:
        return False


# Imports and the export page (views in audience/importing/admin_views.py).
from audience.importing.admin_views import ImportJobAdmin  # noqa: E402
from audience.models import ImportJob  # noqa: E402

admin.site.register(ImportJob, ImportJobAdmin)


# --- Segments -------------------------------------------------------------------------
# Moved here from campaigns (segments belong to the audience); the imports are local to
# this block so it stays self-contained.

from django.http import JsonResponse  # noqa: E402

from audience import segments  # noqa: E402
from audience.forms import SegmentAdminForm  # noqa: E402
from audience.models import Segment  # noqa: E402


def _rule_vocabulary() -> dict:
    """What the rule builder offers; lists are bounded so a big account stays fast."""
    return {
        "fields": {
            key: {"label": spec.label, "ops": spec.ops, "value": spec.value}
            for key, spec in segments.RULE_FIELDS.items()
        },
        "statuses": Contact.Status.choices,
        "sources": Contact.Source.choices,
        "tags": list(Tag.objects.values_list("name", flat=True)[:500]),
        "forms": list(SignupForm.objects.values_list("pk", "name")[:500]),
        # Plugged rules' choices (campaigns: the latest campaigns), bounded there.
        "campaigns": segments.rule_choices("campaign"),
    }


@admin.register(Segment)
class SegmentAdmin(admin.ModelAdmin):
    form = SegmentAdminForm
    list_display = ["name", "match", "rule_count", "created_at"]
    search_fields = ["name"]
    readonly_fields = ["recipients"]
    change_form_template = "admin/audience/segment/change_form.html"

    def get_fieldsets(self, request, obj=None):
        first = ["name", "match", "recipients"] if obj else ["name", "match"]
        return [
            (None, {"fields": first}),
            ("Rules as JSON", {"fields": ["rules"], "classes": ["collapse"]}),
        ]

    @admin.display(description="rules")
    def rule_count(self, obj: Segment) -> int:
        return len(obj.rules or [])

    @admin.display(description="subscribed recipients now")
    def recipients(self, obj: Segment) -> str:
        return f"{segments.segment_count(obj):,}"

    def get_urls(self):
        return [
            path(
                "count/",
                self.admin_site.admin_view(self.count_view),
                name="audience_segment_count",
            ),
            *super().get_urls(),
        ]

    def count_view(self, request: HttpRequest) -> JsonResponse:
        """Live count for rules being edited: GET ?match=all&rules=[…]."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            rules = json.loads(request.GET.get("rules") or "[]")
        except ValueError:
            return JsonResponse({"errors": ["The rules are not valid JSON."]}, status=400)
        try:
            segments.validate_rules(rules)
        except ValidationError as exc:
            return JsonResponse({"errors": exc.messages}, status=400)
        match = "any" if request.GET.get("match") == "any" else "all"
        count = segments.subscribed_count(segments.contacts_matching(rules, match))
        return JsonResponse({"count": count})

    def render_change_form(self, request, context, *args, **kwargs):
        context["rule_vocabulary"] = _rule_vocabulary()
        context["count_url"] = reverse("admin:audience_segment_count")
        return super().render_change_form(request, context, *args, **kwargs)


# --- API tokens -----------------------------------------------------------------------

from audience import apitokens  # noqa: E402
from audience.models import ApiToken  # noqa: E402


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Made here, shown once (a message after saving), never again: only its hash is
    stored. Revoked, not deleted, so the consent events it wrote still name it."""

    list_display = ["name", "prefix_shown", "can_read_contacts", "can_write_contacts",
                    "can_send_campaigns", "created_at", "last_used_at", "revoked_at"]  # fmt: skip
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix"]
    fields = ["name", "can_read_contacts", "can_write_contacts", "can_send_campaigns",
              "prefix_shown", "created_at", "created_by", "last_used_at", "revoked_at"]  # fmt: skip
    readonly_fields = ["prefix_shown", "created_at", "created_by", "last_used_at", "revoked_at"]
    actions = ["revoke_selected"]

    @admin.display(description="token", ordering="prefix")
    def prefix_shown(self, obj: ApiToken) -> str:
        return f"{obj.prefix}…" if obj.prefix else "Shown once, when you save."

    def get_fields(self, request, obj=None):
        return self.fields if obj else self.fields[:4]

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        api_token, token = apitokens.api_token_create(
            name=obj.name, can_read_contacts=obj.can_read_contacts,
            can_write_contacts=obj.can_write_contacts,
            can_send_campaigns=obj.can_send_campaigns, created_by=request.user,
        )  # fmt: skip
        obj.pk = api_token.pk
        form.instance = api_token
        self.message_user(
            request,
            format_html(
                "Copy this token now: it is shown only this once. "
                '<code id="new-api-token">{}</code>. '
                "Clients send it as <code>Authorization: Bearer &lt;token&gt;</code>.",
                token,
            ),
            messages.WARNING,
        )

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke_selected(self, request, queryset):
        count = apitokens.api_tokens_revoke(tokens=queryset)
        self.message_user(request, f"Revoked {count} token{'s' if count != 1 else ''}.")


# Connected stores and the privacy requests they pass on.
from audience.integrations import admin as _integrations_admin  # noqa: E402, F401
