"""Request and response bodies of the API (pydantic models; they make the OpenAPI schema).

Those of the remote workers' routes (``/workers``) are in :mod:`services.api.schemas_workers`.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

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
EmitterName = Literal["templates", *VARIATIONS]


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
        " chooses how schedules (SEARCH_SPACE) are varied. Seeds (the reference and"
        " `seed_candidates`) are always evaluated. Default: templates + gaussian",
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
    verdict: str | None
    speedup_vs_eager: float | None
    speedup_vs_compile: float | None
    objective: float
    ratio: float | None
    objective_label: str


class RunSummary(BaseModel):
    """A run's state and progress (what ``kernelmap run --json`` prints)."""

    id: int
    status: str
    task: str
    device: str
    objective_label: str
    budget: int
    evaluations: int
    elites: int
    coverage: float
    qd_score: float
    verdicts: dict[str, int]
    best: BestOut | None


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
