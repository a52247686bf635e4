from django.db import models


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


class Segment(models.Model):
    """A named audience: rules combined with AND (all) or OR (any).

    ``rules`` is a list of {"field": …, "op": …, "value": …}; campaigns.segments turns
    it into a queryset, the one place both the admin count and the sender use.
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
    segment = models.ForeignKey(Segment, null=True, blank=True, on_delete=models.PROTECT)
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
