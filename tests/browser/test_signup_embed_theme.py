"""The script embed stays readable on a dark shop theme: colour and font inherited into
its Shadow DOM do not leave dark text on a dark page (WCAG AA contrast, measured)."""

from __future__ import annotations

import pytest

from audience import snippets

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# The text's colour against the first opaque background behind it, walking up through
# the shadow root to the host and the shop's page (white, the canvas, if none is set).
CONTRAST_JS = """
(el) => {
  const rgba = (s) => {
    const m = s.match(/[\\d.]+/g).map(Number);
    return m.length > 3 ? m : [...m, 1];
  };
  const lum = ([r, g, b]) => {
    const c = [r, g, b].map((v) => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
  };
  let node = el, bg = [255, 255, 255, 1];
  while (node) {
    if (node.nodeType === 1) {
      const b = rgba(getComputedStyle(node).backgroundColor);
      if (b[3] > 0.5) { bg = b; break; }
    }
    node = node.parentNode || (node.host ?? null);
  }
  const fg = rgba(getComputedStyle(el).color);
  const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
  return { ratio: (hi + 0.05) / (lo + 0.05), fg: getComputedStyle(el).color, bg: bg.join(",") };
}
"""

DARK_THEMES = {
    # The brief's case: dark page, dark body text inherited into the embed.
    "dark-on-dark": "body{background:#111;color:#222;font-family:Georgia,serif}",
    # A dark theme with light text, including on every div (the embed's host is one).
    "light-on-dark": "body{background:#111;color:#eee} div,h2,label{color:#f5f5f5!important}",
}


@pytest.mark.parametrize("theme", DARK_THEMES, ids=list(DARK_THEMES))
def test_script_embed_heading_and_labels_are_readable_on_a_dark_theme(
    page, shop, signup_form, theme
):
    from playwright.sync_api import expect

    shop.pages["/dark"] = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Night shop</title>"
        f"<style>{DARK_THEMES[theme]}</style></head><body><h1>Night Owl Coffee</h1>"
        f"{snippets.script_snippet(signup_form)}</body></html>"
    )
    page.goto(shop.url("/dark"))
    embed = page.locator(".stillhere-signup-host")
    title = embed.locator(".sh-title")
    expect(title).to_have_text("We're still here")
    texts = {
        "heading": title,
        "intro": embed.locator(".sh-intro"),
        "email label": embed.locator("label.form-label").first,
        "consent label": embed.locator("label.form-check-label"),
    }
    for name, locator in texts.items():
        measured = locator.evaluate(CONTRAST_JS)
        assert measured["ratio"] >= 4.5, f"{name}: {measured}"
    # The shop's serif does not leak in either.
    assert "Georgia" not in title.evaluate("el => getComputedStyle(el).fontFamily")
