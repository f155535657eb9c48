"""The judge: the trusted side of an evaluation, from candidate file to verdict.

Order: task validation (once per task, in a sandboxed ``task`` child) -> static gate -> load
(in a fresh sandboxed child forked by the zygote) -> correctness trials against the outputs
of a ``reference`` child -> timing interleaved with the baselines (timed by the same code in
a ``baseline`` child that runs only the reference) -> re-check of the last timed output ->
cross-checks (paired synced samples, profiler trace, speed-of-light floor, quarantine) ->
features. The stages after the gate are :class:`~evaluator_worker.evaluation.Evaluation`'s.

The judge runs no user code: neither candidates nor tasks are ever imported here; it draws
the secret seeds (``os.urandom``), compares and decides. The candidate learns an input set
only when asked to compute on it, and expected outputs never exist in its process.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from evaluator_worker import cgroup, memory, static_gate
from evaluator_worker.config import EvalConfig
from evaluator_worker.device import choose_params, hardware, resolve_device
from evaluator_worker.errors import CandidateFileError, TaskError
from evaluator_worker.evaluation import Evaluation
from evaluator_worker.process import CandidateProcess, Failure
from evaluator_worker.result import EvalResult
from evaluator_worker.sandbox import hand_over, service_uid
from evaluator_worker.task import TaskInfo
from evaluator_worker.verdict import Verdict
from evaluator_worker.zygote import Zygote


class Evaluator:
    """Evaluates candidates against tasks; keeps one zygote for all of them.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, config: EvalConfig | None = None) -> None:
        self.config = config or EvalConfig()
        self.device = resolve_device(self.config.device)
        self._zygote: Zygote | None = None
        self._tasks: dict[tuple[str, float], TaskInfo] = {}
        self._refused: dict[tuple[str, float], TaskError] = {}
        self._shared: Path | None = None
        self._shared_state: str | None = None
        self.prebuild_note: str | None = None
        self.prebuild_s = 0.0
        self._groups: cgroup.Groups | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="kernelmap-eval-")
        os.chmod(self._tmp.name, 0o711)
        self.zygote_start_s = 0.0

    def zygote(self) -> Zygote:
        """The zygote, started on first use (and again if it died)."""
        if self._zygote is None or self._zygote.proc.poll() is not None:
            # triton.language's own @jit helpers are built at import, so the interpreter
            # has to be chosen before the zygote imports triton: on the CPU it always is.
            env = dict(os.environ, TRITON_INTERPRET="1" if self.device.type == "cpu" else "0")
            self._zygote = Zygote(env)
            self.zygote_start_s = self._zygote.start_s
        return self._zygote

    def task(self, path: str | Path) -> TaskInfo:
        """Load and validate a task (cached by path and modification time).

        The task's code runs in a sandboxed ``task`` child (never here). On CUDA the task's
        memory need is checked against the device's free memory before its values are
        checked on it; a task that cannot fit, or fails validation, is refused with a
        :class:`TaskError` that is cached too, so it is refused once and not once per
        candidate's out-of-memory crash.
        """
        p = Path(path)
        key = (str(p.resolve()), p.stat().st_mtime if p.exists() else 0.0)
        if key in self._refused:
            raise self._refused[key]
        if key not in self._tasks:
            if not p.is_file():
                raise TaskError("task file not found", str(p))
            try:
                task = self._validate(p)
            except TaskError as e:
                self._refused[key] = e
                raise
            self._tasks[key] = task
        return self._tasks[key]

    def _validate(self, p: Path) -> TaskInfo:
        try:
            source = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TaskError(f"cannot read the task file: {e}", str(p)) from None
        proc = self._spawn(False, files={"task.py": source}, role="task")
        msg = {"op": "setup", "role": "task", "task_path": proc.files["task.py"]}
        try:
            try:
                reply = proc.request(
                    {**msg, "device": str(self.device)}, self.config.timeout_s, "loading the task"
                )
                task = TaskInfo.from_dict(reply["info"])
                # The child reports on the text it was given; what runs later is ours.
                task.path, task.source = str(p), source
                self.check_fits(task)
                proc.request({"op": "check_values"}, self.config.timeout_s, "checking the task")
            except TaskError as e:
                raise TaskError(e.reason, str(p), e.line) from None
            except Failure as f:
                raise TaskError(f"the task's code failed: {f.message}", str(p)) from None
            except (KeyError, TypeError, ValueError) as e:
                raise TaskError(f"the task process sent a malformed answer ({e})", str(p)) from None
        finally:
            proc.close()
        task.values_checked = True
        return task

    def need(self, task: TaskInfo) -> memory.Need | None:
        """The device memory an evaluation of ``task`` needs (None where the size is unknown)."""
        cfg = self.config
        return memory.evaluation_need(
            task.input_bytes, task.output_bytes, cfg.samples, cfg.rounds, cfg.pool_bytes
        )

    def check_fits(self, task: TaskInfo) -> None:
        """Refuse a task whose evaluation cannot fit in the device's free memory."""
        why = memory.does_not_fit(self.need(task), self.device, hardware(self.device))
        if why:
            raise TaskError(why, task.path)

    def close(self) -> None:
        """Stop the zygote and remove the private directories."""
        if self._zygote is not None:
            self._zygote.close()
            self._zygote = None
        self._tmp.cleanup()

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(
        self,
        interpret: bool,
        files: dict[str, str] | None = None,
        role: str = "candidate",
        **opts: Any,
    ) -> CandidateProcess:
        """Fork one sandboxed child that sees ``files`` (name -> text), read-only.

        The files are written from the text the judge checked (never re-read from the
        user's path), readable by the child's own user; ``proc.files`` maps each name to
        its path as the child sees it. Nothing else of ours is visible to the child.
        """
        work = Path(tempfile.mkdtemp(dir=self._tmp.name))
        os.chmod(work, 0o711)  # the child's user may pass through (relaxed mode), not list
        (work / "root").mkdir()
        job = work / "job"
        job.mkdir(mode=0o755)
        copies = {}
        for name, text in (files or {}).items():
            dst = job / name
            dst.write_text(text, encoding="utf-8")
            os.chmod(dst, 0o444)
            copies[name] = str(dst)
        cfg = self.config
        binds: list[list[Any]] = [[str(job), False]]
        sandbox: dict[str, Any] = {
            "workdir": str(work),
            "rootdir": str(work / "root"),
            "mode": cfg.sandbox,
            "device": self.device.type,
            "interpret": interpret,
            "memory_limit_mb": cfg.memory_limit_mb,
            "max_processes": cfg.max_processes,
            "disk_mb": cfg.sandbox_disk_mb,
            "shm_mb": cfg.sandbox_shm_mb,
            "binds": binds,
            "extra_read_only": list(cfg.sandbox_read_only),
            "cuda_memory_fraction": cfg.cuda_memory_fraction,
            "pass_env": {k: os.environ[k] for k in cfg.pass_env if k in os.environ},
            **opts,
        }
        if role in ("baseline", "prebuild"):
            # One writer identity for the caches these processes share (per task, per worker).
            sandbox["uid"] = service_uid()
        if role == "baseline" and "inductor_cache" in opts:
            binds.append([opts["inductor_cache"], True])
        if opts.get("triton_cache_dir"):
            binds.append([opts["triton_cache_dir"], True])
        if not interpret and "triton_cache_dir" not in opts:
            shared = self.triton_shared_cache()
            if shared is not None:
                sandbox["triton_shared_cache"] = str(shared)
                binds.append([str(shared), False])
        if self._groups is None:
            self._groups = cgroup.Groups()
        group = self._groups.make(cfg.memory_limit_mb)
        if group is not None:
            sandbox["cgroup"] = str(group)
        proc = CandidateProcess(self.zygote(), sandbox)
        proc.role, proc.workdir, proc.files = role, work, copies
        proc.cgroup, proc.cgroup_limit_mb = group, cfg.memory_limit_mb
        return proc

    @property
    def cgroup_note(self) -> str | None:
        """Why children get no memory cgroup here (None when they do)."""
        return self._groups.note if self._groups is not None else None

    def inductor_cache(self, task: TaskInfo) -> str:
        """The task's own torch.compile cache, shared by its baseline processes only."""
        path = Path(self._tmp.name) / "inductor" / task.sha256[:16]
        if not path.exists():
            path.mkdir(parents=True)
            hand_over(path)
        return str(path)

    def triton_shared_cache(self) -> Path | None:
        """The worker's read-only layer of Triton modules, built on first use (CUDA only).

        A trusted process forked from the zygote compiles :mod:`triton_prebuild`'s kernels
        into it, which builds Triton's driver utilities (and launchers) once; it is then made
        read-only. Where that fails, candidates build their own, slower, and results say so.
        """
        if self.device.type != "cuda" or self._shared_state is not None:
            return self._shared
        shared = Path(self._tmp.name) / "triton-shared"
        shared.mkdir(exist_ok=True)
        hand_over(shared)
        t0 = time.monotonic()
        self._shared_state = "failed"
        proc = self._spawn(False, role="prebuild", triton_cache_dir=str(shared))
        try:
            msg = {"op": "setup", "role": "prebuild", "device": str(self.device)}
            proc.request(msg, self.config.timeout_s, "building Triton's shared modules")
            from evaluator_worker import triton_cache  # imports triton: on CUDA hosts only

            triton_cache.seal(shared)
            self._shared, self._shared_state = shared, "ok"
        except Failure as f:
            self.prebuild_note = f"Triton's shared modules could not be prebuilt: {f.message}"
        finally:
            proc.close()
            self.prebuild_s = time.monotonic() - t0
        return self._shared

    # -- the evaluation --------------------------------------------------------------------
    def evaluate(
        self,
        task_path: str | Path,
        candidate_path: str | Path,
        params: dict[str, Any] | None = None,
    ) -> EvalResult:
        """Evaluate one candidate file against one task file.

        Raises :class:`TaskError` for an invalid task, :class:`CandidateFileError` for an
        unreadable candidate and :class:`KernelmapError` for bad parameters; every failure of
        the candidate itself is a verdict in the result.
        """
        t_start = time.monotonic()
        task = self.task(task_path)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        cpath = Path(candidate_path)
        if not cpath.is_file():
            raise CandidateFileError(f"candidate file not found: {cpath}")
        try:
            source = cpath.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CandidateFileError(f"cannot read the candidate file {cpath}: {e}") from None
        result = EvalResult(
            verdict=Verdict.OK, device=self.device.type, hardware=hardware(self.device)
        )
        gate = static_gate.check_source(source, str(cpath))
        result.features.update(
            uses_triton=gate.uses_triton,
            uses_cupy=gate.uses_cupy,
            custom_kernels=gate.custom_kernels,
        )
        if gate.syntax_error:
            result.verdict = Verdict.COMPILE_ERROR
            result.messages.append(gate.syntax_error)
            return result
        if not gate.ok:
            if self.config.static_gate:
                result.verdict = Verdict.STATIC_REJECT
                result.messages.extend(gate.reasons)
                return result
            result.messages.append(
                "static gate switched off; it would have rejected: " + "; ".join(gate.reasons)
            )
        result.params = choose_params(gate.search_space, params)
        interpret = self.device.type == "cpu" and gate.uses_triton
        run = Evaluation(self, task, cpath, result, gate, interpret)
        run.source = source
        try:
            run.execute()
        except Failure as f:
            result.verdict = f.verdict
            result.messages.append(f.message)
        finally:
            run.close()
            if self.device.type == "cuda":
                result.features.setdefault("memory", {})["judge"] = {
                    "cuda_peak_allocated_bytes": int(torch.cuda.max_memory_allocated(self.device))
                }
            memory.release_cached(self.device)
            result.stages_s["total_s"] = time.monotonic() - t_start
        return result


def evaluate(
    task_path: str | Path,
    candidate_path: str | Path,
    config: EvalConfig | None = None,
    params: dict[str, Any] | None = None,
) -> EvalResult:
    """Evaluate one candidate against one task with a private zygote (see :class:`Evaluator`)."""
    with Evaluator(config) as ev:
        return ev.evaluate(task_path, candidate_path, params)
