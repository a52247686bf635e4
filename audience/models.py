import re
import secrets

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.functional import cached_property

from audience.mailmerge import check_template


class Tag(models.Model):
    name = models.CharField(max_length=100)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(Lower("name"), name="tag_name_ci_unique")]

    def __str__(self) -> str:
        return self.name


class FieldMode(models.TextChoices):
    HIDDEN = "hidden", "Hidden"
    OPTIONAL = "optional", "Optional"
    REQUIRED = "required", "Required"


_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?$")


def _new_public_key() -> str:
    return secrets.token_urlsafe(9)


# The double opt-in mail a new form starts with (and every form had before it could be
# edited): merge fields as in a campaign, plus confirm_url, confirm_days, form_title and
# accent_color (audience.emails.CONFIRMATION_FIELDS).
DEFAULT_CONFIRMATION_SUBJECT = (
    "Please confirm your subscription{% if form_title %}: {{ form_title }}{% endif %}"
)
DEFAULT_CONFIRMATION_BODY = """\
Hello{% if first_name %} {{ first_name }}{% endif %},

Please confirm that you want to hear from {{ from_name|default:"us" }}:

<a href="{{ confirm_url }}" style="display:inline-block;padding:10px 18px;\
background:{{ accent_color }};color:#ffffff;border-radius:6px;text-decoration:none;">\
Yes, subscribe me</a>

The link works for {{ confirm_days }} days. If you did not sign up, ignore this email \
and you will not hear from us again.
"""


# A welcome email (audience.welcome) is written like a campaign body: Markdown, a
# campaign's merge fields, sent in the campaign layout with its unsubscribe link.
WELCOME_HELP_SUBJECT = (
    'Merge fields as in a campaign, e.g. Welcome, {{ first_name|default:"friend" }}!'
)
WELCOME_HELP_BODY = (
    "Markdown, written like a campaign: merge fields such as {{ first_name }}, "
    "{{ from_name }}, {{ shop_url }}. Sent once to each contact when they become "
    "subscribed (after confirming, when double opt-in is on), in your branded layout with "
    "the unsubscribe link and your postal address (Sender settings)."
)


def welcome_errors(*, enabled: bool, subject: str, body: str) -> dict[str, list[str]]:
    """What is wrong with a welcome email as a form or store holds it ({field: messages}):
    checked as a campaign's subject and body are, so it cannot fail at send time."""
    errors: dict[str, list[str]] = {}
    for name, text in (("welcome_subject", subject), ("welcome_body", body)):
        if enabled and not text.strip():
            errors[name] = ["Write the welcome email, or turn it off."]
            continue
        try:
            check_template(text)
        except ValidationError as exc:
            errors[name] = exc.messages
    return errors


