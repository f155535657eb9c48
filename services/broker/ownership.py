"""Who owns a data directory's embedded Redis: the owner lock, and servers left by a crash.

While an :class:`~services.broker.redis_server.EmbeddedRedis` runs it holds an exclusive lock
on ``<data_dir>/redis/owner.lock`` (:class:`OwnerLock`), so a second kernelmap on the same data
directory is refused rather than sharing (and later shutting down) the first one's broker.

A redis-server left running by a kernelmap that crashed (the lock is free, the server still
answers on our socket and its working directory is ours) is shut down cleanly (its append-only
file is flushed) by :func:`clear_leftover`, to be replaced by a fresh child; one that no longer
answers is named in an error, never killed blindly.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from services.broker.errors import EmbeddedRedisError

log = logging.getLogger(__name__)


class OwnerLock:
    """The exclusive ``flock`` on ``<directory>/owner.lock``, holding the owner's pid.

    Parameters
    ----------
    directory:
        The embedded Redis's directory (``<data_dir>/redis``).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "owner.lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock and write this process's pid into the file.

        Raises
        ------
        EmbeddedRedisError
            Another process holds it; the message names its pid.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                os.close(fd)
                raise
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise EmbeddedRedisError(
                f"another kernelmap process (pid {owner}) runs the embedded Redis of"
                f" {self.directory.parent}: stop it first, or give this one another"
                " KERNELMAP_DATA_DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (releasing one not held does nothing)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (an orphan nobody has reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat_line.rpartition(")")[2].split()[:1] != ["Z"]


def is_redis_server(pid: int) -> bool:
    """Whether process ``pid`` runs redis-server (a pidfile's pid may have been reused)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip().startswith("redis-server")
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return False
    except OSError:
        return True
    try:  # no /proc (macOS, BSD)
        out = subprocess.run(["ps", "-p", str(pid), "-o", "comm="], capture_output=True, text=True)
    except OSError:
        return False
    return Path(out.stdout.strip()).name.startswith("redis-server")


def private_dir(path: Path) -> Path:
    """Create ``path`` with mode 0700, or check that the existing one is ours and private.

    Raises
    ------
    EmbeddedRedisError
        It exists but is not a directory, belongs to another user or others may enter it.
    """
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise EmbeddedRedisError(
            f"{path} (where the embedded Redis puts its socket) is not a private directory of"
            f" this user (owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}): remove it,"
            " or use a shorter KERNELMAP_DATA_DIR"
        )
    return path


def clear_leftover(
    directory: Path,
    socket_path: Path,
    probe: Callable[[float], redis.Redis],
    stop_timeout_s: float,
) -> None:
    """Deal with a server left by a kernelmap that died (the caller holds the owner lock).

    Parameters
    ----------
    directory:
        The embedded Redis's directory (its ``redis.pid`` is read).
    socket_path:
        Where our server listens.
    probe:
        Makes a client on ``socket_path`` with the given command timeout (s), without retries.
    stop_timeout_s:
        How long a leftover server gets to exit, after SHUTDOWN and then after SIGTERM.

    Raises
    ------
    EmbeddedRedisError
        A server that is not ours holds the socket, or one of ours no longer answers on it.
    """
    pidfile = directory / "redis.pid"
    try:
        old_pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        old_pid = None
    answering = False
    if socket_path.exists():
        client = probe(2)
        try:
            server_dir = client.config_get("dir").get("dir")
            server_pid = int(client.info("server")["process_id"])
            answering = True
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            pass
        except redis.ResponseError as e:  # CONFIG refused: not a server of ours
            raise EmbeddedRedisError(
                f"a Redis server that kernelmap did not configure listens on"
                f" {socket_path} ({e}): stop it or remove the socket"
            ) from None
        if answering:
            if Path(server_dir).resolve() != directory.resolve():
                client.close()
                raise EmbeddedRedisError(
                    f"a Redis server (pid {server_pid}) working in {server_dir}, not"
                    f" {directory}, listens on {socket_path}: stop it, or give"
                    " kernelmap another KERNELMAP_DATA_DIR"
                )
            log.warning(
                "a redis-server (pid %s) left by an earlier kernelmap still runs on %s:"
                " shutting it down (its queue is kept) and starting a fresh one",
                server_pid,
                directory,
            )
            with contextlib.suppress(redis.RedisError, OSError):
                client.shutdown()
            client.close()
            wait_gone(server_pid, stop_timeout_s)
            return
        client.close()
    if old_pid is not None and alive(old_pid) and is_redis_server(old_pid):
        raise EmbeddedRedisError(
            f"a redis-server (pid {old_pid}) from an earlier kernelmap still runs on"
            f" {directory} but does not answer on {socket_path}: stop it"
            f" (`kill {old_pid}`) and start kernelmap again"
        )
    # Stale files of a server that died: a socket nobody listens on, an old pidfile.
    for stale in (socket_path, pidfile):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def wait_gone(pid: int, timeout_s: float) -> None:
    """Wait for a server that is not our child to exit (then SIGTERM, then SIGKILL).

    Raises
    ------
    EmbeddedRedisError
        It is still there after ``timeout_s`` past the SIGKILL.
    """
    for sig in (None, 15, 9):
        if sig is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not alive(pid):
                return
            time.sleep(0.02)
    raise EmbeddedRedisError(f"the leftover redis-server (pid {pid}) does not exit")
