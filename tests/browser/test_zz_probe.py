import pytest
pytestmark = [pytest.mark.browser]
def test_probe(page, shop, stillhere, signup_form):
    msgs = []
    page.on("console", lambda m: msgs.append(m.text))
    page.goto(shop.url("/framed"))
    frame = page.frame_locator("iframe")
    frame.locator("input[name=email]").fill("framed@example.com")
    frame.locator("input[name=consent]").check()
    frame.locator("button[type=submit]").click()
    page.wait_for_timeout(2000)
    print("FRAMES", [f.url for f in page.frames])
    print("MSGS", msgs)
