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

Merge fields use a sandboxed Django template engine: no loaders, no `{% load %}` /
`{% include %}` / `{% extends %}`, a handful of tags and filters, and a context made
only of the contact's own plain values (no model objects to walk).
"""

from __future__ import annotations

import binascii
import hashlib
import html as htmllib
import json
import re
import time
from dataclasses import dataclass, field
from email.utils import formataddr
from html.parser import HTMLParser

import markdown
import nh3
from django.conf import settings
from django.core import signing
from django.core.exceptions import ValidationError
from django.core.signing import b62_encode
from django.template import (
    Context,
    Engine,
    Library,
    TemplateSyntaxError,
    defaultfilters,
    defaulttags,
)
from django.template.base import Node, TextNode, VariableNode
from django.template.loader import render_to_string
from django.urls import reverse

from audience.tokens import _SALTS, _fingerprint, contact_url

# --- the sandbox -------------------------------------------------------------------

# `safe`, `safeseq`, `escape` off-switches and anything that reads outside the value
# (e.g. `date` with settings, `pprint`) stay out: a merge field can only shape a string.
_SAFE_FILTERS = [
    "default",
    "default_if_none",
    "upper",
    "lower",
    "title",
    "capfirst",
    "truncatechars",
    "truncatewords",
    "urlencode",
    "cut",
    "first",
    "length",
    "yesno",
]
_SAFE_TAGS = ["if", "comment", "firstof"]

_library = Library()
for _name in _SAFE_FILTERS:
    _library.filters[_name] = defaultfilters.register.filters[_name]
for _name in _SAFE_TAGS:
    _library.tags[_name] = defaulttags.register.tags[_name]

# Links survive only with one of these schemes, whatever a merge field puts in them.
SAFE_URL_SCHEMES = frozenset({"http", "https", "mailto", "tel"})
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_URL_NOISE = "".join(chr(c) for c in range(0x21))  # what a browser strips from the ends


def safe_url(url: str) -> str:
    """`url` if it is an http, https, mailto or tel link, else "".

    Read as a browser reads an href: C0 controls and spaces at either end dropped, tabs
    and newlines anywhere removed (so " JaVa\tScRiPt:" is javascript:). A URL without a
    scheme is refused too: a relative link means nothing in an email."""
    url = url.strip(_URL_NOISE).replace("\t", "").replace("\n", "").replace("\r", "")
    match = _SCHEME_RE.match(url)
    if match is None or match.group(1).lower() not in SAFE_URL_SCHEMES:
        return ""
    return url


class _SafeUrlNode(Node):
    """A link target with merge fields in it, checked per contact once filled in.

    The sanitiser only ever sees the placeholder, so the check has to happen after the
    merge: the whole value is rendered, read as the browser would read it, and kept only
    with a safe scheme. In HTML it renders the whole attribute (` href="…"`), or nothing,
    so an unsafe target leaves plain text; in the text part ` (url)`, or nothing."""

    def __init__(self, attribute: str, nodelist):
        self.attribute = attribute
        self.nodelist = nodelist

    def render(self, context) -> str:
        value = self.nodelist.render(context)
        # HTML parts render escaped (literals were escaped too): the browser's value is
        # the unescaped one, so entity-encoded schemes are caught here.
        url = safe_url(htmllib.unescape(value) if context.autoescape else value)
        if not url:
            return ""
        if self.attribute == "text":
            return f" ({url})"
        return f' {self.attribute}="{htmllib.escape(url)}"'


class _PlainNode(Node):
    """Plain text (the subject, the preheader) placed in HTML: rendered unescaped, as
    the text part has it, then escaped whole, so neither its literal text nor an
    {% if %} block's body can put markup into the page."""

    def __init__(self, nodelist):
        self.nodelist = nodelist

    def render(self, context) -> str:
        autoescape = context.autoescape
        context.autoescape = False
        try:
            value = self.nodelist.render(context)
        finally:
            context.autoescape = autoescape
        return htmllib.escape(value)


# Tags the skeleton compiler writes itself: only the compiling engine knows them, so
# an author who types one gets check_template's "invalid block tag".
_internal_library = Library()


@_internal_library.tag("zqsafeurl")
def _safe_url_tag(parser, token):
    attribute = token.split_contents()[1]
    nodelist = parser.parse(("endzqsafeurl",))
    parser.delete_first_token()
    return _SafeUrlNode(attribute, nodelist)


