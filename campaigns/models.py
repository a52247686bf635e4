from django.db import models
from django.utils import timezone


class OutboxMessage(models.Model):
    """A message kept by the quickstart's local outbox backend instead of being sent.

    With no email provider configured, Stillhere "sends" here, and the admin shows each
    message with clickable links, so a newcomer can confirm a double opt-in by hand.
    """

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    from_email = models.CharField(max_length=500)
    to = models.TextField(help_text="Recipients, one per line.")
    subject = models.CharField(max_length=1000)
    text_body = models.TextField(blank=True)
    html_body = models.TextField(blank=True)
    headers = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "outbox message"

    def __str__(self) -> str:
        return f"{self.subject} → {self.to.replace(chr(10), ', ')}"


class SenderSettings(models.Model):
    """Who the mail is from, set once in the admin (one row)."""

    from_name = models.CharField(max_length=100, blank=True)
    from_email = models.EmailField(blank=True)
    reply_to = models.EmailField(blank=True)
    postal_address = models.TextField(
        blank=True, help_text="Required by CAN-SPAM; printed at the foot of every campaign."
    )
    shop_url = models.URLField(blank=True)
    phone = models.CharField(max_length=40, blank=True, help_text="Shown in outage templates.")
    logo_url = models.URLField(blank=True)
    accent_color = models.CharField(max_length=7, default="#1f6feb")
    rate_per_second = models.PositiveIntegerField(
        default=0, help_text="Messages per second across all workers; 0 means no limit."
    )
    rate_per_hour = models.PositiveIntegerField(
        default=0, help_text="Messages per hour across all workers; 0 means no limit."
    )

    class Meta:
        verbose_name = "sender settings"
        verbose_name_plural = "sender settings"

    def __str__(self) -> str:
        return "Sender settings"

    @classmethod
    def load(cls) -> "SenderSettings":
        obj, _ = cls.objects.get_or_create(pk=1)
        return obj


