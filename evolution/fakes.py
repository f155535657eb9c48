"""In-memory stand-ins for the search's ports, for tests and the overhead benchmark.

- :class:`MemoryStore`: a :class:`~evolution.ports.Store` in dictionaries (idempotent
  ingestion, duplicate detection by :attr:`CandidateSpec.key`, ``pending``/``evaluated``).
- :class:`FakeDispatcher`: a :class:`~evolution.ports.Dispatcher` that evaluates a job with a
  function at once and delivers results in random order, some of them twice.
- :class:`ScriptedLlm`: an :class:`~evolution.llm.port.LlmPort` that answers each request at
  once with the next scripted reply (a text, or a function of the request), with token counts.
- :class:`MemoryJournal`: an :class:`~evolution.llm.port.LlmJournal` in lists (what the
  database's ``LlmLog`` stores: each request, refusal and reply with the state after it).
- :func:`fake_result`: a result dict shaped like the evaluator's ``EvalResult.to_dict()``,
  computed from the candidate's params with a deterministic "speed" function.

Nothing here touches a GPU, a queue or a database.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from evolution.candidate import CandidateSpec
from evolution.llm.port import LlmReply, LlmRequest, ReplyUse, RequestMeta
from evolution.ports import EliteChange, Job, JobResult, Proposal, RunStats

EAGER_MS = 1.0
COMPILE_MS = 0.8


def _stats(median_ms: float, rel_iqr: float) -> dict[str, Any]:
    return {
        "median_ms": median_ms,
        "iqr_ms": median_ms * rel_iqr,
        "ci95_ms": [median_ms * (1 - rel_iqr), median_ms * (1 + rel_iqr)],
        "mean_ms": median_ms,
        "min_ms": median_ms * (1 - rel_iqr),
        "n": 50,
    }


def fake_result(
    params: dict[str, Any],
    candidate_ms: float,
    *,
    device: str = "cuda",
    verdict: str = "OK",
    rel_iqr: float = 0.01,
    features: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A result dict like ``EvalResult.to_dict()`` for a candidate that ran in ``candidate_ms``.

    The baselines are eager 1.0 ms and compile 0.8 ms (so the objective is
    ``log(0.8 / candidate_ms)``); every timing has a relative IQR of ``rel_iqr``. GPU features
    are derived from ``params`` (``BLOCK``, ``num_warps``) unless ``features`` is given. A
    verdict other than OK carries no timing.
    """
    timed = verdict == "OK"
    if features is None:
        block = int(params.get("BLOCK", 256))
        warps = int(params.get("num_warps", 4))
        features = {"uses_triton": True, "uses_cupy": False, "custom_kernels": ["k"]}
        if device == "cuda":
            features.update(
                n_regs=min(255, 16 + block // 16),
                n_spills=0,
                shared_bytes=block * 4,
                num_warps=warps,
                num_stages=2,
                tensor_cores=False,
                vector_load_v4=block >= 512,
                kernel_count=1,
                floor_fraction=min(1.0, 0.05 / candidate_ms) if timed else None,
            )
    timing = None
    if timed:
        timing = {
            "device": device,
            "method": "cuda-events+l2-flush" if device == "cuda" else "cpu-perf-counter",
            "candidate": _stats(candidate_ms, rel_iqr),
            "eager": _stats(EAGER_MS, rel_iqr),
            "compile": _stats(COMPILE_MS, rel_iqr),
            "candidate_synced": None,
            "floor_ms": 0.05,
            "floor_basis": "memory",
        }
    return {
        "verdict": verdict,
        "correct": timed,
        "speedup_vs_eager": EAGER_MS / candidate_ms if timed else None,
        "speedup_vs_compile": COMPILE_MS / candidate_ms if timed else None,
        "timing": timing,
        "features": dict(features),
        "messages": [] if timed else [f"fake {verdict}"],
        "device": device,
        "hardware": {"name": "fake"},
        "stages_s": {"total_s": 0.0},
        "params": dict(params),
        "cpu_interpreter_ratio": None,
    }


class MemoryStore:
    """A :class:`~evolution.ports.Store` for one run, in memory.

    Attributes
    ----------
    specs:
        Candidate id -> spec, for every proposed candidate.
    results:
        ``(job_id or None, candidate_id, result)`` in the order stored (``None``: a rejection).
    jobs:
        Every dispatched job, in order.
    elite_events:
        ``(cell, candidate_id, objective, measures, previous_id)`` per elite change.
    stats:
        Every recorded :class:`RunStats`.
    ingest_calls:
        How many times :meth:`ingest` was called (duplicates included).
    batches:
        ``(results, elite changes, progress points)`` per :meth:`ingest_many` call.
    """

    def __init__(self) -> None:
        self.specs: dict[int, CandidateSpec] = {}
        self.keys: dict[str, int] = {}
        self.results: list[tuple[str | None, int, dict[str, Any]]] = []
        self.jobs: list[Job] = []
        self.elite_events: list[tuple[int, int, float, list[float], int | None]] = []
        self.stats: list[RunStats] = []
        self.ingest_calls = 0
        self.batches: list[tuple[int, int, int]] = []
        self._ingested: set[str] = set()
        self._first_result: dict[int, dict[str, Any]] = {}

    def propose(self, spec: CandidateSpec) -> Proposal:
        """New id, or the existing one (with its first result, if any) for a duplicate key."""
        key = spec.key
        if key in self.keys:
            cid = self.keys[key]
            return Proposal(cid, True, self._first_result.get(cid))
        cid = len(self.specs) + 1
        self.keys[key] = cid
        self.specs[cid] = spec
        return Proposal(cid, False, None)

    def propose_many(self, specs: Sequence[CandidateSpec]) -> list[Proposal]:
        """:meth:`propose` each spec, in order."""
        return [self.propose(spec) for spec in specs]

    def reject(self, candidate_id: int, result: dict[str, Any]) -> None:
        """Store a static-gate rejection as the candidate's evaluation."""
        self.results.append((None, candidate_id, result))
        self._first_result.setdefault(candidate_id, result)

    def dispatched(self, job: Job) -> None:
        """Record the job."""
        self.jobs.append(job)

    def dispatched_many(self, jobs: Sequence[Job]) -> None:
        """Record the jobs, in order."""
        for job in jobs:
            self.dispatched(job)

    def ingest_many(
        self,
        results: Sequence[JobResult],
        elites: Sequence[EliteChange] = (),
        stats: Sequence[RunStats] = (),
    ) -> list[bool]:
        """:meth:`ingest` each result, then record the elite changes and progress points."""
        self.batches.append((len(results), len(elites), len(stats)))
        fresh = [self.ingest(r) for r in results]
        for e in elites:
            self.elite_changed(e.cell, e.candidate_id, e.objective, list(e.measures), e.previous_id)
        for point in stats:
            self.record_stats(point)
        return fresh

    def ingest(self, job_result: JobResult) -> bool:
        """Store the result once per job id."""
        self.ingest_calls += 1
        if job_result.job_id in self._ingested:
            return False
        self._ingested.add(job_result.job_id)
        self.results.append((job_result.job_id, job_result.candidate_id, job_result.result))
        self._first_result.setdefault(job_result.candidate_id, job_result.result)
        return True

    def elite_changed(
        self,
        cell: int,
        candidate_id: int,
        objective: float,
        measures: list[float],
        previous_id: int | None,
    ) -> None:
        """Record the elite change."""
        self.elite_events.append((cell, candidate_id, objective, list(measures), previous_id))

    def record_stats(self, stats: RunStats) -> None:
        """Append a progress point."""
        self.stats.append(stats)

    def open_jobs(self) -> dict[int, str]:
        """Candidate id -> its newest recorded job, for candidates without a result."""
        return {
            j.candidate_id: j.job_id for j in self.jobs if j.candidate_id not in self._first_result
        }

    def pending(self) -> list[tuple[int, CandidateSpec]]:
        """Proposed candidates without any stored result."""
        return [(cid, s) for cid, s in self.specs.items() if cid not in self._first_result]

    def evaluated(self) -> list[tuple[int, CandidateSpec, dict[str, Any]]]:
        """Every stored result (re-measures included) in storage order."""
        return [(cid, self.specs[cid], r) for _, cid, r in self.results]


class FakeDispatcher:
    """A :class:`~evolution.ports.Dispatcher` that evaluates jobs instantly with a function.

    Parameters
    ----------
    evaluate:
        ``evaluate(job) -> result dict`` (e.g. built with :func:`fake_result`).
    capacity:
        Jobs in flight at once.
    seed:
        With a seed, each poll returns a random non-empty subset of the finished jobs in random
        order; without, all of them in submission order.
    redeliver:
        Probability per poll of delivering an already delivered result again (at-least-once).
    """

    def __init__(
        self,
        evaluate: Callable[[Job], dict[str, Any]],
        capacity: int = 4,
        *,
        seed: int | None = None,
        redeliver: float = 0.0,
    ) -> None:
        self.evaluate = evaluate
        self._capacity = int(capacity)
        self._rng = np.random.default_rng(seed) if seed is not None else None
        self.redeliver = float(redeliver)
        self.submitted: list[Job] = []
        self.delivered: list[JobResult] = []
        self.redelivered = 0
        self._pending: list[Job] = []
        self.closed = False

    @property
    def capacity(self) -> int:
        """Jobs that may be in flight at once."""
        return self._capacity

    @property
    def outstanding(self) -> int:
        """Submitted jobs not delivered yet."""
        return len(self._pending)

    def submit(self, job: Job) -> None:
        """Queue ``job``."""
        self.submitted.append(job)
        self._pending.append(job)

    def poll(self, timeout_s: float) -> list[JobResult]:
        """Finished jobs (never waits: everything finishes instantly)."""
        if self._rng is None:
            batch, self._pending = self._pending, []
        else:
            batch = []
            if self._pending:
                k = int(self._rng.integers(1, len(self._pending) + 1))
                order = self._rng.permutation(len(self._pending))
                batch = [self._pending[i] for i in order[:k]]
                chosen = set(order[:k].tolist())
                self._pending = [j for i, j in enumerate(self._pending) if i not in chosen]
        out = [JobResult(j.job_id, j.candidate_id, self.evaluate(j)) for j in batch]
        if self.delivered and self._rng is not None and self._rng.random() < self.redeliver:
            out.append(self.delivered[int(self._rng.integers(len(self.delivered)))])
            self.redelivered += 1
        self.delivered.extend(out)
        return out

    def close(self) -> None:
        """Forget the jobs in flight."""
        self._pending = []
        self.closed = True


def bowl_ms(params: dict[str, Any], optimum: dict[str, float] | None = None) -> float:
    """A deterministic fake running time (ms) with one optimum over log2 of the params.

    ``optimum`` maps a parameter to the log2 of its best value (default: ``BLOCK`` 1024 and
    ``num_warps`` 8); the time grows by 15% per unit of squared distance in log2 space.
    """
    opt = optimum or {"BLOCK": 10.0, "num_warps": 3.0}
    d2 = sum((math.log2(float(params.get(k, 2**v))) - v) ** 2 for k, v in opt.items())
    return 0.4 * (1.0 + 0.15 * d2)


class ScriptedLlm:
    """An :class:`~evolution.llm.port.LlmPort` in memory: scripted replies, instantly.

    Parameters
    ----------
    replies:
        One entry per request, in order: the reply's text, or ``reply(request) -> text``.
    prompt_tokens, completion_tokens:
        Tokens each reply reports.
    max_requests:
        Requests accepted at most (a cap); later ones, and any beyond the script, are refused.

    Attributes
    ----------
    requests:
        Every accepted request, in order.
    refused:
        Submits refused.
    """

    def __init__(
        self,
        replies: Sequence[str | Callable[[LlmRequest], str]],
        *,
        prompt_tokens: int = 1000,
        completion_tokens: int = 200,
        max_requests: int | None = None,
    ) -> None:
        self.replies = list(replies)
        self.prompt_tokens = int(prompt_tokens)
        self.completion_tokens = int(completion_tokens)
        self.max_requests = len(self.replies) if max_requests is None else int(max_requests)
        self.requests: list[LlmRequest] = []
        self.refused = 0
        self._done: list[LlmReply] = []

    def submit(self, request: LlmRequest) -> bool:
        """Answer ``request`` with the next reply (ready at the next poll); False past the cap."""
        n = len(self.requests)
        if n >= min(self.max_requests, len(self.replies)):
            self.refused += 1
            return False
        self.requests.append(request)
        script = self.replies[n]
        text = script(request) if callable(script) else script
        self._done.append(
            LlmReply(
                request.request_id,
                request.model,
                text,
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.completion_tokens,
                attempts=1,
            )
        )
        return True

    def poll(self, timeout_s: float = 0) -> list[LlmReply]:
        """Every reply not polled yet (never waits)."""
        out, self._done = self._done, []
        return out

    @property
    def in_flight(self) -> int:
        """Replies not polled yet."""
        return len(self._done)

    def spent(self) -> dict[str, int]:
        """Requests, refusals and tokens so far."""
        n = len(self.requests)
        return {
            "requests": n,
            "refused": self.refused,
            "prompt_tokens": n * self.prompt_tokens,
            "completion_tokens": n * self.completion_tokens,
        }


class MemoryJournal:
    """An :class:`~evolution.llm.port.LlmJournal` in memory.

    Attributes
    ----------
    sent:
        ``(request, meta)`` of every request recorded, in order.
    unsent:
        Ids of the requests the port refused.
    replies:
        ``(reply, use)`` of every reply recorded, in order.
    state:
        The emitter's state after the last event (a JSON round trip of it, as a database keeps).
    """

    def __init__(self) -> None:
        self.sent_requests: list[tuple[LlmRequest, RequestMeta]] = []
        self.unsent_ids: list[str] = []
        self.replies: list[tuple[LlmReply, ReplyUse]] = []
        self.state: dict[str, Any] | None = None

    def _keep(self, state: Mapping[str, Any]) -> None:
        import json

        self.state = json.loads(json.dumps(state))

    def sent(
        self,
        request: LlmRequest,
        meta: RequestMeta,
        state: Mapping[str, Any],
        replies: Sequence[tuple[LlmReply, ReplyUse]] = (),
    ) -> None:
        """Record ``replies``, then a request about to be submitted."""
        self.replies.extend(replies)
        self.sent_requests.append((request, meta))
        self._keep(state)

    def unsent(self, request_id: str, state: Mapping[str, Any]) -> None:
        """Record that the port refused ``request_id``."""
        self.unsent_ids.append(request_id)
        self._keep(state)

    def replied(self, reply: LlmReply, use: ReplyUse, state: Mapping[str, Any]) -> None:
        """Record a reply and what became of it."""
        self.replies.append((reply, use))
        self._keep(state)