class SignupForm(models.Model):
    """A signup form a shop embeds on its own site (HTML, script, iframe or hosted page)."""

    name = models.CharField(max_length=200, help_text="For you; visitors see the title.")
    public_key = models.CharField(max_length=32, unique=True, default=_new_public_key)
    title = models.CharField(max_length=200, blank=True, default="Stay in touch")
    intro = models.TextField(
        blank=True, default="Get our news by email, even when social media is down."
    )
    button_label = models.CharField(max_length=60, default="Subscribe")
    name_field = models.CharField(
        "name fields", max_length=10, choices=FieldMode.choices, default=FieldMode.OPTIONAL
    )
    phone_field = models.CharField(
        "phone field", max_length=10, choices=FieldMode.choices, default=FieldMode.HIDDEN
    )
    tags = models.ManyToManyField(Tag, blank=True, help_text="Applied to everyone who signs up.")
    double_opt_in = models.BooleanField(
        default=True,
        help_text="Send a confirmation link; contacts are mailed only once they click it.",
    )
    consent_text = models.TextField(
        blank=True,
        help_text=(
            "If set, a checkbox with this text must be ticked to sign up (it is never "
            "pre-ticked). The exact text is stored with each signup as evidence."
        ),
    )
    success_message = models.CharField(
        max_length=500, default="Thanks! Please check your inbox to confirm your subscription."
    )
    confirmation_subject = models.CharField(
        "confirmation email subject",
        max_length=300,
        blank=True,
        default=DEFAULT_CONFIRMATION_SUBJECT,
        help_text=(
            "Merge fields as in a campaign, e.g. {{ form_title }}, {{ from_name }}. "
            "Left empty: the default subject."
        ),
    )
    confirmation_body = models.TextField(
        "confirmation email",
        blank=True,
        default=DEFAULT_CONFIRMATION_BODY,
        help_text=(
            "Markdown; raw HTML allowed. Must link to {{ confirm_url }}, e.g. "
            "[Yes, subscribe me]({{ confirm_url }}). Also: {{ first_name }}, "
            "{{ from_name }}, {{ confirm_days }}, {{ form_title }}, {{ accent_color }}. "
            "Sent in your branded layout (logo, shop name, accent colour: Sender settings). "
            "Left empty: the default text."
        ),
    )
    redirect_url = models.URLField(
        blank=True, help_text="Where the plain HTML form sends people after signing up."
    )
    allowed_origins = models.TextField(
        blank=True,
        help_text=(
            "Sites that may embed this form, one origin per line, e.g. https://shop.example.com. "
            "The hosted page always works."
        ),
    )
    welcome_enabled = models.BooleanField(
        "send a welcome email",
        default=False,
        help_text="Once to each new subscriber from this form; never twice to one contact.",
    )
    welcome_subject = models.CharField(
        "welcome email subject", max_length=300, blank=True, help_text=WELCOME_HELP_SUBJECT
    )
    welcome_body = models.TextField("welcome email", blank=True, help_text=WELCOME_HELP_BODY)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors = {}
        bad = [o for o in self.origins if not _ORIGIN.match(o)]
        if bad:
            errors["allowed_origins"] = (
                "Each line must be an origin like https://shop.example.com "
                f"(scheme and host, no path): {', '.join(bad)}"
            )
        # Checked as a campaign body is, and for the one link the mail exists for.
        from audience.emails import confirmation_check  # emails imports this module

        try:
            confirmation_check(subject=self.confirmation_subject, body=self.confirmation_body)
        except ValidationError as exc:
            errors.update(exc.update_error_dict({}))
        errors.update(
            welcome_errors(
                enabled=self.welcome_enabled, subject=self.welcome_subject, body=self.welcome_body
            )
        )
        if errors:
            raise ValidationError(errors)

    @cached_property  # read by every signup; the form object is cached per process
    def origins(self) -> list[str]:
        return [
            line.strip().rstrip("/") for line in self.allowed_origins.splitlines() if line.strip()
        ]


