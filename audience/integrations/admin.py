"""Connected stores in the admin: "Connect a Shopify store" (or WooCommerce), the URL to
paste at the shop, its secret, what its webhooks did; and the privacy requests stores
pass on, for the owner to answer."""

from __future__ import annotations

import secrets

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

# audience.admin imports this module at its end, once WELCOME_FIELDSET is defined.
from audience.admin import WELCOME_FIELDSET
from audience.models import Store, StorePrivacyRequest, StoreWebhook


def webhook_url(store: Store) -> str:
    return settings.SITE_URL + reverse("audience:store-webhook", args=[store.kind, store.key])


SETUP = {
    Store.Kind.SHOPIFY: (
        "In your Shopify admin, open <b>Settings → Notifications → Webhooks</b> and "
        "<b>Create webhook</b>: event <b>Customer creation</b>, format <b>JSON</b>, the URL "
        "above, the latest API version. Do it again for <b>Customer update</b>. Shopify then "
        "shows “Your webhooks will be signed with …”: paste that key as the secret below. "
        "For a Shopify app of your own, subscribe it to customers/create, customers/update "
        "and the privacy topics (customers/data_request, customers/redact, shop/redact) at "
        "this URL; the secret is the app's client secret."
    ),
    Store.Kind.WOOCOMMERCE: (
        "In WordPress, open <b>WooCommerce → Settings → Advanced → Webhooks</b> and "
        "<b>Add webhook</b>: topic <b>Customer created</b>, the URL above as the delivery "
        "URL, the secret below as its Secret, API version <b>WP REST API Integration v3</b>. "
        "Do it again for <b>Customer updated</b>. WooCommerce records no marketing consent: "
        "its customers are kept as pending, and mailed a double opt-in only if you tick "
        "“Ask customers without an opt-in to confirm”."
    ),
}


class StoreForm(forms.ModelForm):
    secret = forms.CharField(
        max_length=200,
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text=Store._meta.get_field("secret").help_text
        + " Not shown again once saved; leave it empty to keep the current one.",
    )

    class Meta:
        model = Store
        fields = [
            "kind", "name", "domain", "secret", "tags", "confirm_unconsented", "enabled",
            "welcome_enabled", "welcome_subject", "welcome_body",
        ]  # fmt: skip

    def clean_secret(self) -> str:
        secret = self.cleaned_data["secret"].strip()
        if secret:
            return secret
        if self.instance.pk:
            return self.instance.secret  # kept
        if self.data.get("kind") == Store.Kind.WOOCOMMERCE:
            # WooCommerce takes any secret you give it: one is drawn here to paste there.
            return secrets.token_urlsafe(32)
        raise forms.ValidationError("Paste the signing secret Shopify shows you.")

    def clean_domain(self) -> str:
        domain = self.cleaned_data["domain"].strip().lower().removeprefix("https://")
        return domain.rstrip("/")


@admin.register(Store)
class StoreAdmin(admin.ModelAdmin):
    form = StoreForm
    list_display = ["name", "kind", "domain", "enabled", "created_at"]
    list_filter = ["kind", "enabled"]
    filter_horizontal = ["tags"]
    readonly_fields = ["connect", "recent_webhooks"]

    def get_fieldsets(self, request, obj=None):
        connect = ["connect"] if obj is not None else []
        return [
            (None, {"fields": ["kind", "name", "domain", *connect, "secret"]}),
            ("Customers", {"fields": ["tags", "confirm_unconsented", "enabled"]}),
            WELCOME_FIELDSET,
            *([("What its webhooks did", {"fields": ["recent_webhooks"]})] if obj else []),
        ]

    def get_readonly_fields(self, request, obj=None):
        # The kind is part of the URL pasted at the shop: changing it would break it.
        return [*self.readonly_fields, "kind"] if obj is not None else []

    @admin.display(description="Paste this URL at the shop")
    def connect(self, obj: Store) -> str:
        url = webhook_url(obj)
        return format_html(
            '<input type="text" readonly value="{}" size="90" id="store-webhook-url" '
            'onclick="this.select()"><p>{}</p>',
            url,
            mark_safe(SETUP[obj.kind]),  # noqa: S308 (our own constant text)
        )

    @admin.display(description="Last 10")
    def recent_webhooks(self, obj: Store) -> str:
        recent = StoreWebhook.objects.filter(store=obj).order_by("-received_at")[:10]
        if not recent:
            return "None yet: once pasted, the shop's next customer change shows up here."
        return format_html(
            "<table><tbody>{}</tbody></table>",
            format_html_join(
                "",
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                ((w.received_at.strftime("%Y-%m-%d %H:%M"), w.topic, w.outcome) for w in recent),
            ),
        )

    def add_view(self, request, form_url="", extra_context=None):
        kind = request.GET.get("kind")
        label = dict(Store.Kind.choices).get(kind, "")
        title = f"Connect a {label} store" if label else "Connect a store"
        return super().add_view(request, form_url, {**(extra_context or {}), "title": title})

    def response_add(self, request: HttpRequest, obj: Store, post_url_continue=None):
        # The point of connecting is the URL to paste at the shop, shown on its page.
        message = f"{obj} is connected: paste its URL at the shop."
        if not request.POST.get("secret", "").strip():
            # A secret drawn for the owner (WooCommerce) is shown this once, to paste there.
            message += f" Its secret, shown only now: {obj.secret}"
        self.message_user(request, message, messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:audience_store_change", args=[obj.pk]))


@admin.register(StorePrivacyRequest)
class StorePrivacyRequestAdmin(admin.ModelAdmin):
    list_display = ["received_at", "topic", "store", "contact_link", "outcome", "completed_at"]
    list_filter = ["topic", "store"]
    actions = ["mark_answered"]
    fields = ["store", "topic", "received_at", "contact_link", "remote_customer_id",
              "outcome", "completed_at"]  # fmt: skip
    readonly_fields = fields

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # the record of a request is evidence; only "answered" is set

    @admin.display(description="Contact")
    def contact_link(self, obj: StorePrivacyRequest) -> str:
        if obj.contact_id is None:
            return "—"
        return format_html(
            '<a href="{}">{}</a> (<a href="{}">export data</a>)',
            reverse("admin:audience_contact_change", args=[obj.contact_id]),
            obj.contact,
            reverse("admin:audience_contact_export_data", args=[obj.contact_id]),
        )

    @admin.action(description="Mark the selected data requests answered")
    def mark_answered(self, request, queryset):
        done = queryset.filter(completed_at__isnull=True).update(
            completed_at=timezone.now(), outcome="answered"
        )
        self.message_user(request, f"{done} marked answered.")
