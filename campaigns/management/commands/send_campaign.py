"""`manage.py send_campaign ID`: start a draft or scheduled campaign now, for operators."""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from campaigns.models import Campaign
from campaigns.selectors import campaign_progress
from campaigns.services import campaign_start


class Command(BaseCommand):
    help = "Start sending a draft or scheduled campaign now (the workers do the sending)."

    def add_arguments(self, parser):
        parser.add_argument("campaign_id", type=int)

    def handle(self, *args, campaign_id: int, **options):
        campaign = Campaign.objects.filter(pk=campaign_id).first()
        if campaign is None:
            raise CommandError(f"There is no campaign {campaign_id}.")
        try:
            campaign = campaign_start(campaign=campaign, actor="manage.py send_campaign")
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        progress = campaign_progress(campaign)
        self.stdout.write(
            f"Campaign {campaign.pk} “{campaign.name}”: {progress['status']}, "
            f"{progress['total']} recipients queued for the workers."
        )
