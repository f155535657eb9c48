"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) work without internet: every script, style
and icon they load is served by the app itself, from the files vendored in
``services/api/static/`` (whose README states their versions and licences)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import sessionmaker

from services.api import create_app
from services.api.app import STATIC_DIR
from services.config import Settings

#: Smallest size that is a real bundle or stylesheet rather than an error page or a stub.
MIN_ASSET_BYTES = 500


class _Assets(HTMLParser):
    """The URLs a page makes the browser load: ``<script src>``, ``<link href>``, and the
    OpenAPI document ReDoc reads (``<redoc spec-url>``)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href", "img": "src", "redoc": "spec-url"}.get(tag)
        for name, value in attrs:
            if name == wanted and value:
                self.urls.append(value)


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(sessionmaker(), Settings(device="cpu")))


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_documentation_pages_load_only_what_the_app_serves(client, page):
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    parser = _Assets()
    parser.feed(r.text)
    assets = [u for u in parser.urls if not u.endswith("openapi.json")]
    assert any(u.endswith(".js") for u in assets), parser.urls  # the page's own tool
    for url in parser.urls:
        assert not re.match(r"^([a-z]+:)?//", url, re.I), f"{page} loads {url} from elsewhere"
        assert url.startswith("/"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) >= MIN_ASSET_BYTES, url
    # Nothing in the page's own inline script reaches out either (Swagger UI's spec URL).
    assert not re.search(r"https?://", r.text.split("<body>", 1)[-1]), r.text


def test_the_vendored_tools_are_the_versions_the_readme_states_with_their_licences():
    readme = (STATIC_DIR / "README.md").read_text()
    versions = dict(re.findall(r"\| `(swagger-ui-dist|redoc)` \| ([0-9.]+) \|", readme))
    assert set(versions) == {"swagger-ui-dist", "redoc"}, readme
    swagger = (STATIC_DIR / "swagger-ui" / "swagger-ui-bundle.js").read_text()
    assert f'PACKAGE_VERSION:"{versions["swagger-ui-dist"]}"' in swagger
    redoc = (STATIC_DIR / "redoc" / "redoc.standalone.js").read_text()
    assert f'"{versions["redoc"]}"' in redoc
    for folder in ("swagger-ui", "redoc"):
        assert (STATIC_DIR / folder / "LICENSE").stat().st_size > 0, folder
    top = (Path(__file__).parents[3] / "README.md").read_text()
    for package, version in versions.items():
        assert f"{package}` {version}" in top, f"README.md does not state {package} {version}"
