"""Fixtures of the dashboard's HTTP tests: an app with keys of each role and signed-in clients.

``site`` is the app of :func:`tests.services.api.test_api.api` (same users: admin, alice, bob,
a worker key; SQLite and PostgreSQL) and :func:`sign_in` goes through ``/login`` as a browser
does. Runs and candidates are made with that module's ``add_run`` and ``finish_run``.
"""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from tests.services.api.test_api import Api
from tests.services.api.test_api import api as _api_fixture

LOGIN_TOKEN = re.compile(r'name="login_token" value="([^"]+)"')
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')

site = pytest.fixture(_api_fixture.__wrapped__, name="site")


def sign_in(api: Api, key: str) -> TestClient:
    """A fresh client on ``api``'s app signed in with ``key`` (as a browser: form, cookie)."""
    client = TestClient(api.client.app)
    form = client.get("/login")
    token = LOGIN_TOKEN.search(form.text).group(1)
    r = client.post("/login", data={"api_key": key, "login_token": token}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return client


def csrf_of(page_html: str) -> str:
    """The CSRF token in a page's forms."""
    return CSRF.search(page_html).group(1)
