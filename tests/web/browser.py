"""Fixtures of the browser tests: Debian's headless Chromium driven by Playwright, a live server.

- ``chromium`` (one per test process, so one per xdist worker): a Playwright ``Browser`` on
  ``/usr/bin/chromium`` or ``$KERNELMAP_CHROMIUM``. Playwright never downloads a browser here.
  Like the ``postgres`` and ``redis`` tests, a test that needs it fails, not skips, where it is
  missing (``.ci/run`` installs it); deselect with ``-m 'not browser'``.
- ``page``: a fresh context and page (1280x900) that records what a test usually asserts never
  happened: ``page.km_console_errors`` (console errors and uncaught exceptions),
  ``page.km_dialogs`` (``alert``/``confirm``/``prompt``, dismissed) and ``page.km_requests``
  (every URL the page asked for).
- ``live_server``: the real app under uvicorn on ``127.0.0.1``, a free port, over a fresh SQLite
  database, with an admin key; :func:`serve` runs any other app the same way.
- ``screenshots``: PNGs into a folder outside the repository (``$KERNELMAP_SCREENSHOTS``, else
  ``/tmp/kernelmap-screenshots``).

Mark the tests ``browser`` (``pytestmark = pytest.mark.browser``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import uvicorn
from sqlalchemy.orm import Session, sessionmaker

from archive import db
from archive.testing import temporary_database
from services import keys
from services.api import create_app
from services.config import Settings

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

ROOT = Path(__file__).resolve().parents[2]
#: Debian's package puts its launcher here; ``KERNELMAP_CHROMIUM`` names another.
DEFAULT_CHROMIUM = "/usr/bin/chromium"
#: No sandbox: tests run as root in containers, where Chromium's own sandbox cannot start.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT = {"width": 1280, "height": 900}
#: Bound on each Playwright action and wait (its default, 30 s, only slows a failing test down).
ACTION_TIMEOUT_MS = 10_000
DEFAULT_SCREENSHOTS = Path("/tmp/kernelmap-screenshots")
#: Bound on the server's start and on its stop (open keep-alive connections included).
SERVER_START_S = 10.0
SERVER_STOP_S = 5.0


def chromium_executable() -> Path:
    """The Chromium the tests drive: ``$KERNELMAP_CHROMIUM``, else ``/usr/bin/chromium``."""
    return Path(os.environ.get("KERNELMAP_CHROMIUM") or DEFAULT_CHROMIUM)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Browser]:
    """A headless Chromium for this test process (one per xdist worker), closed at the end."""
    executable = chromium_executable()
    if not os.access(executable, os.X_OK):
        pytest.fail(
            f"Chromium is not at {executable}: install Debian's chromium (.ci/run does), set"
            " KERNELMAP_CHROMIUM to another executable, or deselect with -m 'not browser'",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Browser) -> Iterator[Page]:
    """A new page in its own context (no cookies from other tests), recording console errors,
    dialogs and requests on ``km_console_errors``, ``km_dialogs`` and ``km_requests``."""
    context = chromium.new_context(viewport=VIEWPORT)
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    page = context.new_page()
    page.km_console_errors = []
    page.km_dialogs = []
    page.km_requests = []
    page.on(
        "console",
        lambda msg: msg.type == "error" and page.km_console_errors.append(msg.text),
    )
    page.on("pageerror", lambda exc: page.km_console_errors.append(f"uncaught: {exc}"))

    def on_dialog(dialog: Any) -> None:
        # A dialog means a script ran; dismissed so the page does not hang waiting on it.
        page.km_dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("request", lambda request: page.km_requests.append(request.url))
    yield page
    context.close()


@dataclasses.dataclass
class LiveServer:
    """A running app: its base URL (no trailing slash), database sessions and an admin key."""

    url: str
    sessions: sessionmaker[Session]
    settings: Settings
    admin_key: str
    #: Ids of the runs the app handed to ``start_run`` (none is started: they stay queued).
    started: list[int]

    def make_user_key(self, name: str, role: str = "user") -> str:
        """A new user ``name`` (or another role) with one key; returns the plaintext key."""
        with self.sessions() as s:
            _, key = keys.create_key(s, role, name)
            s.commit()
        return key


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn on ``127.0.0.1`` on a free port in a thread; yield its URL.

    The socket is bound before the server starts, so the port cannot be taken in between.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, timeout_graceful_shutdown=SERVER_STOP_S
    )
    server = uvicorn.Server(config)
    # Off the main thread uvicorn installs no signal handlers: Ctrl-C still stops pytest.
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="live-server", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + SERVER_START_S
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        if not server.started:
            raise RuntimeError(f"uvicorn did not start on 127.0.0.1:{port} (see its log above)")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(SERVER_START_S + SERVER_STOP_S)
        sock.close()
        if thread.is_alive():
            raise RuntimeError(f"the live server on port {port} did not stop")


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    """The app (:func:`services.api.create_app`) served over HTTP on a fresh SQLite database."""
    with temporary_database("sqlite", tmp_path / "data") as url:
        engine = db.make_engine(url)
        db.ensure_schema(engine)
        sessions = db.session_factory(engine)
        with sessions() as s:
            _, admin_key = keys.create_key(s, "admin", "root")
            s.commit()
        settings = Settings(data_dir=tmp_path / "data", device="cpu")
        started: list[int] = []
        app = create_app(sessions, settings, start_run=started.append)
        try:
            with serve(app) as base:
                yield LiveServer(base, sessions, settings, admin_key, started)
        finally:
            engine.dispose()


@dataclasses.dataclass
class Screenshots:
    """Where the browser tests leave their screenshots (outside the repository)."""

    directory: Path

    def shot(self, page: Page, name: str, *, full_page: bool = True) -> Path:
        """Save a PNG of ``page`` as ``<directory>/<name>.png`` (``name``: letters, digits,
        ``._-``); returns its path."""
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise ValueError(f"screenshot name {name!r}: use letters, digits, '.', '_', '-'")
        path = self.directory / f"{name}.png"
        page.screenshot(path=path, full_page=full_page)
        return path


@pytest.fixture(scope="session")
def screenshots() -> Screenshots:
    """The screenshot folder, created: ``$KERNELMAP_SCREENSHOTS``, else
    ``/tmp/kernelmap-screenshots``; never inside the repository (it would be committed)."""
    directory = Path(os.environ.get("KERNELMAP_SCREENSHOTS") or DEFAULT_SCREENSHOTS).resolve()
    if directory == ROOT or ROOT in directory.parents:
        pytest.fail(
            f"KERNELMAP_SCREENSHOTS={directory} is inside the repository: choose a folder outside",
            pytrace=False,
        )
    directory.mkdir(parents=True, exist_ok=True)
    return Screenshots(directory)
