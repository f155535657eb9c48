"""The judge: the trusted side of an evaluation, from candidate file to verdict.

Order: static gate -> load (in a fresh sandboxed child forked by the zygote) -> correctness
trials -> timing interleaved with the baselines (timed by the same code in a second child
that runs only the reference) -> re-check of the last timed output -> cross-checks (paired
synced samples, profiler trace, speed-of-light floor, quarantine) -> features.

The judge owns the secret seeds (``os.urandom``); the candidate learns an input set only
when asked to compute on it, and expected outputs never exist in its process.
"""

from __future__ import annotations

import math
import os
import platform
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from evaluator_worker import correctness, crosschecks, floor, inputs, static_gate
from evaluator_worker.config import EvalConfig
from evaluator_worker.errors import CandidateFileError, KernelmapError
from evaluator_worker.process import CandidateProcess, Failure
from evaluator_worker.result import EvalResult, Stats, Timing
from evaluator_worker.task import Task, load_task
from evaluator_worker.timing import stats
from evaluator_worker.verdict import Verdict
from evaluator_worker.zygote import Zygote

INTERPRETED = (
    "Triton ran in Triton's interpreter on the CPU (TRITON_INTERPRET=1): its time is"
    " not performance, so speedups are null"
)
REMEASURE_MS = 50.0


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when a GPU is visible, else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise KernelmapError("--device cuda was asked for, but no CUDA GPU is visible")
    return (
        torch.device("cuda", torch.cuda.current_device())
        if device == "cuda"
        else torch.device("cpu")
    )


def choose_params(space: dict | None, given: dict[str, Any] | None) -> dict[str, Any]:
    """The ``SEARCH_SPACE`` values to inject: ``given`` (checked), else the first of each."""
    space = space or {}
    given = dict(given or {})
    for name, value in given.items():
        if name not in space:
            raise KernelmapError(
                f"parameter {name!r} is not in the candidate's SEARCH_SPACE {sorted(space)}"
            )
        if value not in space[name]:
            raise KernelmapError(f"parameter {name}={value!r} is not one of {space[name]}")
    for name, values in space.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise KernelmapError(f"SEARCH_SPACE[{name!r}] must be a non-empty list of choices")
        given.setdefault(name, values[0])
    return given


