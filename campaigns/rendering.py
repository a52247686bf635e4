"""Turn a campaign into each recipient's email.

A campaign is compiled once per process into a *skeleton*: the subject, the HTML part
and the text part as lists of literal strings and numbered slots. A slot is a merge
field (`{{ first_name|default:"friend" }}`, an `{% if %}` block) or a per-contact link
(unsubscribe, preferences). Rendering for one contact fills the slots, so a message
costs a few string joins, not a template render plus Markdown.

The same skeleton drives batch sending: the literal parts go to the provider once per
API call, with each slot written in the provider's own placeholder syntax, and each
recipient's slot values go as `merge_data`. Slot values are rendered once escaped for
HTML and once raw for text, so a name like `<b>Ann & Bob</b>` shows as typed in both.

Merge fields use the sandboxed engine of audience.mailmerge, which the double opt-in
confirmation mail shares.
"""

from __future__ import annotations

import binascii
import hashlib
import re
import time
from dataclasses import dataclass, field
from email.utils import formataddr

from django.conf import settings
from django.core import signing
from django.core.signing import b62_encode
from django.template import Context
from django.template.base import TextNode
from django.template.loader import render_to_string
from django.urls import reverse

# The sandbox and the Markdown pipeline are shared with the audience's confirmation mail
# (audience.mailmerge); check_template and safe_url are still imported from here.
from audience.mailmerge import (  # noqa: F401 (check_template, safe_url: re-exported)
    _IDENTIFIER_RE,
    MERGE_FIELDS,
    SENDER_FIELDS,
    _contact_context,
    _key,
    _mark_urls,
    _plain_in_html,
    _protect,
    _restore,
    _source_engine,
    accent_color,
    check_template,
    html_to_text,
    markdown_to_html,
    safe_url,
)
from audience.tokens import _SALTS, _fingerprint, contact_url

# --- signed links, fast ----------------------------------------------------------------


class _Links:
    """Each contact's unsubscribe and preferences URLs, as audience.tokens.contact_url
    makes them (django.core.signing.dumps, same salts and payload), without its per-call
    overhead: reverse() and re-deriving the HMAC key cost ~100 µs a message, minutes at a
    million. It checks itself against contact_url when built and, should the token
    format ever drift, falls back to contact_url itself."""

    PURPOSES = ("unsubscribe", "preferences")

    def __init__(self, secret: str, site_url: str):
        self.paths = {}
        self.macs = {}
        for purpose in self.PURPOSES:
            path = reverse(f"audience:{purpose}", args=["TOKEN"])
            head, tail = path.split("TOKEN")
            self.paths[purpose] = (site_url + head, tail)
            # django.utils.crypto.salted_hmac(salt + "signer", value, secret), sha256
            key = hashlib.sha256((_SALTS[purpose] + "signer").encode() + secret.encode())
            # HMAC-SHA256 (RFC 2104) with its two padded-key states hashed once: a link
            # then costs two hash copies, cheaper than hmac.new/copy or hmac.digest.
            padded = key.digest().ljust(64, b"\0")
            self.macs[purpose] = (
                hashlib.sha256(bytes(b ^ 0x36 for b in padded)),
                hashlib.sha256(bytes(b ^ 0x5C for b in padded)),
            )
        self.second = -1
        self.stamp = ""
        self.fast = True
        self.fast = self._agrees_with_contact_url()

    def _agrees_with_contact_url(self) -> bool:
        sample = _Sample(pk=424242, email="Sample.Person@example.com")
        mine = self.urls(sample)
        for purpose, url in zip(self.PURPOSES, mine, strict=True):
            theirs = contact_url(purpose, sample)
            token = url.removeprefix(self.paths[purpose][0]).removesuffix(self.paths[purpose][1])
            try:
                same = signing.loads(token, salt=_SALTS[purpose]) == signing.loads(
                    theirs.rstrip("/").rsplit("/", 1)[-1], salt=_SALTS[purpose]
                )
            except signing.BadSignature:
                same = False
            if not same or url.split(":")[0] != theirs.split(":")[0]:
                return False
        return True

    def urls(self, contact) -> tuple[str, str]:
        if not self.fast:
            return tuple(contact_url(purpose, contact) for purpose in self.PURPOSES)
        # json.dumps([pk, fingerprint], separators=(",", ":")) spelled out: the
        # fingerprint is hex, so there is nothing to escape (the self-check above holds
        # this to signing.dumps).
        payload = f'[{int(contact.pk)},"{_fingerprint(contact)}"]'
        now = int(time.time())
        if now != self.second:
            self.second, self.stamp = now, b62_encode(now)
        value = f"{_b64(payload.encode())}:{self.stamp}"
        raw = value.encode()
        head, tail = self.paths["unsubscribe"]
        phead, ptail = self.paths["preferences"]
        return (
            f"{head}{value}:{_b64(_hmac(self.macs['unsubscribe'], raw))}{tail}",
            f"{phead}{value}:{_b64(_hmac(self.macs['preferences'], raw))}{ptail}",
        )


