"""The zygote: a process that imported torch and triton but never touched CUDA.

Starting an interpreter and importing torch costs seconds; forking a child from a process
that already imported them costs well under one (measured on the GPU hosts). CUDA cannot
survive a fork, so the zygote never initialises it: each child initialises its own context.
The judge runs the zygote as a separate interpreter and asks it over a Unix socket for one
child per candidate; the child's channel and capture file travel as file descriptors (SCM_RIGHTS).

Run as ``python -m evaluator_worker.zygote FD``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MAX_REQUEST = 1 << 16


class ZygoteError(RuntimeError):
    """The zygote could not be started or stopped answering."""


def _serve(fd: int) -> None:
    import torch  # noqa: F401  (imported once here, shared by every child)

    try:
        import triton  # noqa: F401

        if os.environ.get("TRITON_INTERPRET") == "1":
            from evaluator_worker import interpreter_fixes

            interpreter_fixes.apply()
    except ImportError:
        pass
    try:
        import cupy  # noqa: F401  (importing cupy does not initialise CUDA)
    except ImportError:
        pass
    import evaluator_worker.child  # noqa: F401

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped automatically
    sock = socket.socket(fileno=fd)
    sock.sendall(b'{"ready": true}\n')
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, MAX_REQUEST, 2)
        except OSError:
            return
        if not msg:
            return
        req = json.loads(msg)
        chan_fd, capture_fd = fds
        pid = os.fork()
        if pid == 0:
            sock.close()
            _child(req, chan_fd, capture_fd)
        os.close(chan_fd)
        os.close(capture_fd)
        sock.sendall(json.dumps({"pid": pid}).encode() + b"\n")


def _child(req: dict[str, Any], chan_fd: int, capture_fd: int) -> None:
    code = 70
    try:
        from evaluator_worker import child, protocol, sandbox

        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        chan = socket.socket(fileno=chan_fd)
        try:
            applied = sandbox.enter(req["sandbox"], capture_fd)
        except Exception as e:  # fail closed: no untrusted code runs; the judge hears why
            why = (
                str(e)
                if isinstance(e, sandbox.SandboxUnavailable)
                else f"setting up the sandbox failed: {type(e).__name__}: {e}"
            )
            protocol.send(chan, {"sandbox_error": why})
            code = 78
        else:
            # The first message, sent before any untrusted code runs: the only word on the
            # sandbox the judge believes (later messages may be the candidate's forgeries).
            protocol.send(chan, {"sandbox": applied})
            for stream in (sys.stdout, sys.stderr):  # the capture file gets each line as printed
                stream.reconfigure(line_buffering=True, write_through=True)
            code = child.serve(chan, applied)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


class Zygote:
    """Client side: starts the zygote interpreter and asks it for sandboxed children."""

    def __init__(self, env: dict[str, str] | None = None, start_timeout_s: float = 120.0) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        from evaluator_worker import sandbox

        # The zygote's memory is every child's: it never holds the worker's secrets.
        child_env = sandbox.environment(os.environ if env is None else env)
        root = str(Path(__file__).resolve().parent.parent)
        child_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (root, child_env.get("PYTHONPATH", "")) if p
        )
        self._log = tempfile.TemporaryFile()
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "evaluator_worker.zygote", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            env=child_env,
        )
        theirs.close()
        self.sock = ours
        self._buf = b""
        try:
            self._readline(t0 + start_timeout_s)
        except ZygoteError:
            self.close()
            raise
        self.start_s = time.monotonic() - t0

    def _readline(self, deadline: float) -> dict[str, Any]:
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ZygoteError("the zygote did not answer in time")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, OSError) as e:
                raise ZygoteError(f"the zygote stopped answering: {e}; {self.log_tail()}") from e
            if not data:
                raise ZygoteError(f"the zygote exited; {self.log_tail()}")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def log_tail(self, n: int = 2000) -> str:
        """The end of the zygote's own output (import errors and the like)."""
        self._log.seek(0)
        return self._log.read()[-n:].decode(errors="replace")

    def spawn(self, sandbox_opts: dict[str, Any]) -> tuple[int, socket.socket, Any]:
        """Fork one sandboxed child; returns ``(pid, channel, capture_file)``."""
        if self.proc.poll() is not None:
            raise ZygoteError(f"the zygote exited; {self.log_tail()}")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        capture = tempfile.TemporaryFile()
        try:
            req = json.dumps({"sandbox": sandbox_opts}).encode()
            socket.send_fds(self.sock, [req], [theirs.fileno(), capture.fileno()])
            reply = self._readline(time.monotonic() + 30.0)
        finally:
            theirs.close()
        return int(reply["pid"]), ours, capture

    def close(self) -> None:
        """Stop the zygote (children it forked are killed by their judges)."""
        try:
            self.sock.close()
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self._log.close()

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