@_internal_library.tag("zqplain")
def _plain_tag(parser, token):
    nodelist = parser.parse(("endzqplain",))
    parser.delete_first_token()
    return _PlainNode(nodelist)


_engine = Engine(dirs=[], app_dirs=False, loaders=[], libraries={}, builtins=[])
_engine.template_builtins = [_library]
# The same sandbox with debug on, only for compiling skeletons: it records where each
# tag sits in the source, which is how a slot knows its whole text (an {% if %} block
# with its body) and which contact fields it reads.
_source_engine = Engine(dirs=[], app_dirs=False, loaders=[], libraries={}, builtins=[], debug=True)
_source_engine.template_builtins = [_library, _internal_library]
_IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

CONTACT_FIELDS = ("email", "first_name", "last_name", "full_name", "phone", "attributes")
# Read-only facts about the sender that starter templates may use.
SENDER_FIELDS = ("shop_url", "shop_phone", "from_name")
MERGE_FIELDS = CONTACT_FIELDS + SENDER_FIELDS


def check_template(text: str) -> None:
    """Raise ValidationError if `text` has bad merge-field syntax, a tag outside the
    sandbox, or a field that does not exist."""
    leftover = _TAG_RE.sub("", text or "")
    if "{{" in leftover or "{%" in leftover:
        raise ValidationError("Merge field error: a {{ or {% is never closed.")
    try:
        template = _engine.from_string(text or "")
    except TemplateSyntaxError as exc:
        raise ValidationError(f"Merge field error: {exc}") from None
    for node in template.nodelist.get_nodes_by_type(VariableNode):
        var = node.filter_expression.var
        lookups = getattr(var, "lookups", None)
        if lookups and lookups[0] not in MERGE_FIELDS:
            raise ValidationError(
                f"Unknown merge field {lookups[0]!r}. "
                f"Available: {', '.join(MERGE_FIELDS)} (and attributes.<name>)."
            )


def _key(contact, name: str):
    """A hashable stand-in for one merge field's value, for the render memo."""
    if name == "attributes":
        # The database's own JSON text when the sender fetched it that way.
        raw = getattr(contact, "attributes_json", None)
        return (
            raw if raw is not None else json.dumps(contact.attributes, sort_keys=True, default=str)
        )
    if name == "full_name":
        return (contact.first_name, contact.last_name)
    return getattr(contact, name)


def _contact_context(contact, sender) -> dict:
    attributes = contact.attributes if isinstance(contact.attributes, dict) else {}
    return {
        "email": contact.email,
        "first_name": contact.first_name,
        "last_name": contact.last_name,
        "full_name": f"{contact.first_name} {contact.last_name}".strip(),
        "phone": contact.phone,
        # Plain JSON scalars only: nothing a template could call or walk.
        "attributes": {
            str(k): v if isinstance(v, str | int | float | bool) else str(v)
            for k, v in attributes.items()
        },
        "shop_url": sender.shop_url,
        "shop_phone": sender.phone,
        "from_name": sender.from_name,
    }


# --- Markdown body → sanitised HTML and plain text ------------------------------------

_TAG_RE = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
_HOLE_RE = re.compile(r"zqmrg(\d+)qz")
_HTML_TAGS = nh3.ALLOWED_TAGS | {"font"}
_HTML_ATTRIBUTES = {
    **{tag: set(attrs) for tag, attrs in nh3.ALLOWED_ATTRIBUTES.items()},
    "*": {"style", "align", "width", "height", "title", "class"},
    "a": {"href", "title", "target"},
    "img": {"src", "alt", "width", "height", "style"},
}


def _protect(source: str) -> tuple[str, list[str]]:
    """Swap template tags for inert words so Markdown and the sanitiser leave them be
    (a `{{ x }}` inside a link URL would otherwise break the link)."""
    tags: list[str] = []

    def hole(match: re.Match) -> str:
        tags.append(match.group(0))
        return f"zqmrg{len(tags) - 1}qz"

    return _TAG_RE.sub(hole, source), tags


def _restore(text: str, tags: list[str]) -> str:
    return _HOLE_RE.sub(lambda m: tags[int(m.group(1))], text)


_URL_ATTRIBUTES = frozenset({"href", "src", "cite"})
_URL_MARK_RE = re.compile(r"zqurl(\d+)qz")
_URL_ATTRIBUTE_MARK_RE = re.compile(r' (\w+)="zqurl(\d+)qz"')