def _hmac(pads, message: bytes) -> bytes:
    inner_pad, outer_pad = pads
    inner = inner_pad.copy()
    inner.update(message)
    outer = outer_pad.copy()
    outer.update(inner.digest())
    return outer.digest()


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(data: bytes) -> str:
    """django.core.signing.b64_encode(data).decode(), without base64's Python layers."""
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode()


@dataclass
class _Sample:
    pk: int
    email: str


_links: dict[tuple[str, str], _Links] = {}


def _links_for_settings() -> _Links:
    key = (settings.SECRET_KEY, settings.SITE_URL)
    links = _links.get(key)
    if links is None:
        links = _links[key] = _Links(*key)
    return links


def contact_links(contact) -> tuple[str, str]:
    """(unsubscribe URL, preferences URL) for the contact, as contact_url makes them."""
    return _links_for_settings().urls(contact)


# --- the compiled skeleton -------------------------------------------------------------

UNSUBSCRIBE = "unsubscribe_url"
PREFERENCES = "preferences_url"
_MARKER = "\x00slot:{}\x00"
_MARKER_RE = re.compile("\x00slot:(\\w+)\x00")


@dataclass
class Skeleton:
    """Each part is a list of literal strings and slot numbers (ints)."""

    subject: list
    html: list
    text: list
    # slot number → ("node", Node, autoescape, fields it reads or None, memo) or ("url", purpose)
    slots: list = field(default_factory=list)
    from_email: str = ""
    reply_to: list = field(default_factory=list)
    template: object = None  # any Template of the sandbox engine, for node contexts
    _plan: tuple | None = field(default=None, repr=False, compare=False)

    def values(self, contact, sender) -> tuple[list[str], dict[str, str]]:
        """Every slot's value for one contact, and the contact's signed links."""
        out, unsubscribe, preferences = self.slot_values(contact, sender)
        return out, {UNSUBSCRIBE: unsubscribe, PREFERENCES: preferences}

    def slot_values(self, contact, sender) -> tuple[list[str], str, str]:
        """Every slot's value for one contact, its unsubscribe URL and its preferences
        URL: values() without building a dict per recipient (the batch sender's loop)."""
        plan = self._plan
        if plan is None:
            plan = self._plan = self._make_plan()
        field_sets, steps = plan
        data = None
        contexts: dict[bool, Context] = {}
        unsubscribe, preferences = _links_for_settings().urls(contact)
        # A slot's value depends only on the fields it reads, and first names repeat:
        # each distinct input is rendered once per process, not per contact. The memo
        # key for each distinct set of fields is worked out once per contact.
        keys = [
            (_key(contact, names[0]),)
            if len(names) == 1
            else tuple([_key(contact, name) for name in names])
            for names in field_sets
        ]
        out = []
        append = out.append
        for kind, index, node, autoescape, memo in steps:
            if kind == 0:
                append(unsubscribe)
                continue
            if kind == 1:
                append(preferences)
                continue
            key = keys[index] if index is not None else None
            if key is not None:
                value = memo.get(key)
                if value is not None:
                    append(value)
                    continue
            if data is None:
                data = _contact_context(contact, sender)
            context = contexts.get(autoescape)
            if context is None:
                context = contexts[autoescape] = Context(data, autoescape=autoescape)
                context.template = self.template
            value = node.render_annotated(context)
            if key is not None and len(memo) < 50_000:
                memo[key] = value
            append(value)
        return out, unsubscribe, preferences

    def _make_plan(self) -> tuple[list, list]:
        """Each slot as (kind, field-set index, node, autoescape, memo): kind 0 is the
        unsubscribe URL, 1 the preferences URL, 2 a merge field."""
        field_sets: list[tuple] = []
        steps = []
        for slot in self.slots:
            if slot[0] == "url":
                steps.append((0 if slot[1] == UNSUBSCRIBE else 1, None, None, None, None))
                continue
            _, node, autoescape, fields, memo = slot
            index = None
            if fields is not None:
                if fields not in field_sets:
                    field_sets.append(fields)
                index = field_sets.index(fields)
            steps.append((2, index, node, autoescape, memo))
        return field_sets, steps

    @staticmethod
    def fill(part: list, values: list[str]) -> str:
        return "".join(values[p] if type(p) is int else p for p in part)

    @staticmethod
    def fill_placeholders(part: list, placeholder) -> str:
        return "".join(placeholder(p) if type(p) is int else p for p in part)


