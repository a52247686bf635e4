import factory
from django.utils import timezone

from audience.models import Contact, SignupForm, Tag


class TagFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tag
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"tag-{n}")


class SignupFormFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = SignupForm

    name = factory.Sequence(lambda n: f"Form {n}")
    public_key = factory.Sequence(lambda n: f"form{n}")
    consent_text = "Yes, email me news. I can unsubscribe at any time."
    allowed_origins = "https://shop.example.com"


class ContactFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Contact

    email = factory.Sequence(lambda n: f"person{n}@example.com")
    first_name = "Ada"
    last_name = "Lovelace"
    status = Contact.Status.SUBSCRIBED
    # A pending contact came from a signup: it has an open double opt-in request.
    optin_requested_at = factory.LazyAttribute(
        lambda o: timezone.now() if o.status == Contact.Status.PENDING else None
    )
