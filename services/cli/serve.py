"""The service's processes: ``kernelmap serve``, ``kernelmap controller`` and ``kernelmap worker``
(a Celery worker of the fleet, or with ``--join`` a remote worker over HTTPS).

Embedded mode (no ``KERNELMAP_REDIS_URL``): ``serve`` runs everything on this machine with
nothing installed: SQLite in the data directory, a private redis-server on a unix socket
(:class:`services.broker.redis_server.EmbeddedRedis`), one evaluation worker on the local device (a
``kernelmap worker`` child), the controller in a thread and the API under uvicorn. Cluster
mode (``KERNELMAP_DATABASE_URL`` and ``KERNELMAP_REDIS_URL`` set): ``serve`` is the API (plus
the controller unless ``--no-controller``; run exactly one controller per database, either
inside one ``serve`` or as ``kernelmap controller``), and workers run elsewhere unless
``--local-worker``.

The first ``serve`` on a database without users prints a one-time admin key on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import os
import signal
import subprocess
import sys
import threading

from kernelmap_errors import KernelmapError
from services.cli.options import settings_from
from services.cli.worker_token import enrolment_token
from services.config import Settings
from services.heap import tune_collector

log = logging.getLogger(__name__)

#: How the local worker child is started: the CLI of this very installation.
_CLI = "import sys; from services.cli.main import main; sys.exit(main(sys.argv[1:]))"


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per migration is noise


class _Stop(Exception):
    """SIGTERM or SIGINT after the API stopped: unwind and clean up."""


def _raise_stop(signum, frame) -> None:
    raise _Stop(signum)


def _settings(args: argparse.Namespace) -> Settings:
    settings = settings_from(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


def _local_device(settings: Settings) -> str:
    from evaluator_worker.judge import resolve_device

    return resolve_device(settings.device).type


def _print_admin_key(sessions) -> None:
    from services.keys import ensure_admin

    with sessions() as s:
        key = ensure_admin(s)
        s.commit()
    if key is not None:
        print(
            "kernelmap: this database had no users: here is its admin key, shown only this once"
            " (keep it; make more keys with POST /api/v1/keys or `kernelmap keys create`):",
            file=sys.stderr,
            flush=True,
        )
        print(key, flush=True)


def _start_worker(settings: Settings, hardware_class: str) -> subprocess.Popen:
    from services.broker.redis_server import death_signal

    cmd = [sys.executable, "-c", _CLI, "worker", "--queue", hardware_class]
    env = dict(os.environ)
    env["KERNELMAP_REDIS_URL"] = settings.redis_url or ""
    env["KERNELMAP_DATA_DIR"] = str(settings.data_dir)
    env["KERNELMAP_REDIS_KEY_PREFIX"] = settings.redis_key_prefix
    log_path = settings.data_dir / "worker.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # stopped as a group: its pool processes too
            # Told to stop if serve itself dies without cleaning up (kill -9).
            preexec_fn=death_signal(os.getpid()) if sys.platform == "linux" else None,
        )
    print(
        f"kernelmap: local worker on eval.{hardware_class} (pid {proc.pid}, log {log_path})",
        file=sys.stderr,
        flush=True,
    )
    return proc


def _stop_worker(proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)  # Celery's warm shutdown: the job in hand finishes
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def cmd_serve(args: argparse.Namespace) -> int:
    """``kernelmap serve``: the API (+ controller, + embedded broker and worker); see above."""
    import uvicorn

    from services.api import create_app
    from services.runs.controller import Controller
    from services.runs.search import open_database

    if not 0 < args.port < 65536:
        raise KernelmapError(f"--port must be between 1 and 65535, got {args.port}")
    _logging()
    settings = _settings(args)
    embedded = settings.redis_url is None
    with contextlib.ExitStack() as stack:
        if embedded:
            from services.broker.redis_server import EmbeddedRedis

            broker = stack.enter_context(EmbeddedRedis(settings.data_dir))
            settings = settings.model_copy(update={"redis_url": broker.url})
            print(
                f"kernelmap: embedded mode: database in {settings.data_dir},"
                f" private Redis {broker.binary} on {broker.socket_path}",
                file=sys.stderr,
                flush=True,
            )
        device = _local_device(settings)
        if settings.device == "auto":
            # Runs that name no hardware go to this machine's class when it runs the worker.
            settings = settings.model_copy(update={"device": device})
        engine, sessions = open_database(settings)
        stack.callback(engine.dispose)
        _print_admin_key(sessions)
        if embedded or args.local_worker:
            worker = _start_worker(settings, device)
            stack.callback(_stop_worker, worker)
        controller = None
        if not args.no_controller:
            controller = Controller(settings, sessions)
            stop = threading.Event()
            thread = threading.Thread(
                target=controller.serve_forever, args=(stop,), name="controller", daemon=True
            )
            thread.start()
            stack.callback(thread.join, 60)
            stack.callback(stop.set)
        app = create_app(
            sessions, settings, start_run=controller.wake if controller is not None else None
        )
        print(
            f"kernelmap: dashboard on http://{args.host}:{args.port}/ (sign in with an API key),"
            f" API on http://{args.host}:{args.port}/api/v1 (docs: /docs)",
            file=sys.stderr,
            flush=True,
        )
        # stdout carries only the admin key: uvicorn's access log goes to stderr too.
        log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
        log_config["handlers"]["access"]["stream"] = "ext://sys.stderr"
        server = uvicorn.Server(
            uvicorn.Config(
                app, host=args.host, port=args.port, log_level="info", log_config=log_config
            )
        )
        # uvicorn handles SIGINT/SIGTERM itself, then raises the signal again once it has
        # stopped: with these handlers that ends here and the stack above stops the
        # controller, the worker and the broker (SIGTERM's default would kill us first).
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _raise_stop)
        # Everything imported and built so far (the OpenAPI schema included) lives as long
        # as the process: out of the collector's full passes (services.heap).
        app.openapi()
        tune_collector()
        with contextlib.suppress(_Stop):
            server.run()
    return 0


def cmd_controller(args: argparse.Namespace) -> int:
    """``kernelmap controller``: the cluster's controller, until SIGTERM or Ctrl-C."""
    from services.runs.controller import Controller
    from services.runs.search import open_database

    _logging()
    settings = _settings(args)
    if not settings.redis_url:
        raise KernelmapError(
            "kernelmap controller dispatches to the Celery fleet: set KERNELMAP_REDIS_URL (and"
            " KERNELMAP_DATABASE_URL); on one machine, `kernelmap serve` runs the controller"
            " itself"
        )
    engine, sessions = open_database(settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    controller = Controller(settings, sessions, name=args.id)
    tune_collector()  # services.heap: fewer, shorter collections from here on
    try:
        controller.serve_forever(stop)
    finally:
        engine.dispose()
    return 0


def run_remote(args: argparse.Namespace) -> int:
    """``kernelmap worker --join URL --token-file PATH``: a remote worker pulling jobs over
    HTTPS (the token also from ``KERNELMAP_WORKER_TOKEN`` or ``--token KEY``)."""
    from services.workers.remote import run_remote_worker

    settings = settings_from(args)
    token = enrolment_token(args, settings)
    if not (args.join and token):
        raise KernelmapError(
            "a remote worker needs both --join URL and an enrolment token: --token-file PATH,"
            " KERNELMAP_WORKER_TOKEN or --token KEY"
        )
    if args.device is not None and not args.device.isdigit():
        raise KernelmapError(f"--device must be a GPU index (0, 1, ...), got {args.device!r}")
    return run_remote_worker(
        args.join,
        token,
        hardware_class=args.queue,
        device=args.device,
        name=args.name,
        data_dir=settings.data_dir,
        insecure_http=args.insecure_http,
    )


def _has_gpu() -> bool:
    # NVML's count, not CUDA's: the worker forks its pool processes after this, and a CUDA
    # context made before a fork is unusable in the children.
    from evaluator_worker.device import detect_device

    return detect_device() == "cuda"


def cmd_worker(args: argparse.Namespace) -> int:
    """``kernelmap worker``: a Celery worker evaluating jobs from ``eval.<CLASS>``; with
    ``--join URL`` (and an enrolment token), a remote worker pulling jobs from a server over
    HTTPS."""
    # KERNELMAP_WORKER_TOKEN alone does not make a remote worker: it may be set for the shell.
    if args.join or args.token or args.token_file:
        return run_remote(args)
    from kombu.utils.url import maybe_sanitize_url

    if args.concurrency < 1:
        raise KernelmapError(f"--concurrency must be at least 1, got {args.concurrency}")
    if args.device is not None:
        if not args.device.isdigit():
            raise KernelmapError(f"--device must be a GPU index (0, 1, ...), got {args.device!r}")
        # Not a kernelmap setting but which GPU this process and its children may see, read by
        # the CUDA driver itself in every child (pool processes, their evaluators): it can only
        # be passed down through the environment, before anything here initialises CUDA.
        os.environ["CUDA_VISIBLE_DEVICES"] = args.device
    hardware = args.queue or ("cuda" if _has_gpu() else "cpu")
    overrides: dict[str, object] = {}
    if args.redis:
        overrides["redis_url"] = args.redis
    if hardware == "cpu":
        overrides["device"] = "cpu"
    # Handed to the Celery app: its pool processes, forked from this one, evaluate with them
    # (services.workers.tasks reads them from the app's configuration).
    settings = settings_from(args).model_copy(update=overrides)
    device = settings.device if settings.device != "auto" else ("cuda" if _has_gpu() else "cpu")
    if device == "cuda" and not _has_gpu():
        raise KernelmapError(
            f"queue {hardware} evaluates on CUDA but no GPU is visible"
            f" (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})"
        )
    import socket

    from evaluator_worker.sandbox import refusal
    from services.workers.celery_app import create_app, eval_queue
    from services.workers.fleet import Heartbeat
    from services.workers.hardware import hardware_info

    app = create_app(settings)
    queue = eval_queue(hardware)
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "all visible") if device == "cuda" else "-"
    # The node name spelled out (Celery's %h is the same hostname) so that the heartbeat's
    # record and the name on every job's result agree.
    name = f"kernelmap-{hardware}-{os.getpid()}@{socket.gethostname()}"
    print(
        f"kernelmap worker: consuming {queue} on {maybe_sanitize_url(app.conf.broker_url)},"
        f" device {device} (CUDA_VISIBLE_DEVICES={gpu}), concurrency {args.concurrency}",
        file=sys.stderr,
        flush=True,
    )
    # Gathered before Celery forks its pool; hardware_info never initialises CUDA here.
    facts = hardware_info(device, sandbox=settings.sandbox)
    refused = refusal(facts["sandbox"])
    if refused:
        raise KernelmapError(refused)
    heartbeat = Heartbeat(settings, name, hardware, facts).start()
    try:
        app.worker_main(
            [
                "worker",
                "--queues",
                queue,
                "--concurrency",
                str(args.concurrency),
                "--pool",
                "prefork",
                "--hostname",
                name,
                "--loglevel",
                args.loglevel,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ]
        )
    finally:
        heartbeat.stop()
    return 0
