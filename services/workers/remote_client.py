"""The remote worker's side of the HTTP API: the server's address, retries, enrolment, calls.

:class:`RemoteClient` speaks to ``/api/v1/workers`` for :mod:`services.workers.remote`. Every
call is retried with exponential backoff (:data:`BACKOFF_START_S` up to :data:`BACKOFF_MAX_S`)
on network errors, 5xx and 429, until it gets an answer or the worker's stop event is set
(:class:`Stopped`). :meth:`RemoteClient.join` reuses the token saved in
``<data_dir>/remote_worker.json`` (mode 0600) when the server still takes it, else enrols again
with the enrolment key (a ``worker``-role API key) and saves the new one.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from kernelmap_errors import KernelmapError

log = logging.getLogger(__name__)

STATE_FILE = "remote_worker.json"
"""Where the worker keeps its server, id and token, under ``data_dir``."""

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
"""Retry delays after a network or server error: doubling from the first to the second."""

API = "/api/v1/workers"


class RemoteWorkerError(KernelmapError):
    """The remote worker cannot run as asked (bad URL, refused enrolment key, bad class)."""


class Stopped(Exception):
    """The stop event was set while waiting."""


def check_url(url: str, insecure_http: bool = False) -> str:
    """The server's base URL, without a trailing slash.

    Raises
    ------
    RemoteWorkerError
        Not ``https://``, unless it is ``http://`` to a loopback host or ``insecure_http``
        (the tokens would travel in clear).
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as e:
        raise RemoteWorkerError(f"invalid server URL {url!r}: {e}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise RemoteWorkerError(
            f"invalid server URL {url!r}: give the server's address, e.g. https://kernelmap.example"
        )
    if parsed.scheme == "http" and not insecure_http and not _loopback(parsed.host):
        raise RemoteWorkerError(
            f"{url} is plain http: the worker's tokens would cross the network in clear. Use the"
            " server's https:// address (or --insecure-http on a network you trust)"
        )
    return str(parsed).rstrip("/")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def write_private(path: Path, data: dict[str, Any]) -> None:
    """Write JSON readable by this user only, atomically (a crash leaves the old file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def say(text: str) -> None:
    """Tell the operator, one line on stderr."""
    print(f"kernelmap worker: {text}", file=sys.stderr, flush=True)


def detail(response: httpx.Response) -> str:
    """What the server said was wrong (its ``detail``, else the start of the body)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    return str(body.get("detail", body))[:300] if isinstance(body, dict) else str(body)[:300]


@dataclasses.dataclass
class Identity:
    """Who the worker is on the server: its id and its own token (``kmw_...``)."""

    worker_id: int
    token: str


