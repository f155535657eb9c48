"""The browser chain works end to end: Chromium, Playwright, the live server, screenshots.

Swagger UI (``/docs``) is the app's one page that runs a script today: it must render the
operations it reads from the schema, log no error and load nothing from another origin.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.browser


def test_swagger_ui_renders_from_the_server_alone(page, live_server, screenshots):
    page.goto(f"{live_server.url}/docs")
    # The operations appear only once the bundle has run and fetched /api/v1/openapi.json.
    page.locator(".swagger-ui .opblock").first.wait_for()
    assert "kernelmap" in page.locator(".swagger-ui .info .title").inner_text()
    assert page.title() == "kernelmap - Swagger UI"
    shot = screenshots.shot(page, "smoke-docs")
    assert shot.stat().st_size > 10_000, shot  # a rendered page, not a blank one

    assert page.km_console_errors == []
    assert page.km_dialogs == []
    server = urlsplit(live_server.url)
    elsewhere = [
        url
        for url in page.km_requests
        if urlsplit(url).scheme not in ("data", "blob")
        and urlsplit(url)[:2] != (server.scheme, server.netloc)
    ]
    assert elsewhere == [], f"/docs loaded from other origins: {elsewhere}"
    assert any(url.endswith("/api/v1/openapi.json") for url in page.km_requests), page.km_requests


def test_the_page_records_what_a_script_did(page):
    # The dashboard's tests prove no script ran by these lists staying empty: they must fill up.
    page.set_content(
        "<script>alert('hi'); console.error('oops'); setTimeout(() => { throw new Error('boom') })"
        "</script>"
    )
    for _ in range(100):  # the timer's exception arrives a little later
        if len(page.km_console_errors) >= 2:
            break
        page.wait_for_timeout(20)
    assert page.km_dialogs == ["alert: hi"]
    assert page.km_console_errors[0] == "oops"
    assert any("boom" in e for e in page.km_console_errors[1:]), page.km_console_errors
