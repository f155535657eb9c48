"""The remote worker's enrolment token: from ``--token-file``, ``KERNELMAP_WORKER_TOKEN`` or
``--token``.

A command line is visible to every user of the host (``ps``, ``/proc/PID/cmdline``), so
``--token KEY`` is kept for trying things out only; a worker that stays up should read its
token from a file (``--token-file PATH``, which should be readable by its owner alone: a file
that group or others can read is used, with a warning on stderr, since a mounted container
secret is often mode 0644) or from the environment (``KERNELMAP_WORKER_TOKEN``). The command
line wins over the environment.
"""

from __future__ import annotations

import argparse
import stat
import sys
from pathlib import Path

from kernelmap_errors import KernelmapError
from services.config import Settings


class TokenError(KernelmapError):
    """The enrolment token cannot be read: a missing, unreadable or empty token file."""


def read_token_file(path: str | Path) -> str:
    """The token in the file at ``path``: its content, surrounding whitespace removed.

    Parameters
    ----------
    path:
        A file holding the token (one line; a trailing newline is fine).

    Returns
    -------
    str
        The token. A file that group or others may read gets a warning on stderr.

    Raises
    ------
    TokenError
        The file does not exist, cannot be read, or holds nothing but whitespace.
    """
    p = Path(path).expanduser()
    try:
        mode = p.stat().st_mode
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenError(f"--token-file {p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TokenError(f"--token-file {p}: cannot read it ({e})") from None
    token = text.strip()
    if not token:
        raise TokenError(
            f"--token-file {p} is empty: write the worker key into it"
            " (`kernelmap keys create --role worker > FILE`)"
        )
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        print(
            f"kernelmap worker: warning: {p} is readable by other users"
            f" (mode {stat.S_IMODE(mode):04o}): `chmod 600 {p}`",
            file=sys.stderr,
            flush=True,
        )
    return token


def enrolment_token(args: argparse.Namespace, settings: Settings) -> str | None:
    """The enrolment token given to ``kernelmap worker``, or None if none was given.

    ``--token-file`` or ``--token`` (at most one: the parser refuses both) win over
    ``KERNELMAP_WORKER_TOKEN`` (``settings.worker_token``).

    Raises
    ------
    TokenError
        ``--token-file`` names a missing, unreadable or empty file.
    """
    if getattr(args, "token_file", None):
        return read_token_file(args.token_file)
    if getattr(args, "token", None):
        return args.token
    if settings.worker_token is not None:
        return settings.worker_token.get_secret_value() or None
    return None
