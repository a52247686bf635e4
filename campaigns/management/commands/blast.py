"""Send an emergency update from the shell:
`manage.py blast --as owner --template still-here --yes`.

For the operator who cannot (or would rather not) open the admin during an outage. It
makes the same campaign the admin's emergency page makes, and starts it the same way.
"""

from __future__ import annotations

import sys

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.urls import reverse

from audience.models import Segment
from audience.segments import audience_contacts
from campaigns.management.commands._acting import acting_user, add_as_argument
from campaigns.models import SenderSettings
from campaigns.starters import STARTERS


class Command(BaseCommand):
    help = "Send a starter emergency update to everyone subscribed, or to one segment."
    # Tests (and scripts) answer the confirmation question through call_command(stdin=…).
    stealth_options = ("stdin",)

    def add_arguments(self, parser):
        add_as_argument(parser)
        parser.add_argument(
            "--template", required=True, choices=list(STARTERS), help="Which starter to send."
        )
        parser.add_argument(
            "--segment", default="", help="Segment name; without it, everyone subscribed."
        )
        parser.add_argument(
            "--yes", action="store_true", help="Send without asking for confirmation."
        )

    def handle(self, *args, **options):
        from campaigns.lifecycle import campaign_start
        from campaigns.services import campaign_create_from_starter, sender_problems

        # Who sends is settled first: nothing is counted, asked or made for someone who
        # may not send.
        actor = acting_user(options["acting_user"]).get_username()
        starter = STARTERS[options["template"]]
        segment = None
        if options["segment"]:
            segment = Segment.objects.filter(name__iexact=options["segment"].strip()).first()
            if segment is None:
                names = ", ".join(Segment.objects.values_list("name", flat=True)[:20]) or "none"
                raise CommandError(
                    f"There is no segment named {options['segment']!r}. Segments: {names}."
                )

        sender = SenderSettings.load()
        problems = sender_problems(sender)
        if problems:
            raise CommandError(
                "Sending is blocked until the sender settings are complete "
                f"(admin: Campaigns > Sender settings): {' '.join(problems)}"
            )

        audience = "segment" if segment else "everyone"
        count = audience_contacts(audience=audience, segment=segment).count()
        who = f"segment {segment.name!r}" if segment else "everyone subscribed"
        self.stdout.write(
            f"{starter.title!r} to {count:,} subscribed contact(s) ({who}), "
            f"from {sender.from_name} <{sender.from_email}>."
        )
        if not count:
            raise CommandError("Nobody subscribed is in this audience; nothing sent.")
        if not options["yes"]:
            stdin = options.get("stdin") or sys.stdin
            self.stdout.write("Send it now? [y/N] ", ending="")
            self.stdout.flush()
            answer = stdin.readline().strip().lower()
            if answer not in ("y", "yes"):
                self.stdout.write("Nothing sent.")
                return

        campaign = campaign_create_from_starter(starter=starter, segment=segment, actor=actor)
        try:
            campaign_start(campaign=campaign, actor=f"{actor} (manage.py blast)")
        except ValidationError as exc:
            raise CommandError("Not sent: " + " ".join(exc.messages)) from exc
        url = settings.SITE_URL + reverse("admin:campaigns_campaign_change", args=[campaign.pk])
        self.stdout.write(
            self.style.SUCCESS(f"Sending campaign #{campaign.pk}. Progress: {url}")
            + "\n(Celery workers do the sending: `celery -A config worker` must be running.)"
        )