class _SkeletonBuilder:
    def __init__(self):
        self.slots: list = []
        self.index: dict = {}

    def slot(self, key, value) -> int:
        if key not in self.index:
            self.index[key] = len(self.slots)
            self.slots.append(value)
        return self.index[key]

    def template_part(self, source: str, *, autoescape: bool) -> list:
        template = _source_engine.from_string(source)
        self.template = template
        part: list = []
        nodes = list(template.nodelist)
        for index, node in enumerate(nodes):
            if isinstance(node, TextNode):
                part.append(node.s)
                continue
            start = node.token.position[0]
            end = nodes[index + 1].token.position[0] if index + 1 < len(nodes) else len(source)
            text = source[start:end]
            names = set(_IDENTIFIER_RE.findall(text)) & set(MERGE_FIELDS)
            # An address is unique to its contact: remembering values keyed on it only
            # grows memory.
            # Sender fields are fixed for the skeleton's life (they are part of its key).
            names -= set(SENDER_FIELDS)
            fields = None if "email" in names else tuple(sorted(names))
            slot = ("node", node, autoescape, fields, {})
            part.append(self.slot((text, autoescape), slot))
        return part

    def layout_part(self, rendered: str, pieces: dict[str, list]) -> list:
        """Split a layout rendered with markers into literals, inlining `pieces`."""
        part: list = []
        pos = 0
        for match in _MARKER_RE.finditer(rendered):
            part.append(rendered[pos : match.start()])
            name = match.group(1)
            if name in pieces:
                part.extend(pieces[name])
            else:
                part.append(self.slot(("url", name), ("url", name)))
            pos = match.end()
        part.append(rendered[pos:])
        return [p for p in part if p != ""]


def _sender_key(campaign, sender) -> str:
    raw = "\x1f".join(
        str(v)
        for v in (
            campaign.pk,
            campaign.subject,
            campaign.preheader,
            campaign.body,
            sender.from_name,
            sender.from_email,
            sender.reply_to,
            sender.postal_address,
            sender.shop_url,
            sender.phone,
            sender.logo_url,
            sender.accent_color,
            settings.SITE_URL,
        )
    )
    return hashlib.sha256(raw.encode()).hexdigest()