def markdown_to_html(source: str, urls: list[str] | None = None) -> str:
    """Markdown (and raw HTML) → sanitised HTML: only safe tags and attributes, and links
    only with an http, https, mailto or tel scheme.

    With `urls` given, a link target holding a protected merge field (a hole) is set
    aside there, decoded, and replaced by a `zqurl<n>qz` mark: its scheme is known only
    once the field is filled in, so _mark_urls turns it into a per-contact check."""

    def set_aside(element: str, attribute: str, value: str) -> str:
        if urls is not None and attribute in _URL_ATTRIBUTES and _HOLE_RE.search(value):
            urls.append(value)
            return f"zqurl{len(urls) - 1}qz"
        return value

    html = markdown.markdown(source, extensions=["extra", "sane_lists"], output_format="html")
    return nh3.clean(
        html,
        tags=_HTML_TAGS,
        attributes=_HTML_ATTRIBUTES,
        url_schemes=set(SAFE_URL_SCHEMES),
        attribute_filter=set_aside,
    )


def _mark_urls(html: str, text: str, urls: list[str]) -> tuple[str, str]:
    """Each set-aside link target as a {% zqsafeurl %} block: escaped in the HTML part
    (which renders escaped), as it was in the text part (which renders raw)."""

    def in_html(match: re.Match) -> str:
        attribute, index = match.group(1), int(match.group(2))
        if index >= len(urls):
            return match.group(0)
        value = htmllib.escape(urls[index])
        return f"{{% zqsafeurl {attribute} %}}{value}{{% endzqsafeurl %}}"

    def in_text(match: re.Match) -> str:
        index = int(match.group(1))
        if index >= len(urls):
            return match.group(0)
        return f"{{% zqsafeurl text %}}{urls[index]}{{% endzqsafeurl %}}"

    return _URL_ATTRIBUTE_MARK_RE.sub(in_html, html), _URL_MARK_RE.sub(in_text, text)


def _plain_in_html(text: str) -> str:
    """Template source that shows plain text `text` (with its merge fields) in HTML."""
    if not _TAG_RE.search(text):
        return htmllib.escape(text)
    return "{% zqplain %}" + text + "{% endzqplain %}"


class _TextMaker(HTMLParser):
    """Sanitised HTML → readable plain text: paragraphs, list bullets, link targets."""

    _BLOCKS = {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "table", "tr"}
    _BLOCKS |= {"blockquote", "pre", "hr", "center", "section", "header", "footer"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.href: list[str | None] = []
        self.link_text: list[str] = []
        self.pre = 0

    def _newlines(self, n: int) -> None:
        text = "".join(self.out)
        stripped = text.rstrip(" ")
        have = len(stripped) - len(stripped.rstrip("\n"))
        self.out = [stripped + "\n" * max(0, n - have)] if stripped else []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in self._BLOCKS:
            self._newlines(2)
            if tag == "hr":
                self.out.append("----")
                self._newlines(2)
        if tag == "pre":
            self.pre += 1
        elif tag == "br":
            self._newlines(1)
        elif tag == "li":
            self._newlines(1)
            self.out.append("- ")
        elif tag == "img" and attrs.get("alt"):
            self.out.append(attrs["alt"])
        elif tag == "a":
            self.href.append(attrs.get("href"))
            self.link_text.append("")

    def handle_endtag(self, tag):
        if tag == "a" and self.href:
            href = self.href.pop()
            text = self.link_text.pop().strip()
            if href and _URL_MARK_RE.fullmatch(href):
                self.out.append(href)  # a checked target: it writes its own " (url)"
            elif href and href != text and not href.startswith("#"):
                self.out.append(f" ({href})")
        elif tag == "pre":
            self.pre = max(0, self.pre - 1)
        if tag in self._BLOCKS:
            self._newlines(2)

    def handle_data(self, data):
        if not self.pre:
            data = re.sub(r"\s+", " ", data)
            if not self.out or "".join(self.out[-1:]).endswith(("\n", " ")):
                data = data.lstrip(" ")
        if self.link_text:
            self.link_text[-1] += data
        self.out.append(data)

    def text(self) -> str:
        return "".join(self.out).strip() + "\n"


def html_to_text(html: str) -> str:
    maker = _TextMaker()
    maker.feed(html)
    maker.close()
    return maker.text()


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
_COLOR_RE = re.compile(r"^#[0-9a-fA-F]{3}(?:[0-9a-fA-F]{3})?$")


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
    accent = sender.accent_color if _COLOR_RE.match(sender.accent_color or "") else "#1f6feb"
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
