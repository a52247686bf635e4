"""Segments: rules → one queryset of contacts.

A segment's ``rules`` is a list of small dicts, ``{"field": …, "op": …, "value": …}``
(attribute rules also carry a ``"key"``), combined with AND (``match="all"``) or OR
(``match="any"``). ``contacts_matching`` turns them into ONE SQL query: plain column
conditions for the contact's own fields and ``EXISTS`` subqueries for tags and
deliveries, so PostgreSQL plans a semi-join over the indexes instead of Python looping
over a million contacts. The admin's live count, the export and the sender all use it.

Rules carry no status filter of their own unless they ask for one: the sender adds
``status=subscribed`` itself, and ``segment_count`` counts subscribed recipients.

Segments belong to the audience, which sits below campaigns: nothing here imports
campaigns. Rules that read another app's tables (campaigns' "engaged" and "received
campaign", over Delivery rows) are plugged in by that app with ``rule_register`` from its
``AppConfig.ready``, so the arrow runs from campaigns to the audience and never back.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.db.models.fields.json import KeyTextTransform
from django.db.models.lookups import IContains, IExact
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from audience.models import Contact, SignupForm, Tag

MAX_RULES = 50
MAX_DAYS = 36_500


@dataclass(frozen=True)
class RuleField:
    label: str
    ops: dict[str, str]  # op → label
    value: str  # what the value is: tag, status, source, form, date, days, none, text, campaign


@dataclass(frozen=True)
class PluggedRule:
    """A rule field another app contributes, with its own check and SQL condition.

    ``check(index, op, value)`` raises ``rule_error(index, …)`` for a bad value;
    ``condition(op, value, now)`` returns the rule as a Q over Contact (an ``Exists`` on
    the app's own table, correlated on ``OuterRef("pk")``); ``choices()`` lists the
    (value, label) pairs the admin's rule builder offers, bounded.
    """

    field: RuleField
    check: Callable[[int, str, object], None]
    condition: Callable[[str, object, dt.datetime], Q]
    choices: Callable[[], list] | None = None


# The vocabulary of rules, also what the admin's rule editor offers. Plugged rules are
# appended by rule_register when their app is ready.
RULE_FIELDS: dict[str, RuleField] = {
    "tag": RuleField("Tag", {"has": "has tag", "lacks": "lacks tag"}, "tag"),
    "status": RuleField("Status", {"is": "is", "is_not": "is not"}, "status"),
    "source": RuleField("Source", {"is": "is", "is_not": "is not"}, "source"),
    "signup_form": RuleField(
        "Signup form", {"is": "signed up through", "is_not": "did not sign up through"}, "form"
    ),
    "signed_up": RuleField(
        "Signed up",
        {"before": "before (date)", "after": "on or after (date)", "within_days": "within N days"},
        "date_or_days",
    ),
    "phone": RuleField(
        "Phone", {"present": "has a phone number", "absent": "has no phone"}, "none"
    ),
    "attribute": RuleField("Attribute", {"equals": "equals", "contains": "contains"}, "attribute"),
}
_PLUGGED: dict[str, PluggedRule] = {}


def rule_register(*, key: str, rule: PluggedRule) -> None:
    """Add a rule field of another app's (called from its AppConfig.ready; idempotent)."""
    if key in RULE_FIELDS and key not in _PLUGGED:
        raise ValueError(f"rule field {key!r} is the audience's own")
    RULE_FIELDS[key] = rule.field
    _PLUGGED[key] = rule


def rule_choices(value_kind: str) -> list:
    """The (value, label) pairs plugged rules offer for a kind of value ("campaign")."""
    for rule in _PLUGGED.values():
        if rule.field.value == value_kind and rule.choices is not None:
            return list(rule.choices())
    return []


def rule_error(index: int, message: str) -> ValidationError:
    """The error for rule number ``index`` (0-based): "Rule 3: …"."""
    return ValidationError(f"Rule {index + 1}: {message}", code="invalid_rule")


def check_days(index: int, value) -> int:
    """A whole number of days between 1 and MAX_DAYS, or the rule's error."""
    try:
        days = int(value)
    except (TypeError, ValueError):
        raise rule_error(index, f"enter a whole number of days, not {value!r}.") from None
    if isinstance(value, float) and not value.is_integer():
        raise rule_error(index, f"enter a whole number of days, not {value!r}.")
    if not 1 <= days <= MAX_DAYS:
        raise rule_error(index, f"the number of days must be between 1 and {MAX_DAYS}.")
    return days


def _moment(index: int, value) -> dt.datetime:
    """A date ("2024-03-01") means the start of that day in the admin's time zone."""
    text = str(value or "").strip()
    try:
        moment = parse_datetime(text)
        if moment is None:
            day = parse_date(text)
            if day is not None:
                moment = dt.datetime.combine(day, dt.time.min)
    except ValueError:
        moment = None
    if moment is None:
        raise rule_error(index, f"enter a date as YYYY-MM-DD, not {text!r}.")
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


def check_id(index: int, value, what: str) -> int:
    """A row id, or the rule's error ("choose a campaign.")."""
    try:
        return int(value)
    except (TypeError, ValueError):
        raise rule_error(index, f"choose a {what}.") from None


def _check_rule(index: int, rule) -> None:
    if not isinstance(rule, dict):
        raise rule_error(index, "each rule must be an object with field, op and value.")
    field = rule.get("field")
    if field not in RULE_FIELDS:
        known = ", ".join(RULE_FIELDS)
        raise rule_error(index, f"unknown field {field!r}; use one of: {known}.")
    spec = RULE_FIELDS[field]
    op = rule.get("op")
    if op not in spec.ops:
        ops = ", ".join(spec.ops)
        raise rule_error(index, f"{spec.label.lower()} rules take op {ops}; got {op!r}.")
    value = rule.get("value")

    if field == "tag":
        name = str(value or "").strip()
        if not name:
            raise rule_error(index, "enter a tag name.")
        if not Tag.objects.filter(name__iexact=name).exists():
            raise rule_error(index, f"there is no tag named {name!r}.")
    elif field == "status":
        if value not in Contact.Status.values:
            raise rule_error(index, f"status must be one of {', '.join(Contact.Status.values)}.")
    elif field == "source":
        if value not in Contact.Source.values:
            raise rule_error(index, f"source must be one of {', '.join(Contact.Source.values)}.")
    elif field == "signup_form":
        pk = check_id(index, value, "signup form")
        if not SignupForm.objects.filter(pk=pk).exists():
            raise rule_error(index, f"there is no signup form with id {pk}.")
    elif field == "signed_up":
        if op == "within_days":
            check_days(index, value)
        else:
            _moment(index, value)
    elif field == "attribute":
        key = str(rule.get("key") or "").strip()
        if not key:
            raise rule_error(index, "enter the attribute's name (key).")
        if value is None or str(value) == "":
            raise rule_error(index, f"enter the value to compare attribute {key!r} with.")
    elif field in _PLUGGED:
        _PLUGGED[field].check(index, op, value)


def validate_rules(rules) -> None:
    """Raise ValidationError listing every bad rule ("Rule 2: …"), or return None."""
    if not isinstance(rules, list):
        raise ValidationError("Rules must be a list of rules.", code="invalid_rules")
    if len(rules) > MAX_RULES:
        raise ValidationError(f"A segment takes at most {MAX_RULES} rules.", code="too_many")
    errors: list[ValidationError] = []
    for index, rule in enumerate(rules):
        try:
            _check_rule(index, rule)
        except ValidationError as exc:
            errors.append(exc)
    if errors:
        raise ValidationError(errors)


def _rule_q(rule: dict) -> Q:
    """One rule as a Q. Assumes validate_rules passed; odd values still never crash."""
    field, op, value = rule["field"], rule["op"], rule.get("value")
    now = timezone.now()

    if field == "tag":
        through = Contact.tags.through
        has = Exists(
            through.objects.filter(
                contact_id=OuterRef("pk"), tag__name__iexact=str(value or "").strip()
            )
        )
        return Q(has) if op == "has" else ~Q(has)
    if field in ("status", "source"):
        q = Q(**{field: value})
        return q if op == "is" else ~q
    if field == "signup_form":
        q = Q(signup_form_id=int(value))
        # Django negates a nullable column as "NOT (x = v AND x IS NOT NULL)", so "did not
        # sign up through X" includes contacts with no form at all.
        return q if op == "is" else ~q
    if field == "signed_up":
        if op == "within_days":
            return Q(created_at__gte=now - dt.timedelta(days=int(value)))
        moment = _moment(0, value)
        return Q(created_at__lt=moment) if op == "before" else Q(created_at__gte=moment)
    if field == "phone":
        q = Q(phone="")
        return ~q if op == "present" else q
    if field == "attribute":
        text = KeyTextTransform(str(rule.get("key", "")).strip(), "attributes")
        lookup = IExact if op == "equals" else IContains
        return Q(lookup(text, str(value)))
    if field in _PLUGGED:
        return _PLUGGED[field].condition(op, value, now)
    raise ValueError(f"unknown rule field {field!r}")  # validate_rules keeps this unreachable


def contacts_matching(rules: list, match: str = "all") -> QuerySet[Contact]:
    """Contacts matching ``rules`` (AND when match is "all", OR when "any"); no rules: all."""
    if not rules:
        return Contact.objects.all()
    combined = Q()
    for rule in rules:
        q = _rule_q(rule)
        combined = combined | q if match == "any" else combined & q
    return Contact.objects.filter(combined)


def segment_contacts(segment) -> QuerySet[Contact]:
    """Contacts a segment's rules select, of any status (the sender adds subscribed)."""
    return contacts_matching(segment.rules or [], segment.match)


def subscribed_count(queryset: QuerySet[Contact]) -> int:
    return queryset.filter(status=Contact.Status.SUBSCRIBED).count()


def segment_count(segment) -> int:
    """How many subscribed contacts the segment would reach now."""
    return subscribed_count(segment_contacts(segment))


def audience_contacts(*, audience: str, segment=None, tag_ids=()) -> QuerySet[Contact]:
    """Subscribed contacts a campaign's audience choice reaches, before it is saved.

    Used for the live count while composing; a saved campaign's recipients come from
    campaigns.selectors.campaign_recipients.
    """
    subscribed = Contact.objects.filter(status=Contact.Status.SUBSCRIBED)
    if audience == "segment":
        if segment is None:
            return subscribed.none()
        return segment_contacts(segment).filter(status=Contact.Status.SUBSCRIBED)
    if audience == "tags":
        if not tag_ids:
            return subscribed.none()
        through = Contact.tags.through
        return subscribed.filter(
            Exists(through.objects.filter(contact_id=OuterRef("pk"), tag_id__in=list(tag_ids)))
        )
    return subscribed