class Contact(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending confirmation"
        SUBSCRIBED = "subscribed", "Subscribed"
        UNSUBSCRIBED = "unsubscribed", "Unsubscribed"
        BOUNCED = "bounced", "Bounced"
        COMPLAINED = "complained", "Complained"

    class Source(models.TextChoices):
        FORM = "form", "Signup form"
        IMPORT = "import", "Import"
        ADMIN = "admin", "Admin"
        API = "api", "API"
        STORE = "store", "Store sync"

    # Stored trimmed and lower-cased, so "one contact per email, case-insensitively" is a
    # plain unique index that bulk upserts (ON CONFLICT) can target.
    # Unique through Meta's contact_email_unique: one index that serves =, ON CONFLICT and
    # the admin's prefix search, instead of Django's pair (unique + a _like copy).
    email = models.EmailField(max_length=254)
    first_name = models.CharField(max_length=100, blank=True)
    last_name = models.CharField(max_length=100, blank=True)
    phone = models.CharField(max_length=20, blank=True, help_text="E.164")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    # db_constraint=False on the link table, for the reason ConsentEvent.contact gives.
    tags = models.ManyToManyField(Tag, blank=True, related_name="contacts", db_constraint=False)
    attributes = models.JSONField(default=dict, blank=True)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.ADMIN)
    # Indexed in Meta, partially: imported contacts (most of a big list) have no form.
    signup_form = models.ForeignKey(
        SignupForm,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="contacts",
        db_index=False,
    )
    # A default, not auto_now_add: a buffered signup's contact keeps the signup's time.
    created_at = models.DateTimeField(default=timezone.now, editable=False, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)
    unsubscribed_at = models.DateTimeField(null=True, blank=True)
    # When the last double opt-in mail was queued: at most one per window per contact.
    confirmation_sent_at = models.DateTimeField(null=True, blank=True, editable=False)
    # A double opt-in mail is owed (audience.confirmations sends it and clears this).
    # db_default: the bulk paths insert contacts in raw SQL without naming it.
    confirmation_due = models.BooleanField(default=False, db_default=False, editable=False)
    # The open double opt-in request (audience.consent): when it was opened, or None. A
    # confirm link carries this time and works only while it is still the contact's open
    # request; the confirmation itself and every suppression close it, so a link from an
    # earlier request (or one older than an unsubscribe) confirms nothing.
    optin_requested_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Campaign messages in a row that soft-bounced (mailbox full, greylisted, …); at
    # SOFT_BOUNCE_LIMIT the contact is suppressed as bounced, and a delivered message
    # sets it back to 0 (campaigns.feedback). db_default: bulk paths insert in raw SQL.
    soft_bounce_count = models.PositiveSmallIntegerField(default=0, db_default=0, editable=False)
    # SMS marketing consent as a connected store records it (SmsConsent; audience.sync).
    # Separate from `status`, which is about email. db_default: bulk paths use raw SQL.
    sms_consent = models.CharField(
        max_length=16, blank=True, default="", db_default="", editable=False
    )
    sms_consent_at = models.DateTimeField(null=True, blank=True, editable=False)
    sms_opt_in_level = models.CharField(
        max_length=40, blank=True, default="", db_default="", editable=False
    )

    class Meta:
        indexes = [
            models.Index(fields=["status", "id"], name="contact_status_id"),
            models.Index(fields=["source", "id"], name="contact_source_id"),
            # One phone index, not Django's pair (plain + _like): the pattern opclass
            # serves both = and the admin's startswith, and each index on this table
            # costs every imported row an insert.
            models.Index(
                fields=["phone"], name="contact_phone_pattern", opclasses=["varchar_pattern_ops"]
            ),
            # Partial: holds only the few contacts whose confirmation mail is owed.
            models.Index(
                fields=["id"], name="contact_confirmation_due", condition=Q(confirmation_due=True)
            ),
            models.Index(
                fields=["signup_form"],
                name="contact_signup_form",
                condition=Q(signup_form__isnull=False),
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["email"],
                name="contact_email_unique",
                opclasses=["varchar_pattern_ops"],
                violation_error_message="A contact with this email address already exists.",
            )
        ]
        permissions = [("export_contact", "Can export contacts")]

    def __str__(self) -> str:
        return self.email

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()


class ConsentEvent(models.Model):
    """Evidence of consent: one row for every change of a contact's status, and every signup.

    GDPR Art. 7(1) asks us to demonstrate consent; this table is how. Rows are never
    edited; they go only when the contact is erased.
    """

    class Kind(models.TextChoices):
        SIGNUP = "signup", "Signed up"
        CONFIRM = "confirm", "Confirmed"
        UNSUBSCRIBE = "unsubscribe", "Unsubscribed"
        PREFERENCES = "preferences", "Updated preferences"
        IMPORT = "import", "Imported"
        SYNC = "sync", "Synced"
        ADMIN = "admin", "Changed by admin"
        BOUNCE = "bounce", "Bounced"
        COMPLAINT = "complaint", "Complained"

    # No database-level foreign key (as Delivery): its check locks the contact row for
    # every event at commit, a sixth of PostgreSQL's work in a million-row import
    # (bench/import.py). Events are only written with their contact in the same
    # transaction (new, or locked), and deletes cascade through the ORM (erasure).
    contact = models.ForeignKey(
        Contact, on_delete=models.CASCADE, related_name="consent_events", db_constraint=False
    )
    # Not indexed: events are read per contact (the timeline), through the contact index.
    # A default, not auto_now_add: a buffered signup's event keeps the signup's own time.
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    kind = models.CharField(max_length=12, choices=Kind.choices)
    method = models.CharField(
        max_length=40,
        help_text="How: form-html, form-script, hosted, confirm-link, one-click, import, …",
    )
    status_before = models.CharField(max_length=12, blank=True)
    status_after = models.CharField(max_length=12, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=500, blank=True)
    # Indexed in Meta, partially: import and admin events (most of them) have no form.
    signup_form = models.ForeignKey(
        SignupForm, null=True, blank=True, on_delete=models.SET_NULL, db_index=False
    )
    consent_text = models.TextField(blank=True)
    actor = models.CharField(max_length=150, blank=True, help_text="Admin user, if any.")
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(
                fields=["signup_form"],
                name="consentevent_signup_form",
                condition=Q(signup_form__isnull=False),
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} ({self.status_before or '-'} → {self.status_after})"