class Campaign(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        SCHEDULED = "scheduled", "Scheduled"
        SENDING = "sending", "Sending"
        PAUSED = "paused", "Paused"
        SENT = "sent", "Sent"
        CANCELLED = "cancelled", "Cancelled"
        FAILED = "failed", "Failed"

    class Audience(models.TextChoices):
        EVERYONE = "everyone", "Everyone subscribed"
        SEGMENT = "segment", "A segment"
        TAGS = "tags", "Contacts with any of these tags"

    class SendMode(models.TextChoices):
        PER_MESSAGE = "per_message", "One API call per message (any provider, SMTP too)"
        BATCH = "batch", "Batch: many recipients per API call (Mailgun, Brevo, …)"

    name = models.CharField(max_length=200)
    subject = models.CharField(max_length=300)
    preheader = models.CharField(max_length=300, blank=True)
    body = models.TextField(help_text="Markdown; raw HTML allowed. Merge fields: {{ first_name }}")
    audience = models.CharField(max_length=10, choices=Audience.choices, default=Audience.EVERYONE)
    segment = models.ForeignKey("audience.Segment", null=True, blank=True, on_delete=models.PROTECT)
    tags = models.ManyToManyField("audience.Tag", blank=True)
    send_mode = models.CharField(
        max_length=12, choices=SendMode.choices, default=SendMode.PER_MESSAGE
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    is_emergency = models.BooleanField(default=False)
    scheduled_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    status_reason = models.TextField(blank=True, help_text="Why it paused or failed.")
    # Counters updated by the chunk tasks with F() expressions, so the progress bar never
    # has to COUNT a million Delivery rows.
    total_count = models.PositiveIntegerField(default=0)
    sent_count = models.PositiveIntegerField(default=0)
    failed_count = models.PositiveIntegerField(default=0)
    duplicate_count = models.PositiveIntegerField(
        default=0,
        help_text="Messages possibly sent twice: re-sent after a worker crash (at most its "
        "chunk) or after a send whose answer never came.",
    )
    # Chunk failures since the last message that got through, and since when: the
    # campaign pauses only when the provider has kept failing for a while, not on a burst
    # that several workers saw at the same instant.
    consecutive_failed_chunks = models.PositiveIntegerField(default=0)
    failing_since = models.DateTimeField(null=True, blank=True)

    class PauseKind(models.TextChoices):
        OWNER = "owner", "By a person"
        PROVIDER = "provider", "The provider kept failing (resumes by itself)"
        SETUP = "setup", "The provider refused the account or the request"

    # Only a pause the provider caused resumes by itself, at auto_resume_at; a person's
    # pause, or one that needs a person (bad credentials), waits for Resume.
    pause_kind = models.CharField(max_length=8, choices=PauseKind.choices, blank=True)
    auto_resume_at = models.DateTimeField(null=True, blank=True)
    auto_resume_attempts = models.PositiveSmallIntegerField(
        default=0, help_text="Automatic resumes since a message last got through."
    )
    provider_pause_count = models.PositiveIntegerField(default=0)

    class Provider(models.TextChoices):
        PRIMARY = "primary", "Primary provider"
        SECONDARY = "secondary", "Failover provider"

    # Which provider the chunks go out through: the primary, until it has failed
    # EMAIL_FAILOVER_AFTER_CHUNKS chunks in a row and a failover is configured
    # (campaigns.providers switches it, once, and says when and why).
    provider = models.CharField(max_length=9, choices=Provider.choices, default=Provider.PRIMARY)
    # Chunks in a row the primary turned away (a chunk it took whole starts the count
    # over; one that got part through before failing still counts as failed).
    provider_failed_chunks = models.PositiveIntegerField(default=0)
    provider_switched_at = models.DateTimeField(null=True, blank=True)
    provider_switch_reason = models.TextField(blank=True)
    created_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "scheduled_at"], name="campaign_due")]
        # Sending reaches every subscriber and cannot be taken back, so it is a permission
        # of its own: editing a draft (change_campaign) does not imply the right to send it.
        permissions = [("send_campaign", "Can send campaigns")]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs):
        """Saving a stored campaign writes what a person edits, never its state: the
        status and the fields that move with it change only through campaigns.lifecycle's
        conditional UPDATEs, and the counters through the workers' F() updates. Without
        this, the admin saving a scheduled campaign a moment after the scheduler started
        it would put it back to "scheduled" (save() writes every column it loaded)."""
        if not self._state.adding:
            update_fields = kwargs.get("update_fields")
            if update_fields is None:
                kwargs["update_fields"] = [
                    f.name
                    for f in self._meta.concrete_fields
                    if not f.primary_key and f.name not in CAMPAIGN_STATE_FIELDS
                ]
            elif CAMPAIGN_STATE_FIELDS.intersection(update_fields):
                raise ValueError(
                    "A campaign's status, schedule and counters change through "
                    "campaigns.lifecycle (and the workers), not Campaign.save()."
                )
        super().save(*args, **kwargs)


# What Campaign.save() leaves alone on a stored campaign (see its docstring).
CAMPAIGN_STATE_FIELDS = frozenset(
    {
        "status",
        "scheduled_at",
        "started_at",
        "finished_at",
        "status_reason",
        "pause_kind",
        "auto_resume_at",
        "auto_resume_attempts",
        "provider_pause_count",
        "consecutive_failed_chunks",
        "failing_since",
        "total_count",
        "sent_count",
        "failed_count",
        "duplicate_count",
        # The failover's: moved by the workers (campaigns.providers, lifecycle).
        "provider",
        "provider_failed_chunks",
        "provider_switched_at",
        "provider_switch_reason",
    }
)


