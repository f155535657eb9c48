"""Judge-side handle of one sandboxed candidate process.

Every request has a deadline; when it passes, the whole process group is killed
(``TIMEOUT``). A process that closes its channel has died or exited: its exit code proves
nothing, so that is a failure of the stage it was in, never a success.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from evaluator_worker import protocol
from evaluator_worker.errors import SandboxError, TaskError
from evaluator_worker.verdict import Verdict
from evaluator_worker.zygote import Zygote

DIED = {"setup": Verdict.LOAD_ERROR}
#: Longest message kept from a child (its own text: bounded, shown, never interpreted).
MAX_MESSAGE = 4000


class Failure(Exception):
    """A candidate failure that ends the evaluation with ``verdict``."""

    def __init__(self, verdict: Verdict, message: str) -> None:
        super().__init__(message)
        self.verdict = verdict
        self.message = message


class CandidateProcess:
    """One forked, sandboxed child and its channel."""

    def __init__(self, zygote: Zygote, sandbox: dict[str, Any]) -> None:
        t0 = time.monotonic()
        self.pid, self.sock, self.capture = zygote.spawn(sandbox)
        self.spawn_s = time.monotonic() - t0
        self.alive = True
        self.role = "candidate"
        self.ipc = True
        self.stage_name = ""
        self.stage_left: float | None = None
        self.workdir: Path | None = None
        self.cgroup: Path | None = None
        self.cgroup_limit_mb = 0
        #: What the sandbox applied, from the child's first message (before untrusted code).
        self.applied: dict[str, Any] | None = None
        #: Bound on the bytes of one reply (the judge sets it from the task's sizes).
        self.max_reply_bytes = 1 << 36

    def stage(self, name: str, budget_s: float) -> None:
        """Start a stage: its requests together may take at most ``budget_s`` seconds."""
        self.stage_name, self.stage_left = name, budget_s

    def request(self, msg: dict[str, Any], timeout_s: float, what: str) -> dict[str, Any]:
        """Send ``msg`` and wait for the reply; raises :class:`Failure` on any failure.

        The wait is bounded by ``timeout_s`` and by what is left of the current stage.
        """
        if not self.alive:
            raise Failure(Verdict.RUNTIME_ERROR, f"{what}: the candidate process is gone")
        limit = timeout_s if self.stage_left is None else min(timeout_s, self.stage_left)
        t0 = time.monotonic()
        try:
            if self.applied is None:
                self._hello(t0 + max(limit, 0.0))
            protocol.send(self.sock, {**msg, "ipc": self.ipc}, cuda_ipc=False)
            reply = protocol.recv(self.sock, t0 + max(limit, 0.0), self.max_reply_bytes)
        except protocol.PeerTimeout:
            self.kill()
            stage = f" (the {self.stage_name} stage's limit)" if self.stage_name else ""
            raise Failure(
                Verdict.TIMEOUT,
                f"{what} did not finish within {timeout_s:g} s{stage};"
                " the candidate process group was killed",
            ) from None
        except protocol.CudaHandleError:
            if not self.ipc:
                raise
            # CUDA IPC is unavailable on this host: ask again, with the tensors as bytes.
            self.ipc = False
            return self.request(msg, timeout_s, what)
        except protocol.ProtocolError as e:
            self.kill()
            verdict = DIED.get(msg.get("op", ""), Verdict.RUNTIME_ERROR)
            if self._oom_killed():
                raise Failure(
                    verdict,
                    f"{what}: out of memory: the process was killed for exceeding its memory"
                    f" limit of {self.cgroup_limit_mb} MiB (its cgroup){self._tail()}",
                ) from None
            raise Failure(
                verdict,
                f"{what}: the candidate process died or exited ({e});"
                f" its exit code proves nothing{self._tail()}",
            ) from None
        finally:
            if self.stage_left is not None:
                self.stage_left -= time.monotonic() - t0
        if not isinstance(reply, dict):
            self.kill()
            raise Failure(Verdict.RUNTIME_ERROR, f"{what}: malformed reply from the candidate")
        err = reply.get("error")
        if err:
            text = str(err.get("message", ""))[:MAX_MESSAGE]
            if err.get("kind") == "TASK_ERROR" and self.role in ("task", "reference"):
                line = err.get("line")
                raise TaskError(text, None, line if isinstance(line, int) else None)
            try:
                verdict = Verdict(err.get("kind"))
            except ValueError:
                verdict = Verdict.RUNTIME_ERROR
            if verdict.correct:  # a child's error can only fail it, never pass it
                verdict = Verdict.RUNTIME_ERROR
            if verdict == Verdict.CUDA_FATAL:
                self.kill()
            raise Failure(verdict, f"{what}: {text}")
        return reply

    def _hello(self, deadline: float) -> None:
        """Read the child's first message: what its sandbox applied, or why it could not."""
        first = protocol.recv(self.sock, deadline, 1 << 20)
        if not isinstance(first, dict):
            raise protocol.ProtocolError("the child's first message is malformed")
        if "sandbox_error" in first:
            self.kill()
            raise SandboxError(str(first["sandbox_error"])[:MAX_MESSAGE])
        applied = first.get("sandbox")
        if not isinstance(applied, dict):
            raise protocol.ProtocolError("the child's first message is malformed")
        self.applied = applied

    def _oom_killed(self) -> bool:
        if self.cgroup is None:
            return False
        from evaluator_worker.cgroup import Groups

        return Groups.oom_killed(self.cgroup)

    def _tail(self, n: int = 600) -> str:
        text = self.output(n)
        return f"; its last output (untrusted): {text!r}" if text else ""

    def output(self, n: int = 2000) -> str:
        """The end of what the candidate printed (untrusted text, for display only)."""
        try:
            self.capture.seek(0, os.SEEK_END)
            size = self.capture.tell()
            self.capture.seek(max(0, size - n))
            return self.capture.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""

    def kill(self) -> None:
        """Kill the child's whole process group (it is a session leader)."""
        if self.alive:
            self.alive = False
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def close(self) -> None:
        """Ask the child to exit, then make sure it is gone."""
        if self.alive:
            try:
                protocol.send(self.sock, {"op": "exit"}, cuda_ipc=False)
            except (protocol.ProtocolError, OSError):
                pass
        self.kill()
        self.sock.close()
        self.capture.close()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self.cgroup is not None:
            from evaluator_worker.cgroup import Groups

            Groups.remove(self.cgroup)
