"""A remote GPU worker: joins a kernelmap server over HTTPS and pulls jobs with leases.

``kernelmap worker --join URL --token KEY`` runs :func:`run_remote_worker`. The worker enrols
once with the enrolment key (a ``worker``-role API key) and keeps the token it gets in
``<data_dir>/remote_worker.json`` (mode 0600) for its next start. Then, one job at a time:

1. long-poll ``POST /api/v1/workers/claim`` for a job of its hardware class;
2. evaluate it with a local sandboxed :class:`evaluator_worker.judge.Evaluator`, while a
   thread extends the lease every :data:`HEARTBEAT_S` seconds (or a third of the lease);
3. write the result to ``<data_dir>/remote_results/<job_id>.json`` and post it until the server
   answers (the post is idempotent), then delete the file. Results left by a stop or a crash
   are posted at the next start: a finished evaluation is never lost.

Network errors and server errors are retried with exponential backoff (up to
:data:`BACKOFF_MAX_S`). The worker stops when ``stop`` is set (within one long-poll) or on
Ctrl-C; a job interrupted mid-evaluation goes back to the queue when its lease expires.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from archive.leases import HARDWARE_CLASS_RE
from evaluator_worker import sandbox
from evaluator_worker.verdict import Verdict
from evolution.ports import Job
from kernelmap_errors import KernelmapError
from services.dispatch.job_eval import evaluate_job, failure

log = logging.getLogger(__name__)

STATE_FILE = "remote_worker.json"
"""Where the worker keeps its server, id and token, under ``data_dir``."""

PENDING_DIR = "remote_results"
"""Where finished results wait until the server has them, under ``data_dir``."""

CLAIM_WAIT_S = 20.0
"""How long one claim waits on the server for a job (the server allows up to 30 s)."""

HEARTBEAT_S = 20.0
"""Seconds between two lease heartbeats (less when the lease is shorter than three of them)."""

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
"""Retry delays after a network or server error: doubling from the first to the second."""

API = "/api/v1/workers"


class RemoteWorkerError(KernelmapError):
    """The remote worker cannot run as asked (bad URL, refused enrolment key, bad class)."""


# -- setup -------------------------------------------------------------------------------------


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


def _device(device: str | None) -> str:
    """``cuda`` or ``cpu``; a GPU index selects that GPU (``CUDA_VISIBLE_DEVICES``)."""
    if device is not None and device.isdigit():
        os.environ["CUDA_VISIBLE_DEVICES"] = device
        device = "cuda"
    if device in (None, "auto"):
        # NVML's count: no CUDA context in this process before the evaluator makes one.
        from evaluator_worker.device import detect_device

        return detect_device()
    if device not in ("cuda", "cpu"):
        raise RemoteWorkerError(f"--device must be cpu, cuda or a GPU index, got {device!r}")
    return device


def _hardware(device: str) -> dict[str, Any]:
    try:
        from services.workers.fleet import hardware_info
    except ImportError:  # a worker host without the Redis client: the basics
        import platform

        return {
            "hostname": socket.gethostname(),
            "device": device,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "sandbox": sandbox.report(device, _sandbox_mode()),
        }
    return hardware_info(device, sandbox=_sandbox_mode())


def _sandbox_mode() -> str:
    """``KERNELMAP_SANDBOX`` (strict unless set to relaxed)."""
    return "relaxed" if os.environ.get("KERNELMAP_SANDBOX") == "relaxed" else "strict"


def _write_private(path: Path, data: dict[str, Any]) -> None:
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


def _say(text: str) -> None:
    print(f"kernelmap worker: {text}", file=sys.stderr, flush=True)


# -- the worker --------------------------------------------------------------------------------


class _Stopped(Exception):
    """The stop event was set while waiting."""


@dataclasses.dataclass
class _Identity:
    worker_id: int
    token: str


class _RemoteWorker:
    def __init__(
        self,
        base_url: str,
        enrolment_key: str,
        hardware_class: str,
        device: str,
        name: str,
        data_dir: Path,
        stop: threading.Event,
    ) -> None:
        self.base_url = base_url
        self.enrolment_key = enrolment_key
        self.hardware_class = hardware_class
        self.device = device
        self.name = name
        self.data_dir = data_dir
        self.stop = stop
        self.state_path = data_dir / STATE_FILE
        self.pending_dir = data_dir / PENDING_DIR
        self.client = httpx.Client(
            base_url=base_url,
            timeout=httpx.Timeout(30.0, read=CLAIM_WAIT_S + 30.0),
            headers={"User-Agent": "kernelmap-remote-worker"},
        )
        self.identity: _Identity | None = None
        self.workdir = Path(tempfile.mkdtemp(prefix="kernelmap-remote-"))
        self._evaluator = None

    # -- HTTP with retries ---------------------------------------------------------------------

    def _wait(self, delay: float) -> None:
        if self.stop.wait(delay):
            raise _Stopped

    def _call(self, method: str, path: str, *, token: str, **kw: Any) -> httpx.Response:
        """One request, retried with backoff on network errors, 5xx and 429."""
        delay = BACKOFF_START_S
        while True:
            try:
                response = self.client.request(
                    method, path, headers={"Authorization": f"Bearer {token}"}, **kw
                )
            except httpx.TransportError as e:
                log.warning("%s %s failed (%s): retrying in %.0f s", method, path, e, delay)
                problem = f"cannot reach {self.base_url} ({type(e).__name__}: {e})"
            else:
                if response.status_code < 500 and response.status_code != 429:
                    return response
                problem = f"{self.base_url} answered {response.status_code}"
            _say(f"{problem}; retrying in {delay:.0f} s")
            self._wait(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    def _authed(self, method: str, path: str, **kw: Any) -> httpx.Response:
        assert self.identity is not None
        response = self._call(method, path, token=self.identity.token, **kw)
        if response.status_code == 401:
            raise RemoteWorkerError(
                f"{self.base_url} refused this worker's token (an admin revoked worker"
                f" {self.identity.worker_id}?): {_detail(response)}. Restarting enrols it again"
                " with the enrolment key, if that is still valid"
            )
        return response

    # -- identity ------------------------------------------------------------------------------

    def _load_identity(self) -> _Identity | None:
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
        return _Identity(int(saved["worker_id"]), saved["token"])

    def _register(self) -> _Identity:
        response = self._call(
            "POST",
            f"{API}/register",
            token=self.enrolment_key,
            json={
                "name": self.name,
                "hardware_class": self.hardware_class,
                "hardware": _hardware(self.device),
            },
        )
        if response.status_code in (401, 403):
            raise RemoteWorkerError(
                f"{self.base_url} refused the enrolment key: {_detail(response)}. Ask an admin"
                " for a worker key (`kernelmap keys create --role worker`)"
            )
        if response.status_code != 201:
            raise RemoteWorkerError(
                f"enrolling at {self.base_url} failed ({response.status_code}): {_detail(response)}"
            )
        body = response.json()
        identity = _Identity(int(body["worker_id"]), str(body["token"]))
        _write_private(
            self.state_path,
            {
                "url": self.base_url,
                "worker_id": identity.worker_id,
                "token": identity.token,
                "name": self.name,
                "hardware_class": self.hardware_class,
            },
        )
        _say(f"enrolled at {self.base_url} as worker {identity.worker_id} ({self.name})")
        return identity

    def join(self) -> None:
        """Use the saved token if the server still takes it, else enrol."""
        saved = self._load_identity()
        if saved is not None:
            response = self._call("POST", f"{API}/heartbeat", token=saved.token)
            if response.status_code == 200:
                self.identity = saved
                _say(f"rejoined {self.base_url} as worker {saved.worker_id} ({self.name})")
                return
            log.info("the saved worker token was refused (%s): enrolling", response.status_code)
        self.identity = self._register()

    # -- results -------------------------------------------------------------------------------

    def _pending_path(self, job_id: str) -> Path:
        return self.pending_dir / f"{hashlib.sha256(job_id.encode()).hexdigest()[:32]}.json"

    def _post(self, job_id: str, result: dict[str, Any], fallback: bool = True) -> bool | None:
        """Post a result until the server answers; whether it stored it (None: refused)."""
        response = self._authed("POST", f"{API}/jobs/{job_id}/result", json={"result": result})
        if response.status_code == 200:
            return bool(response.json().get("accepted"))
        # 404/409: the job is gone or another worker holds it now; 413/422: a result the
        # server will never take. Retrying the same post cannot help either way.
        why = f"the server refused the result ({response.status_code}): {_detail(response)}"
        _say(f"job {job_id}: {why}")
        if fallback and response.status_code in (413, 422):
            # Say so in the job's place: otherwise it would be leased again, to the same end.
            return self._post(
                job_id, failure(Verdict.RUNTIME_ERROR, f"remote worker: {why}"), False
            )
        return None

    def deliver(self, job_id: str, result: dict[str, Any]) -> bool | None:
        """Keep the result on disk, post it, forget it once the server answered."""
        path = self._pending_path(job_id)
        _write_private(path, {"url": self.base_url, "job_id": job_id, "result": result})
        outcome = self._post(job_id, result)
        path.unlink(missing_ok=True)
        return outcome

    def flush_pending(self) -> None:
        """Post the results a previous run of this worker finished but could not deliver."""
        if not self.pending_dir.is_dir():
            return
        for path in sorted(self.pending_dir.glob("*.json")):
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                log.warning("dropping unreadable pending result %s: %s", path, e)
                path.unlink(missing_ok=True)
                continue
            if saved.get("url") != self.base_url:
                continue  # for another server this worker joined before
            outcome = self._post(saved["job_id"], saved["result"])
            path.unlink(missing_ok=True)
            if outcome is not None:
                _say(f"job {saved['job_id']}: delivered a result left by an earlier run")

    # -- evaluation ----------------------------------------------------------------------------

    def evaluator(self, config: dict[str, Any]):
        """The evaluator, rebuilt only when a job asks for another configuration."""
        from evaluator_worker.config import job_config
        from evaluator_worker.judge import Evaluator
        from services.config import Settings

        # This worker's own device, gate, sandbox and limits: no job may loosen them.
        wanted = job_config(Settings().eval_config(device=self.device), config)
        if self._evaluator is None or self._evaluator.config != wanted:
            self.close_evaluator()
            self._evaluator = Evaluator(wanted)
        return self._evaluator

    def close_evaluator(self) -> None:
        if self._evaluator is not None:
            self._evaluator.close()
            self._evaluator = None

    def _task_file(self, message: dict[str, Any]) -> Path | None:
        source = message["task_source"]
        sha = hashlib.sha256(source.encode()).hexdigest()
        if sha != message.get("task_sha"):
            return None
        path = self.workdir / f"task_{sha[:16]}.py"
        if not path.exists():
            path.write_text(source)
        return path

    def evaluate(self, message: dict[str, Any]) -> dict[str, Any]:
        job = Job(
            str(message["job_id"]),
            int(message["candidate_id"]),
            str(message["source"]),
            dict(message.get("params") or {}),
        )
        task_path = self._task_file(message)
        if task_path is None:
            return failure(Verdict.LOAD_ERROR, "the task source does not match its sha256")
        try:
            ev = self.evaluator(dict(message.get("config") or {}))
        except Exception as e:  # e.g. a configuration this evaluator refuses: say so
            log.exception("job %s: no evaluator for its configuration", job.job_id)
            return failure(Verdict.RUNTIME_ERROR, f"remote worker error: {type(e).__name__}: {e}")
        return evaluate_job(ev, task_path, job, self.workdir, self.name)

    # -- the loop ------------------------------------------------------------------------------

    def claim(self) -> dict[str, Any] | None:
        response = self._authed("POST", f"{API}/claim", params={"wait_s": CLAIM_WAIT_S})
        if response.status_code == 204:
            return None
        if response.status_code != 200:
            raise RemoteWorkerError(
                f"claiming a job at {self.base_url} failed ({response.status_code}):"
                f" {_detail(response)}"
            )
        return response.json()

    def work_on(self, claimed: dict[str, Any]) -> None:
        job_id = claimed["job_id"]
        message = claimed["job"]
        lease_s = float(claimed.get("lease_s") or 60.0)
        keeper = _LeaseKeeper(self, job_id, min(HEARTBEAT_S, lease_s / 3))
        keeper.start()
        t0 = time.monotonic()
        try:
            result = self.evaluate(message)
        finally:
            keeper.finish()
        outcome = self.deliver(job_id, result)
        said = {True: "stored", False: "the job already had a result", None: "refused"}[outcome]
        _say(
            f"job {job_id} (candidate {message.get('candidate_id')}):"
            f" {result.get('verdict')} in {time.monotonic() - t0:.1f} s, {said}"
        )

    def close(self) -> None:
        self.close_evaluator()
        self.client.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


class _LeaseKeeper(threading.Thread):
    """Extends a job's lease while it is evaluated; gives up once the server says it is lost."""

    def __init__(self, worker: _RemoteWorker, job_id: str, interval_s: float) -> None:
        super().__init__(name=f"lease-{job_id[:8]}", daemon=True)
        self.worker = worker
        self.job_id = job_id
        self.interval_s = max(interval_s, 0.5)
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval_s):
            try:
                response = self.worker.client.post(
                    f"{API}/jobs/{self.job_id}/heartbeat",
                    headers={"Authorization": f"Bearer {self.worker.identity.token}"},
                )
            except httpx.TransportError as e:  # the next beat may get through
                log.warning("heartbeat of job %s failed: %s", self.job_id, e)
                continue
            if response.status_code == 409:
                _say(
                    f"job {self.job_id}: the lease was lost (the server did not hear from us in"
                    " time); finishing it anyway, the result counts unless another worker's"
                    " comes first"
                )
                return
            if response.status_code != 200:
                log.warning("heartbeat of job %s: %s", self.job_id, response.status_code)

    def finish(self) -> None:
        self._done.set()
        self.join(timeout=35.0)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    return str(body.get("detail", body))[:300] if isinstance(body, dict) else str(body)[:300]


