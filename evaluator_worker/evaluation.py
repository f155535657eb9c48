"""One evaluation in progress: the judge's stages for one candidate, after the static gate.

:class:`Evaluation` is what :meth:`evaluator_worker.judge.Evaluator.evaluate` runs once the
candidate has passed the gate: load (a sandboxed child forked by the zygote) -> correctness
trials against a ``reference`` child -> timing interleaved with the baselines
(:mod:`evaluator_worker.measure`) -> re-check of the last timed output -> cross-checks
(profiler trace, speed-of-light floor, quarantine re-measure). It holds the processes it
started and the secrets it drew (``random.SystemRandom``).

Judge side: like the judge, it imports no user code; the candidate and the task run only in
the children it asks.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluator_worker import correctness, crosschecks, floor, inputs, measure, memory, static_gate
from evaluator_worker.process import CandidateProcess, Failure
from evaluator_worker.result import OUTPUT_CHARS, EvalResult, Stats, Timing
from evaluator_worker.task import TaskInfo
from evaluator_worker.verdict import Verdict

if TYPE_CHECKING:
    from evaluator_worker.judge import Evaluator

INTERPRETED = (
    "Triton ran in Triton's interpreter on the CPU (TRITON_INTERPRET=1): its time is"
    " not performance, so speedups are null"
)


class Evaluation:
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
        """Record each live process's memory, keep the candidate's output, stop them all."""
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
        """Run the stages in order, filling :attr:`result`; a failing stage raises ``Failure``."""
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
                pool = self.new_pool(2)
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
            self.recheck_last(cand, reference, pool)
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
        self.recheck_last(cand, reference, pool)
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

    def pool_size(self, per_round: int) -> int:
        """Input sets per round: distinct inputs for every call of a round where memory allows.

        A pool reused within a round lets a cache keyed by sampled content return correct
        outputs without computing; only a pool as large as the round prevents that, so large
        tasks (whose inputs fill ``pool_bytes``) keep that residual risk.
        """
        per_set = max(1, self.task.set_bytes or self.task.input_bytes or 1)
        return memory.pool_sets(per_set, self.cfg.pool_bytes, per_round)

    def new_pool(self, n: int) -> list[dict[str, Any]]:
        """Fresh secret specs; the child refills its pool tensors in place with them."""
        return [inputs.InputSpec(self.rng.getrandbits(62)).to_dict() for _ in range(n)]

    def recheck_last(
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
