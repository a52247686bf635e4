"""`manage.py send_campaign ID --as USERNAME`: start a draft or scheduled campaign now."""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from campaigns.lifecycle import campaign_start
from campaigns.management.commands._acting import acting_user, add_as_argument
from campaigns.models import Campaign
from campaigns.selectors import campaign_progress


class Command(BaseCommand):
    help = "Start sending a draft or scheduled campaign now (the workers do the sending)."

    def add_arguments(self, parser):
        parser.add_argument("campaign_id", type=int)
        add_as_argument(parser)

    def handle(self, *args, campaign_id: int, **options):
        actor = acting_user(options["acting_user"]).get_username()
        campaign = Campaign.objects.filter(pk=campaign_id).first()
        if campaign is None:
            raise CommandError(f"There is no campaign {campaign_id}.")
        try:
            campaign = campaign_start(campaign=campaign, actor=f"{actor} (manage.py send_campaign)")
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        progress = campaign_progress(campaign)
        self.stdout.write(
            f"Campaign {campaign.pk} “{campaign.name}”: {progress['status']}, "
            f"{progress['total']} recipients queued for the workers."
        )
