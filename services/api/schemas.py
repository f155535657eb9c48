"""Request and response bodies of the API (pydantic models; they make the OpenAPI schema).

Those of the remote workers' routes (``/workers``) are in :mod:`services.api.schemas_workers`.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from archive.lineage import MAX_DEPTH as MAX_LINEAGE
from evolution.emitters import VARIATIONS

#: Largest id accepted anywhere (ids are 32-bit integers in the database).
MAX_ID = 2**31 - 1
#: Largest seed candidate accepted (characters).
MAX_SEED_CHARS = 256 * 1024

Id = Annotated[int, Field(ge=1, le=MAX_ID)]
T = TypeVar("T")


def storable(text: str) -> str:
    """Text the database can hold: no NUL characters, no lone surrogates."""
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return text


Text = Annotated[str, AfterValidator(storable)]


def not_blank(text: str) -> str:
    """Text with something other than whitespace in it."""
    if not text.strip():
        raise ValueError("must not be blank")
    return text


class Page(BaseModel, Generic[T]):
    """One page of a list: ``items``, the ``total`` count, and the page's ``limit``/``offset``."""

    items: list[T]
    total: int
    limit: int
    offset: int


# -- tasks -------------------------------------------------------------------------------------


class TaskOut(BaseModel):
    """A stored task (without its source)."""

    id: int
    name: str
    meta: dict[str, Any]
    created_at: dt.datetime | None = None


class TaskDetail(TaskOut):
    """A stored task with its source and validation report."""

    source: str
    validation: dict[str, Any]


# -- runs --------------------------------------------------------------------------------------


#: A hardware class: the queue ``eval.<class>`` its workers consume.
HARDWARE_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
EmitterName = Literal["templates", "llm", *VARIATIONS]


class LlmIn(BaseModel):
    """A run's LLM search: which of the server's models, and its caps (the endpoint and its key
    are the server's, never the request's)."""

    model_config = ConfigDict(extra="forbid")

    models: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        default=None,
        min_length=1,
        max_length=8,
        description="Models to ask, `name` or `name:weight`, among those the server offers"
        " (GET /llm/models); default: all of them",
    )
    max_tokens: int | None = Field(
        default=None, ge=1, le=65536, description="Completion tokens per request (default 4096)"
    )
    max_requests: int | None = Field(
        default=None, ge=1, description="Requests the run may send (at most the server's cap)"
    )
    max_total_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Prompt + completion tokens the run may spend (at most the server's cap)",
    )
    max_cost: float | None = Field(
        default=None, gt=0, description="Cost the run may spend where the server has prices"
    )


class RunCreate(BaseModel):
    """Start a search on one of your tasks."""

    model_config = ConfigDict(extra="forbid")

    task_id: Id
    budget: int = Field(ge=1, le=100_000, description="Evaluations the run may spend")
    hardware: str | None = Field(
        default=None,
        pattern=HARDWARE_PATTERN,
        description="Hardware class whose workers evaluate the candidates (`cpu`, `cuda`, or a"
        " fleet's own class such as `h100`; default: the server's device)",
    )
    emitters: list[EmitterName] | None = Field(
        default=None,
        max_length=4,
        description="How candidates are proposed: `templates` adds the template library's"
        " kernels for what the task computes; `gaussian`, `iso_line` or `cma` (at most one)"
        " chooses how schedules (SEARCH_SPACE) are varied; `llm` adds the LLM emitter"
        " (the server's models write kernels; see `llm`). Seeds (the reference and"
        " `seed_candidates`) are always evaluated. Default: templates + gaussian",
    )
    llm: LlmIn | None = Field(
        default=None, description="Options of the LLM emitter (with `llm` in `emitters`)"
    )
    descriptors: list[Annotated[str, Field(pattern=r"^[a-z_]{1,40}(:[0-9]{1,4})?$")]] | None = (
        Field(
            default=None,
            min_length=1,
            max_length=3,
            description="The map's dimensions, `name` or `name:bins` (1 to 3); default: the"
            " hardware's default descriptors",
        )
    )
    seed_candidates: list[Annotated[Text, Field(max_length=MAX_SEED_CHARS)]] = Field(
        default_factory=list,
        max_length=32,
        description="Candidate files (source text, `class ModelNew`) to start the search from",
    )


class RunCreated(BaseModel):
    """A newly created run."""

    id: int
    status: str


class RunStatusOut(BaseModel):
    """A run's status after a pause, resume or cancel."""

    id: int
    status: str


