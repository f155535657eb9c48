"""The judge: the trusted side of an evaluation, from candidate file to verdict.

Order: task validation (once per task, in a sandboxed ``task`` child) -> static gate -> load
(in a fresh sandboxed child forked by the zygote) -> correctness trials against the outputs
of a ``reference`` child -> timing interleaved with the baselines (timed by the same code in
a ``baseline`` child that runs only the reference) -> re-check of the last timed output ->
cross-checks (paired synced samples, profiler trace, speed-of-light floor, quarantine) ->
features.

The judge runs no user code: neither candidates nor tasks are ever imported here; it draws
the secret seeds (``os.urandom``), compares and decides. The candidate learns an input set
only when asked to compute on it, and expected outputs never exist in its process.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from evaluator_worker import (
    cgroup,
    correctness,
    crosschecks,
    floor,
    inputs,
    measure,
    memory,
    static_gate,
)
from evaluator_worker.config import EvalConfig
from evaluator_worker.device import choose_params, hardware, resolve_device
from evaluator_worker.errors import CandidateFileError, TaskError
from evaluator_worker.process import CandidateProcess, Failure
from evaluator_worker.result import OUTPUT_CHARS, EvalResult, Stats, Timing
from evaluator_worker.sandbox import hand_over, service_uid
from evaluator_worker.task import TaskInfo
from evaluator_worker.verdict import Verdict
from evaluator_worker.zygote import Zygote

INTERPRETED = (
    "Triton ran in Triton's interpreter on the CPU (TRITON_INTERPRET=1): its time is"
    " not performance, so speedups are null"
)


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
        run = _Run(self, task, cpath, result, gate, interpret)
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


class _Run:
    """One evaluation in progress (the processes it started, the secrets it drew)."""

    def __init__(
        self,
        ev: Evaluator,
        task: TaskInfo,
        cpath: Path,
        result: EvalResult,
        gate: static_gate.GateReport,
        interpret: bool,
    ) -> None:
        self.ev, self.cfg, self.task, self.cpath = ev, ev.config, task, cpath
        self.source = ""  # the candidate's text as the gate checked it (what the child runs)
        self.result, self.gate, self.interpret = result, gate, interpret
        self.device = ev.device
        self.rng = random.SystemRandom()
        self.init_seed, self.param_seed = self.rng.getrandbits(62), self.rng.getrandbits(62)
        self.procs: list[CandidateProcess] = []
        self.baselines: measure.Baselines | None = None
        self.reference: correctness.Reference | None = None

    def close(self) -> None:
        for p in self.procs:
            if p.alive:
                self.collect_memory(p, p.role)
            if p.role == "candidate":
                self.result.output = p.output(OUTPUT_CHARS) or None
            p.close()

    def collect_memory(self, proc: CandidateProcess, role: str) -> None:
        """Record a live process's peak memory under ``features["memory"][role]``."""
        if not proc.alive:
            return
        try:
            reply = proc.request({"op": "memory"}, 10.0, "reading memory figures")
        except Failure:
            return
        mem = dict(reply.get("memory") or {})
        fallbacks = mem.pop("ipc_fallbacks", None)
        if mem.pop("ipc_fallback_count", 0) and fallbacks:
            self.result.messages.append(
                f"sandbox: the {role} process sent outputs as bytes because CUDA IPC failed"
                f" ({fallbacks[0]})"
            )
        mems = self.result.features.setdefault("memory", {})
        old = mems.get(role)
        if old is None or (mem.get("rss_peak_bytes") or 0) > (old.get("rss_peak_bytes") or 0):
            mems[role] = mem

    def _setup(self, role: str, interpret: bool, **extra: Any) -> tuple[CandidateProcess, dict]:
        t0 = time.monotonic()
        files = {"task.py": self.task.source}
        if role == "candidate":
            files["candidate.py"] = self.source
        opts = {"inductor_cache": self.ev.inductor_cache(self.task)} if role == "baseline" else {}
        proc = self.ev._spawn(interpret, files=files, role=role, **opts)
        proc.max_reply_bytes = self.reply_cap()
        self.procs.append(proc)
        msg = {
            "op": "setup",
            "role": role,
            "task_path": proc.files["task.py"],
            "device": str(self.device),
            "init_seed": self.init_seed,
            "param_seed": self.param_seed,
            "allow_tf32": self.task.allow_tf32,
            **extra,
        }
        if role == "candidate":
            msg["candidate_path"] = proc.files["candidate.py"]
        reply = proc.request(msg, self.cfg.timeout_s, f"loading the {role}")
        return proc, {
            "spawn_s": proc.spawn_s,
            "setup_s": time.monotonic() - t0 - proc.spawn_s,
            **reply,
        }

    def execute(self) -> None:
        cfg, res, stages = self.cfg, self.result, self.result.stages_s
        t0 = time.monotonic()
        self.ev.zygote()
        stages["zygote_start_s"] = time.monotonic() - t0
        if not self.interpret and self.device.type == "cuda":
            first = self.ev._shared_state is None
            self.ev.triton_shared_cache()
            if first:
                stages["triton_prebuild_s"] = self.ev.prebuild_s
            if self.ev.prebuild_note:
                res.messages.append(self.ev.prebuild_note)
        cand, info = self._setup("candidate", self.interpret, params=res.params)
        stages["spawn_s"] = info["spawn_s"]
        stages["load_s"] = info["setup_s"]
        self._note_sandbox(cand.applied or {})
        t1 = time.monotonic()
        ref_proc, _ = self._setup("reference", False)
        reference = correctness.Reference(ref_proc, self.task, self.device, cfg.timeout_s)
        self.reference = reference
        specs = correctness.plan(self.task, cfg.trials, self.rng)
        cand.stage("correctness", cfg.timeout_s)
        checked = correctness.run_trials(
            cand, reference, specs, self.rng, cfg.timeout_s, res.messages
        )
        stages["correctness_s"] = time.monotonic() - t1
        res.features.update(trials=checked["trials"], worst_rel_l2=checked["worst_rel_l2"])
        t2 = time.monotonic()
        if self.interpret and not cfg.time_interpreted:
            # Two passes over a pool refilled in place in between: a cache keyed by object
            # identity or shape then returns a stale output, which the re-check catches.
            cand.stage("repeated calls", cfg.timeout_s)
            for _ in range(2):
                pool = self._new_pool(2)
                cand.request(
                    {
                        "op": "time",
                        "variant": "candidate",
                        "pool": pool,
                        "n": max(1, cfg.stress_calls // 2),
                        "warmup": False,
                    },
                    cfg.timeout_s,
                    "repeated calls",
                )
            self._recheck_last(cand, reference, pool)
            res.messages.append(INTERPRETED)
            stages["measure_s"] = time.monotonic() - t2
            return
        cand.stage("timing", cfg.timeout_s)
        timing, pool = measure.measure(
            self, cand, cfg.interpreter_samples if self.interpret else cfg.samples
        )
        stages["measure_s"] = time.monotonic() - t2
        # The baseline process's memory goes back before the judge's float64 re-check.
        if self.baselines is not None:
            self.baselines.close()
        self._recheck_last(cand, reference, pool)
        res.timing = timing
        if self.interpret:
            # Interpreted time is not performance: kept apart, under its own label.
            timing.method = "cpu-interpreter"
            res.cpu_interpreter_ratio = crosschecks.ratio(timing.eager, timing.candidate)
            res.messages.append(
                INTERPRETED + "; its CPU time relative to the reference's is"
                " reported as cpu_interpreter_ratio"
            )
            return
        scored = crosschecks.score(res, timing, self.cfg.quarantine_factor)
        if self.device.type == "cuda":
            self._gpu_checks(cand, reference, pool, timing, scored)
        if res.verdict == Verdict.QUARANTINE:
            measure.remeasure(self, cand, pool, timing)

    def reply_cap(self) -> int:
        """Most bytes one reply of a child may carry: a few times the task's inputs and outputs.

        A child announces its tensors' sizes before sending them; without a bound, an
        announcement alone would make the judge allocate what it says.
        """
        i = self.task.set_bytes or self.task.input_bytes or 0
        o = self.task.output_bytes if self.task.output_bytes is not None else i
        return 8 * (i + o) + (256 << 20)

    def _note_sandbox(self, applied: dict[str, Any]) -> None:
        """Record how the candidate was confined; a relaxed sandbox says what was missing."""
        res = self.result
        if applied.get("setup_ms") is not None:
            res.stages_s["sandbox_s"] = float(applied["setup_ms"]) / 1e3
        res.features["network_isolated"] = bool(applied.get("network_isolated"))
        res.features["sandbox"] = {
            "level": applied.get("level", "relaxed"),
            "missing": [str(m)[:500] for m in list(applied.get("missing") or [])[:20]],
        }
        if self.ev.cgroup_note:
            res.features["sandbox"]["memory_cgroup"] = self.ev.cgroup_note
        for what in res.features["sandbox"]["missing"]:
            res.messages.append(f"sandbox: relaxed, missing {what}")

    def _pool_size(self, per_round: int) -> int:
        """Input sets per round: distinct inputs for every call of a round where memory allows.

        A pool reused within a round lets a cache keyed by sampled content return correct
        outputs without computing; only a pool as large as the round prevents that, so large
        tasks (whose inputs fill ``pool_bytes``) keep that residual risk.
        """
        per_set = max(1, self.task.set_bytes or self.task.input_bytes or 1)
        return memory.pool_sets(per_set, self.cfg.pool_bytes, per_round)

    def _new_pool(self, n: int) -> list[dict[str, Any]]:
        """Fresh secret specs; the child refills its pool tensors in place with them."""
        return [inputs.InputSpec(self.rng.getrandbits(62)).to_dict() for _ in range(n)]

    def _recheck_last(
        self,
        cand: CandidateProcess,
        reference: correctness.Reference,
        pool: list[dict[str, Any]],
        variant: str = "candidate",
    ) -> None:
        """Check the output of the last timed call (of ``variant``) against the reference.

        The expected output is made first and the inputs freed before the output arrives.
        """
        reply = cand.request(
            {"op": "last_index", "variant": variant},
            self.cfg.timeout_s,
            "asking which input set was timed last",
        )
        idx = int(reply["index"])
        if not 0 <= idx < len(pool):
            raise Failure(Verdict.RUNTIME_ERROR, "the candidate process reported a bad pool index")
        _, expected = reference.expected(inputs.InputSpec.from_dict(pool[idx]), with_inputs=False)
        reply = cand.request(
            {"op": "last_output", "variant": variant},
            self.cfg.timeout_s,
            "fetching the last timed output",
        )
        outs = [correctness.own(o, self.device) for o in reply["outputs"]]
        del reply
        what = "re-check of the last timed call"
        if variant.startswith("graph:"):
            what = "re-check of the output of the CUDA-graph replays"
        correctness.check_outputs(outs, expected, self.task.tolerance, what)
        del outs, expected
        memory.release_cached(self.device)

    def _gpu_checks(
        self,
        cand: CandidateProcess,
        reference: correctness.Reference,
        pool: list[dict[str, Any]],
        t: Timing,
        scored: Stats,
    ) -> None:
        res = self.result
        prof = (
            cand.request(
                {"op": "profile", "variant": "candidate", "spec": pool[0]},
                self.cfg.timeout_s,
                "profiling one call",
            ).get("profile")
            or {}
        )
        feats = cand.request({"op": "features"}, self.cfg.timeout_s, "reading kernel features")
        res.features.update(crosschecks.derive_features(feats, prof))
        crosschecks.check_profile(res, prof, self.gate.custom_kernels)
        peaks = floor.peaks_for(res.hardware.get("name", ""))
        if peaks is None:
            res.messages.append(
                f"no datasheet peaks for {res.hardware.get('name')}: no speed-of-light floor"
            )
            return
        nbytes, flops = reference.floor(inputs.InputSpec.from_dict(pool[0]))
        t.floor_ms, t.floor_basis = floor.floor_ms(
            nbytes, flops, self.task.dtype, self.task.allow_tf32, peaks
        )
        crosschecks.check_floor(res, scored, t.floor_ms, t.floor_basis, self.cfg.floor_margin)


def evaluate(
    task_path: str | Path,
    candidate_path: str | Path,
    config: EvalConfig | None = None,
    params: dict[str, Any] | None = None,
) -> EvalResult:
    """Evaluate one candidate against one task with a private zygote (see :class:`Evaluator`)."""
    with Evaluator(config) as ev:
        return ev.evaluate(task_path, candidate_path, params)