class SuppressedEmail(models.Model):
    """An erased contact: only a hash of the address stays, so it is never mailed or
    imported again, unless its owner signs up anew."""

    email_hash = models.CharField(max_length=64, unique=True)
    reason = models.CharField(max_length=100, default="erased")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.email_hash[:12]}… ({self.reason})"


class ImportJob(models.Model):
    """One uploaded file on its way into the audience: upload → preview → run → summary.

    The admin and `manage.py import_contacts` both create one and run it through
    audience.importing.run_job, so they share one code path.
    """

    class Status(models.TextChoices):
        UPLOADED = "uploaded", "Awaiting preview"
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    file = models.FileField(upload_to="imports/%Y/%m/")
    original_name = models.CharField(max_length=255, blank=True)
    size = models.BigIntegerField(default=0)
    # What detection found: the platform profile, the encoding, the delimiter ("" for XLSX).
    profile = models.CharField(max_length=30, blank=True)
    file_format = models.CharField(max_length=10, blank=True)
    encoding = models.CharField(max_length=20, blank=True)
    delimiter = models.CharField(max_length=2, blank=True)
    columns = models.JSONField(default=list, blank=True)
    mapping = models.JSONField(default=dict, blank=True)
    options = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.UPLOADED)
    rows_total = models.PositiveIntegerField(default=0)
    rows_done = models.PositiveIntegerField(default=0)
    counts = models.JSONField(default=dict, blank=True)
    rejected = models.FileField(upload_to="imports/rejected/%Y/%m/", blank=True)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Last sign of life of a queued or running import: set when it is queued, claimed and
    # at each progress save. A job silent for too long has lost its worker and is resumed
    # (audience.importing.jobs_resume_stalled).
    heartbeat_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Import {self.pk}: {self.original_name}"


class SignupBufferCursor(models.Model):
    """How far the signup buffer (a Redis stream, audience.intake) has been drained.

    The drain moves a batch of entries into contacts and advances `last_id` in the same
    transaction, so a drain that dies anywhere is neither lost nor repeated: the next
    one starts after the last committed entry (a Kafka consumer's offset, kept in the
    database it writes to).
    """

    name = models.CharField(max_length=100, unique=True)
    last_id = models.CharField(max_length=40, blank=True, help_text="Redis stream entry id")
    drained = models.BigIntegerField(default=0, help_text="Signups moved in, all time")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name} at {self.last_id or 'start'}"


class SignupWrittenDirectly(models.Model):
    """A signup written straight to the database because Redis failed during its call,
    perhaps after appending it to the buffer: the drain skips the entry with this `sid`,
    so the signup is stored once (audience.intake)."""

    sid = models.CharField(max_length=32, unique=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self) -> str:
        return self.sid


class SignupDeferred(models.Model):
    """A signup for an address that is already a contact, taken in its request (the
    signup buffer off) and applied by a worker moments later (audience.services).

    Why: the visitor's answer must not tell whether the address is known, and its time
    did (one statement for a new address, eight round trips through the ORM for a known
    one: 1.5 against 3.8 ms). Written by the same statement that inserts new addresses,
    so both cost the request alike, and stored before the answer, so nothing is lost.
    """

    signup = models.JSONField(help_text="The signup and its evidence, as taken")
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"Deferred signup {self.pk}"


