"""The Celery fleet as Redis sees it: who is alive on which hardware, and how much work waits.

Every ``kernelmap worker`` reports what it runs on
(:func:`services.workers.hardware.hardware_info`) and keeps a
:class:`Heartbeat`: a daemon thread that rewrites the worker's record, as JSON, to the Redis key
``{redis_key_prefix}kernelmap:workers:{name}`` every ``interval_s`` seconds with an expiry of
:data:`EXPIRY_INTERVALS` intervals. A worker that stops cleanly deletes its key; one that is
killed disappears by itself once the key expires, so nothing has to sweep the list.
:func:`live_workers` reads the records back (the API's worker list, ``/metrics``; a
dispatcher's stall note through :func:`read_workers`) and
:func:`queue_depths` counts the jobs waiting in each ``eval.*`` queue.

The interval is ``Settings.heartbeat_s`` (``KERNELMAP_HEARTBEAT_S``, 10 s by default); readers
need not know it, since a record carries its own expiry. Remote workers that join over HTTPS
are not here: they are rows of the ``workers`` table (:class:`archive.models.Worker`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import threading
from typing import Any

import redis
from kombu.transport.redis import PRIORITY_STEPS, Channel
from kombu.utils.url import maybe_sanitize_url
from redis.backoff import NoBackoff
from redis.retry import Retry

from kernelmap_errors import KernelmapError
from services.broker.redis_server import redis_py_url
from services.config import Settings

log = logging.getLogger(__name__)

EXPIRY_INTERVALS = 3
"""A worker's record expires after this many intervals without a heartbeat: one late or failed
write does not make a live worker vanish, a dead one is gone within three intervals."""

WORKERS_KEY = "kernelmap:workers:"
"""Key of a worker's record, after the deployment's ``redis_key_prefix`` and before its name."""

EVAL_QUEUE_PREFIX = "eval."
"""Prefix of the evaluation queues (:func:`services.workers.celery_app.eval_queue`)."""

# kombu's Redis transport (kombu.transport.redis.Channel): a queue is a list named like the
# queue, plus one list per non-zero priority step named ``queue + sep + step``; an exchange's
# bindings are a set ``_kombu.binding.<exchange>`` whose members are
# ``routing_key sep pattern sep queue``. Every key starts with the transport's
# ``global_keyprefix`` (our ``redis_key_prefix``).
_SEP = Channel.sep.encode()
_BINDING = Channel.keyprefix_queue % ("",)
_PRIORITY_SUFFIXES = [b""] + [_SEP + str(step).encode() for step in PRIORITY_STEPS if step]

REDIS_TIMEOUT_S = 3.0
"""Bound on connecting to Redis and on each command: a scrape or a worker list must not hang."""


class FleetError(KernelmapError):
    """The fleet's Redis cannot be reached, or the heartbeat is misconfigured."""


def _broker_url(settings: Settings) -> str:
    from services.workers.celery_app import DEFAULT_BROKER

    return settings.redis_url or DEFAULT_BROKER


def _client(url: str) -> redis.Redis:
    # No retries inside redis-py: the heartbeat loop retries on its own schedule, and a
    # scrape must answer "Redis is down" quickly rather than after several attempts.
    return redis.Redis.from_url(
        redis_py_url(url),
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
    )