_cache: dict[str, Skeleton] = {}


def compile_campaign(campaign, sender) -> Skeleton:
    """The campaign's skeleton, built once per process per content version."""
    key = _sender_key(campaign, sender)
    skeleton = _cache.get(key)
    if skeleton is None:
        if len(_cache) > 32:
            _cache.clear()
        skeleton = _cache[key] = _build(campaign, sender)
    return skeleton


def _build(campaign, sender) -> Skeleton:
    for text in (campaign.subject, campaign.preheader, campaign.body):
        check_template(text)
    builder = _SkeletonBuilder()
    protected, tags = _protect(campaign.body or "")
    urls: list[str] = []
    clean = markdown_to_html(protected, urls)
    body_html, body_text = _mark_urls(clean, html_to_text(clean), urls)
    body_html, body_text = _restore(body_html, tags), _restore(body_text, tags)

    subject = " ".join((campaign.subject or "").split())
    subject_part = builder.template_part(subject, autoescape=False)
    pieces_html = {
        "body": builder.template_part(body_html, autoescape=True),
        "preheader": builder.template_part(
            _plain_in_html(campaign.preheader or ""), autoescape=True
        ),
        "subject": builder.template_part(_plain_in_html(subject), autoescape=True),
    }
    pieces_text = {
        "body": builder.template_part(body_text, autoescape=False),
        "preheader": builder.template_part(campaign.preheader or "", autoescape=False),
        "subject": subject_part,
    }
    accent = accent_color(sender.accent_color)
    context = {
        "sender": sender,
        "accent_color": accent,
        "has_preheader": bool(campaign.preheader),
        **{name: _MARKER.format(name) for name in ("body", "preheader", "subject")},
        UNSUBSCRIBE: _MARKER.format(UNSUBSCRIBE),
        PREFERENCES: _MARKER.format(PREFERENCES),
    }
    html = render_to_string("email/campaign.html", context)
    text = render_to_string("email/campaign.txt", context)
    from_email = (
        formataddr((sender.from_name, sender.from_email)) if sender.from_name else sender.from_email
    ) or settings.DEFAULT_FROM_EMAIL
    return Skeleton(
        subject=subject_part,
        html=builder.layout_part(html, pieces_html),
        text=builder.layout_part(text, pieces_text),
        slots=builder.slots,
        from_email=from_email,
        reply_to=[sender.reply_to] if sender.reply_to else [],
        template=builder.template,
    )


# --- one recipient's message -------------------------------------------------------------


@dataclass
class RenderedMessage:
    subject: str
    html: str
    text: str
    headers: dict[str, str]
    from_email: str = ""
    reply_to: list[str] = field(default_factory=list)


def unsubscribe_headers(unsubscribe_url: str) -> dict[str, str]:
    """RFC 2369 / RFC 8058 headers: the HTTPS one-click URL first, then mailto if set."""
    value = f"<{unsubscribe_url}>"
    mailto = getattr(settings, "UNSUBSCRIBE_MAILTO", "")
    if mailto:
        value += f", <mailto:{mailto}?subject=unsubscribe>"
    return {"List-Unsubscribe": value, "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


def render_from_skeleton(skeleton: Skeleton, contact, sender) -> RenderedMessage:
    values, urls = skeleton.values(contact, sender)
    return RenderedMessage(
        subject=" ".join(Skeleton.fill(skeleton.subject, values).split()),
        html=Skeleton.fill(skeleton.html, values),
        text=Skeleton.fill(skeleton.text, values),
        headers=unsubscribe_headers(urls[UNSUBSCRIBE]),
        from_email=skeleton.from_email,
        reply_to=skeleton.reply_to,
    )


def render_message(*, campaign, contact, sender) -> RenderedMessage:
    """The exact email `contact` gets for `campaign` (also the admin's preview)."""
    return render_from_skeleton(compile_campaign(campaign, sender), contact, sender)