class Delivery(models.Model):
    """One recipient of one campaign: the source of truth for who got what.

    Rows are claimed a chunk at a time through DeliveryChunk, so each row is written
    once after its snapshot (queued → sent / failed / skipped), not twice.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"
        SKIPPED = "skipped", "Skipped (no longer subscribed)"

    # No database-level foreign keys: a million-row snapshot would pay two deferred
    # referential-integrity checks per row at commit (~12 s per million, measured). Rows
    # are only ever made from the contacts SELECT in the same transaction, and deletes
    # cascade through the ORM (contact erasure, campaign deletion).
    campaign = models.ForeignKey(
        Campaign,
        on_delete=models.CASCADE,
        related_name="deliveries",
        db_constraint=False,
        db_index=False,  # delivery_once (campaign, contact) serves campaign lookups
    )
    contact = models.ForeignKey(
        "audience.Contact", on_delete=models.CASCADE, related_name="deliveries", db_constraint=False
    )
    chunk = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.QUEUED)
    sent_at = models.DateTimeField(null=True, blank=True)
    message_id = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    opened_at = models.DateTimeField(null=True, blank=True)
    clicked_at = models.DateTimeField(null=True, blank=True)
    # What the provider said afterwards (campaigns.feedback): the first event of each kind
    # sets its time, once, and only that first change moves the campaign's counters, so a
    # webhook the provider posts twice counts once. Nullable, no index: the snapshot's
    # INSERT…SELECT does not name them and the sender's write stays a HOT update.
    delivered_at = models.DateTimeField(null=True, blank=True)
    deferred_at = models.DateTimeField(null=True, blank=True)
    soft_bounced_at = models.DateTimeField(null=True, blank=True)
    hard_bounced_at = models.DateTimeField(null=True, blank=True)
    complained_at = models.DateTimeField(null=True, blank=True)
    unsubscribed_at = models.DateTimeField(null=True, blank=True)
    rejected_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "deliveries"
        constraints = [
            models.UniqueConstraint(fields=["campaign", "contact"], name="delivery_once")
        ]
        # Each row is written once after the snapshot (queued → sent, with sent_at and
        # message_id). No index covers those columns, and on PostgreSQL the table keeps
        # free space on each page (fillfactor, set in migration 0004), so that write is a
        # HOT update touching no index: about a third of the cost, measured. Delivery
        # feedback finds rows by (campaign, contact), from the message's metadata and
        # the recipient, not by message id.
        indexes = [models.Index(fields=["campaign", "chunk"], name="delivery_campaign_chunk")]

    def __str__(self) -> str:
        return f"{self.campaign_id}→{self.contact_id} ({self.status})"


class DeliveryChunk(models.Model):
    """One chunk of a campaign's deliveries (default 500): the unit a worker claims.

    A chunk task claims its chunk with a conditional UPDATE (queued → claimed) and
    checks the row count, so two tasks for one chunk never both send it. A claim older
    than CAMPAIGN_CLAIM_TIMEOUT belongs to a dead worker: the sweeper puts the chunk
    back in the queue and marks it `requeued`, and what it sends again is counted as
    possible duplicates (at most the chunk).
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        CLAIMED = "claimed", "Being sent"
        DONE = "done", "Done"

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="chunks")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.QUEUED)
    claim_token = models.CharField(max_length=40, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    requeued = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["campaign", "number"], name="delivery_chunk_once")
        ]
        indexes = [models.Index(fields=["campaign", "status"], name="delivery_chunk_status")]

    def __str__(self) -> str:
        return f"{self.campaign_id}#{self.number} ({self.status})"


