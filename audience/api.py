"""/api/v1 endpoints for contacts, tags and signups (mounted by config.api).

Thin: each endpoint checks its input and calls the same services the admin and the
imports do, so the API follows the same consent rules. A contact is created or updated
by email through audience.sync (Via.SYNC): a client saying "subscribed" completes a
pending contact, but never brings back one who unsubscribed, bounced or complained.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from audience import evidence, selectors, services
from audience.consent import Ask
from audience.forms import PublicSignupForm
from audience.models import ConsentEvent, Contact, Tag
from audience.sync import Record, contact_sync
from config.api_access import CanReadContacts, CanWriteContacts
from config.api_errors import Problem
from config.api_paging import Cursor

MAX_TAGS = 50


class TagCursor(Cursor):
    ordering = "name"  # unique, case-insensitively (tag_name_ci_unique)


# --- serializers ----------------------------------------------------------------------


class ContactSerializer(serializers.ModelSerializer):
    tags = serializers.SlugRelatedField(slug_field="name", many=True, read_only=True)

    class Meta:
        model = Contact
        fields = [
            "id", "email", "first_name", "last_name", "phone", "status", "source", "tags",
            "sms_consent", "created_at", "updated_at", "confirmed_at", "unsubscribed_at",
        ]  # fmt: skip
        read_only_fields = fields


class ConsentEventDataSerializer(serializers.Serializer):
    """Describes (for the schema) one event of selectors.contact_personal_data."""

    at = serializers.DateTimeField()
    kind = serializers.CharField()
    method = serializers.CharField()
    status_before = serializers.CharField(allow_blank=True)
    status_after = serializers.CharField(allow_blank=True)
    ip = serializers.IPAddressField(allow_null=True)
    user_agent = serializers.CharField(allow_blank=True)
    signup_form = serializers.CharField(allow_null=True)
    consent_text = serializers.CharField(allow_blank=True)
    detail = serializers.DictField()


class StoreCustomerDataSerializer(serializers.Serializer):
    store = serializers.CharField()
    customer_id = serializers.CharField()


class ContactPersonalDataSerializer(serializers.Serializer):
    """Describes (for the schema) what selectors.contact_personal_data gives."""

    email = serializers.CharField()
    first_name = serializers.CharField(allow_blank=True)
    last_name = serializers.CharField(allow_blank=True)
    phone = serializers.CharField(allow_blank=True)
    status = serializers.CharField()
    source = serializers.CharField()
    signup_form = serializers.CharField(allow_null=True)
    tags = serializers.ListField(child=serializers.CharField())
    attributes = serializers.DictField()
    created_at = serializers.DateTimeField()
    confirmed_at = serializers.DateTimeField(allow_null=True)
    unsubscribed_at = serializers.DateTimeField(allow_null=True)
    sms_consent = serializers.CharField(allow_blank=True)
    sms_consent_at = serializers.DateTimeField(allow_null=True)
    sms_opt_in_level = serializers.CharField(allow_blank=True)
    store_customers = StoreCustomerDataSerializer(many=True)
    consent_events = ConsentEventDataSerializer(many=True)


class TagSerializer(serializers.ModelSerializer):
    class Meta:
        model = Tag
        fields = ["id", "name", "created_at"]
        read_only_fields = fields


def _service_check(function, value: str, **kwargs) -> str:
    """A services normaliser's verdict as the serializer field's own error."""
    try:
        return function(value, **kwargs)
    except DjangoValidationError as exc:
        raise serializers.ValidationError(exc.messages) from None


CONSENT_ASKS = {
    "subscribed": Ask.SUBSCRIBE,
    "pending": Ask.CONFIRM_FIRST,
    "unsubscribed": Ask.UNSUBSCRIBED,
    "none": Ask.STORE,
}


class ConsentSerializer(serializers.Serializer):
    status = serializers.ChoiceField(
        choices=list(CONSENT_ASKS),
        help_text=(
            "What your records hold. subscribed: the person opted in (evidence in `text`); "
            "it completes a pending contact, but an unsubscribed, bounced or complained one "
            "is only sent a double opt-in request. pending: send a double opt-in request. "
            "unsubscribed: the person opted out. none: store the contact, ask nothing."
        ),
    )
    at = serializers.DateTimeField(
        required=False, allow_null=True, help_text="When they gave it; default: now."
    )
    text = serializers.CharField(
        required=False, allow_blank=True, max_length=2000,
        help_text="The consent wording the person agreed to, stored as evidence.",
    )  # fmt: skip


class ContactUpsertSerializer(serializers.Serializer):
    email = serializers.CharField(max_length=254)
    first_name = serializers.CharField(required=False, allow_blank=True, max_length=200)
    last_name = serializers.CharField(required=False, allow_blank=True, max_length=200)
    phone = serializers.CharField(required=False, allow_blank=True, max_length=40)
    tags = serializers.ListField(
        child=serializers.CharField(max_length=100), required=False, max_length=MAX_TAGS,
        help_text="Tag names, added (never removed); a new name makes a new tag.",
    )  # fmt: skip
    consent = ConsentSerializer(
        required=False, help_text='Absent: as {"status": "none"}: stored, nothing asked.'
    )

    def validate_email(self, value: str) -> str:
        return _service_check(services.normalize_email, value)

    def validate_first_name(self, value: str) -> str:
        return _service_check(services.clean_text, value, max_length=100, field="first_name")

    def validate_last_name(self, value: str) -> str:
        return _service_check(services.clean_text, value, max_length=100, field="last_name")

    def validate_phone(self, value: str) -> str:
        return _service_check(services.normalize_phone, value)


class TagNamesSerializer(serializers.Serializer):
    tags = serializers.ListField(
        child=serializers.CharField(max_length=100), min_length=1, max_length=MAX_TAGS
    )


class ContactFilterSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=Contact.Status.choices, required=False)
    source = serializers.ChoiceField(choices=Contact.Source.choices, required=False)
    tag = serializers.CharField(required=False, max_length=100, help_text="A tag's name.")
    created_after = serializers.DateTimeField(required=False)
    q = serializers.CharField(
        required=False, max_length=254,
        help_text="An address or its start (anna@, anna@shop.example), a phone number, or a "
        "name's start: the prefix searches the indexes serve (@example.com is not searched).",
    )  # fmt: skip


def _tags(names: list[str]) -> list[Tag]:
    try:
        return [services.tag_get_or_create(name=name) for name in dict.fromkeys(names)]
    except DjangoValidationError as exc:
        raise serializers.ValidationError({"tags": exc.messages}) from None


def _evidence(request: Request) -> services.Evidence:
    return evidence.from_request(request._request, "api", actor=request.auth.actor)


def _contact_response(contact: Contact, code: int = status.HTTP_200_OK) -> Response:
    contact = Contact.objects.prefetch_related("tags").get(pk=contact.pk)
    return Response(ContactSerializer(contact).data, status=code)


# --- contacts -------------------------------------------------------------------------

READS = {"list", "retrieve", "export"}


class ContactViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = ContactSerializer
    pagination_class = Cursor

    def get_permissions(self):
        return [CanReadContacts() if self.action in READS else CanWriteContacts()]

    def get_queryset(self):
        return Contact.objects.prefetch_related("tags")

    def filter_queryset(self, queryset):
        if self.action != "list":
            return queryset
        filters = ContactFilterSerializer(data=self.request.query_params)
        filters.is_valid(raise_exception=True)
        given = filters.validated_data
        if "status" in given:
            queryset = queryset.filter(status=given["status"])
        if "source" in given:
            queryset = queryset.filter(source=given["source"])
        if "tag" in given:
            # The tag first (a small table), then its link rows by their tag_id index.
            tag = Tag.objects.filter(name__iexact=given["tag"].strip()).first()
            queryset = queryset.filter(tags=tag) if tag else queryset.none()
        if "created_after" in given:
            queryset = queryset.filter(created_at__gt=given["created_after"])
        if given.get("q", "").strip():
            # The admin's search: prefix lookups on indexed columns, no LIKE '%…%'.
            queryset = selectors.contacts_search(queryset, given["q"])
        return queryset

    @extend_schema(parameters=[ContactFilterSerializer])
    def list(self, request, *args, **kwargs):
        """Contacts, newest first, a page at a time (follow `next`)."""
        return super().list(request, *args, **kwargs)

    @extend_schema(
        request=ContactUpsertSerializer,
        responses={
            200: OpenApiResponse(ContactSerializer, description="Updated"),
            201: OpenApiResponse(ContactSerializer, description="Created"),
            409: OpenApiResponse(Problem, description="The address was erased"),
        },
    )
    def create(self, request):
        """Create or update a contact by email, with the consent your records hold."""
        given = ContactUpsertSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        consent = data.get("consent") or {}
        with transaction.atomic():
            record = Record(
                email=data["email"],
                ask=CONSENT_ASKS[consent.get("status", "none")],
                consent_at=consent.get("at"),
                first_name=data.get("first_name") or None,
                last_name=data.get("last_name") or None,
                phone=data.get("phone") or None,
                tags=tuple(_tags(data.get("tags", []))),
                consent_text=consent.get("text", ""),
            )
            synced = contact_sync(
                record=record, evidence=_evidence(request), source=Contact.Source.API
            )
            if synced.contact is None:
                transaction.set_rollback(True)  # nor the tags it would have made
        if synced.contact is None:
            return Response(
                {
                    "detail": "This address was erased at its owner's request and is not "
                    "added again, except with an opt-in given after the erasure: "
                    'consent {"status": "pending" or "subscribed", "at": <when>} '
                    "(it is then sent a double opt-in request)."
                },
                status=status.HTTP_409_CONFLICT,
            )
        code = status.HTTP_201_CREATED if synced.created else status.HTTP_200_OK
        return _contact_response(synced.contact, code)

    @extend_schema(request=None, responses={204: None})
    def destroy(self, request, pk=None):
        """Erase the contact and its history (GDPR Art. 17): only a hash of the address
        is kept, so it is not imported or synced back."""
        contact = self.get_object()
        services.contact_erase(contact=contact, actor=request.auth.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses=ContactSerializer)
    @action(detail=True, methods=["post"])
    def unsubscribe(self, request, pk=None):
        """Unsubscribe the contact (the person asked you to), with a consent event."""
        contact = services.contact_unsubscribe(
            contact=self.get_object(), evidence=_evidence(request)
        )
        return _contact_response(contact)

    @extend_schema(methods=["POST"], request=TagNamesSerializer, responses=ContactSerializer)
    @extend_schema(
        methods=["DELETE"],
        parameters=[
            OpenApiParameter(
                "tags", str, many=True, explode=True, required=True,
                description="A tag name to remove; repeat it for more. A JSON body "
                '{"tags": [...]} is read too, for clients that send one.',
            )
        ],
        responses={200: ContactSerializer},  # a dict: else a DELETE is shown as a 204
    )  # fmt: skip
    @action(detail=True, methods=["post", "delete"])
    def tags(self, request, pk=None):
        """POST adds the tags (made if new); DELETE removes them (names no contact has
        are ignored)."""
        contact = self.get_object()
        # A DELETE's body is allowed but not described by OpenAPI, and some proxies drop
        # it: the names may come in the query instead.
        body = request.data if request.data or request.method == "POST" else None
        if body is None:
            body = {"tags": request.query_params.getlist("tags")}
        given = TagNamesSerializer(data=body)
        given.is_valid(raise_exception=True)
        names = given.validated_data["tags"]
        one = Contact.objects.filter(pk=contact.pk)
        with transaction.atomic():
            if request.method == "POST":
                for tag in _tags(names):
                    services.contacts_tag(contacts=one, tag=tag)
            else:
                for name in names:
                    tag = Tag.objects.filter(name__iexact=name.strip()).first()
                    if tag is not None:
                        services.contacts_untag(contacts=one, tag=tag)
        return _contact_response(contact)

    @extend_schema(
        responses=ContactPersonalDataSerializer,
        description="Everything held about the person (GDPR Art. 15/20), as the admin's "
        "export gives it, with every consent event, oldest first.",
    )
    @action(detail=True, methods=["get"])
    def export(self, request, pk=None):
        """Everything held about the contact, consent events included."""
        return Response(selectors.contact_personal_data(self.get_object()))


# --- tags -----------------------------------------------------------------------------


class TagViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    serializer_class = TagSerializer
    pagination_class = TagCursor
    permission_classes = [CanReadContacts]
    queryset = Tag.objects.all()


# --- signups --------------------------------------------------------------------------


class SignupSerializer(serializers.Serializer):
    """A person signing up through one of your forms, posted by your server (a headless
    storefront, an app, a till). The form's own fields and rules apply (required names,
    its consent checkbox), and its double opt-in, tags and welcome email."""

    form = serializers.CharField(
        max_length=32, help_text="The signup form's public key (the key in its snippets)."
    )
    email = serializers.CharField(max_length=320)
    first_name = serializers.CharField(required=False, allow_blank=True, max_length=1000)
    last_name = serializers.CharField(required=False, allow_blank=True, max_length=1000)
    phone = serializers.CharField(required=False, allow_blank=True, max_length=100)
    consent = serializers.BooleanField(
        required=False,
        default=False,
        help_text="The person ticked the form's consent box (required when the form has "
        "one); its text is stored with the signup.",
    )
    ip = serializers.IPAddressField(
        required=False,
        allow_null=True,
        help_text="The person's IP address as your server saw it, kept as evidence.",
    )
    user_agent = serializers.CharField(required=False, allow_blank=True, max_length=500)


class SignupAcceptedSerializer(serializers.Serializer):
    detail = serializers.CharField()
    double_opt_in = serializers.BooleanField()


class SignupEventSerializer(serializers.ModelSerializer):
    """A signup as its consent event records it."""

    email = serializers.CharField(source="contact.email")
    contact = serializers.IntegerField(source="contact_id")
    form = serializers.CharField(source="signup_form.public_key", allow_null=True)
    at = serializers.DateTimeField(source="created_at")

    class Meta:
        model = ConsentEvent
        fields = ["id", "at", "contact", "email", "form", "method", "status_before",
                  "status_after", "consent_text"]  # fmt: skip
        read_only_fields = fields


class SignupFilterSerializer(serializers.Serializer):
    form = serializers.CharField(required=False, max_length=32, help_text="A form's key.")
    created_after = serializers.DateTimeField(required=False)


class SignupViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    serializer_class = SignupEventSerializer
    pagination_class = Cursor

    def get_permissions(self):
        return [CanReadContacts() if self.action == "list" else CanWriteContacts()]

    def get_queryset(self):
        return ConsentEvent.objects.filter(kind=ConsentEvent.Kind.SIGNUP).select_related(
            "contact", "signup_form"
        )

    def filter_queryset(self, queryset):
        filters = SignupFilterSerializer(data=self.request.query_params)
        filters.is_valid(raise_exception=True)
        given = filters.validated_data
        if "form" in given:
            queryset = queryset.filter(signup_form__public_key=given["form"])
        if "created_after" in given:
            queryset = queryset.filter(created_at__gt=given["created_after"])
        return queryset

    @extend_schema(parameters=[SignupFilterSerializer])
    def list(self, request, *args, **kwargs):
        """Signups through your forms (and the API), newest first, a page at a time."""
        return super().list(request, *args, **kwargs)

    @extend_schema(
        request=SignupSerializer,
        responses={
            202: OpenApiResponse(SignupAcceptedSerializer, description="Taken"),
            404: OpenApiResponse(Problem, description="No enabled form has this key"),
        },
    )
    def create(self, request):
        """Sign a person up through one of your forms, as its public form would: a new
        address is stored pending and sent the double opt-in email (or subscribed at once
        if the form is single opt-in); a known one is treated as signing up again (it is
        never re-subscribed without its owner's click)."""
        given = SignupSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        signup_form = selectors.signup_form_active(data["form"])
        if signup_form is None:
            raise NotFound("No enabled signup form has this key (`form`).")
        # The form's own rules: the same fields, required ones and messages as its page.
        fields = {k: data[k] for k in ("email", "first_name", "last_name", "phone") if k in data}
        if data["consent"]:
            fields["consent"] = "on"
        form = PublicSignupForm(fields, signup_form=signup_form)
        if not form.is_valid():
            raise serializers.ValidationError(form.errors_json())
        cleaned = form.cleaned_data
        person = services.Evidence(
            method="api",
            ip=data.get("ip"),
            user_agent=data.get("user_agent", ""),
            actor=request.auth.actor,
        )
        with transaction.atomic():
            services.contact_subscribe(
                form=signup_form,
                email=cleaned["email"],
                first_name=cleaned.get("first_name", ""),
                last_name=cleaned.get("last_name", ""),
                phone=cleaned.get("phone", ""),
                evidence=person,
            )
        detail = (
            "Signed up: a double opt-in email asks them to confirm."
            if signup_form.double_opt_in
            else "Signed up."
        )
        return Response(
            {"detail": detail, "double_opt_in": signup_form.double_opt_in},
            status=status.HTTP_202_ACCEPTED,
        )
