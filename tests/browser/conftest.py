"""Playwright driving Debian's Chromium against a live Stillhere and a shop on another origin.

The shop is a tiny threaded http.server on its own port, so everything the embeds do
(script load, CORS fetch, cross-origin form post, framing) crosses a real origin
boundary, the way it does on a shop's Shopify or WordPress site.

Without Chromium (or Playwright) the browser tests skip locally; CI sets
STILLHERE_REQUIRE_BROWSER=1, where a missing browser fails them instead, because a
skipped browser test in CI would hide a broken embed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import connections

from audience import snippets
from audience.models import SignupForm
from tests.factories import SignupFormFactory

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--no-first-run",
]

# The shop's own stylesheet, deliberately hostile: the 62.5% root font-size trick many
# themes use (which breaks any embed sized in rem), !important rules on every input and
# button, and a yellow background on every form.
HOSTILE_CSS = """
html{font-size:62.5%}
body{font-family:Georgia,serif;margin:0;background:#fbf7f0;color:#3b2f2f;font-size:1.8rem}
header{background:#3b2f2f;color:#fff;padding:1rem 2rem}
main{display:grid;grid-template-columns:1fr 1fr;gap:2rem;padding:2rem;max-width:1000px;margin:auto}
input,button{font-size:22px!important;border:3px dashed hotpink!important}
form{background:yellow}
label{text-transform:uppercase}
"""


def _require_browser() -> bool:
    return os.environ.get("STILLHERE_REQUIRE_BROWSER", "").strip().lower() in {
        "1",
        "true",
        "yes",
        "on",
    }


def _unavailable(reason: str) -> None:
    if _require_browser():
        pytest.fail(f"{reason}, and STILLHERE_REQUIRE_BROWSER is set", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium_path() -> str:
    path = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        _unavailable(f"no Chromium at {path} (install Debian's chromium or set CHROMIUM_PATH)")
    return path


@pytest.fixture(scope="module")
def browser(chromium_path: str):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright is not installed (pip install -e '.[dev]')")
    # Playwright's sync API keeps an asyncio loop on this thread, and Django then refuses
    # ORM calls from it (SynchronousOnlyOperation). The tests' own ORM calls are plain
    # synchronous code, so the documented workaround is safe here. It is scoped to the
    # module that holds the browser, so the rest of the suite keeps Django's check.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(
                executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True
            )
            try:
                yield chromium
            finally:
                chromium.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def new_page(browser):
    """Open a page in a fresh context (no shared cookies); kwargs go to new_context.

    Any uncaught JavaScript error on a page fails the test: a broken embed often shows
    up only as an exception in the console.
    """
    contexts = []
    errors: list[str] = []

    def open_page(**context_options):
        context = browser.new_context(**context_options)
        context.set_default_timeout(10_000)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def page(new_page):
    return new_page()


@pytest.fixture
def stillhere(live_server, settings, monkeypatch):
    """The live Stillhere server; snippets and email links point at it."""
    settings.SITE_URL = live_server.url
    # Chromium keeps HTTP connections alive, so a live-server thread can outlive the
    # test holding a persistent database connection, and the test database then cannot
    # be dropped at the end of the run. Request threads close theirs after each request.
    monkeypatch.setitem(connections["default"].settings_dict, "CONN_MAX_AGE", 0)
    return live_server


class _ShopHandler(BaseHTTPRequestHandler):
    def __init__(self, *args, pages: dict[str, str], **kwargs):
        self.pages = pages
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        body = self.pages.get(self.path.split("?")[0])
        if body is None:
            self.send_error(404)
            return
        payload = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format, *args) -> None:
        pass


@dataclass
class Shop:
    """A shop site on its own origin, serving whatever HTML pages a test gives it."""

    httpd: ThreadingHTTPServer
    pages: dict[str, str] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}"

    def url(self, path: str = "/") -> str:
        return self.origin + path


def _start_shop() -> Shop:
    pages: dict[str, str] = {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_ShopHandler, pages=pages))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, name="shop", daemon=True).start()
    return Shop(httpd=httpd, pages=pages)


@pytest.fixture
def make_shop() -> Iterator[Callable[[], Shop]]:
    shops: list[Shop] = []

    def make() -> Shop:
        shop = _start_shop()
        shops.append(shop)
        return shop

    yield make
    for shop in shops:
        shop.httpd.shutdown()
        shop.httpd.server_close()


@pytest.fixture
def shop(make_shop) -> Shop:
    return make_shop()


def shop_page(body: str, *, title: str = "Mugs & More") -> str:
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{title}</title><style>{HOSTILE_CSS}</style></head><body>"
        "<header><h1>Mugs &amp; More</h1><p>Instagram is down? We're still here.</p></header>"
        f"<main>{body}</main></body></html>"
    )


def embed_page(signup_form: SignupForm) -> str:
    """The shop's home page: the script embed, the plain HTML form, and some of the shop's
    own elements that share class names with the embed's stylesheet."""
    return shop_page(
        "<section id='script-embed'><h2>Script embed</h2>"
        f"{snippets.script_snippet(signup_form)}</section>"
        "<section id='html-embed'><h2>Plain HTML form</h2>"
        f"{snippets.html_snippet(signup_form)}</section>"
        "<aside id='shop-own'><button id='shop-buy' class='btn btn-primary'>Add to cart</button>"
        "<p id='shop-note' class='sh-success mb-3'>Free shipping over $50.</p>"
        "<input id='shop-search' class='form-control' placeholder='Search mugs'></aside>"
    )


@pytest.fixture
def signup_form(stillhere, shop) -> SignupForm:
    """A form that allows the shop's origin, shown on the shop's home page."""
    form = SignupFormFactory(
        public_key="shopfooter",
        title="We're still here",
        intro="When social media goes quiet, we'll write to you directly.",
        name_field="optional",
        phone_field="optional",
        consent_text="Yes, email me news and offers. I can unsubscribe at any time.",
        success_message="Thanks! Check your inbox to confirm.",
        allowed_origins=f"https://elsewhere.example\n{shop.origin}\n",
    )
    shop.pages["/"] = embed_page(form)
    shop.pages["/framed"] = shop_page(snippets.iframe_snippet(form))
    shop.pages["/thanks"] = shop_page("<p id='shop-thanks'>Thanks for signing up!</p>")
    return form
