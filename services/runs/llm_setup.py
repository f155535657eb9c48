"""LLM search in a run: its stored options, the checks on them, and the parts a search builds.

A run with LLM search stores :class:`LlmOptions` in its configuration (``RunConfig.llm``): the
models it may ask with their weights, the completion tokens per request and its hard caps. They
are checked by :func:`llm_options` against the server's endpoint when the run is created (the
CLI's ``--llm`` flags, the API's ``llm`` object): a model the server does not offer, a cap above
the server's, or a cost cap without prices is refused with a message saying which. The endpoint
itself (URL, key) is always the server's settings, never the run's.

:func:`build_llm` makes the search's parts: an :class:`~services.llm.client.LlmPool` on the
endpoint whose caps are the run's minus what its earlier searches spent (a request lost in
flight counts at its reservation), the run's :class:`~archive.llm_log.LlmLog` (requests still
marked in flight by a killed search are marked lost first), and the
:class:`~evolution.emitters.llm.LlmEmitter` restored from the state the log kept.
:class:`SpecMemo` wraps the run's store so the emitter can read its elites' sources.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from archive.llm_log import LlmLog
from evolution.candidate import CandidateSpec
from evolution.emitters.llm import LlmEmitter, archive_elites
from evolution.ports import Proposal
from services.config import Settings
from services.llm.budget import Caps
from services.llm.config import LlmConfigError, LlmEndpoint, parse_models

#: Completion tokens per request unless a run asks otherwise, and the most it may ask.
DEFAULT_MAX_TOKENS = 4096
MAX_MAX_TOKENS = 65536


@dataclasses.dataclass(frozen=True)
class LlmOptions:
    """A run's LLM search, as stored in ``runs.config["llm"]`` (see the module notes).

    ``models`` are ``(name, weight)`` pairs; a cap of None is the server's at the time the
    search starts.
    """

    models: tuple[tuple[str, float], ...]
    max_tokens: int = DEFAULT_MAX_TOKENS
    max_requests: int | None = None
    max_total_tokens: int | None = None
    max_cost: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object stored with the run."""
        return {
            "models": [[m, w] for m, w in self.models],
            "max_tokens": self.max_tokens,
            "max_requests": self.max_requests,
            "max_total_tokens": self.max_total_tokens,
            "max_cost": self.max_cost,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LlmOptions:
        """Read what :meth:`to_json` stored."""
        return cls(
            models=tuple((str(m), float(w)) for m, w in data["models"]),
            max_tokens=int(data.get("max_tokens") or DEFAULT_MAX_TOKENS),
            max_requests=data.get("max_requests"),
            max_total_tokens=data.get("max_total_tokens"),
            max_cost=data.get("max_cost"),
        )


def _cap(name: str, asked: float | None, server: float | None, flag: str) -> float | None:
    if asked is None:
        return None
    if asked <= 0:
        raise LlmConfigError(f"{flag} must be positive, got {asked:g}")
    if server is not None and asked > server:
        raise LlmConfigError(
            f"{flag} {asked:g} is above this server's cap of {server:g} ({name}); ask for less"
        )
    return asked


def llm_options(
    settings: Settings,
    models: Sequence[str] | None = None,
    *,
    max_tokens: int | None = None,
    max_requests: int | None = None,
    max_total_tokens: int | None = None,
    max_cost: float | None = None,
    flag: str = "--llm",
) -> LlmOptions:
    """The options of a new run's LLM search, checked against the server's endpoint.

    ``models`` are ``name`` or ``name:weight`` entries, each one of ``KERNELMAP_LLM_MODELS``
    (None: all of them, with their configured weights). ``flag`` prefixes the messages (the CLI's
    flag or the API's field).

    Raises
    ------
    LlmConfigError
        No endpoint configured, a model not offered, a bad number, a cap above the server's.
    """
    endpoint = settings.llm_endpoint()
    offered = {m.name: m.weight for m in endpoint.models}
    if models:
        chosen = parse_models(",".join(models))
        unknown = [m.name for m in chosen if m.name not in offered]
        if unknown:
            raise LlmConfigError(
                f"{flag}: {', '.join(map(repr, unknown))} not offered by this server; choose"
                f" among {', '.join(offered)} (KERNELMAP_LLM_MODELS)"
            )
        entries = [e.strip() for e in ",".join(models).split(",")]
        # An entry without a weight keeps the server's; one with a weight (name:2) has its own.
        pairs = tuple(
            (m.name, m.weight if raw != m.name else offered[m.name])
            for raw, m in zip(entries, chosen, strict=True)
        )
    else:
        pairs = tuple(offered.items())
    tokens = DEFAULT_MAX_TOKENS if max_tokens is None else int(max_tokens)
    if not 1 <= tokens <= MAX_MAX_TOKENS:
        raise LlmConfigError(
            f"{flag} max_tokens must be between 1 and {MAX_MAX_TOKENS}, got {tokens}"
        )
    cost = _cap("KERNELMAP_LLM_MAX_COST", max_cost, settings.llm_max_cost, f"{flag} max_cost")
    if cost is not None or settings.llm_max_cost is not None:
        unpriced = [m for m, _ in pairs if endpoint.price(m) is None]
        if unpriced:
            raise LlmConfigError(
                f"{flag}: a cost cap needs a price for every model; {', '.join(unpriced)} has"
                " none in KERNELMAP_LLM_PRICES"
            )
    requests = _cap(
        "KERNELMAP_LLM_MAX_REQUESTS",
        max_requests,
        settings.llm_max_requests,
        f"{flag} max_requests",
    )
    total = _cap(
        "KERNELMAP_LLM_MAX_TOTAL_TOKENS",
        max_total_tokens,
        settings.llm_max_total_tokens,
        f"{flag} max_total_tokens",
    )
    return LlmOptions(
        models=pairs,
        max_tokens=tokens,
        max_requests=None if requests is None else int(requests),
        max_total_tokens=None if total is None else int(total),
        max_cost=cost,
    )


def cli_options(settings: Settings, opts: Any) -> dict[str, Any] | None:
    """The stored ``llm`` of a new ``kernelmap run`` from its ``--llm`` flags (the
    ``RunOptions``), checked against the server's endpoint; None without ``--llm``.

    Raises ValueError for ``--llm-*`` flags without ``--llm``, :class:`LlmConfigError` for the
    rest (see :func:`llm_options`)."""
    asked = [
        opts.llm_models,
        opts.llm_max_tokens,
        opts.llm_max_requests,
        opts.llm_max_total_tokens,
        opts.llm_max_cost,
    ]
    if not opts.llm:
        if any(a for a in asked):
            raise ValueError("the --llm-* options need --llm (LLM search)")
        return None
    return llm_options(
        settings,
        opts.llm_models or None,
        max_tokens=opts.llm_max_tokens,
        max_requests=opts.llm_max_requests,
        max_total_tokens=opts.llm_max_total_tokens,
        max_cost=opts.llm_max_cost,
        flag="--llm",
    ).to_json()


class SpecMemo:
    """A run's store that remembers the spec of every candidate it proposed or read back, so
    the LLM emitter can show its elites' sources (every other call goes to the store)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.specs: dict[int, CandidateSpec] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def propose_many(self, specs: Sequence[CandidateSpec]) -> list[Proposal]:
        """As the store's; remembers each proposed spec."""
        out = self._store.propose_many(specs)
        for spec, proposal in zip(specs, out, strict=True):
            self.specs.setdefault(proposal.candidate_id, spec)
        return out

    def propose(self, spec: CandidateSpec) -> Proposal:
        """As the store's; remembers the spec."""
        return self.propose_many([spec])[0]

    def pending(self) -> list[tuple[int, CandidateSpec]]:
        """As the store's; remembers the specs."""
        rows = self._store.pending()
        for cid, spec in rows:
            self.specs.setdefault(cid, spec)
        return rows

    def evaluated(self) -> list[tuple[int, CandidateSpec, dict[str, Any]]]:
        """As the store's; remembers the specs."""
        rows = self._store.evaluated()
        for cid, spec, _ in rows:
            self.specs.setdefault(cid, spec)
        return rows


def hardware_facts(hardware_class: str, device: str) -> dict[str, Any]:
    """What every prompt says of the run's hardware."""
    if device == "cpu":
        return {
            "hardware class": hardware_class,
            "device": "CPU: Triton kernels run in its interpreter (correctness only, timings"
            " are not GPU performance); plain PyTorch is timed on the CPU",
        }
    facts: dict[str, Any] = {"hardware class": hardware_class, "device": "NVIDIA GPU (CUDA)"}
    from evaluator_worker.floor import peaks_for  # imports torch: only for GPU runs

    peaks = peaks_for(hardware_class)  # a fleet class named after its GPU (h100, h200...)
    if peaks is not None:
        facts["memory bandwidth (datasheet)"] = f"{peaks.bandwidth / 1e12:g} TB/s"
        facts["dense TFLOP/s (datasheet)"] = (
            f"fp32 {peaks.fp32 / 1e12:g}, tf32 {peaks.tf32 / 1e12:g},"
            f" fp16/bf16 {peaks.half / 1e12:g}"
        )
    return facts


@dataclasses.dataclass
class LlmPart:
    """The LLM side of one search: the emitter, its pool and its log."""

    emitter: LlmEmitter
    pool: Any
    log: LlmLog
    lost_on_start: int = 0

    def close(self) -> None:
        """Stop: requests not sent are cancelled, those in flight are not waited for and are
        marked lost (their replies would have no one to go to)."""
        self.pool.close(wait=False)
        self.emitter.discard()
        self.log.close_lost("abandoned", "in flight when the search stopped: not awaited")


def _caps(options: LlmOptions, settings: Settings, log: LlmLog) -> Caps:
    """The run's caps less what its earlier searches spent."""
    spent = log.spent()
    requests = options.max_requests or settings.llm_max_requests
    tokens = options.max_total_tokens or settings.llm_max_total_tokens
    cost = options.max_cost if options.max_cost is not None else settings.llm_max_cost
    return Caps(
        max_requests=max(requests - spent.requests, 0),
        max_tokens=max(tokens - spent.tokens, 0),
        max_cost=None if cost is None else max(cost - (spent.cost or 0.0), 0.0),
    )


def build_llm(
    settings: Settings,
    sessions: Any,
    run_id: int,
    options: LlmOptions,
    *,
    task_source: str,
    dims: Sequence[tuple[Any, int]],
    archive: Any,
    store: SpecMemo,
    hardware: Mapping[str, Any],
    seed: int,
    fence: Any = None,
    endpoint: LlmEndpoint | None = None,
    pool_factory: Any = None,
) -> LlmPart:
    """The LLM emitter of run ``run_id`` with its pool and log (see the module notes).

    ``pool_factory(endpoint, caps)`` makes the pool (default :class:`LlmPool`); tests pass a
    short backoff.
    """
    from services.llm.client import LlmPool

    endpoint = endpoint or settings.llm_endpoint()
    log = LlmLog(sessions, run_id, fence=fence)
    lost = log.close_lost()
    caps = _caps(options, settings, log)
    pool = (pool_factory or LlmPool)(endpoint, caps)
    emitter = LlmEmitter(
        pool,
        task_source,
        list(options.models),
        dims,
        archive_elites(archive, store.specs.get),
        hardware,
        seed=seed,
        max_tokens=options.max_tokens,
        max_in_flight=endpoint.concurrency,
        journal=log,
    )
    state = log.load_state()
    if state:
        emitter.restore(state)
        emitter.bandit.set_models(dict(options.models))
    return LlmPart(emitter, pool, log, lost)