class CampaignEvent(models.Model):
    """One change in a campaign's life: who (or the system), from what to what, and why.

    Written by campaigns.lifecycle in the same transaction as the change itself, and only
    when the change happened (a lost race writes nothing), so the list on the campaign's
    page is the campaign's history, not a log of attempts.
    """

    class Kind(models.TextChoices):
        STATUS = "status", "Status change"
        PROVIDER_SWITCH = "provider_switch", "Provider switch"

    # The (campaign, created_at) index serves the campaign's lookups; a second index on
    # campaign_id alone would only cost writes.
    campaign = models.ForeignKey(
        Campaign, on_delete=models.CASCADE, related_name="events", db_index=False
    )
    created_at = models.DateTimeField(default=timezone.now)
    # The acting user's username (and how, e.g. "ada (manage.py blast)"); empty for the
    # system: the scheduler, a worker, an automatic pause or resume.
    actor = models.CharField(max_length=200, blank=True)
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.STATUS)
    from_status = models.CharField(max_length=10, choices=Campaign.Status.choices, blank=True)
    to_status = models.CharField(max_length=10, choices=Campaign.Status.choices, blank=True)
    reason = models.TextField(blank=True)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["campaign", "created_at"], name="campaign_event_time")]

    def __str__(self) -> str:
        return f"{self.campaign_id}: {self.from_status} → {self.to_status} by {self.actor_display}"

    @property
    def actor_display(self) -> str:
        return self.actor or "system"


# --- The campaign report (campaigns.feedback writes, campaigns.reports reads) -----------


class CampaignReport(models.Model):
    """What providers reported for one campaign, counted as the events arrive.

    Each counter moves (with F()) only when a Delivery's state really changes (its first
    delivered_at, first opened_at, …), so the report reads one row instead of counting a
    million deliveries, and a duplicate webhook changes nothing. Sent and failed are the
    sender's own counters on Campaign.
    """

    campaign = models.OneToOneField(
        Campaign, on_delete=models.CASCADE, primary_key=True, related_name="report"
    )
    delivered = models.PositiveIntegerField(default=0)
    deferred = models.PositiveIntegerField(default=0)
    soft_bounced = models.PositiveIntegerField(default=0)
    hard_bounced = models.PositiveIntegerField(default=0)
    complained = models.PositiveIntegerField(default=0)
    unsubscribed = models.PositiveIntegerField(default=0)
    opened = models.PositiveIntegerField(default=0)
    clicked = models.PositiveIntegerField(default=0)
    rejected = models.PositiveIntegerField(
        default=0, help_text="Refused or dropped by the provider after it accepted the message."
    )

    def __str__(self) -> str:
        return f"Report of campaign {self.campaign_id}"


class CampaignTimeline(models.Model):
    """One bucket of the report's chart: how many messages were sent or delivered in a
    minute, or opened or clicked (first time per recipient) in an hour."""

    class Kind(models.TextChoices):
        SENT = "sent", "Sent"
        DELIVERED = "delivered", "Delivered"
        OPENED = "opened", "Opened"
        CLICKED = "clicked", "Clicked"

    # campaign_timeline_once (campaign, kind, start) serves the campaign's lookups.
    campaign = models.ForeignKey(
        Campaign, on_delete=models.CASCADE, related_name="timeline", db_index=False
    )
    kind = models.CharField(max_length=10, choices=Kind.choices)
    start = models.DateTimeField()
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["campaign", "kind", "start"], name="campaign_timeline_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.campaign_id} {self.kind} {self.start:%Y-%m-%d %H:%M}: {self.count}"


class CampaignLink(models.Model):
    """A link of a campaign that the provider reported a click on, with how many
    recipients clicked it (each counted once, however often they clicked)."""

    campaign = models.ForeignKey(
        Campaign, on_delete=models.CASCADE, related_name="links", db_index=False
    )
    url = models.CharField(max_length=2000)
    clickers = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["campaign", "url"], name="campaign_link_once")
        ]

    def __str__(self) -> str:
        return self.url


class LinkClick(models.Model):
    """That one recipient (delivery) clicked one link: the row that makes a repeated or
    re-posted click count once in CampaignLink.clickers."""

    link = models.ForeignKey(CampaignLink, on_delete=models.CASCADE, related_name="clicks")
    delivery = models.ForeignKey(
        Delivery, on_delete=models.CASCADE, db_constraint=False, related_name="+"
    )
    clicked_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["link", "delivery"], name="link_click_once")]

    def __str__(self) -> str:
        return f"{self.link_id}←{self.delivery_id}"