class RemoteClient:
    """The worker's HTTP client on one server, with its identity once it joined.

    Parameters
    ----------
    base_url:
        The server (:func:`check_url`).
    enrolment_key:
        A ``worker``-role API key, used only to enrol.
    hardware_class, name:
        The queue the worker serves and its name there; a saved token is reused only for the
        same server, class and name.
    data_dir:
        Where :data:`STATE_FILE` is kept.
    stop:
        Set, it ends any wait between retries (:class:`Stopped`).
    read_timeout_s:
        Bound on reading an answer (longer than the longest long-poll claim).
    """

    def __init__(
        self,
        base_url: str,
        enrolment_key: str,
        hardware_class: str,
        name: str,
        data_dir: Path,
        stop: threading.Event,
        read_timeout_s: float,
    ) -> None:
        self.base_url = base_url
        self.enrolment_key = enrolment_key
        self.hardware_class = hardware_class
        self.name = name
        self.stop = stop
        self.state_path = data_dir / STATE_FILE
        self.http = httpx.Client(
            base_url=base_url,
            timeout=httpx.Timeout(30.0, read=read_timeout_s),
            headers={"User-Agent": "kernelmap-remote-worker"},
        )
        self.identity: Identity | None = None

    # -- HTTP with retries ---------------------------------------------------------------------

    def _wait(self, delay: float) -> None:
        if self.stop.wait(delay):
            raise Stopped

    def _call(self, method: str, path: str, *, token: str, **kw: Any) -> httpx.Response:
        """One request, retried with backoff on network errors, 5xx and 429."""
        delay = BACKOFF_START_S
        while True:
            try:
                response = self.http.request(
                    method, path, headers={"Authorization": f"Bearer {token}"}, **kw
                )
            except httpx.TransportError as e:
                log.warning("%s %s failed (%s): retrying in %.0f s", method, path, e, delay)
                problem = f"cannot reach {self.base_url} ({type(e).__name__}: {e})"
            else:
                if response.status_code < 500 and response.status_code != 429:
                    return response
                problem = f"{self.base_url} answered {response.status_code}"
            say(f"{problem}; retrying in {delay:.0f} s")
            self._wait(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    def _authed(self, method: str, path: str, **kw: Any) -> httpx.Response:
        assert self.identity is not None
        response = self._call(method, path, token=self.identity.token, **kw)
        if response.status_code == 401:
            raise RemoteWorkerError(
                f"{self.base_url} refused this worker's token (an admin revoked worker"
                f" {self.identity.worker_id}?): {detail(response)}. Restarting enrols it again"
                " with the enrolment key, if that is still valid"
            )
        return response

    # -- identity ------------------------------------------------------------------------------

    def _load_identity(self) -> Identity | None:
        try:
            saved = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable %s: %s", self.state_path, e)
            return None
        same = (
            isinstance(saved, dict)
            and saved.get("url") == self.base_url
            and saved.get("hardware_class") == self.hardware_class
            and saved.get("name") == self.name
        )
        if not same or not isinstance(saved.get("token"), str):
            return None
        return Identity(int(saved["worker_id"]), saved["token"])

    def _register(self, hardware: dict[str, Any]) -> Identity:
        response = self._call(
            "POST",
            f"{API}/register",
            token=self.enrolment_key,
            json={"name": self.name, "hardware_class": self.hardware_class, "hardware": hardware},
        )
        if response.status_code in (401, 403):
            raise RemoteWorkerError(
                f"{self.base_url} refused the enrolment key: {detail(response)}. Ask an admin"
                " for a worker key (`kernelmap keys create --role worker`)"
            )
        if response.status_code != 201:
            raise RemoteWorkerError(
                f"enrolling at {self.base_url} failed ({response.status_code}): {detail(response)}"
            )
        body = response.json()
        identity = Identity(int(body["worker_id"]), str(body["token"]))
        write_private(
            self.state_path,
            {
                "url": self.base_url,
                "worker_id": identity.worker_id,
                "token": identity.token,
                "name": self.name,
                "hardware_class": self.hardware_class,
            },
        )
        say(f"enrolled at {self.base_url} as worker {identity.worker_id} ({self.name})")
        return identity

    def join(self, hardware: Callable[[], dict[str, Any]]) -> None:
        """Use the saved token if the server still takes it, else enrol.

        ``hardware`` gives the facts to enrol with; it is called only to enrol.
        """
        saved = self._load_identity()
        if saved is not None:
            response = self._call("POST", f"{API}/heartbeat", token=saved.token)
            if response.status_code == 200:
                self.identity = saved
                say(f"rejoined {self.base_url} as worker {saved.worker_id} ({self.name})")
                return
            log.info("the saved worker token was refused (%s): enrolling", response.status_code)
        self.identity = self._register(hardware())

    # -- jobs ----------------------------------------------------------------------------------

    def claim(self, wait_s: float) -> dict[str, Any] | None:
        """Long-poll for a job of the worker's class: the claim (job, lease), or None."""
        response = self._authed("POST", f"{API}/claim", params={"wait_s": wait_s})
        if response.status_code == 204:
            return None
        if response.status_code != 200:
            raise RemoteWorkerError(
                f"claiming a job at {self.base_url} failed ({response.status_code}):"
                f" {detail(response)}"
            )
        return response.json()

    def extend_lease(self, job_id: str) -> httpx.Response:
        """One lease heartbeat for ``job_id``, not retried (the next beat is the retry).

        Raises
        ------
        httpx.TransportError
            The request did not get through.
        """
        assert self.identity is not None
        return self.http.post(
            f"{API}/jobs/{job_id}/heartbeat",
            headers={"Authorization": f"Bearer {self.identity.token}"},
        )

    def post_result(self, job_id: str, result: dict[str, Any]) -> httpx.Response:
        """Post a job's result until the server answers (the post is idempotent)."""
        return self._authed("POST", f"{API}/jobs/{job_id}/result", json={"result": result})

    def close(self) -> None:
        """Close the HTTP connections."""
        self.http.close()