class BestOut(BaseModel):
    """A run's best elite so far."""

    candidate_id: int
    label: str = Field(description="The candidate's label (``reference`` for the task's own)")
    is_reference: bool = Field(
        description="The best is the unchanged reference: its ratio is timing noise"
    )
    verdict: str | None
    speedup_vs_eager: float | None
    speedup_vs_compile: float | None
    objective: float = Field(description="log(ratio)")
    ratio: float | None = Field(description="Baseline time over the candidate's")
    ratio_ci95: list[float] | None = Field(
        description="The ratio's spread: from the 95% confidence intervals of both medians"
    )
    objective_label: str = Field(description="How this elite's own evaluation measured it")


class RunCounts(BaseModel):
    """What a run's numbers count."""

    evaluations: int = Field(
        description="Evaluations run for this run (what the budget counts): re-measures of"
        " near-ties and verifications included, static rejects and duplicates excluded"
    )
    candidates_evaluated: int = Field(description="Distinct candidates among them")
    remeasures: int = Field(description="Evaluations beyond the first of a candidate")
    static_rejects: int = Field(description="Candidates the static gate refused (no evaluation)")
    proposed: int = Field(description="Proposals of the run's emitters, duplicates included")
    duplicates: int = Field(
        description="Proposals repeating a candidate already proposed (by this run or an"
        " earlier run of the task), answered from its stored result"
    )


class TemplatesOut(BaseModel):
    """What the template library made of the run's task."""

    wanted: bool = Field(description="Whether the run asked for template seeds")
    matched: list[str] = Field(description="The templates that apply (their seeds' labels)")
    notes: list[str] = Field(description="What the matcher said (why a template does not apply)")


class RunSummary(BaseModel):
    """A run's state and progress (what ``kernelmap run --json`` prints)."""

    id: int
    status: str
    task: str
    device: str
    objective_label: str = Field(
        description="The run's timing set-up: cpu-interpreter where some of its candidates are"
        " Triton run by the CPU interpreter; each figure carries its own label besides"
    )
    budget: int
    evaluations: int = Field(description="As counts.evaluations (the progress line's count)")
    counts: RunCounts
    elites: int
    coverage: float
    qd_score: float
    qd_score_offset: float = Field(
        description="qd_score sums max(objective, offset) - offset over the elites"
    )
    verdicts: dict[str, int] = Field(
        description="One verdict per evaluation, plus STATIC_REJECT per static reject"
    )
    best: BestOut | None
    stop_reason: str | None = Field(
        description="Why its latest search stopped: budget, stopped, exhausted, stalled or"
        " task_refused; null while running or before"
    )
    stop_reason_text: str | None = Field(description="stop_reason in words")
    templates: TemplatesOut
    llm: dict[str, Any] | None = Field(
        default=None,
        description="LLM search, when the run has it: requests, failures by reason, prompt and"
        " completion tokens, cost (null without prices), candidates, correct ones and"
        " improvements per model and operator (by_arm), and the prompt strategies",
    )
    notes: list[str] = Field(description="Lines that say why the figures look as they do")
    error: str | None = None


class RunOut(BaseModel):
    """A run in a list."""

    id: int
    task_id: int
    status: str
    device: str
    budget: int
    created_at: dt.datetime | None = None


class Cell(BaseModel):
    """An occupied archive cell: its elite and the elite's descriptor values."""

    cell: int
    candidate_id: int
    ratio: float | None
    measures: list[float]
    params: dict[str, Any]
    label: str
    objective_label: str | None = Field(
        default=None, description="How this elite's newest timed evaluation measured it"
    )
    emitter: str
    verified: bool = Field(
        description="A trusted (cluster) worker measured this elite; false while its timing is"
        " only a remote worker's claim"
    )


class ArchiveOut(BaseModel):
    """A run's current elites, best first."""

    run_id: int
    dims: str | None
    cells: list[Cell]


# -- candidates --------------------------------------------------------------------------------