def _unreachable(url: str, exc: redis.RedisError) -> FleetError:
    return FleetError(
        f"the fleet's Redis at {maybe_sanitize_url(url)} did not answer ({exc}): start it, or"
        " point KERNELMAP_REDIS_URL at the broker the workers use"
    )


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis ``SCAN MATCH`` pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def worker_key(settings: Settings, name: str) -> str:
    """The Redis key of worker ``name``'s record."""
    return f"{settings.redis_key_prefix}{WORKERS_KEY}{name}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Heartbeat:
    """Keeps a Celery worker's record alive in Redis while the worker runs.

    The first write happens in :meth:`start`, then one every ``interval_s`` from a daemon
    thread. A failed write (Redis down, restarting) is logged and tried again at the next
    beat; it never stops the worker, and the record reappears once Redis answers.

    Parameters
    ----------
    settings:
        Where Redis is (``redis_url``, else Celery's default broker) and the key prefix.
    name:
        The worker's name: the Celery node name it consumes as (``kernelmap-cuda-PID@host``).
    hardware_class:
        The hardware class it serves (its queue is ``eval.<hardware_class>``).
    hardware:
        What :func:`services.workers.hardware.hardware_info` found.
    interval_s:
        Seconds between writes; default ``settings.heartbeat_s``. The record expires after
        :data:`EXPIRY_INTERVALS` of them.
    """

    def __init__(
        self,
        settings: Settings,
        name: str,
        hardware_class: str,
        hardware: dict[str, Any],
        *,
        interval_s: float | None = None,
    ) -> None:
        self.interval_s = settings.heartbeat_s if interval_s is None else float(interval_s)
        if not self.interval_s > 0:
            raise FleetError(f"the heartbeat interval must be positive, got {interval_s!r}")
        self.name = name
        self.key = worker_key(settings, name)
        self.ttl_s = EXPIRY_INTERVALS * self.interval_s
        self._url = _broker_url(settings)
        self._client = _client(self._url)
        self._record: dict[str, Any] = {
            "name": name,
            "kind": "celery",
            "hardware_class": hardware_class,
            "hardware": hardware,
            "started_at": _now().isoformat(),
            "last_seen": None,
            "pid": os.getpid(),
            "interval_s": self.interval_s,
            "ttl_s": self.ttl_s,
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def beat(self) -> bool:
        """Write the record now, with a fresh ``last_seen`` and expiry; False if Redis failed."""
        self._record["last_seen"] = _now().isoformat()
        try:
            self._client.set(self.key, json.dumps(self._record), px=int(self.ttl_s * 1000))
        except redis.RedisError as exc:
            if not self._failing:
                log.warning(
                    "heartbeat of %s to %s failed (%s); retrying every %g s",
                    self.name,
                    maybe_sanitize_url(self._url),
                    exc,
                    self.interval_s,
                )
            self._failing = True
            return False
        if self._failing:
            log.warning("heartbeat of %s is written again", self.name)
        self._failing = False
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except Exception:
                # Anything else is a bug, but the worker keeps evaluating: log it and go on.
                log.exception("heartbeat of %s failed", self.name)

    def start(self) -> Heartbeat:
        """Write the record and start beating; returns ``self``."""
        if self._thread is not None:
            return self
        self.beat()
        self._thread = threading.Thread(
            target=self._loop, name=f"heartbeat {self.name}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating and delete the record (the worker is gone at once, not at expiry)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=REDIS_TIMEOUT_S + 1)
        try:
            self._client.delete(self.key)
        except redis.RedisError as exc:
            log.warning(
                "could not delete the record of %s (%s): it expires in %g s",
                self.name,
                exc,
                self.ttl_s,
            )
        finally:
            self._client.close()

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _age_s(record: dict[str, Any], pttl_ms: int) -> float | None:
    """Seconds since the record was written, on Redis's clock when the expiry tells it."""
    ttl_s = record.get("ttl_s")
    if isinstance(ttl_s, int | float) and pttl_ms >= 0:
        return round(max(0.0, float(ttl_s) - pttl_ms / 1000), 3)
    try:
        seen = dt.datetime.fromisoformat(record["last_seen"])
    except (KeyError, TypeError, ValueError):
        return None
    if seen.tzinfo is None:
        seen = seen.replace(tzinfo=dt.UTC)
    return round(max(0.0, (_now() - seen).total_seconds()), 3)


def live_workers(settings: Settings) -> list[dict[str, Any]]:
    """The records of the Celery workers alive now, by name.

    Parameters
    ----------
    settings:
        ``redis_url`` and ``redis_key_prefix`` of the fleet. Without ``redis_url`` there is no
        Celery fleet: the list is empty.

    Returns
    -------
    list of dict
        Each worker's record (``name``, ``kind`` = ``"celery"``, ``hardware_class``,
        ``hardware``, ``started_at``, ``last_seen`` (ISO 8601 UTC), ``pid``, ``interval_s``,
        ``ttl_s``) plus ``age_s``: seconds since its last heartbeat.

    Raises
    ------
    FleetError
        When Redis cannot be reached.
    """
    if not settings.redis_url:
        return []
    client = _client(settings.redis_url)
    try:
        return read_workers(client, settings.redis_key_prefix)
    except redis.RedisError as exc:
        raise _unreachable(settings.redis_url, exc) from exc
    finally:
        client.close()


def read_workers(client: redis.Redis, key_prefix: str) -> list[dict[str, Any]]:
    """The live workers' records under ``key_prefix``, read with ``client`` (see
    :func:`live_workers`, which opens its own client; this one is for a caller that holds one,
    such as a dispatcher's broker client).

    Raises
    ------
    redis.RedisError
        When Redis does not answer.
    """
    prefix = f"{key_prefix}{WORKERS_KEY}"
    keys = list(client.scan_iter(match=_glob_escape(prefix) + "*", count=500))
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.get(key)
            pipe.pttl(key)
        replies = pipe.execute()
    workers = []
    for key, raw, pttl in zip(keys, replies[::2], replies[1::2], strict=True):
        if raw is None:
            continue  # expired between SCAN and GET
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("worker record %r is not JSON; ignored", key)
            continue
        if not isinstance(record, dict) or not isinstance(record.get("name"), str):
            log.warning("worker record %r has no name; ignored", key)
            continue
        record["age_s"] = _age_s(record, pttl)
        workers.append(record)
    workers.sort(key=lambda w: w["name"])
    return workers


def queue_depths(settings: Settings) -> dict[str, int]:
    """Jobs waiting in each ``eval.*`` queue (taken jobs being evaluated are not counted).

    A queue counts every priority sub-list kombu keeps for it. A queue some worker or
    dispatcher declared is listed even when empty (0), one never declared only while it holds
    jobs.

    Parameters
    ----------
    settings:
        ``redis_url`` and ``redis_key_prefix`` of the fleet. Without ``redis_url``: ``{}``.

    Returns
    -------
    dict
        Queue name (``eval.cuda``...) to the number of messages waiting, sorted by name.

    Raises
    ------
    FleetError
        When Redis cannot be reached.
    """
    if not settings.redis_url:
        return {}
    prefix = settings.redis_key_prefix.encode()
    pattern = _glob_escape(settings.redis_key_prefix)
    client = _client(settings.redis_url)
    try:
        queues: set[bytes] = set()
        bindings = list(client.scan_iter(match=pattern + _BINDING + "*", count=500))
        if bindings:
            with client.pipeline(transaction=False) as pipe:
                for key in bindings:
                    pipe.smembers(key)
                for members in pipe.execute(raise_on_error=False):
                    if isinstance(members, set):
                        queues.update(m.split(_SEP)[-1] for m in members)
        lists = list(client.scan_iter(match=pattern + EVAL_QUEUE_PREFIX + "*", count=500))
        queues.update(key[len(prefix) :].split(_SEP)[0] for key in lists)
        names = sorted(q for q in queues if q.startswith(EVAL_QUEUE_PREFIX.encode()))
        with client.pipeline(transaction=False) as pipe:
            for queue in names:
                for suffix in _PRIORITY_SUFFIXES:
                    pipe.llen(prefix + queue + suffix)
            sizes = pipe.execute(raise_on_error=False)
    except redis.RedisError as exc:
        raise _unreachable(settings.redis_url, exc) from exc
    finally:
        client.close()
    depths: dict[str, int] = {}
    per_queue = len(_PRIORITY_SUFFIXES)
    for i, queue in enumerate(names):
        counts = sizes[per_queue * i : per_queue * (i + 1)]
        # A key of another type under a queue's name (WRONGTYPE) is not a job.
        depths[queue.decode(errors="replace")] = sum(n for n in counts if isinstance(n, int))
    return depths