class Segment(models.Model):
    """A named audience: rules combined with AND (all) or OR (any).

    ``rules`` is a list of {"field": …, "op": …, "value": …}; audience.segments turns
    it into a queryset, the one place the admin count, the export and the sender use.
    Campaigns point at a segment (Campaign.segment); the table was campaigns_segment
    until the segment moved here (migrations audience 0012, campaigns 0007).
    """

    class Match(models.TextChoices):
        ALL = "all", "all rules (AND)"
        ANY = "any", "any rule (OR)"

    name = models.CharField(max_length=200, unique=True)
    match = models.CharField(max_length=3, choices=Match.choices, default=Match.ALL)
    rules = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class RefusedOrigin(models.Model):
    """A site that tried to use a form without being in its allowed origins: shown on the
    form's admin page, so the owner learns why visitors there saw an error (audience.origins
    keeps at most a handful per form and writes them rate-limited; the endpoint is public)."""

    signup_form = models.ForeignKey(
        SignupForm, on_delete=models.CASCADE, related_name="refused_origins"
    )
    origin = models.CharField(max_length=300)
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    hits = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-last_seen", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["signup_form", "origin"], name="refused_origin_form_origin_unique"
            )
        ]

    def __str__(self) -> str:
        return self.origin


class WelcomeEmail(models.Model):
    """The welcome email one contact is owed, and what became of it: an outbox row.

    Written by audience.welcome.welcome_owe in the transaction that subscribes the
    contact, at most one per contact (the unique contact): a contact who unsubscribes and
    comes back is not welcomed again. campaigns.welcome sends it at most once: a row
    claimed by a worker that then went silent is `in_doubt` (the provider may have taken
    it) and is never sent again by itself; a welcome is not worth a duplicate.
    """

    class State(models.TextChoices):
        OWED = "owed", "Owed"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        IN_DOUBT = "in_doubt", "In doubt (the worker stopped while sending)"
        SKIPPED = "skipped", "Skipped"
        FAILED = "failed", "Refused by the provider"

    contact = models.OneToOneField(Contact, on_delete=models.CASCADE, related_name="welcome_email")
    signup_form = models.ForeignKey(
        SignupForm, null=True, blank=True, on_delete=models.SET_NULL, db_index=False
    )
    store = models.ForeignKey(
        "Store", null=True, blank=True, on_delete=models.SET_NULL, db_index=False
    )
    # db_default: the signup hot path inserts these rows in raw SQL.
    state = models.CharField(
        max_length=10, choices=State.choices, default=State.OWED, db_default=State.OWED
    )
    created_at = models.DateTimeField(default=timezone.now)
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    message_id = models.CharField(max_length=200, blank=True, default="", db_default="")
    error = models.TextField(blank=True, default="", db_default="")

    class Meta:
        indexes = [
            # Partial: only the few rows a worker still has to look at.
            models.Index(
                fields=["id"], name="welcome_open", condition=Q(state__in=["owed", "sending"])
            )
        ]

    def __str__(self) -> str:
        return f"Welcome email to {self.contact_id}: {self.get_state_display()}"


class SmsConsent(models.TextChoices):
    """A contact's consent to SMS marketing, as the shop's store records it (Shopify's
    ``sms_marketing_consent.state``). Stored apart from the email status: the SMS work
    reads it; nothing sends SMS on it yet."""

    UNKNOWN = "", "Unknown"
    SUBSCRIBED = "subscribed", "Subscribed"
    NOT_SUBSCRIBED = "not_subscribed", "Not subscribed"
    PENDING = "pending", "Pending"
    UNSUBSCRIBED = "unsubscribed", "Unsubscribed"
    REDACTED = "redacted", "Redacted"


def _new_store_key() -> str:
    return secrets.token_urlsafe(18)