class VerificationOut(BaseModel):
    """Whether an evaluation's numbers can be trusted, and on whose word (as stored)."""

    model_config = ConfigDict(from_attributes=True)

    status: Literal["trusted", "unverified", "verified"] = Field(
        description="`trusted`: a worker kernelmap controls measured it (a cluster worker or"
        " this machine); `unverified`: a remote worker's own claim; `verified`: a trusted"
        " measurement of a candidate a remote worker had claimed first"
    )
    by: str | None = Field(
        description="The worker that measured this evaluation (`remote:<name>` for a remote"
        " worker; null for an in-process evaluation)"
    )
    remote_worker_id: int | None = Field(
        default=None, description="For `unverified`: the remote worker's id (`GET /workers`)"
    )
    claimed_by: str | None = Field(
        default=None, description="For `verified`: the remote worker whose claim was re-measured"
    )
    reason: str | None = Field(
        default=None,
        description="For `unverified`: why no trusted worker re-measured it, when known",
    )


class EvaluationOut(BaseModel):
    """What the evaluator reported for a candidate (its newest evaluation)."""

    model_config = ConfigDict(from_attributes=True)

    verdict: str
    correct: bool
    objective: float | None
    objective_label: str | None
    speedup_vs_eager: float | None
    speedup_vs_compile: float | None
    messages: list[str]
    timing: dict[str, Any] | None
    features: dict[str, Any]
    hardware: dict[str, Any]
    worker: str | None
    duration_s: float | None
    created_at: dt.datetime | None = None
    verification: VerificationOut | None = Field(
        default=None, description="Whether and how this result was verified"
    )


class CandidateItem(BaseModel):
    """A candidate in a run's list."""

    id: int
    emitter: str
    label: str
    params: dict[str, Any]
    parent_ids: list[int]
    verdict: str | None
    objective: float | None
    speedup_vs_eager: float | None


class LineageStep(BaseModel):
    """One ancestor of a candidate."""

    model_config = ConfigDict(from_attributes=True)

    candidate_id: int
    emitter: str
    label: str
    parent_ids: list[int]


class CandidateDetail(BaseModel):
    """A candidate: its source, parameters, lineage and newest evaluation."""

    id: int
    task_id: int
    run_id: int
    source: str
    params: dict[str, Any]
    parent_ids: list[int]
    emitter: str
    label: str
    evaluation: EvaluationOut | None
    lineage: list[LineageStep] = Field(
        description="Its ancestors by first parents: the parent first, a seed (no parents)"
        f" last; empty for a seed. At most {MAX_LINEAGE} steps"
    )


# -- keys --------------------------------------------------------------------------------------


class KeyCreate(BaseModel):
    """Make a new user and an API key for them."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["admin", "user", "worker"]
    name: Annotated[
        str,
        Field(max_length=100, description="Who it is for"),
        AfterValidator(storable),
        AfterValidator(not_blank),
    ]


class KeyOut(BaseModel):
    """An API key as listed: its prefix, never the key or its hash."""

    id: int
    prefix: str
    name: str
    role: str
    user_id: int
    created_at: dt.datetime | None = None
    revoked_at: dt.datetime | None = None


class KeyCreated(KeyOut):
    """A new key: ``key`` is shown this once and cannot be recovered."""

    key: str


# -- LLM search --------------------------------------------------------------------------------


class LlmModelOut(BaseModel):
    """A model the server's LLM endpoint offers."""

    name: str
    weight: float = Field(description="Its share of the requests, the bandit's prior")
    priced: bool = Field(description="A price is configured (its cost is counted)")


class LlmModelsOut(BaseModel):
    """What LLM search this server offers (its endpoint and key stay the server's)."""

    available: bool
    reason: str | None = Field(description="Why LLM search is unavailable, when it is")
    models: list[LlmModelOut]
    max_requests: int = Field(description="Most requests one run may send")
    max_total_tokens: int = Field(description="Most prompt + completion tokens one run spends")
    max_cost: float | None = Field(description="Most one run may cost; null: no cost cap")


class LlmRequestItem(BaseModel):
    """One request a run's LLM emitter sent, and what came of it."""

    request_id: str
    model: str
    operator: str = Field(description="mutate, crossover, repair, target or rewrite")
    strategy: str = Field(description="The prompt strategy used (rewrite: the one rewritten)")
    status: str = Field(description="sent, replied, failed, refused or lost")
    reason: str | None = Field(description="Why it gave no candidate, when it did not")
    message: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float | None
    cost: float | None
    candidate_id: int | None = Field(description="The candidate its reply became")
    created_at: str | None


class LlmRequestDetail(LlmRequestItem):
    """One request whole: its prompt and the model's reply as stored."""

    parent_ids: list[int]
    messages: list[dict[str, Any]]
    response: str | None
    max_tokens: int
    attempts: int
    strategy_id: str | None = Field(description="The strategy a taken rewrite created")
    replied_at: str | None
