"""The sandboxed merge-field templates and Markdown of every email Stillhere writes.

Shared by the campaigns (campaigns.rendering compiles a campaign into a skeleton from
these pieces) and by the audience's own transactional mail (the double opt-in
confirmation, audience.emails): both let the shop owner write Markdown with merge fields,
and both must hold it to the same sandbox and the same link checks. It lives in the
audience because the audience is the lower layer: campaigns import it, never the other
way (ARCHITECTURE.md).

Merge fields use a sandboxed Django template engine: no loaders, no `{% load %}` /
`{% include %}` / `{% extends %}`, a handful of tags and filters, and a context made
only of the contact's own plain values (no model objects to walk).
"""

from __future__ import annotations

import html as htmllib
import json
import re
from html.parser import HTMLParser

import markdown
import nh3
from django.core.exceptions import ValidationError
from django.template import (
    Engine,
    Library,
    TemplateSyntaxError,
    defaultfilters,
    defaulttags,
)
from django.template.base import Node, VariableNode

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


def check_template(text: str, *, fields: tuple[str, ...] = MERGE_FIELDS) -> None:
    """Raise ValidationError if `text` has bad merge-field syntax, a tag outside the
    sandbox, or a field that does not exist (`fields`: a campaign's, by default)."""
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
        if lookups and lookups[0] not in fields:
            raise ValidationError(
                f"Unknown merge field {lookups[0]!r}. "
                f"Available: {', '.join(fields)} (and attributes.<name>)."
            )


_COLOR_RE = re.compile(r"^#[0-9a-fA-F]{3}(?:[0-9a-fA-F]{3})?$")
DEFAULT_ACCENT = "#1f6feb"


def accent_color(value: str | None) -> str:
    """The sender's accent colour if it is a plain #rgb / #rrggbb, else the default: it
    goes into style attributes, where anything else could carry CSS of its own."""
    return value if _COLOR_RE.match(value or "") else DEFAULT_ACCENT


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
