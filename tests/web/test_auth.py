"""Signing in to the dashboard, sessions, CSRF and the page headers, over plain HTTP."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from services import keys
from tests.web.conftest import LOGIN_TOKEN, csrf_of, sign_in


def _login_form(client: TestClient) -> str:
    return LOGIN_TOKEN.search(client.get("/login").text).group(1)


@pytest.mark.parametrize("path", ["/", "/runs", "/runs/1", "/candidates/1", "/workers"])
def test_a_page_without_a_session_goes_to_login(site, path):
    r = TestClient(site.client.app).get(path, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"].startswith("/login?next=")


def test_signing_in_sets_a_strict_httponly_cookie_and_redirects_to_runs(site):
    client = TestClient(site.client.app)
    token = _login_form(client)
    r = client.post(
        "/login", data={"api_key": site.alice, "login_token": token}, follow_redirects=False
    )
    assert r.status_code == 303 and r.headers["location"] == "/runs"
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("km_session="))
    flags = cookie.lower()
    assert "httponly" in flags and "samesite=strict" in flags and "max-age=28800" in flags
    assert "secure" not in flags  # plain HTTP here; see the HTTPS test below
    assert site.alice not in cookie  # the key itself never goes into the cookie


def test_the_cookie_is_secure_over_https(site):
    client = TestClient(site.client.app, base_url="https://testserver")
    token = _login_form(client)
    r = client.post(
        "/login", data={"api_key": site.bob, "login_token": token}, follow_redirects=False
    )
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("km_session="))
    assert "; secure" in cookie.lower()


@pytest.mark.parametrize(
    "who,status,message",
    [
        ("worker", 403, "a worker key cannot sign in"),
        ("nonsense", 401, "unknown or revoked API key"),
    ],
)
def test_worker_and_unknown_keys_cannot_sign_in(site, who, status, message):
    client = TestClient(site.client.app)
    key = site.worker if who == "worker" else "km_" + "x" * 43
    r = client.post(
        "/login", data={"api_key": key, "login_token": _login_form(client)}, follow_redirects=False
    )
    assert r.status_code == status and message in r.text
    assert "km_session" not in r.headers.get("set-cookie", "")


def test_a_login_post_without_its_form_token_is_refused(site):
    client = TestClient(site.client.app)
    r = client.post("/login", data={"api_key": site.alice}, follow_redirects=False)
    assert r.status_code == 403 and "expired or came from elsewhere" in r.text
    assert "km_session" not in r.headers.get("set-cookie", "")


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "\\\\evil", "x"])
def test_the_redirect_after_sign_in_stays_on_the_site(site, target):
    client = TestClient(site.client.app)
    r = client.post(
        "/login",
        data={"api_key": site.alice, "login_token": _login_form(client), "next": target},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/runs"


def test_sign_in_returns_to_the_page_asked_for(site):
    client = TestClient(site.client.app)
    asked = client.get("/runs?offset=0", follow_redirects=True)  # lands on the form
    token = LOGIN_TOKEN.search(asked.text).group(1)
    assert 'name="next" value="/runs?offset=0"' in asked.text
    r = client.post(
        "/login",
        data={"api_key": site.alice, "login_token": token, "next": "/runs?offset=0"},
        follow_redirects=False,
    )
    assert r.headers["location"] == "/runs?offset=0"


def test_logout_needs_its_csrf_token_and_ends_the_session(site):
    client = sign_in(site, site.alice)
    page = client.get("/runs")  # any page with the sign-out form
    assert client.post("/logout", follow_redirects=False).status_code == 403
    r = client.post("/logout", data={"csrf_token": csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert client.get("/", follow_redirects=False).headers["location"].startswith("/login")


def test_revoking_the_key_ends_its_sessions_at_once(site):
    client = sign_in(site, site.bob)
    assert client.get("/", follow_redirects=False).headers["location"] == "/runs"
    with site.sessions() as s:
        keys.revoke(s, keys.valid_key(s, site.bob).id)
        s.commit()
    assert client.get("/", follow_redirects=False).headers["location"].startswith("/login")


def test_a_forged_cookie_is_no_session(site):
    client = TestClient(site.client.app, cookies={"km_session": "eyJrZXlfaWQiOjF9.forged"})
    assert client.get("/", follow_redirects=False).headers["location"].startswith("/login")


def test_pages_carry_a_strict_csp_and_api_responses_are_left_alone(site):
    page = TestClient(site.client.app).get("/login")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "script-src 'self' 'nonce-" in csp and "unsafe-inline" not in csp
    nonce = csp.split("'nonce-")[1].split("'")[0]
    assert f'nonce="{nonce}"' in page.text  # the page's one script carries it
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    other = TestClient(site.client.app).get("/login").headers["content-security-policy"]
    assert other != csp  # a fresh nonce per response
    api = site.client.get("/api/v1/tasks", headers=site.auth(site.alice))
    assert "content-security-policy" not in api.headers
    assert "http://" not in page.text.replace("http://testserver", "")  # nothing external