class Store(models.Model):
    """A connected shop (Shopify or WooCommerce) whose customer webhooks sync the audience
    (audience.integrations). Each store has its own webhook URL (by `key`) and its own
    signing secret: a post is accepted only when signed with that secret."""

    class Kind(models.TextChoices):
        SHOPIFY = "shopify", "Shopify"
        WOOCOMMERCE = "woocommerce", "WooCommerce"

    kind = models.CharField(max_length=12, choices=Kind.choices)
    name = models.CharField(max_length=200, help_text="For you, e.g. the shop's name.")
    domain = models.CharField(
        max_length=255,
        blank=True,
        help_text="The shop's domain, e.g. myshop.myshopify.com (Shopify sends it with each "
        "webhook; a post naming another shop is refused).",
    )
    key = models.CharField(max_length=40, unique=True, default=_new_store_key, editable=False)
    secret = models.CharField(
        max_length=200,
        help_text="The webhook signing secret the shop shows you (Shopify: the app's API "
        "secret or the notifications' signing key; WooCommerce: the webhook's Secret).",
    )
    tags = models.ManyToManyField(Tag, blank=True, help_text="Applied to every synced customer.")
    confirm_unconsented = models.BooleanField(
        "Ask customers without an opt-in to confirm",
        default=False,
        help_text="A customer the shop has no marketing opt-in for (every WooCommerce "
        "customer: WooCommerce records none) is kept as pending and not mailed. Tick this to "
        "send them a double opt-in email instead: they become subscribed only if they click.",
    )
    enabled = models.BooleanField(
        default=True, help_text="A disabled store's webhooks are refused (404)."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    welcome_enabled = models.BooleanField(
        "send a welcome email",
        default=False,
        help_text=(
            "Once to each customer this store's sync subscribes (with the consent the store "
            "recorded); never twice to one contact."
        ),
    )
    welcome_subject = models.CharField(
        "welcome email subject", max_length=300, blank=True, help_text=WELCOME_HELP_SUBJECT
    )
    welcome_body = models.TextField("welcome email", blank=True, help_text=WELCOME_HELP_BODY)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_kind_display()})"

    def clean(self) -> None:
        errors = welcome_errors(
            enabled=self.welcome_enabled, subject=self.welcome_subject, body=self.welcome_body
        )
        if errors:
            raise ValidationError(errors)


class StoreCustomer(models.Model):
    """A store's customer and the contact it is, with the store's last change to it:
    webhooks arrive out of order, and an older one must not overwrite a newer one."""

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="customers")
    remote_id = models.CharField(max_length=64)
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="store_customers")
    remote_updated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["store", "remote_id"], name="store_customer_unique")
        ]

    def __str__(self) -> str:
        return f"{self.store} customer {self.remote_id}"


class StoreWebhook(models.Model):
    """A store webhook taken, written in the transaction that applied it: a redelivery
    (same id) finds it and changes nothing."""

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="webhooks")
    webhook_id = models.CharField(max_length=100)
    topic = models.CharField(max_length=64)
    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    outcome = models.CharField(max_length=200, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["store", "webhook_id"], name="store_webhook_unique")
        ]

    def __str__(self) -> str:
        return f"{self.topic} {self.webhook_id}"


class StorePrivacyRequest(models.Model):
    """A privacy request a store passed on (Shopify's mandatory compliance webhooks): an
    erasure is carried out when it arrives; a customer's data request is for the shop
    owner to answer, from the contact's "Export data" link."""

    class Topic(models.TextChoices):
        DATA_REQUEST = "customers/data_request", "Customer data request"
        CUSTOMER_REDACT = "customers/redact", "Customer erasure"
        SHOP_REDACT = "shop/redact", "Shop erasure"

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="privacy_requests")
    topic = models.CharField(max_length=32, choices=Topic.choices)
    email_hash = models.CharField(max_length=64, blank=True)
    remote_customer_id = models.CharField(max_length=64, blank=True)
    contact = models.ForeignKey(
        Contact, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    received_at = models.DateTimeField(default=timezone.now)
    completed_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.get_topic_display()} from {self.store}"


class ApiToken(models.Model):
    """A key an API client sends as "Authorization: Bearer <token>" (config.api_auth).

    Only a hash of the token is stored: it is shown once, when it is made in the admin
    (audience.apitokens), and a leaked database does not leak working keys. Each token
    holds its own permissions, and a revoked one is kept, so the consent events written
    with it (actor "api:<prefix>") still say which client it was.
    """

    name = models.CharField(max_length=200, help_text="For you: which client uses it.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(
        max_length=8, editable=False, help_text="The token's first characters, to tell it apart."
    )
    can_read_contacts = models.BooleanField(
        "read contacts", default=True, help_text="List, search, get and export contacts; tags."
    )
    can_write_contacts = models.BooleanField(
        "write contacts",
        default=False,
        help_text="Create and update contacts, tag, unsubscribe and erase them.",
    )
    can_send_campaigns = models.BooleanField(
        "send campaigns", default=False, help_text="List and start campaigns, send a blast."
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, editable=False
    )
    # Written at most once a minute (audience.apitokens), not on every request.
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def actor(self) -> str:
        """Who the consent events say acted: the token, by its prefix."""
        return f"api:{self.prefix}"
