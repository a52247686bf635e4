from django.contrib import admin
from django.utils.html import format_html, urlize
from django.utils.safestring import mark_safe

from campaigns.models import OutboxMessage


@admin.register(OutboxMessage)
class OutboxMessageAdmin(admin.ModelAdmin):
    list_display = ["created_at", "subject", "recipients"]
    search_fields = ["to", "subject"]
    readonly_fields = ["created_at", "from_email", "to", "subject", "headers", "message"]
    fields = readonly_fields
    show_full_result_count = False

    @admin.display(description="to")
    def recipients(self, obj: OutboxMessage) -> str:
        return obj.to.replace("\n", ", ")

    @admin.display(description="message (links are clickable)")
    def message(self, obj: OutboxMessage) -> str:
        # The text part, escaped, with its links made clickable: the quickstart's way to
        # follow a confirmation link without an email provider.
        body = urlize(obj.text_body, autoescape=True)  # escapes everything it does not link
        return format_html('<pre style="white-space: pre-wrap">{}</pre>', mark_safe(body))  # noqa: S308

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
