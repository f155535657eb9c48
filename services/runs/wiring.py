"""A run's parts, built in one place: its map, its emitters and its dispatcher.

:mod:`services.runs.search` assembles a :class:`evolution.loop.SearchLoop` from these for
``kernelmap run`` and for the controller alike; only the dispatcher's route differs
(:func:`make_dispatcher`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from evaluator_worker import static_gate
from evaluator_worker.config import EvalConfig
from evaluator_worker.verdict import Verdict
from evolution.candidate import CandidateSpec
from evolution.emitters import ParamEmitter, SeedEmitter
from evolution.grid import MapArchive
from evolution.ports import Dispatcher
from services.config import Settings
from services.dispatch.local import failure
from services.runs.config import RunConfig
from services.runs.seeds import Seed

log = logging.getLogger(__name__)

#: The routes :func:`make_dispatcher` builds (see :mod:`services.dispatch`).
ROUTES = ("local", "celery_queue", "fleet")


def build_archive(dims: list, config: RunConfig, state: dict[str, Any], seed: int) -> MapArchive:
    """The run's map: a grid, or a CVT archive whose saved centroids are reused on resume.

    ``dims`` are :func:`evolution.descriptors.parse_dims` pairs; ``state`` is the run's
    ``archive_state`` (``centroids`` once a CVT map was made); ``seed`` the run's random seed.
    """
    if config.archive == "cvt":
        import numpy as np

        saved = state.get("centroids")
        return MapArchive(
            dims,
            kind="cvt",
            cells=config.cells,
            seed=seed,
            centroids=np.asarray(saved) if saved is not None else None,
        )
    return MapArchive(dims, seed=seed)


def emitter_seed(run_seed: int, proposed: int) -> int:
    """The emitters' random seed for a search of a run that has ``proposed`` proposals stored.

    A fresh run's is the run's own seed; a resumed (or taken-over) run's advances with what is
    stored, so its new owner draws a stream of its own rather than replaying the first owner's
    draws (the emitters skip points already proposed, so a replay would spend its draws on
    misses), and the same stored state always gives the same seed.
    """
    if proposed == 0:
        return run_seed
    digest = hashlib.sha256(f"{run_seed}:{proposed}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def build_emitters(
    seeds: list[Seed], dims: list, rng_seed: int, variation: str = "gaussian"
) -> list:
    """A seed emitter for plain seeds and a parameter emitter per seed with a SEARCH_SPACE.

    ``variation``: ``gaussian`` or ``iso_line`` (steady-state mutation of elites), or ``cma``
    (CMA-ME: CMA-ES generations with a barrier, see :mod:`evolution.emitters.cma`). The
    parameter emitter of the ``i``-th seed draws from the random seed ``rng_seed + i``.
    """
    plain = [CandidateSpec(s.source, {}, "seed", (), s.label) for s in seeds if not s.space]
    emitters: list = []
    if plain:
        emitters.append(SeedEmitter(plain))
    for i, s in enumerate(seeds):
        if not s.space:
            continue
        if variation == "cma":
            from evolution.emitters import CMAParamEmitter

            emitters.append(
                CMAParamEmitter(s.source, s.space, dims, label=s.label, seed=rng_seed + i)
            )
        else:
            emitters.append(
                ParamEmitter(
                    s.source, s.space, dims, label=s.label, variation=variation, seed=rng_seed + i
                )
            )
    return emitters


def gate_prefilter() -> Callable[[CandidateSpec], dict | None]:
    """The loop's ``prefilter``: the static gate on each new source (cached by its hash), a
    ``COMPILE_ERROR`` for source that does not parse, ``STATIC_REJECT`` for one refused."""
    cache: dict[str, dict | None] = {}

    def check(spec: CandidateSpec) -> dict | None:
        key = hashlib.sha256(spec.source.encode()).hexdigest()
        if key not in cache:
            gate = static_gate.check_source(spec.source)
            cache[key] = None
            if gate.syntax_error:
                cache[key] = failure(Verdict.COMPILE_ERROR, gate.syntax_error)
            elif not gate.ok:
                cache[key] = failure(Verdict.STATIC_REJECT, "; ".join(gate.reasons))
        return cache[key]

    return check


def task_file(settings: Settings, task_id: int, source: str) -> Path:
    """The task's file in the data directory (written when missing or changed): workers read
    the task from there, so a run resumes even if the user's file moved or changed since."""
    path = settings.data_dir / "tasks" / f"task_{task_id}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != source:
        path.write_text(source)
    return path


def make_dispatcher(
    settings: Settings,
    *,
    run_id: int,
    device: str,
    task_file: Path,
    eval_config: EvalConfig,
    workers: int,
    route: str | None = None,
    session_factory: sessionmaker[Session] | None = None,
) -> Dispatcher:
    """The dispatcher of run ``run_id``: where its jobs are evaluated.

    Parameters
    ----------
    settings:
        The broker (``redis_url``) and the worker-liveness settings.
    run_id, device:
        The run and its hardware class (the queue ``eval.<device>``).
    task_file:
        The task's file in the data directory (its source travels with each queued job).
    eval_config:
        The evaluator's configuration for the run.
    workers:
        Jobs in flight at once: the local pool's processes, or the queues' capacity.
    route:
        ``local`` (:class:`services.dispatch.local.LocalPool`), ``celery_queue``
        (:class:`services.dispatch.celery_queue.CeleryDispatcher` on ``settings.redis_url``)
        or ``fleet`` (the controller's :class:`services.dispatch.fleet.FleetDispatcher`: the
        Celery queue and remote workers' leases). None, as ``kernelmap run`` does: the Celery
        queue when a broker is set, else the local pool.
    session_factory:
        Sessions on the service's database; needed by ``fleet`` (leases, remote workers).
    """
    route = route or ("celery_queue" if settings.redis_url else "local")
    if route == "local":
        from services.dispatch.local import LocalPool

        return LocalPool(eval_config, str(task_file), workers)
    if route not in ROUTES:
        raise ValueError(f"route must be one of {', '.join(ROUTES)}, got {route!r}")
    from services.dispatch.celery_queue import CeleryDispatcher
    from services.workers.celery_app import create_app

    source, config = task_file.read_text(), dataclasses.asdict(eval_config)
    if route == "celery_queue":
        return CeleryDispatcher(
            create_app(settings),
            hardware_class=device,
            run_id=run_id,
            capacity=workers,
            task_source=source,
            eval_config=config,
        )
    if session_factory is None:
        raise ValueError("the fleet route needs a session_factory (the service's database)")
    from services.dispatch.fleet import FleetDispatcher
    from services.dispatch.leases import LeaseDispatcher
    from services.workers.fleet import live_workers

    def say(text: str) -> None:  # the controller has no terminal: its notes go to the log
        log.warning("run %s: %s", run_id, text)

    celery = CeleryDispatcher(
        create_app(settings),
        hardware_class=device,
        run_id=run_id,
        capacity=workers,
        task_source=source,
        eval_config=config,
        notify=say,
    )
    lease = LeaseDispatcher(session_factory, run_id, device, workers, source, config, notify=say)

    def celery_workers() -> int:
        return sum(1 for w in live_workers(settings) if w.get("hardware_class") == device)

    return FleetDispatcher(celery, lease, session_factory, device, celery_workers, workers)