def hardware(device: torch.device) -> dict[str, Any]:
    """What ran the evaluation: device name, versions."""
    hw: dict[str, Any] = {
        "device": device.type,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    try:
        import triton

        hw["triton"] = triton.__version__
    except ImportError:
        hw["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        hw.update(
            name=props.name,
            sms=props.multi_processor_count,
            memory_gb=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
        )
    else:
        hw["name"] = platform.processor() or "cpu"
    return hw


class Evaluator:
    """Evaluates candidates against tasks; keeps one zygote for all of them.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, config: EvalConfig | None = None) -> None:
        self.config = config or EvalConfig()
        self.device = resolve_device(self.config.device)
        self._zygote: Zygote | None = None
        self._tasks: dict[tuple[str, float], Task] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="kernelmap-eval-")
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

    def task(self, path: str | Path) -> Task:
        """Load and validate a task (cached by path and modification time)."""
        p = Path(path)
        key = (str(p.resolve()), p.stat().st_mtime if p.exists() else 0.0)
        if key not in self._tasks:
            self._tasks[key] = load_task(p, self.device)
        return self._tasks[key]

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

    def _spawn(self, interpret: bool) -> CandidateProcess:
        work = tempfile.mkdtemp(dir=self._tmp.name)
        return CandidateProcess(
            self.zygote(),
            {
                "workdir": work,
                "device": self.device.type,
                "interpret": interpret,
                "memory_limit_mb": self.config.memory_limit_mb,
                "isolate_network": True,
                "inductor_cache": str(Path(self._tmp.name) / "inductor"),
            },
        )

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
        try:
            run.execute()
        except Failure as f:
            result.verdict = f.verdict
            result.messages.append(f.message)
        finally:
            run.close()
            result.stages_s["total_s"] = time.monotonic() - t_start
        return result


class _Run:
    """One evaluation in progress (the processes it started, the secrets it drew)."""

    def __init__(
        self,
        ev: Evaluator,
        task: Task,
        cpath: Path,
        result: EvalResult,
        gate: static_gate.GateReport,
        interpret: bool,
    ) -> None:
        self.ev, self.cfg, self.task, self.cpath = ev, ev.config, task, cpath
        self.result, self.gate, self.interpret = result, gate, interpret
        self.device = ev.device
        self.rng = random.SystemRandom()
        self.init_seed, self.param_seed = self.rng.getrandbits(62), self.rng.getrandbits(62)
        self.procs: list[CandidateProcess] = []
        self.base: CandidateProcess | None = None

    def close(self) -> None:
        for p in self.procs:
            p.close()

    def _setup(self, role: str, interpret: bool, **extra: Any) -> tuple[CandidateProcess, dict]:
        t0 = time.monotonic()
        proc = self.ev._spawn(interpret)
        self.procs.append(proc)
        msg = {
            "op": "setup",
            "role": role,
            "task_path": str(Path(self.task.path).resolve()),
            "device": str(self.device),
            "init_seed": self.init_seed,
            "param_seed": self.param_seed,
            "allow_tf32": self.task.allow_tf32,
            **extra,
        }
        reply = proc.request(
            msg,
            self.cfg.timeout_s,
            "loading the candidate" if role == "candidate" else "loading the baseline",
        )
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
        cand, info = self._setup(
            "candidate", self.interpret, candidate_path=str(self.cpath.resolve()), params=res.params
        )
        stages["spawn_s"] = info["spawn_s"]
        stages["load_s"] = info["setup_s"]
        sandbox = info.get("sandbox", {})
        res.features["network_isolated"] = bool(sandbox.get("network_isolated"))
        if sandbox.get("network_note"):
            res.messages.append("sandbox: " + sandbox["network_note"])
        t1 = time.monotonic()
        reference = correctness.Reference(self.task, self.init_seed, self.param_seed, self.device)
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
        timing, pool = self._measure(
            cand, cfg.interpreter_samples if self.interpret else cfg.samples
        )
        stages["measure_s"] = time.monotonic() - t2
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
            self._remeasure(cand, pool, timing)

    def _remeasure(self, cand: CandidateProcess, pool: list[dict[str, Any]], t: Timing) -> None:
        """Re-measure a > 10x claim with the judge's own clock around batches of calls.

        The candidate process reports no timing here: the judge times whole requests of
        back-to-back calls (one sync at the end) for the candidate and for eager, so timers
        inside the candidate process play no part. The claim stands if this speedup is at
        least half the event-timed one.
        """
        res = self.result
        if t.eager is None:
            return
        ratios = []
        for _ in range(3):
            per_call = {}
            for proc, variant, med in (
                (cand, "candidate", t.candidate.median_ms),
                (self.base, "eager", t.eager.median_ms),
            ):
                n = int(min(2000, max(10, math.ceil(REMEASURE_MS / max(med, 1e-4)))))
                t0 = time.monotonic()
                proc.request(
                    {"op": "batch", "variant": variant, "pool": pool, "n": n},
                    self.cfg.timeout_s,
                    f"re-measuring {variant}",
                )
                per_call[variant] = (time.monotonic() - t0) / n
            ratios.append(per_call["eager"] / per_call["candidate"])
        independent = sorted(ratios)[1]
        res.features["independent_speedup_vs_eager"] = independent
        claimed = res.speedup_vs_eager or 0.0
        if independent >= 0.5 * claimed:
            res.verdict = Verdict.OK
            res.messages.append(
                f"the {claimed:.1f}x speedup was confirmed by an independent re-measure"
                f" (judge-side wall clock over batches of calls: {independent:.1f}x)"
            )
        else:
            res.messages.append(
                f"an independent re-measure (judge-side wall clock over batches of calls) gives"
                f" only {independent:.1f}x: the event timings are not trusted"
            )

    def _pool_size(self, per_round: int) -> int:
        """Input sets per round: distinct inputs for every call of a round where memory allows.

        A pool reused within a round lets a cache keyed by sampled content return correct
        outputs without computing; only a pool as large as the round prevents that, so large
        tasks (whose inputs fill ``pool_bytes``) keep that residual risk.
        """
        with torch.device("meta"):
            per_set = max(1, inputs.nbytes(list(self.task.module.get_inputs())))
        return int(min(per_round, max(2, self.cfg.pool_bytes // per_set)))

    def _new_pool(self, n: int) -> list[dict[str, Any]]:
        """Fresh secret specs; the child refills its pool tensors in place with them."""
        return [inputs.InputSpec(self.rng.getrandbits(62)).to_dict() for _ in range(n)]

    def _measure(
        self, cand: CandidateProcess, n_samples: int
    ) -> tuple[Timing, list[dict[str, Any]]]:
        cfg, res = self.cfg, self.result
        want_compile = cfg.compile_baseline == "always" or (
            cfg.compile_baseline == "auto" and self.device.type == "cuda"
        )
        base, _ = self._setup("baseline", False, compile=want_compile)
        self.base = base
        base.stage("timing", cfg.timeout_s * (2 if want_compile else 1))
        procs = {"candidate": cand, "eager": base}
        if want_compile:
            procs["compile"] = base
        else:
            res.messages.append(
                "torch.compile baseline not timed on the CPU (inductor's CPU compile"
                " takes tens of seconds); set compile_baseline='always' to time it"
            )
        samples: dict[str, dict[str, list[float]]] = {
            v: {"samples_ms": [], "synced_ms": [], "wall_ms": []} for v in procs
        }
        per_round = math.ceil(n_samples / cfg.rounds)
        order = list(procs)
        n_pool = self._pool_size(per_round)
        for r in range(cfg.rounds):
            pool = self._new_pool(n_pool)
            for variant in order[r % len(order) :] + order[: r % len(order)]:
                proc = procs[variant]
                what = (
                    "timing the candidate"
                    if variant == "candidate"
                    else f"timing the {variant} baseline"
                )
                try:
                    reply = proc.request(
                        {
                            "op": "time",
                            "variant": variant,
                            "pool": pool,
                            "n": per_round,
                            "start": r * per_round,
                            "warmup_calls": cfg.warmup_calls,
                            "warmup_s": cfg.warmup_s,
                        },
                        cfg.timeout_s,
                        what,
                    )
                except Failure as f:
                    if variant != "compile":
                        raise
                    res.messages.append(f"torch.compile baseline failed, left out: {f.message}")
                    procs.pop("compile")
                    order.remove("compile")
                    samples.pop("compile")
                    continue
                for key in ("samples_ms", "synced_ms", "wall_ms"):
                    samples[variant][key].extend(float(x) for x in reply.get(key, []))
        cstats = {v: stats(s["samples_ms"]) for v, s in samples.items()}
        for v, s in samples.items():
            bad = sum(
                1
                for e, w in zip(s["samples_ms"], s["wall_ms"], strict=False)
                if e > w * 1.05 + 0.05
            )
            if bad:
                raise Failure(
                    Verdict.IMPOSSIBLE,
                    f"{v}: {bad} event timings exceed the wall clock around"
                    " the same call; the timers are not trustworthy",
                )
        synced = samples["candidate"]["synced_ms"]
        timing = Timing(
            device=self.device.type,
            method="cuda-events+l2-flush" if self.device.type == "cuda" else "cpu-perf-counter",
            candidate=cstats["candidate"],
            eager=cstats.get("eager"),
            compile=cstats.get("compile"),
            candidate_synced=stats(synced) if synced else None,
        )
        return timing, pool

    def _recheck_last(
        self, cand: CandidateProcess, reference: correctness.Reference, pool: list[dict[str, Any]]
    ) -> None:
        reply = cand.request(
            {"op": "last_output", "variant": "candidate"},
            self.cfg.timeout_s,
            "fetching the last timed output",
        )
        idx = int(reply["index"])
        if not 0 <= idx < len(pool):
            raise Failure(Verdict.RUNTIME_ERROR, "the candidate process reported a bad pool index")
        xs = inputs.generate(self.task.module, inputs.InputSpec.from_dict(pool[idx]), self.device)
        ref, ref64 = reference.outputs(xs)
        outs = [o.to(self.device).clone() for o in reply["outputs"]]
        correctness.check_outputs(
            outs, ref, ref64, self.task.tolerance, "re-check of the last timed call"
        )

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
        xs = inputs.generate(self.task.module, inputs.InputSpec.from_dict(pool[0]), self.device)
        with torch.no_grad():
            out = reference.model(*xs)
        nbytes = inputs.nbytes(xs) + inputs.nbytes(out)
        flops = floor.count_flops(reference.model, xs)
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