def run_remote_worker(
    url: str,
    token: str,
    *,
    hardware_class: str | None = None,
    device: str | None = None,
    name: str | None = None,
    data_dir: str | Path,
    stop: threading.Event | None = None,
    max_jobs: int | None = None,
    insecure_http: bool = False,
) -> int:
    """Join the server at ``url`` and evaluate the jobs it leases, one at a time.

    Parameters
    ----------
    url:
        The kernelmap server (``https://...``; ``http://`` only to a loopback host, or with
        ``insecure_http``).
    token:
        The enrolment key: an API key of role ``worker`` (``kernelmap keys create --role
        worker``). Used only to enrol; the worker then uses its own token.
    hardware_class:
        The queue to serve (default: ``cuda`` with a GPU, else ``cpu``, like ``kernelmap
        worker``).
    device:
        ``cpu``, ``cuda``, a GPU index (sets ``CUDA_VISIBLE_DEVICES``) or None (auto).
    name:
        The worker's name on the server (default: ``<hostname>-<hardware class>``).
    data_dir:
        Where the worker keeps its token (``remote_worker.json``, mode 0600) and results not
        yet delivered.
    stop:
        Set it to stop the worker (it stops within one long-poll, or after the job at hand).
    max_jobs:
        Stop after this many jobs (None: run until stopped).
    insecure_http:
        Allow ``http://`` to a non-loopback host.

    Returns
    -------
    int
        0 once stopped (``stop``, ``max_jobs`` or Ctrl-C).

    Raises
    ------
    RemoteWorkerError
        A bad URL or hardware class, a refused enrolment key, or a worker token the server
        revoked.
    """
    base_url = check_url(url, insecure_http)
    if max_jobs is not None and max_jobs < 1:
        raise RemoteWorkerError(f"max_jobs must be at least 1, got {max_jobs}")
    if not token or not token.strip():
        raise RemoteWorkerError("an enrolment key is needed: --token KEY (a worker API key)")
    dev = _device(device)
    hw_class = hardware_class or dev
    if not HARDWARE_CLASS_RE.fullmatch(hw_class):
        raise RemoteWorkerError(
            f"invalid hardware class {hw_class!r}: lowercase letters, digits, '.', '_' and '-'"
            " (e.g. cuda, h100), at most 64 characters"
        )
    worker_name = (name or f"{socket.gethostname()}-{hw_class}").strip()[:200]
    refused = sandbox.refusal(sandbox.report(dev, _sandbox_mode()))
    if refused:
        raise RemoteWorkerError(refused)
    stop = stop or threading.Event()
    worker = _RemoteWorker(
        base_url, token.strip(), hw_class, dev, worker_name, Path(data_dir), stop
    )
    done = 0
    try:
        worker.join()
        worker.flush_pending()
        _say(f"claiming {hw_class} jobs from {base_url} on {dev}")
        while not stop.is_set() and (max_jobs is None or done < max_jobs):
            claimed = worker.claim()
            if claimed is None:
                continue
            worker.work_on(claimed)
            done += 1
    except _Stopped:
        pass
    except KeyboardInterrupt:
        _say("interrupted: stopping")
    finally:
        worker.close()
    _say(f"stopped after {done} job{'s' if done != 1 else ''}")
    return 0
