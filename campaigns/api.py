"""/api/v1 endpoints for campaigns (mounted by config.api): list them, start one, send
an emergency blast. Sending reaches every subscriber and cannot be taken back, so every
endpoint here needs a token with "send campaigns", as the admin needs send_campaign.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from audience.models import Segment
from campaigns import lifecycle, services
from campaigns.models import Campaign
from campaigns.starters import STARTERS
from config.api_access import CanSendCampaigns
from config.api_errors import Problem
from config.api_paging import Cursor


class CampaignSerializer(serializers.ModelSerializer):
    class Meta:
        model = Campaign
        fields = [
            "id", "name", "subject", "status", "audience", "segment", "is_emergency",
            "scheduled_at", "started_at", "finished_at", "status_reason", "total_count",
            "sent_count", "failed_count", "created_at",
        ]  # fmt: skip
        read_only_fields = fields


class BlastSerializer(serializers.Serializer):
    starter = serializers.ChoiceField(
        choices=[(key, starter.title) for key, starter in STARTERS.items()],
        help_text="Which ready-made message: filled in from the sender settings.",
    )
    segment = serializers.PrimaryKeyRelatedField(
        queryset=Segment.objects.all(), required=False, allow_null=True,
        help_text="A segment's id; absent: everyone subscribed.",
    )  # fmt: skip


def _refusal(exc: DjangoValidationError) -> Response:
    # Not the caller's input but the campaign's or the sender settings' state: 409.
    return Response({"detail": " ".join(exc.messages)}, status=status.HTTP_409_CONFLICT)


class CampaignViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = CampaignSerializer
    pagination_class = Cursor
    permission_classes = [CanSendCampaigns]
    queryset = Campaign.objects.all()

    @extend_schema(
        request=None,
        responses={
            200: CampaignSerializer,
            409: OpenApiResponse(Problem, description="Not a draft, or sending is blocked"),
        },
    )
    @action(detail=True, methods=["post"])
    def start(self, request, pk=None):
        """Send a draft or scheduled campaign now, as the admin's Send button does."""
        try:
            campaign = lifecycle.campaign_start(
                campaign=self.get_object(), actor=request.auth.actor
            )
        except DjangoValidationError as exc:
            return _refusal(exc)
        return Response(CampaignSerializer(campaign).data)

    @extend_schema(
        request=BlastSerializer,
        responses={
            201: CampaignSerializer,
            409: OpenApiResponse(Problem, description="Sending is blocked"),
        },
    )
    @action(detail=False, methods=["post"])
    def blast(self, request):
        """The emergency update: a campaign made from a starter and sent at once."""
        given = BlastSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        actor = request.auth.actor
        try:
            # One transaction: a blast that cannot start leaves no draft behind.
            with transaction.atomic():
                campaign = services.campaign_create_from_starter(
                    starter=STARTERS[given.validated_data["starter"]],
                    segment=given.validated_data.get("segment"),
                    actor=actor,
                )
                campaign = lifecycle.campaign_start(campaign=campaign, actor=actor)
        except DjangoValidationError as exc:
            return _refusal(exc)
        return Response(CampaignSerializer(campaign).data, status=status.HTTP_201_CREATED)
