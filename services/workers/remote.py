"""A remote GPU worker: joins a kernelmap server over HTTPS and pulls jobs with leases.

``kernelmap worker --join URL --token-file PATH`` (or ``KERNELMAP_WORKER_TOKEN``, or ``--token
KEY``; see :mod:`services.cli.worker_token`) runs :func:`run_remote_worker`. The worker enrols
once with the enrolment key (a ``worker``-role API key) and keeps the token it gets in
``<data_dir>/remote_worker.json`` (mode 0600) for its next start
(:mod:`services.workers.remote_client`). Then, one job at a time:

1. long-poll ``POST /api/v1/workers/claim`` for a job of its hardware class;
2. evaluate it with a local sandboxed :class:`evaluator_worker.judge.Evaluator`, while a
   thread extends the lease every :data:`HEARTBEAT_S` seconds (or a third of the lease);
3. write the result to ``<data_dir>/remote_results/<job_id>.json`` and post it until the server
   answers (the post is idempotent), then delete the file. Results left by a stop or a crash
   are posted at the next start: a finished evaluation is never lost
   (:mod:`services.workers.remote_results`).

Network errors and server errors are retried with exponential backoff (up to
:data:`services.workers.remote_client.BACKOFF_MAX_S`). The worker stops when ``stop`` is set
(within one long-poll) or on Ctrl-C; a job interrupted mid-evaluation goes back to the queue
when its lease expires.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
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
from services.dispatch.job_eval import evaluate_job, failure
from services.workers.hardware import hardware_info
from services.workers.remote_client import (
    RemoteClient,
    RemoteWorkerError,
    Stopped,
    check_url,
    say,
)
from services.workers.remote_results import PendingResults

log = logging.getLogger(__name__)

CLAIM_WAIT_S = 20.0
"""How long one claim waits on the server for a job (the server allows up to 30 s)."""

HEARTBEAT_S = 20.0
"""Seconds between two lease heartbeats (less when the lease is shorter than three of them)."""


# -- setup -------------------------------------------------------------------------------------


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
    """What the worker enrols with (:func:`services.workers.hardware.hardware_info`)."""
    return hardware_info(device, sandbox=_sandbox_mode())


def _sandbox_mode() -> str:
    """``KERNELMAP_SANDBOX`` (strict unless set to relaxed)."""
    return "relaxed" if os.environ.get("KERNELMAP_SANDBOX") == "relaxed" else "strict"


# -- the worker --------------------------------------------------------------------------------


class _RemoteWorker:
    """One joined worker: its client, its results on disk, its evaluator and work directory."""

    def __init__(self, client: RemoteClient, device: str, data_dir: Path) -> None:
        self.client = client
        self.device = device
        self.name = client.name
        self.pending = PendingResults(client, data_dir)
        self.workdir = Path(tempfile.mkdtemp(prefix="kernelmap-remote-"))
        self._evaluator = None

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

    def work_on(self, claimed: dict[str, Any]) -> None:
        """Evaluate a claimed job while keeping its lease, then deliver its result."""
        job_id = claimed["job_id"]
        message = claimed["job"]
        lease_s = float(claimed.get("lease_s") or 60.0)
        keeper = _LeaseKeeper(self.client, job_id, min(HEARTBEAT_S, lease_s / 3))
        keeper.start()
        t0 = time.monotonic()
        try:
            result = self.evaluate(message)
        finally:
            keeper.finish()
        outcome = self.pending.deliver(job_id, result)
        said = {True: "stored", False: "the job already had a result", None: "refused"}[outcome]
        say(
            f"job {job_id} (candidate {message.get('candidate_id')}):"
            f" {result.get('verdict')} in {time.monotonic() - t0:.1f} s, {said}"
        )

    def close(self) -> None:
        """Close the evaluator and the client; remove the work directory."""
        self.close_evaluator()
        self.client.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


class _LeaseKeeper(threading.Thread):
    """Extends a job's lease while it is evaluated; gives up once the server says it is lost."""

    def __init__(self, client: RemoteClient, job_id: str, interval_s: float) -> None:
        super().__init__(name=f"lease-{job_id[:8]}", daemon=True)
        self.client = client
        self.job_id = job_id
        self.interval_s = max(interval_s, 0.5)
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval_s):
            try:
                response = self.client.extend_lease(self.job_id)
            except httpx.TransportError as e:  # the next beat may get through
                log.warning("heartbeat of job %s failed: %s", self.job_id, e)
                continue
            if response.status_code == 409:
                say(
                    f"job {self.job_id}: the lease was lost (the server did not hear from us in"
                    " time); finishing it anyway, the result counts unless another worker's"
                    " comes first"
                )
                return
            if response.status_code != 200:
                log.warning("heartbeat of job %s: %s", self.job_id, response.status_code)

    def finish(self) -> None:
        """Stop extending the lease (the evaluation is over)."""
        self._done.set()
        self.join(timeout=35.0)


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
        raise RemoteWorkerError(
            "an enrolment key is needed (a worker API key): --token-file PATH,"
            " KERNELMAP_WORKER_TOKEN or --token KEY"
        )
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
    client = RemoteClient(
        base_url,
        token.strip(),
        hw_class,
        worker_name,
        Path(data_dir),
        stop,
        read_timeout_s=CLAIM_WAIT_S + 30.0,
    )
    worker = _RemoteWorker(client, dev, Path(data_dir))
    done = 0
    try:
        client.join(lambda: _hardware(dev))
        worker.pending.flush()
        say(f"claiming {hw_class} jobs from {base_url} on {dev}")
        while not stop.is_set() and (max_jobs is None or done < max_jobs):
            claimed = client.claim(CLAIM_WAIT_S)
            if claimed is None:
                continue
            worker.work_on(claimed)
            done += 1
    except Stopped:
        pass
    except KeyboardInterrupt:
        say("interrupted: stopping")
    finally:
        worker.close()
    say(f"stopped after {done} job{'s' if done != 1 else ''}")
    return 0
