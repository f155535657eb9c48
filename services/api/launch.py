"""Creating a queued run from an API request: seeds checked, configuration filled in.

The configuration is a :class:`services.runs.config.RunConfig`, as for a CLI run, so a
controller can start either the same way: the task's reference as the first seed, then the
request's seed candidates, the hardware class's default descriptor dimensions, a Gaussian
parameter emitter over a grid archive. Template seeds are not added here: matching them runs the
task's code, which the API process never does; the controller that starts the run adds them.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from archive import repository
from archive.models import Run, Task, User, Worker
from evolution.descriptors import default_dims, parse_dims
from evolution.emitters import VARIATIONS
from services.api.errors import Unprocessable
from services.config import Settings
from services.llm.config import LlmConfigError
from services.runs.config import RunConfig, objective_label
from services.runs.seeds import Seed, SeedError, check_seed, reference_seed

log = logging.getLogger(__name__)


def check_seeds(task: Task, sources: list[str]) -> list[Seed]:
    """The run's seeds: the task's reference, then each submitted source, checked.

    Raises
    ------
    SeedError
        Naming the seed (``seed_candidates[i]``) and what is wrong with it (422).
    """
    seeds = []
    ref = reference_seed(task.source)
    if ref is not None:
        seeds.append(ref)
    for i, source in enumerate(sources):
        label = f"seed_candidates[{i}]"
        try:
            seeds.append(check_seed(label, source))
        except SeedError as e:
            raise Unprocessable(str(e), field=label) from None
        except (RecursionError, MemoryError, ValueError) as e:  # absurd nesting, odd input
            msg = f"seed candidate {label} cannot be parsed: {type(e).__name__}: {e}"
            raise Unprocessable(msg, field=label) from None
    return seeds


#: Hardware classes a run may always name: the default queues ``eval.cpu`` and ``eval.cuda``.
DEFAULT_CLASSES = ("cpu", "cuda")


def check_hardware(session: Session, settings: Settings, hardware: str) -> None:
    """Refuse a hardware class no worker serves: its run would wait forever.

    ``cpu`` and ``cuda`` are always accepted (workers may start later); another class must be
    served by a live Celery worker or an enrolled remote worker.
    """
    if hardware in DEFAULT_CLASSES:
        return
    known = set(DEFAULT_CLASSES)
    known |= set(
        session.scalars(sa.select(Worker.hardware_class).where(Worker.revoked_at.is_(None)))
    )
    if settings.redis_url:
        from services.workers.fleet import FleetError, live_workers

        try:
            known |= {str(w.get("hardware_class")) for w in live_workers(settings)}
        except FleetError as e:
            log.warning("cannot list the Celery workers to check hardware %r: %s", hardware, e)
    if hardware not in known:
        raise Unprocessable(
            f"no worker serves hardware class {hardware!r}: use one of"
            f" {', '.join(sorted(known))}, or start a worker with `kernelmap worker --queue"
            f" {hardware}` first",
            field="hardware",
        )


def create_queued_run(
    session: Session,
    user: User,
    task: Task,
    *,
    budget: int,
    hardware: str,
    seed_sources: list[str],
    timeout_s: float,
    emitters: list[str] | None = None,
    descriptors: list[str] | None = None,
    llm: dict[str, Any] | None = None,
    settings: Settings | None = None,
) -> Run:
    """Check the seeds and create a ``queued`` run owned by ``user`` (not committed).

    ``emitters``: ``templates`` and at most one variation (``gaussian``, ``iso_line``,
    ``cma``); None is templates + gaussian. ``descriptors``: the map's dimensions (``name`` or
    ``name:bins``); None is the hardware's defaults. ``llm``: the options of the LLM emitter
    (``llm`` in ``emitters``), checked against ``settings``' endpoint.
    """
    seeds = check_seeds(task, seed_sources)
    device = "cpu" if hardware == "cpu" else "cuda"
    chosen = ["templates", "gaussian"] if emitters is None else list(emitters)
    variations = [e for e in chosen if e in VARIATIONS]
    if len(variations) > 1:
        raise Unprocessable(
            f"emitters: choose at most one of {', '.join(VARIATIONS)}, got {', '.join(variations)}",
            field="emitters",
        )
    llm_config = _llm_config(chosen, llm, settings)
    dims = None
    if descriptors is not None:
        dims = ",".join(descriptors)
        try:
            parse_dims(dims, device)
        except ValueError as e:
            raise Unprocessable(f"descriptors: {e}", field="descriptors") from None
    config = RunConfig.new(
        device=hardware,
        seeds=seeds,
        timeout_s=timeout_s,
        dims=dims or ",".join(default_dims(device, [s.space for s in seeds])),
        variation=variations[0] if variations else "gaussian",
        templates="templates" in chosen,
        emitters=chosen,
        llm=llm_config,
    )
    return repository.create_run(
        session,
        task_id=task.id,
        config=config.to_json(),
        budget=budget,
        seed=random.SystemRandom().getrandbits(31),
        device=hardware,
        objective_label=objective_label(device, seeds),
        owner_id=user.id,
    )


def _llm_config(
    chosen: list[str], llm: dict[str, Any] | None, settings: Settings | None
) -> dict[str, Any] | None:
    """The stored options of the run's LLM emitter, or None without ``llm`` in ``emitters``."""
    if "llm" not in chosen:
        if llm is not None:
            raise Unprocessable('llm: add "llm" to emitters to use the LLM emitter', field="llm")
        return None
    if settings is None:
        raise ValueError("an LLM run needs the server's settings")
    from services.runs.llm_setup import llm_options

    llm = llm or {}
    try:
        options = llm_options(
            settings,
            llm.get("models"),
            max_tokens=llm.get("max_tokens"),
            max_requests=llm.get("max_requests"),
            max_total_tokens=llm.get("max_total_tokens"),
            max_cost=llm.get("max_cost"),
            flag="llm",
        )
    except LlmConfigError as e:
        raise Unprocessable(str(e), field="llm") from None
    return options.to_json()
